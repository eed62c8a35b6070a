//! Lower-case hex, for the ids, hashes, nonces and sealed values services
//! write as text.

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The bytes of hex text (either case); `None` when it is not hex.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(encode(&[0, 0xab, 0x10, 0xff]), "00ab10ff");
        assert_eq!(decode("00AB10ff").unwrap(), [0, 0xab, 0x10, 0xff]);
        assert_eq!(decode(&encode(b"meridian")).unwrap(), b"meridian");
        for bad in ["abc", "zz", "é0"] {
            assert!(decode(bad).is_none(), "{bad:?}");
        }
    }
}
