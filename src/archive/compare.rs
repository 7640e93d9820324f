//! Comparing a stored object's content with what is offered again under its key, as it is
//! decoded: a create-only store that already holds the key holds either the same content
//! (archived before) or a conflict.

/// A writer that compares what it is given with `expected`, and keeps the length and CRC-32
/// of all of it (for a conflict's message).
pub(super) struct Comparing<'a> {
    expected: &'a [u8],
    len: u64,
    same: bool,
    crc: crc32fast::Hasher,
}

impl<'a> Comparing<'a> {
    pub(super) fn new(expected: &'a [u8]) -> Self {
        Comparing {
            expected,
            len: 0,
            same: true,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Whether everything written equals `expected`, whole.
    pub(super) fn is_same(&self) -> bool {
        self.same && self.len == self.expected.len() as u64
    }

    /// How many bytes were written.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The CRC-32 of what was written.
    pub(super) fn crc(&self) -> u32 {
        self.crc.clone().finalize()
    }
}

impl std::io::Write for Comparing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let at = usize::try_from(self.len).unwrap_or(usize::MAX);
        self.same &= at
            .checked_add(buf.len())
            .and_then(|end| self.expected.get(at..end))
            .is_some_and(|expected| expected == buf);
        self.crc.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::Comparing;

    #[test]
    fn only_the_same_bytes_whole_compare_equal_whatever_the_chunks() {
        let offered = b"0123456789";
        let mut same = Comparing::new(offered);
        same.write_all(b"0123").unwrap();
        same.write_all(b"456789").unwrap();
        assert!(same.is_same());
        let mut shorter = Comparing::new(offered);
        shorter.write_all(b"012345678").unwrap();
        assert!(!shorter.is_same());
        let mut longer = Comparing::new(offered);
        longer.write_all(b"0123456789!").unwrap();
        assert!(!longer.is_same());
        assert_eq!(longer.len(), 11);
        let mut other = Comparing::new(offered);
        other.write_all(b"01234X6789").unwrap();
        assert!(!other.is_same());
        assert_eq!(other.crc(), crc32fast::hash(b"01234X6789"));
    }
}
