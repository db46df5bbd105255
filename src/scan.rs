//! Finding the first of a few bytes in short texts (an event's strings, a row's values),
//! sixteen or eight bytes at a time: they are too short for a general vector search
//! (memchr's) to pay for its set-up, and a byte at a time is several times slower.

/// `bytes` as text, if they are UTF-8: the check every event's text gets before the
/// fast path reads it.
#[inline]
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    simdutf8::basic::from_utf8(bytes).ok()
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` below `n` (exact for the lowest such byte, which is
/// the one taken; a borrow may mark bytes above it).
fn under(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH
}

/// The index of the first byte at or after `from` that is one of `needles` or below
/// `below` (0: none is), or `bytes.len()`.
///
/// On x86-64, sixteen bytes at a time with SSE2 (part of every x86-64 CPU, so there is
/// nothing to detect): a compare per needle and one for the bound, no set-up beyond
/// the constants; the last fifteen bytes, and other CPUs, eight at a time.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
pub fn first_of<const N: usize>(bytes: &[u8], from: usize, needles: [u8; N], below: u8) -> usize {
    // SAFETY: the only requirement of `by_vectors` is SSE2, which this build's target
    // has (the `cfg` above).
    match unsafe { by_vectors(bytes, from, needles, below) } {
        Ok(found) => found,
        Err(rest) => first_of_by_words(bytes, rest, needles, below),
    }
}

/// [`first_of`] sixteen bytes at a time: the index of the first byte sought, or
/// (`Err`) that of the first of the last (fewer than 16) bytes left to look at.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
#[inline]
fn by_vectors<const N: usize>(
    bytes: &[u8],
    from: usize,
    needles: [u8; N],
    below: u8,
) -> Result<usize, usize> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_set_epi64x, _mm_setzero_si128,
    };
    let mut splat = [_mm_setzero_si128(); N];
    for (s, n) in splat.iter_mut().zip(needles) {
        *s = _mm_set1_epi8(n as i8);
    }
    // A byte is below `below` when it is at most `below - 1`: when the lesser of the two
    // is itself (an unsigned minimum; SSE2 compares only signed bytes).
    let bound = _mm_set1_epi8(below.wrapping_sub(1) as i8);
    let mut at = from;
    while let Some(chunk) = bytes.get(at..).and_then(|rest| rest.first_chunk::<16>()) {
        let word = u128::from_le_bytes(*chunk);
        let v: __m128i = _mm_set_epi64x((word >> 64) as i64, word as i64);
        let mut found = if below > 0 {
            _mm_cmpeq_epi8(_mm_min_epu8(v, bound), v)
        } else {
            _mm_setzero_si128()
        };
        for needle in splat {
            found = _mm_or_si128(found, _mm_cmpeq_epi8(v, needle));
        }
        let mask = _mm_movemask_epi8(found) as u32;
        if mask != 0 {
            return Ok(at + mask.trailing_zeros() as usize);
        }
        at += 16;
    }
    Err(at)
}

/// How many bytes of `bytes` are one of `needles`.
///
/// On x86-64, thirty-two bytes at a time with SSE2: a compare per needle, and a count
/// per byte lane (a match is -1, subtracted) summed every 127 steps, before a lane
/// could overflow; the last thirty-one bytes sixteen and then one at a time, and other
/// CPUs a byte at a time.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub fn count_of<const N: usize>(bytes: &[u8], needles: [u8; N]) -> usize {
    // SAFETY: the only requirement of `count_by_vectors` is SSE2, which this build's
    // target has (the `cfg` above).
    let (counted, rest) = unsafe { count_by_vectors(bytes, needles) };
    counted + count_by_bytes(&bytes[rest..], needles)
}

/// [`count_of`] by vectors: the count, and the index of the first of the last (fewer
/// than 16) bytes left to count.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
fn count_by_vectors<const N: usize>(bytes: &[u8], needles: [u8; N]) -> (usize, usize) {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi64, _mm_cmpeq_epi8, _mm_cvtsi128_si64, _mm_loadu_si128, _mm_or_si128,
        _mm_sad_epu8, _mm_set1_epi8, _mm_setzero_si128, _mm_srli_si128, _mm_sub_epi8,
    };
    let mut splat = [_mm_setzero_si128(); N];
    for (s, n) in splat.iter_mut().zip(needles) {
        *s = _mm_set1_epi8(n as i8);
    }
    let zero = _mm_setzero_si128();
    // -1 in each lane that holds one of the needles, of the sixteen bytes `block`.
    let found = |block: &[u8]| {
        // SAFETY: every caller passes sixteen bytes; an unaligned load needs no more.
        let v = unsafe { _mm_loadu_si128(block.as_ptr().cast::<__m128i>()) };
        let mut found = zero;
        for needle in splat {
            found = _mm_or_si128(found, _mm_cmpeq_epi8(v, needle));
        }
        found
    };
    let mut total = zero;
    let mut steps = bytes.chunks_exact(32);
    loop {
        // At most 127 steps of two blocks per round: each lane counts up to 254.
        let mut lanes = zero;
        let mut n = 0;
        for step in steps.by_ref().take(127) {
            let (a, b) = step.split_at(16);
            lanes = _mm_sub_epi8(lanes, found(a));
            lanes = _mm_sub_epi8(lanes, found(b));
            n += 1;
        }
        // The lanes' sum, in the two halves' low 16 bits.
        total = _mm_add_epi64(total, _mm_sad_epu8(lanes, zero));
        if n < 127 {
            break;
        }
    }
    let mut done = bytes.len() - bytes.len() % 32;
    if let Some(block) = bytes.get(done..done + 16) {
        total = _mm_add_epi64(total, _mm_sad_epu8(_mm_sub_epi8(zero, found(block)), zero));
        done += 16;
    }
    let sum = _mm_cvtsi128_si64(total) + _mm_cvtsi128_si64(_mm_srli_si128::<8>(total));
    // A count of bytes: never negative, never beyond the slice's length.
    (sum as usize, done)
}

/// [`count_of`] on other CPUs.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
pub fn count_of<const N: usize>(bytes: &[u8], needles: [u8; N]) -> usize {
    count_by_bytes(bytes, needles)
}

fn count_by_bytes<const N: usize>(bytes: &[u8], needles: [u8; N]) -> usize {
    bytes.iter().filter(|b| needles.contains(b)).count()
}

/// [`first_of`] on other CPUs.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline]
pub fn first_of<const N: usize>(bytes: &[u8], from: usize, needles: [u8; N], below: u8) -> usize {
    first_of_by_words(bytes, from, needles, below)
}

/// [`first_of`] eight bytes at a time, in a `u64`.
#[inline]
fn first_of_by_words<const N: usize>(
    bytes: &[u8],
    from: usize,
    needles: [u8; N],
    below: u8,
) -> usize {
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

    /// Counts over every length up to 4,200 (past 255 blocks of 16, where the lanes are
    /// summed) and every alignment: the count of a byte at a time.
    #[test]
    fn counts_are_the_counts_of_a_byte_at_a_time() {
        let text: Vec<u8> = (0..4200u32)
            .map(|i| b"{\"a\":[1,2],\"b\":{}}x,,"[(i * 7 % 21) as usize])
            .collect();
        for len in (0..300).chain([4063, 4064, 4065, 4079, 4080, 4081, 4095, 4096, 4097, 4200]) {
            for from in 0..3.min(len + 1) {
                let bytes = &text[from..len];
                let naive = bytes.iter().filter(|b| b",:[{".contains(b)).count();
                assert_eq!(
                    count_of(bytes, [b',', b':', b'[', b'{']),
                    naive,
                    "{from}..{len}"
                );
            }
        }
        assert_eq!(count_of(&[b','; 4096 * 2], [b',']), 8192);
    }

    /// Every length up to 80 and every position of one byte, from every start: the
    /// same answer as a byte at a time (the vectors, the words and the tail alike).
    #[test]
    fn every_position_gives_the_answer_of_a_byte_at_a_time() {
        let naive = |bytes: &[u8], from: usize, needles: &[u8], below: u8| {
            let from = from.min(bytes.len());
            bytes[from..]
                .iter()
                .position(|b| *b < below || needles.contains(b))
                .map_or(bytes.len(), |i| from + i)
        };
        for len in 0..80 {
            for at in 0..len {
                for byte in [
                    b'"', b'\\', b'\t', b'\n', b'\r', 0, 0x1f, 0x20, 0x7f, 0x80, 0xe9, 0xff,
                ] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    for from in [0, 1, at, at + 1, len] {
                        assert_eq!(
                            first_of(&bytes, from, [b'"', b'\\'], 0x20),
                            naive(&bytes, from, b"\"\\", 0x20),
                            "string: len {len}, {byte:#x} at {at}, from {from}"
                        );
                        assert_eq!(
                            first_of(&bytes, from, [b'\\', b'\t', b'\n', b'\r'], 0),
                            naive(&bytes, from, b"\\\t\n\r", 0),
                            "copy: len {len}, {byte:#x} at {at}, from {from}"
                        );
                    }
                }
            }
        }
    }

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
