//! What a projection's tree keeps besides its state: the checkpoint (the
//! last stream sequence applied), the layout version (a tree in another
//! layout is replayed), and the digest that compares two trees.

use sha2::{Digest, Sha256};

use crate::store::{StoreError, Tree};

/// Key of the checkpoint inside a projection's tree. Keys starting with
/// `0xff 0xff` are bookkeeping and excluded from [`digest`].
pub const CHECKPOINT_KEY: &[u8] = b"\xff\xffcheckpoint";
const META_PREFIX: &[u8] = b"\xff\xff";

/// Key of the layout version of a projection's tree (bookkeeping).
pub const FORMAT_KEY: &[u8] = b"\xff\xffformat";

/// Makes sure `tree` holds state in layout `version`. A tree written in
/// another layout (or before layouts were versioned) is a cache the log can
/// rebuild, so it is cleared and its projection replays from sequence 1.
/// Returns the layout found when it cleared the tree (0: unversioned).
pub fn ensure_format(tree: &Tree, version: u32) -> Result<Option<u32>, StoreError> {
    let found = tree
        .get(FORMAT_KEY)?
        .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
        .map(u32::from_be_bytes);
    if found == Some(version) {
        return Ok(None);
    }
    let replaced = if tree.is_empty()? {
        None
    } else {
        tree.clear()?;
        Some(found.unwrap_or(0))
    };
    tree.insert(FORMAT_KEY, version.to_be_bytes())?;
    Ok(replaced)
}

/// The checkpoint stored in `tree` (0 when none).
pub fn read_checkpoint(tree: &Tree) -> Result<u64, StoreError> {
    Ok(tree
        .get(CHECKPOINT_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// SHA-256 over every key and value of the tree except bookkeeping, hex. Two
/// trees with the same digest hold the same projection.
pub fn digest(tree: &Tree) -> Result<String, StoreError> {
    let mut hasher = Sha256::new();
    for entry in tree.iter() {
        let (k, v) = entry?;
        if k.starts_with(META_PREFIX) {
            continue;
        }
        hasher.update((k.len() as u64).to_be_bytes());
        hasher.update(&k);
        hasher.update((v.len() as u64).to_be_bytes());
        hasher.update(&v);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_in_another_layout_is_cleared_for_a_replay() {
        let db = crate::store::Db::temporary().unwrap();
        let tree = db.open_tree("t").unwrap();
        assert_eq!(ensure_format(&tree, 2).unwrap(), None, "empty: just marked");
        tree.insert(b"a1", b"x").unwrap();
        tree.insert(CHECKPOINT_KEY, 7u64.to_be_bytes()).unwrap();
        assert_eq!(ensure_format(&tree, 2).unwrap(), None, "same layout: kept");
        assert_eq!(read_checkpoint(&tree).unwrap(), 7);

        assert_eq!(ensure_format(&tree, 3).unwrap(), Some(2));
        assert_eq!(read_checkpoint(&tree).unwrap(), 0, "replays from the start");
        assert!(tree.get(b"a1").unwrap().is_none());
        assert_eq!(ensure_format(&tree, 3).unwrap(), None);

        tree.remove(FORMAT_KEY).unwrap();
        tree.insert(b"a1", b"x").unwrap();
        assert_eq!(ensure_format(&tree, 3).unwrap(), Some(0), "unversioned");
        assert_eq!(tree.len().unwrap(), 1, "only the layout mark is left");
    }
}
