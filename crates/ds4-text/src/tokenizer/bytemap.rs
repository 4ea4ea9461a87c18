//! GPT-2 byte <-> unicode table (SERVING.md §1.3).
//!
//! Vocab and merge strings are stored in this "mapped" alphabet so that every byte is a
//! printable code point. Bytes 0x21-0x7E, 0xA1-0xAC and 0xAE-0xFF map to themselves; the other 68
//! bytes map to U+0100.. in increasing byte order.

const fn is_self_mapped(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

const fn build_byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    let mut b = 0usize;
    while b < 256 {
        if is_self_mapped(b as u8) {
            table[b] = match char::from_u32(b as u32) {
                Some(c) => c,
                None => '\0',
            };
        } else {
            table[b] = match char::from_u32(next) {
                Some(c) => c,
                None => '\0',
            };
            next += 1;
        }
        b += 1;
    }
    table
}

/// `BYTE_TO_CHAR[b]` is the mapped code point of byte `b`.
pub const BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

/// Inverse of [`BYTE_TO_CHAR`]: the byte a mapped code point stands for, if any.
#[inline]
pub fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 0x100 {
        let b = cp as u8;
        is_self_mapped(b).then_some(b)
    } else if cp < 0x144 {
        // The 68 remapped bytes, in increasing order.
        let idx = (cp - 0x100) as usize;
        REMAPPED[idx].into()
    } else {
        None
    }
}

const fn build_remapped() -> [u8; 68] {
    let mut out = [0u8; 68];
    let mut n = 0;
    let mut b = 0usize;
    while b < 256 {
        if !is_self_mapped(b as u8) {
            out[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    out
}

const REMAPPED: [u8; 68] = build_remapped();

/// Maps every code point of a vocab string back to its byte. `None` if some code point is not
/// in the byte alphabet (the string is then not a byte-level BPE token).
pub fn unmap_str(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

/// Maps raw bytes into the byte-level alphabet.
pub fn map_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_spec_examples() {
        assert_eq!(BYTE_TO_CHAR[b'\t' as usize], '\u{109}');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], '\u{10A}');
        assert_eq!(BYTE_TO_CHAR[b'\r' as usize], '\u{10D}');
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], '\u{120}');
        assert_eq!(BYTE_TO_CHAR[0x7F], '\u{121}');
        assert_eq!(BYTE_TO_CHAR[0xAD], '\u{143}');
        assert_eq!(BYTE_TO_CHAR[b'A' as usize], 'A');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte(' '), None);
    }
}
