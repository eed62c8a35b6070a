//! The one normalised path of a request, computed once before any routing
//! or access decision; routing, version detection, `allowed_urls` and the
//! path sent upstream all read it, so what is checked is what is forwarded.
//!
//! The rules (documented in docs/gateway.md):
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded, once; every other escape is kept, its hex upper-cased
//!   (RFC 3986 section 6.2.2), so `%2e%2E` is `..` but `%252e` stays
//!   `%252E`;
//! - runs of `/` are merged (as nginx and Go's `path.Clean` do);
//! - dot segments are removed (RFC 3986 section 5.2.4), never above the
//!   root;
//! - refused (400): a path that does not start with `/`, a malformed
//!   escape, a backslash (some upstreams read it as a separator), and a
//!   segment that would be a dot segment once an encoded separator (`%2F`,
//!   `%5C`) is decoded or a `;` parameter cut off (`..%2F`, `..;`): those
//!   are the forms upstreams disagree on. Other encoded slashes are kept
//!   encoded and never treated as separators.
//!
//! Pure; a path with nothing to normalise is returned as it is, without
//! allocating.

use std::borrow::Cow;

/// Why a path cannot be normalised (answered 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathRefusal {
    /// Not an absolute path (`*`, or an empty one).
    #[error("the request path must start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("the request path has a malformed percent-encoding")]
    BadEscape,
    /// A literal backslash.
    #[error("the request path must not contain a backslash")]
    Backslash,
    /// A dot segment hidden behind an encoded separator or a `;`.
    #[error("the request path has a dot segment behind an encoded separator or a ';'")]
    HiddenDotSegment,
}

/// Whether `raw` needs no work: no escapes, backslashes, empty or dot
/// segments. The common case, checked in one pass.
fn already_normal(raw: &[u8]) -> bool {
    let mut previous = 0u8;
    for &b in raw {
        match b {
            b'%' | b'\\' => return false,
            b'/' | b'.' if previous == b'/' => return false,
            _ => {}
        }
        previous = b;
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escaped unreserved characters and upper-cases the other escapes.
fn decode_unreserved(raw: &str) -> Result<String, PathRefusal> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathRefusal::Backslash),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathRefusal::BadEscape);
                };
                let decoded = hi << 4 | lo;
                if unreserved(decoded) {
                    out.push(char::from(decoded));
                } else {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(hi)]));
                    out.push(char::from(HEX[usize::from(lo)]));
                }
                i += 3;
            }
            b => {
                // A URI path is ASCII (hyper refuses anything else).
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    Ok(out)
}

fn is_dot(s: &str) -> bool {
    s == "." || s == ".."
}

/// Whether a segment would read as a dot segment to an upstream that
/// decodes `%2F`/`%5C` into separators or cuts `;` parameters off.
fn hides_dot_segment(segment: &str) -> bool {
    segment
        .split("%2F")
        .flat_map(|piece| piece.split("%5C"))
        .any(|piece| is_dot(piece.split(';').next().unwrap_or(piece)))
}

/// The normalised form of a request path (see the module docs).
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathRefusal> {
    if !raw.starts_with('/') {
        return Err(PathRefusal::NotAbsolute);
    }
    if already_normal(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(raw)?;
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                kept.pop();
                trailing_slash = true;
            }
            s if hides_dot_segment(s) => return Err(PathRefusal::HiddenDotSegment),
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(raw: &str) -> Result<String, PathRefusal> {
        normalize(raw).map(Cow::into_owned)
    }

    #[test]
    fn a_plain_path_is_returned_without_allocating() {
        for raw in ["/", "/pets", "/pets/", "/pets/1.json", "/a-b_c~d/e.f"] {
            assert!(
                matches!(normalize(raw), Ok(Cow::Borrowed(p)) if p == raw),
                "{raw}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed_in_every_spelling() {
        for raw in [
            "/open/../keyed-up/x",
            "/open/%2e%2e/keyed-up/x",
            "/open/%2E%2E/keyed-up/x",
            "/open/.%2e/keyed-up/x",
            "/open/%2e./keyed-up/x",
            "/open/./../keyed-up/x",
            "/open//../keyed-up/x",
            "/open/a/../../keyed-up/./x",
            "/../../keyed-up/x",
        ] {
            assert_eq!(n(raw).as_deref(), Ok("/keyed-up/x"), "{raw}");
        }
    }

    #[test]
    fn trailing_slashes_and_the_root_follow_rfc_3986() {
        assert_eq!(n("/pets/."), Ok("/pets/".into()));
        assert_eq!(n("/pets/.."), Ok("/".into()));
        assert_eq!(n("/pets/1/.."), Ok("/pets/".into()));
        assert_eq!(n("/.."), Ok("/".into()));
        assert_eq!(n("//"), Ok("/".into()));
        assert_eq!(n("/a//b///"), Ok("/a/b/".into()));
        assert_eq!(n("/.well-known/x"), Ok("/.well-known/x".into()));
        assert_eq!(n("/a/..b/c."), Ok("/a/..b/c.".into()));
    }

    #[test]
    fn unreserved_escapes_are_decoded_once_and_the_others_kept_upper_case() {
        assert_eq!(n("/%41%7e%2d"), Ok("/A~-".into()));
        assert_eq!(
            n("/a%2fb"),
            Ok("/a%2Fb".into()),
            "an encoded slash is not a separator"
        );
        assert_eq!(n("/a%20b"), Ok("/a%20b".into()));
        assert_eq!(
            n("/%252e%252e/x"),
            Ok("/%252e%252e/x".into()),
            "decoded once"
        );
        assert_eq!(n("/caf%C3%A9"), Ok("/caf%C3%A9".into()));
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        assert_eq!(n("*"), Err(PathRefusal::NotAbsolute));
        assert_eq!(n(""), Err(PathRefusal::NotAbsolute));
        assert_eq!(n("/a%2"), Err(PathRefusal::BadEscape));
        assert_eq!(n("/a%zz"), Err(PathRefusal::BadEscape));
        assert_eq!(n("/a\\..\\b"), Err(PathRefusal::Backslash));
        for raw in [
            "/open/..%2fkeyed-up/x",
            "/open/..%2Fkeyed-up",
            "/open/%2e%2e%2fkeyed-up",
            "/open/..%5ckeyed-up",
            "/open/..;/keyed-up/x",
            "/open/.;x/keyed-up",
            "/open/a%2F..%2Fb",
        ] {
            assert_eq!(n(raw), Err(PathRefusal::HiddenDotSegment), "{raw}");
        }
        assert_eq!(
            n("/a;b=../c"),
            Ok("/a;b=../c".into()),
            "a parameter is not a segment"
        );
    }

    proptest! {
        /// Normalising twice changes nothing, and what comes out has no dot
        /// segment and no empty segment but a trailing one.
        #[test]
        fn normal_forms_are_stable_and_clean(raw in "/[a-z./%2eEfF5cC;]{0,24}") {
            if let Ok(once) = normalize(&raw) {
                let twice = normalize(&once).expect("a normal form normalises");
                prop_assert_eq!(&*twice, &*once);
                let inner = once.trim_end_matches('/');
                for segment in inner.split('/').skip(1) {
                    prop_assert!(!segment.is_empty() && !is_dot(segment), "{once}");
                }
            }
        }
    }
}
