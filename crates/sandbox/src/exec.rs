//! Backend-independent helpers for running commands: the head-and-tail output cap.
//!
//! Both backends stream a command's combined stdout+stderr through an [`OutputCap`], which
//! keeps the first and last bytes up to the request's `output_cap` and replaces the middle
//! with a marker saying how much was cut.

use std::collections::VecDeque;

/// Keeps the head and the tail of a byte stream within a fixed budget.
///
/// The budget is split in half: the first `cap / 2` bytes are kept as they come, the last
/// `cap - cap / 2` bytes are kept in a ring. When more than `cap` bytes arrive, [`finish`]
/// joins head and tail with a marker line naming the number of bytes left out.
///
/// [`finish`]: OutputCap::finish
#[derive(Debug)]
pub struct OutputCap {
    cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl OutputCap {
    pub fn new(cap: usize) -> Self {
        OutputCap { cap, head: Vec::new(), tail: VecDeque::new(), total: 0 }
    }

    fn head_cap(&self) -> usize {
        self.cap / 2
    }

    fn tail_cap(&self) -> usize {
        self.cap - self.cap / 2
    }

    /// Adds a chunk of output.
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let head_room = self.head_cap().saturating_sub(self.head.len());
        if head_room > 0 {
            let take = head_room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        let tail_cap = self.tail_cap();
        if tail_cap == 0 || bytes.is_empty() {
            return;
        }
        if bytes.len() >= tail_cap {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - tail_cap..]);
            return;
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(tail_cap);
        self.tail.drain(..overflow);
        self.tail.extend(bytes);
    }

    /// Bytes seen so far, kept or not.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Whether some of the output was left out.
    pub fn is_truncated(&self) -> bool {
        self.total > (self.head.len() + self.tail.len()) as u64
    }

    /// The kept output as raw bytes (head, marker, tail) and whether it was truncated.
    pub fn finish_bytes(self) -> (Vec<u8>, bool) {
        let truncated = self.is_truncated();
        let mut out = self.head;
        if truncated {
            let omitted = self.total - (out.len() + self.tail.len()) as u64;
            out.extend_from_slice(truncation_marker(omitted).as_bytes());
        }
        out.extend(self.tail);
        (out, truncated)
    }

    /// The kept output decoded lossily as UTF-8 and whether it was truncated.
    pub fn finish(self) -> (String, bool) {
        let (bytes, truncated) = self.finish_bytes();
        (String::from_utf8_lossy(&bytes).into_owned(), truncated)
    }
}

/// The line that replaces the middle of a truncated output.
pub fn truncation_marker(omitted_bytes: u64) -> String {
    format!("\n[... {omitted_bytes} bytes of output omitted ...]\n")
}

/// The last `max_chars` characters of `text` (whole characters; for error messages).
pub fn tail_chars(text: &str, max_chars: usize) -> String {
    let n = text.chars().count();
    if n <= max_chars {
        return text.to_string();
    }
    text.chars().skip(n - max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(cap: usize, chunks: &[&[u8]]) -> (String, bool) {
        let mut c = OutputCap::new(cap);
        for chunk in chunks {
            c.push(chunk);
        }
        c.finish()
    }

    #[test]
    fn keeps_everything_under_the_cap() {
        assert_eq!(capped(10, &[b"abc", b"def"]), ("abcdef".to_string(), false));
        assert_eq!(capped(6, &[b"abc", b"def"]), ("abcdef".to_string(), false));
        assert_eq!(capped(0, &[]), (String::new(), false));
    }

    #[test]
    fn keeps_head_and_tail_over_the_cap() {
        let (out, truncated) = capped(6, &[b"abcdefgh", b"ijkl"]);
        assert!(truncated);
        assert_eq!(out, format!("abc{}jkl", truncation_marker(6)));
        // Byte by byte gives the same answer as one chunk.
        let bytes = b"0123456789abcdefghij";
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(capped(7, &chunks), capped(7, &[bytes]));
        assert_eq!(capped(7, &chunks).0, format!("012{}ghij", truncation_marker(13)));
        // Many small chunks crossing the ring.
        let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
        assert_eq!(capped(7, &chunks), capped(7, &[bytes]));
    }

    #[test]
    fn zero_cap_keeps_nothing_but_says_so() {
        let (out, truncated) = capped(0, &[b"abc"]);
        assert!(truncated);
        assert_eq!(out, truncation_marker(3));
    }

    #[test]
    fn tail_chars_counts_characters() {
        assert_eq!(tail_chars("héllo", 3), "llo");
        assert_eq!(tail_chars("hé", 3), "hé");
    }
}
