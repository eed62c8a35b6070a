//! The sync-run protocol of one sync stream, as a state machine. Pure.
//!
//! The hub requests a run of one provider on the stream ([`Runs::request`]);
//! the agent then answers with `started`, the run's APIs, and `completed`
//! (with the count it sent) or `failed`. [`Runs::accept`] checks each message
//! against the run's state and says what it means ([`Step`]), or refuses it
//! ([`ProtocolError`]: the stream then ends with `InvalidArgument`):
//!
//! | run state | started | api | completed | failed |
//! |---|---|---|---|---|
//! | requested | → receiving | refused | refused | ends the run |
//! | receiving | refused (twice) | accepted, or dropped when sent before | ends the run | ends the run |
//!
//! Any message for a run not requested on this stream (or already ended),
//! or naming another provider than the run's, is refused; so is an API over
//! the size limit or without an id. When the stream ends, the runs that had
//! started are failed ([`Runs::close`]), so no run waits forever.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use meridian_schemas::RunId;

/// What the agent sent about one run, as the rules need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The run began.
    Started,
    /// One discovered API.
    Api {
        /// The provider's id of the API.
        provider_api_id: String,
        /// Its encoded size in bytes.
        size: usize,
    },
    /// The run ended; the agent sent `count` APIs.
    Completed {
        /// As the agent counted.
        count: u64,
    },
    /// The run failed.
    Failed {
        /// Why, as the agent said (may be blank).
        reason: String,
    },
    /// A message that names none of the above.
    Empty,
}

/// What an accepted message means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The run began.
    Started,
    /// A new API of the run: the `number`th (from 0).
    Api {
        /// APIs of the run accepted before it.
        number: u64,
    },
    /// An API the run sent before: dropped (the first one stands).
    Duplicate,
    /// The run ended (it is forgotten).
    Ended(End),
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The agent completed it with this count.
    Completed {
        /// As the agent counted.
        count: u64,
    },
    /// It failed, for this reason.
    Failed {
        /// Never blank.
        reason: String,
    },
}

/// Why a message breaks the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not a run of this stream (never requested here, or already ended).
    #[error("run_id: {0} was not requested on this stream (or has ended)")]
    NotRequested(RunId),
    /// The message names another provider than the run's.
    #[error("provider: run {run} is for {expected:?}, not {got:?}")]
    WrongProvider {
        /// The run.
        run: RunId,
        /// Its provider.
        expected: String,
        /// What the message said.
        got: String,
    },
    /// No kind at all.
    #[error("sync message without started, api, completed or failed")]
    Empty,
    /// `started` for a run that has started.
    #[error("run {0}: started twice")]
    StartedTwice(RunId),
    /// An API before `started`.
    #[error("run {0}: api before started")]
    ApiBeforeStarted(RunId),
    /// `completed` before `started`.
    #[error("run {0}: completed before started")]
    CompletedBeforeStarted(RunId),
    /// An API without its id.
    #[error("api.provider_api_id: must not be empty")]
    EmptyApiId,
    /// An API over the size limit.
    #[error("api {api:?}: definition is {size} bytes, the limit is {limit}")]
    TooLarge {
        /// The API's id (a short prefix of it).
        api: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// What the caller needs to know of a run, fixed when it is requested.
#[derive(Debug, PartialEq, Eq)]
pub struct RunFacts {
    /// The provider synced.
    pub provider: String,
    /// Its kind (`tyk`, `aws`, ...).
    pub provider_type: String,
    /// Trace context of the request that started it.
    pub traceparent: Option<String>,
}

/// One run requested on the stream. Deliberately not `Clone`: it holds
/// every API id the run sent.
#[derive(Debug)]
struct Run {
    facts: Arc<RunFacts>,
    started: bool,
    /// The provider ids of the APIs accepted so far.
    sent: HashSet<String>,
}

/// The runs of one sync stream.
#[derive(Debug, Default)]
pub struct Runs {
    runs: HashMap<RunId, Run>,
}

/// The longest part of agent input an error message quotes.
const QUOTED: usize = 64;

/// At most the first [`QUOTED`] bytes of `text` (on a character boundary),
/// marked when cut: error messages never echo a whole hostile input.
pub fn quote(text: &str) -> String {
    if text.len() <= QUOTED {
        return text.to_owned();
    }
    let mut end = QUOTED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

impl Runs {
    /// The hub asked the agent for a run of `provider`.
    pub fn request(
        &mut self,
        run_id: RunId,
        provider: &str,
        provider_type: &str,
        traceparent: Option<String>,
    ) {
        self.runs.insert(
            run_id,
            Run {
                facts: Arc::new(RunFacts {
                    provider: provider.to_owned(),
                    provider_type: provider_type.to_owned(),
                    traceparent,
                }),
                started: false,
                sent: HashSet::new(),
            },
        );
    }

    /// Forgets a request that never reached the agent.
    pub fn withdraw(&mut self, run_id: RunId) {
        self.runs.remove(&run_id);
    }

    /// Whether the run is open on this stream.
    pub fn is_open(&self, run_id: RunId) -> bool {
        self.runs.contains_key(&run_id)
    }

    /// Checks one message of the agent about `run_id` (naming `provider`);
    /// APIs over `max_api_bytes` are refused. Returns what it means and the
    /// run's facts (for an ending step, the run is forgotten).
    pub fn accept(
        &mut self,
        run_id: RunId,
        provider: &str,
        message: Message,
        max_api_bytes: usize,
    ) -> Result<(Step, Arc<RunFacts>), ProtocolError> {
        let run = self
            .runs
            .get_mut(&run_id)
            .ok_or(ProtocolError::NotRequested(run_id))?;
        if provider != run.facts.provider {
            return Err(ProtocolError::WrongProvider {
                run: run_id,
                expected: run.facts.provider.clone(),
                got: quote(provider),
            });
        }
        let step = match message {
            Message::Empty => return Err(ProtocolError::Empty),
            Message::Started if run.started => return Err(ProtocolError::StartedTwice(run_id)),
            Message::Started => {
                run.started = true;
                Step::Started
            }
            Message::Api { .. } if !run.started => {
                return Err(ProtocolError::ApiBeforeStarted(run_id));
            }
            Message::Api {
                provider_api_id,
                size,
            } => {
                if size > max_api_bytes {
                    return Err(ProtocolError::TooLarge {
                        api: quote(&provider_api_id),
                        size,
                        limit: max_api_bytes,
                    });
                }
                if provider_api_id.is_empty() {
                    return Err(ProtocolError::EmptyApiId);
                }
                if run.sent.insert(provider_api_id) {
                    Step::Api {
                        number: run.sent.len() as u64 - 1,
                    }
                } else {
                    Step::Duplicate
                }
            }
            Message::Completed { .. } if !run.started => {
                return Err(ProtocolError::CompletedBeforeStarted(run_id));
            }
            Message::Completed { count } => Step::Ended(End::Completed { count }),
            Message::Failed { reason } => Step::Ended(End::Failed {
                reason: if reason.trim().is_empty() {
                    "agent reported failure".to_owned()
                } else {
                    reason
                },
            }),
        };
        let facts = Arc::clone(&run.facts);
        if matches!(step, Step::Ended(_)) {
            self.runs.remove(&run_id);
        }
        Ok((step, facts))
    }

    /// The stream ended: every run is forgotten, and those the agent had
    /// started are returned, to be failed with the reason.
    pub fn close(&mut self) -> Vec<(RunId, Arc<RunFacts>)> {
        self.runs
            .drain()
            .filter(|(_, run)| run.started)
            .map(|(id, run)| (id, run.facts))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const LIMIT: usize = 1000;

    fn run_id(n: u128) -> RunId {
        RunId(Uuid::from_u128(n))
    }

    fn api(id: &str) -> Message {
        Message::Api {
            provider_api_id: id.into(),
            size: 10,
        }
    }

    /// A stream with run 1 of provider `p` requested.
    fn requested() -> Runs {
        let mut runs = Runs::default();
        runs.request(run_id(1), "p", "tyk", Some("tp".into()));
        runs
    }

    /// given(runs).when(message) -> step or refusal
    fn when(runs: &mut Runs, message: Message) -> Result<Step, ProtocolError> {
        runs.accept(run_id(1), "p", message, LIMIT).map(|(s, _)| s)
    }

    fn started() -> Runs {
        let mut runs = requested();
        assert_eq!(when(&mut runs, Message::Started), Ok(Step::Started));
        runs
    }

    #[test]
    fn a_run_goes_started_apis_completed_and_is_forgotten() {
        let mut runs = started();
        assert_eq!(when(&mut runs, api("a")), Ok(Step::Api { number: 0 }));
        assert_eq!(when(&mut runs, api("b")), Ok(Step::Api { number: 1 }));
        let (step, run) = runs
            .accept(run_id(1), "p", Message::Completed { count: 2 }, LIMIT)
            .unwrap();
        assert_eq!(step, Step::Ended(End::Completed { count: 2 }));
        assert_eq!(
            (run.provider.as_str(), run.provider_type.as_str()),
            ("p", "tyk")
        );
        assert_eq!(run.traceparent.as_deref(), Some("tp"));
        assert!(!runs.is_open(run_id(1)));
        assert_eq!(
            when(&mut runs, api("c")),
            Err(ProtocolError::NotRequested(run_id(1))),
            "a message after the end"
        );
    }

    #[test]
    fn started_twice_is_refused() {
        let mut runs = started();
        assert_eq!(
            when(&mut runs, Message::Started),
            Err(ProtocolError::StartedTwice(run_id(1)))
        );
    }

    #[test]
    fn an_api_before_started_is_refused() {
        let mut runs = requested();
        assert_eq!(
            when(&mut runs, api("a")),
            Err(ProtocolError::ApiBeforeStarted(run_id(1)))
        );
    }

    #[test]
    fn completed_before_started_is_refused_but_failed_is_not() {
        let mut runs = requested();
        assert_eq!(
            when(&mut runs, Message::Completed { count: 0 }),
            Err(ProtocolError::CompletedBeforeStarted(run_id(1)))
        );
        assert_eq!(
            when(
                &mut runs,
                Message::Failed {
                    reason: "down".into()
                }
            ),
            Ok(Step::Ended(End::Failed {
                reason: "down".into()
            }))
        );
    }

    #[test]
    fn a_blank_failure_reason_is_named() {
        let mut runs = started();
        assert_eq!(
            when(&mut runs, Message::Failed { reason: " ".into() }),
            Ok(Step::Ended(End::Failed {
                reason: "agent reported failure".into()
            }))
        );
    }

    #[test]
    fn an_api_sent_twice_is_dropped_and_does_not_count() {
        let mut runs = started();
        assert_eq!(when(&mut runs, api("a")), Ok(Step::Api { number: 0 }));
        assert_eq!(when(&mut runs, api("a")), Ok(Step::Duplicate));
        assert_eq!(when(&mut runs, api("b")), Ok(Step::Api { number: 1 }));
    }

    #[test]
    fn an_api_over_the_limit_or_without_id_is_refused() {
        let mut runs = started();
        let big = Message::Api {
            provider_api_id: "x".repeat(100),
            size: LIMIT + 1,
        };
        match when(&mut runs, big) {
            Err(ProtocolError::TooLarge { api, size, limit }) => {
                assert_eq!((size, limit), (LIMIT + 1, LIMIT));
                assert!(api.len() < 90, "quoted whole: {api}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(when(&mut runs, api("")), Err(ProtocolError::EmptyApiId));
        let exactly = Message::Api {
            provider_api_id: "e".into(),
            size: LIMIT,
        };
        assert_eq!(when(&mut runs, exactly), Ok(Step::Api { number: 0 }));
    }

    #[test]
    fn another_provider_or_an_unknown_run_is_refused() {
        let mut runs = started();
        assert!(matches!(
            runs.accept(run_id(1), "q", api("a"), LIMIT),
            Err(ProtocolError::WrongProvider { .. })
        ));
        assert_eq!(
            runs.accept(run_id(2), "p", Message::Started, LIMIT)
                .map(|(s, _)| s),
            Err(ProtocolError::NotRequested(run_id(2)))
        );
        assert_eq!(when(&mut runs, Message::Empty), Err(ProtocolError::Empty));
    }

    #[test]
    fn closing_fails_only_the_runs_that_started() {
        let mut runs = started();
        runs.request(run_id(2), "q", "aws", None);
        runs.request(run_id(3), "r", "aws", None);
        runs.withdraw(run_id(3));
        let open = runs.close();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].0, run_id(1));
        assert!(runs.close().is_empty(), "every run is forgotten");
    }

    #[test]
    fn quotes_keep_a_short_prefix_on_a_character_boundary() {
        assert_eq!(quote("short"), "short");
        let long = "é".repeat(100);
        let q = quote(&long);
        assert!(q.starts_with(&"é".repeat(32)), "{q}");
        assert!(q.ends_with("(200 bytes)"), "{q}");
    }
}
