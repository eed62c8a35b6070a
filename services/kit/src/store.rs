//! Local state on disk, behind one small façade so the engine can change
//! without touching the services (see `../shared/DEPENDENCIES.md`).
//!
//! The engine is fjall, a log-structured store: a write goes to a journal and
//! an in-memory table, so a batch of random keys costs a few microseconds a
//! key where sled 0.34 copied a tree node per key (the spine benchmark and
//! `loadtest` measured about 3.7 times the write rate). Every state a
//! service keeps here is a cache of the event log: a [`Batch`] commits
//! atomically (state and checkpoint together) and reaches the operating
//! system before [`Tree::apply`] returns, so a crashed process loses nothing
//! it committed; [`Db::flush`] makes it durable against power loss, and a
//! tail lost anyway is replayed from the log.

use std::path::Path;

/// A stored key or value: cheap to clone, derefs to bytes.
pub type Value = fjall::Slice;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the directory.
    #[error("the directory is in use by another process")]
    Locked,
    /// Reading or writing files.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The engine reported something else.
    #[error("storage engine: {0:?}")]
    Engine(fjall::Error),
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        match e {
            fjall::Error::Locked => Self::Locked,
            fjall::Error::Io(e) => Self::Io(e),
            e => Self::Engine(e),
        }
    }
}

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Files an older Meridian (sled) left in a data directory.
const SLED_FILES: &[&str] = &["conf", "db", "blobs"];

/// A database: a directory holding named trees.
#[derive(Clone)]
pub struct Db {
    inner: fjall::Database,
}

impl Db {
    /// Opens (or creates) the database in `path`. A repository written by
    /// the older engine (sled) is removed first: it is a cache of the log,
    /// and its projections replay into the new one.
    pub fn open(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        remove_sled_files(path)?;
        let inner = fjall::Database::builder(path).cache_size(64 << 20).open()?;
        Ok(Self { inner })
    }

    /// A throw-away database in a fresh temporary directory, deleted when
    /// the last handle goes: for state rebuilt at every start.
    pub fn temporary() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("meridian-{}", uuid::Uuid::new_v4()));
        let inner = fjall::Database::builder(&path)
            .cache_size(8 << 20)
            .temporary(true)
            .open()?;
        Ok(Self { inner })
    }

    /// Opens (or creates) the tree `name` (1 to 255 bytes).
    pub fn open_tree(&self, name: &str) -> Result<Tree> {
        let keyspace = self
            .inner
            .keyspace(name, fjall::KeyspaceCreateOptions::default)?;
        Ok(Tree {
            db: self.inner.clone(),
            keyspace,
        })
    }

    /// Makes everything committed durable (fsync).
    pub fn flush(&self) -> Result<()> {
        Ok(self.inner.persist(fjall::PersistMode::SyncAll)?)
    }
}

fn remove_sled_files(path: &Path) -> Result<()> {
    if !path.join("conf").is_file() || !path.join("db").is_file() {
        return Ok(());
    }
    tracing::warn!(
        path = %path.display(),
        "removing a repository written by an older Meridian (sled); it is replayed from the log"
    );
    for name in SLED_FILES {
        let file = path.join(name);
        if file.is_dir() {
            std::fs::remove_dir_all(&file)?;
        } else if file.exists() {
            std::fs::remove_file(&file)?;
        }
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// An ordered map of byte keys to byte values.
#[derive(Clone)]
pub struct Tree {
    db: fjall::Database,
    keyspace: fjall::Keyspace,
}

impl Tree {
    /// The value at `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Value>> {
        Ok(self.keyspace.get(key)?)
    }

    /// Sets one key (a batch of one).
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = self.batch();
        batch.insert(key.as_ref(), value.as_ref());
        self.apply(batch)
    }

    /// Removes one key (a batch of one).
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = self.batch();
        batch.remove(key.as_ref());
        self.apply(batch)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Value, Value)>> + use<> {
        self.keyspace
            .prefix(prefix)
            .map(|guard| guard.into_inner().map_err(StoreError::from))
    }

    /// Every key that starts with `prefix`, in order (values are not read).
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = Result<Value>> + use<> {
        self.keyspace
            .prefix(prefix)
            .map(|guard| guard.key().map_err(StoreError::from))
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Value, Value)>> + use<> {
        self.keyspace
            .iter()
            .map(|guard| guard.into_inner().map_err(StoreError::from))
    }

    /// Whether the tree holds nothing.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.keyspace.is_empty()?)
    }

    /// How many entries it holds (counts them).
    pub fn len(&self) -> Result<usize> {
        Ok(self.keyspace.len()?)
    }

    /// Removes everything.
    pub fn clear(&self) -> Result<()> {
        Ok(self.keyspace.clear()?)
    }

    /// An empty batch for this tree.
    pub fn batch(&self) -> Batch {
        Batch {
            inner: self.db.batch(),
            keyspace: self.keyspace.clone(),
        }
    }

    /// Commits `batch` atomically: all of it or nothing, handed to the
    /// operating system before this returns.
    pub fn apply(&self, batch: Batch) -> Result<()> {
        Ok(batch.inner.commit()?)
    }

    /// Makes everything committed durable (fsync).
    pub fn flush(&self) -> Result<()> {
        Ok(self.db.persist(fjall::PersistMode::SyncAll)?)
    }
}

/// Writes committed together by [`Tree::apply`].
pub struct Batch {
    inner: fjall::OwnedWriteBatch,
    keyspace: fjall::Keyspace,
}

impl Batch {
    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: impl Into<Value>, value: impl Into<Value>) {
        self.inner.insert(&self.keyspace, key.into(), value.into());
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: impl Into<Value>) {
        self.inner.remove(&self.keyspace, key.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_commits_whole_and_prefix_scans_are_ordered() {
        let db = Db::temporary().unwrap();
        let tree = db.open_tree("t").unwrap();
        assert!(tree.is_empty().unwrap());
        let mut batch = tree.batch();
        batch.insert(&b"b2"[..], &b"two"[..]);
        batch.insert(&b"b1"[..], &b"one"[..]);
        batch.insert(&b"c"[..], &b"x"[..]);
        tree.apply(batch).unwrap();
        tree.remove(b"c").unwrap();
        let scanned: Vec<(Vec<u8>, Vec<u8>)> = tree
            .scan_prefix(b"b")
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        assert_eq!(
            scanned,
            [
                (b"b1".to_vec(), b"one".to_vec()),
                (b"b2".to_vec(), b"two".to_vec())
            ]
        );
        assert_eq!(tree.get(b"c").unwrap(), None);
        assert_eq!(tree.len().unwrap(), 2);
        tree.clear().unwrap();
        assert!(tree.is_empty().unwrap());
    }

    #[test]
    fn reopening_keeps_what_was_committed_and_a_second_opener_is_refused() {
        let dir = std::env::temp_dir().join(format!("meridian-store-{}", uuid::Uuid::new_v4()));
        {
            let db = Db::open(&dir).unwrap();
            db.open_tree("t").unwrap().insert(b"k", b"v").unwrap();
            assert!(
                matches!(Db::open(&dir), Err(StoreError::Locked)),
                "a second process (or handle) must not share the directory"
            );
        }
        let db = Db::open(&dir).unwrap();
        assert_eq!(
            db.open_tree("t").unwrap().get(b"k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_of_the_older_engine_are_replaced() {
        let dir = std::env::temp_dir().join(format!("meridian-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        for name in ["conf", "db", "snap.00000000000012A0"] {
            std::fs::write(dir.join(name), b"sled").unwrap();
        }
        let db = Db::open(&dir).unwrap();
        db.open_tree("t").unwrap().insert(b"k", b"v").unwrap();
        for name in ["conf", "db", "blobs", "snap.00000000000012A0"] {
            assert!(!dir.join(name).exists(), "{name} is left");
        }
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
