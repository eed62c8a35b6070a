//! Applying a run of events to a tree as one atomic batch with its
//! checkpoint, and reading the lists [`Ctx::append`] builds.

use super::{
    CHECKPOINT_KEY, Ctx, Projection, ProjectionError, Scanned, StoredEvent, read_checkpoint,
};
use crate::store::Tree;

/// Applies events in order, one atomic batch per run of events between
/// barriers, each committing its last sequence as the checkpoint. Events at or
/// below the stored checkpoint are skipped. Synchronous: call it off the async
/// runtime. The runner uses it; so do tests that drive a projection directly.
pub fn apply_events<P: Projection>(
    tree: &Tree,
    projection: &P,
    id: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let checkpoint = read_checkpoint(tree).map_err(|source| ProjectionError::Storage {
        id: id.to_owned(),
        source,
    })?;
    let fresh: Vec<&StoredEvent> = events.iter().filter(|e| e.seq > checkpoint).collect();
    let mut start = 0;
    while start < fresh.len() {
        let mut end = start + 1;
        while end < fresh.len() && !projection.is_barrier(fresh[end]) {
            end += 1;
        }
        apply_batch(tree, projection, id, &fresh[start..end])?;
        start = end;
    }
    Ok(())
}

fn apply_batch<P: Projection>(
    tree: &Tree,
    projection: &P,
    id: &str,
    events: &[&StoredEvent],
) -> Result<(), ProjectionError> {
    let newest = events.last().map_or(0, |e| e.seq);
    let poison = |seq, source: P::Error| ProjectionError::Poison {
        id: id.to_owned(),
        seq,
        source: source.into(),
    };
    if let Some(first) = events.first() {
        projection.prepare(tree).map_err(|m| poison(first.seq, m))?;
    }
    let scanned = match events.first() {
        Some(first) if projection.is_barrier(first) => projection
            .scan(tree, first)
            .map_err(|m| poison(first.seq, m))?,
        _ => Scanned::new(),
    };
    let no_scan = Scanned::new();
    let mut ctx = Ctx::new(tree, &scanned, events.first().map_or(0, |e| e.seq));
    for (i, event) in events.iter().enumerate() {
        if i == 1 {
            ctx.scanned = &no_scan;
        }
        projection
            .apply(&mut ctx, event)
            .map_err(|m| poison(event.seq, m))?;
    }
    projection.finish(&mut ctx).map_err(|m| poison(newest, m))?;
    let mut batch = tree.batch();
    for (key, value) in ctx.writes {
        match value {
            Some(v) => batch.insert(key, v),
            None => batch.remove(key),
        }
    }
    for (key, value) in ctx.appends {
        batch.insert(key, value);
    }
    batch.insert(CHECKPOINT_KEY, newest.to_be_bytes());
    tree.apply(batch)
        .map_err(|source| ProjectionError::Storage {
            id: id.to_owned(),
            source,
        })
}

/// A list built by [`Ctx::append`] ends in the middle of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("truncated item list")]
pub struct CorruptList;

/// The items of a value built by [`Ctx::append`], in the order appended.
pub fn items(value: &[u8]) -> impl Iterator<Item = Result<&[u8], CorruptList>> {
    let mut rest = value;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let item = rest
            .split_first_chunk::<4>()
            .map(|(len, tail)| (u32::from_be_bytes(*len) as usize, tail))
            .filter(|(len, tail)| *len <= tail.len())
            .map(|(len, tail)| tail.split_at(len));
        match item {
            Some((item, tail)) => {
                rest = tail;
                Some(Ok(item))
            }
            None => {
                rest = &[];
                Some(Err(CorruptList))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_schemas::Envelope;

    /// Appends each event's subject to one key, and its sequence to a key
    /// per batch.
    struct Appender;

    impl Projection for Appender {
        type Error = crate::store::StoreError;

        fn apply(&self, ctx: &mut Ctx<'_>, event: &StoredEvent) -> Result<(), Self::Error> {
            let per_batch = [b"batch/".as_slice(), &ctx.batch_start().to_be_bytes()].concat();
            ctx.append(per_batch, &event.seq.to_be_bytes())?;
            ctx.append(b"all".to_vec(), event.subject.as_bytes())
        }
    }

    fn event(seq: u64) -> StoredEvent {
        StoredEvent {
            seq,
            subject: format!("s{seq}"),
            envelope: Envelope {
                event_id: uuid::Uuid::nil(),
                event_type: "test".into(),
                schema_version: 1,
                occurred_at_ms: 0,
                causation_id: None,
                correlation_id: None,
                traceparent: None,
                payload: Vec::new(),
            },
        }
    }

    #[test]
    fn appended_items_accumulate_per_key_across_batches_once_each() {
        let db = crate::store::Db::temporary().unwrap();
        let tree = db.open_tree("t").unwrap();
        let events: Vec<StoredEvent> = (1..=5).map(event).collect();
        apply_events(&tree, &Appender, "t", &events[..3]).unwrap();
        apply_events(&tree, &Appender, "t", &events[1..]).unwrap(); // 2 and 3 again
        let all = tree.get(b"all").unwrap().unwrap();
        let subjects: Vec<&[u8]> = items(&all).collect::<Result<_, _>>().unwrap();
        assert_eq!(subjects, [&b"s1"[..], b"s2", b"s3", b"s4", b"s5"]);
        let batches: Vec<(Vec<u8>, Vec<u64>)> = tree
            .scan_prefix(b"batch/")
            .map(|e| {
                let (k, v) = e.unwrap();
                let seqs = items(&v)
                    .map(|i| u64::from_be_bytes(i.unwrap().try_into().unwrap()))
                    .collect();
                (k[6..].to_vec(), seqs)
            })
            .collect();
        assert_eq!(
            batches,
            [
                (1u64.to_be_bytes().to_vec(), vec![1, 2, 3]),
                (4u64.to_be_bytes().to_vec(), vec![4, 5]),
            ]
        );
        assert!(
            items(&[0, 0, 0, 9, 1]).next().unwrap().is_err(),
            "truncated"
        );
    }
}
