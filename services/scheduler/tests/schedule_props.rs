//! Property: however late and irregular the firing loop wakes up, every due
//! time it fires is aligned to `start_from` (no drift), due times only move
//! forward (nothing fires twice), and every due time between the job's
//! creation and the last firing is either fired or counted as missed
//! (nothing is lost silently).

use meridian_scheduler::domain::Jobs;
use meridian_schemas::schedule::{Cadence, ScheduleEvent};
use meridian_schemas::{AgentId, JobId};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn firings_are_aligned_monotonic_and_account_for_every_due_time(
        every in 1u64..5_000_000,
        start in -10_000_000i64..10_000_000,
        created in -10_000_000i64..10_000_000,
        gaps in proptest::collection::vec(0i64..20_000_000, 1..60),
    ) {
        let job_id = JobId::new_random();
        let agent_id = AgentId::new_random();
        let cadence = Cadence { repeat_every_ms: every, start_from_ms: start };
        let mut jobs = Jobs::default();
        jobs.apply(ScheduleEvent::JobCreated {
            job_id, agent_id, provider: "p".into(), cadence, at_ms: created,
        }, 1);
        let first_eligible = jobs.get(job_id).unwrap().next_due();
        prop_assert!(first_eligible >= created);
        prop_assert_eq!((first_eligible - start).rem_euclid(every as i64), 0);

        let mut now = created;
        let mut accounted = 0u64;
        let mut last_due = None;
        for (i, gap) in gaps.iter().enumerate() {
            now += gap;
            let job = jobs.get(job_id).unwrap();
            let expected_next = job.next_due();
            let Some(due) = job.due_at(now) else {
                prop_assert!(now < expected_next, "due time {expected_next} reached at {now} but nothing fired");
                continue;
            };
            prop_assert!(due.due_ms <= now);
            prop_assert_eq!((due.due_ms - start).rem_euclid(every as i64), 0, "drift");
            prop_assert!(last_due.is_none_or(|l| due.due_ms > l), "a due time fired twice");
            prop_assert_eq!(due.due_ms - expected_next, due.missed as i64 * every as i64);
            prop_assert!(now - due.due_ms < every as i64, "not the latest due time");
            accounted += 1 + due.missed;
            last_due = Some(due.due_ms);
            jobs.apply(ScheduleEvent::Fired {
                job_id, agent_id, due_ms: due.due_ms, missed: due.missed,
                fired_at_ms: now, replica: "r".into(),
            }, i as u64 + 2);
        }
        if let Some(last) = last_due {
            let due_times = (last - first_eligible) / every as i64 + 1;
            prop_assert_eq!(accounted as i64, due_times, "a due time was lost");
        }
    }
}
