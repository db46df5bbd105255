//! Finding the first of a few bytes in short texts (an event's strings, a row's values),
//! eight bytes at a time: they are too short for a vector search to pay for its set-up,
//! and a byte at a time is several times slower.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` below `n` (exact for the lowest such byte, which is
/// the one taken; a borrow may mark bytes above it).
fn under(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH
}

/// The index of the first byte at or after `from` that is one of `needles` or below
/// `below` (0: none is), or `bytes.len()`.
#[inline]
pub fn first_of<const N: usize>(bytes: &[u8], from: usize, needles: [u8; N], below: u8) -> usize {
    let mut at = from;
    while let Some(chunk) = bytes.get(at..).and_then(|rest| rest.first_chunk::<8>()) {
        let w = u64::from_le_bytes(*chunk);
        let mut found = under(w, below);
        for needle in needles {
            found |= under(w ^ (ONES * u64::from(needle)), 1);
        }
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let special = |b: &u8| *b < below || needles.contains(b);
    bytes[at.min(bytes.len())..]
        .iter()
        .position(special)
        .map_or(bytes.len(), |i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_needle_or_control_byte_is_found_in_words_and_in_the_tail() {
        let string = |bytes: &[u8], from| first_of(bytes, from, [b'"', b'\\'], 0x20);
        let text = b"0123456789abcdef\"x";
        assert_eq!(string(text, 0), 16);
        assert_eq!(string(text, 3), 16);
        assert_eq!(string(b"abc", 0), 3);
        assert_eq!(string(b"abc", 5), 3);
        for (i, special) in [b'"', b'\\', b'\n', 0u8, 0x1f].into_iter().enumerate() {
            let mut bytes = "é plain text, long enough for words "
                .repeat(3)
                .into_bytes();
            let at = 5 + 7 * i;
            bytes[at] = special;
            assert_eq!(string(&bytes, 0), at, "{special}");
            // In the tail, past the last whole word.
            let tail = bytes.len() - 3;
            bytes[tail] = special;
            assert_eq!(string(&bytes, at + 1), tail, "{special}");
        }
        assert_eq!(string("\u{7f}\u{80}é~ ".as_bytes(), 0), 7);
        // Without a lower bound, control characters are plain.
        let copy = |bytes: &[u8]| first_of(bytes, 0, [b'\\', b'\t', b'\n', b'\r'], 0);
        let plain = b"\x01\x02 no escapes here at all";
        assert_eq!(copy(plain), plain.len());
        assert_eq!(copy(b"twelve chars\rx"), 12);
    }
}
