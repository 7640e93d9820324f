//! The long page header at the start of every WAL segment (`XLogLongPageHeaderData`), and the
//! checks that tie a segment's content to its file name.
//!
//! Byte layout (native byte order; little-endian on the x86-64 and ARM servers we support):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | `xlp_magic`: changes with each major version ([`super::version::SUPPORTED`]) |
//! | 2 | 2 | `xlp_info`: flag bits; `XLP_LONG_HEADER` (0x0002) on a segment's first page |
//! | 4 | 4 | `xlp_tli`: timeline of the first record on the page (may be below the name's) |
//! | 8 | 8 | `xlp_pageaddr`: WAL position of the page |
//! | 16 | 4 | `xlp_rem_len`: bytes of a record continued from the previous page |
//! | 24 | 8 | `xlp_sysid`: the cluster's system identifier |
//! | 32 | 4 | `xlp_seg_size`: the segment size |
//! | 36 | 4 | `xlp_xlog_blcksz`: the WAL page size |

use thiserror::Error;

use super::version::{self, Unsupported};
use super::{Lsn, SegmentName, SegmentSize, SystemId, TimelineId};

/// Length of the long page header in bytes.
pub const LONG_HEADER_BYTES: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;

/// Why a file's first page does not look like the start of the segment its name says.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PageHeaderError {
    /// The file is shorter than a long page header.
    #[error("file has {0} bytes, too short for a WAL page header")]
    TooShort(usize),
    /// `xlp_magic` is not that of a supported PostgreSQL release.
    #[error("page magic 0x{0:04X} is from {1}")]
    BadMagic(u16, Unsupported),
    /// The first page lacks the long header flag.
    #[error("first page has no long header (xlp_info 0x{0:04X})")]
    NotLongHeader(u16),
    /// `xlp_seg_size` is not a power of two between 1 MiB and 1 GiB.
    #[error("segment size {0} in the page header is not a power of two from 1 MiB to 1 GiB")]
    BadSegmentSize(u32),
    /// `xlp_xlog_blcksz` is not a power of two between 1 kB and 64 kB.
    #[error("WAL block size {0} in the page header is not a power of two from 1 kB to 64 kB")]
    BadBlockSize(u32),
    /// The file's length differs from the segment size.
    #[error("file has {actual} bytes but its page header says segments have {expected}")]
    WrongLength {
        /// The segment size from the header.
        expected: u32,
        /// The file's length.
        actual: u64,
    },
    /// The name's segment number does not exist for this segment size.
    #[error("name {name} is out of range for {size} segments")]
    NameOutOfRange {
        /// The segment's name.
        name: SegmentName,
        /// The segment size from the header.
        size: SegmentSize,
    },
    /// `xlp_pageaddr` is not where the name says the segment starts.
    #[error("first page is at {actual} but segment {name} starts at {expected}")]
    WrongPageAddress {
        /// The segment's name.
        name: SegmentName,
        /// Where the name says the segment starts.
        expected: Lsn,
        /// What the page header says.
        actual: Lsn,
    },
    /// `xlp_tli` is zero or newer than the timeline in the name.
    #[error(
        "first page is on timeline {actual}, which cannot appear in a segment of timeline {name_timeline}"
    )]
    WrongTimeline {
        /// The timeline in the file name.
        name_timeline: TimelineId,
        /// The timeline in the page header.
        actual: TimelineId,
    },
}

/// The fields of a segment's first page header that the archive checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(alias = "XLogLongPageHeaderData")]
pub struct LongPageHeader {
    /// `xlp_magic`.
    pub magic: u16,
    /// `xlp_info`.
    pub info: u16,
    /// `xlp_tli`.
    pub timeline: TimelineId,
    /// `xlp_pageaddr`.
    pub page_address: Lsn,
    /// `xlp_sysid`.
    pub system_id: SystemId,
    /// `xlp_seg_size`, not yet validated.
    pub segment_size_bytes: u32,
    /// `xlp_xlog_blcksz`, not yet validated.
    pub block_size_bytes: u32,
}

impl LongPageHeader {
    /// Reads the long page header at the start of `bytes`, checking the magic and the long flag.
    pub fn parse(bytes: &[u8]) -> Result<Self, PageHeaderError> {
        let header: &[u8; LONG_HEADER_BYTES] = bytes
            .get(..LONG_HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or(PageHeaderError::TooShort(bytes.len()))?;
        let u16_at = |o: usize| u16::from_le_bytes([header[o], header[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
        let magic = u16_at(0);
        version::by_page_magic(magic).map_err(|why| PageHeaderError::BadMagic(magic, why))?;
        let info = u16_at(2);
        if info & XLP_LONG_HEADER == 0 {
            return Err(PageHeaderError::NotLongHeader(info));
        }
        Ok(LongPageHeader {
            magic,
            info,
            timeline: TimelineId(u32_at(4)),
            page_address: Lsn(u64_at(8)),
            system_id: SystemId(u64_at(24)),
            segment_size_bytes: u32_at(32),
            block_size_bytes: u32_at(36),
        })
    }

    /// The segment size, when the header's is valid.
    pub fn segment_size(&self) -> Result<SegmentSize, PageHeaderError> {
        SegmentSize::new(self.segment_size_bytes)
            .ok_or(PageHeaderError::BadSegmentSize(self.segment_size_bytes))
    }

    /// Checks that a file of `file_len` bytes starting with this header is segment `name`:
    /// the length is the header's segment size, the first page's address is where the name
    /// says, and its timeline is not newer than the name's. Returns the segment size.
    pub fn check_segment(
        &self,
        name: SegmentName,
        file_len: u64,
    ) -> Result<SegmentSize, PageHeaderError> {
        let size = self.segment_size()?;
        let block = self.block_size_bytes;
        if !block.is_power_of_two() || !(1024..=65536).contains(&block) {
            return Err(PageHeaderError::BadBlockSize(block));
        }
        if file_len != u64::from(size.bytes()) {
            return Err(PageHeaderError::WrongLength {
                expected: size.bytes(),
                actual: file_len,
            });
        }
        let expected = name
            .start_lsn(size)
            .ok_or(PageHeaderError::NameOutOfRange { name, size })?;
        if self.page_address != expected {
            return Err(PageHeaderError::WrongPageAddress {
                name,
                expected,
                actual: self.page_address,
            });
        }
        if self.timeline.0 == 0 || self.timeline > name.timeline {
            return Err(PageHeaderError::WrongTimeline {
                name_timeline: name.timeline,
                actual: self.timeline,
            });
        }
        Ok(size)
    }
}

/// Passes writes through, keeping the first bytes (a segment's long page header) for checks.
pub struct HeadCapture<W: std::io::Write> {
    inner: W,
    head: Vec<u8>,
}

impl<W: std::io::Write> HeadCapture<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HeadCapture {
            inner,
            head: Vec::with_capacity(LONG_HEADER_BYTES),
        }
    }

    /// The first bytes written, up to [`LONG_HEADER_BYTES`].
    pub fn head(&self) -> &[u8] {
        &self.head
    }
}

impl<W: std::io::Write> std::io::Write for HeadCapture<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let wanted = LONG_HEADER_BYTES.saturating_sub(self.head.len()).min(n);
        self.head.extend_from_slice(&buf[..wanted]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Watches a segment's bytes, written in order from its start, for a page of its own (one
/// whose header gives the page's own address) past the page holding a given offset: whether
/// the segment was written on past that point, rather than cut there (zeros after it, or a
/// recycled file's stale pages, whose headers name an older segment). Writing to it stores
/// nothing, so a segment of any size can be streamed through it.
pub struct OwnPageAfter {
    start: Lsn,
    at: u64,
    head: [u8; LONG_HEADER_BYTES],
    page: Option<u64>,
    unreadable: bool,
    pos: u64,
    address: [u8; 8],
    found: bool,
}

impl OwnPageAfter {
    /// Watches a segment starting at `start` for pages of its own past the page holding
    /// offset `at`.
    pub fn new(start: Lsn, at: u64) -> Self {
        OwnPageAfter {
            start,
            at,
            head: [0; LONG_HEADER_BYTES],
            page: None,
            unreadable: false,
            pos: 0,
            address: [0; 8],
            found: false,
        }
    }

    /// Whether a page of its own followed: `None` when the first page could not be read or
    /// what was written is not whole pages.
    pub fn found(&self) -> Option<bool> {
        let page = self.page.filter(|_| !self.unreadable)?;
        (self.found || self.pos % page == 0).then_some(self.found)
    }

    fn observe(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() && !self.found && !self.unreadable {
            let Some(page) = self.page else {
                let have = self.pos as usize;
                let take = (LONG_HEADER_BYTES - have).min(buf.len());
                self.head[have..have + take].copy_from_slice(&buf[..take]);
                self.pos += take as u64;
                buf = &buf[take..];
                if self.pos as usize == LONG_HEADER_BYTES {
                    match LongPageHeader::parse(&self.head) {
                        Ok(h) if h.block_size_bytes >= LONG_HEADER_BYTES as u32 => {
                            self.page = Some(h.block_size_bytes.into())
                        }
                        _ => self.unreadable = true,
                    }
                }
                continue;
            };
            let in_page = self.pos % page;
            let page_start = self.pos - in_page;
            let first_after = (self.at / page + 1) * page;
            // xlp_pageaddr is bytes 8 to 16 of every page header.
            if page_start < first_after || in_page >= 16 {
                let next = first_after.max(page_start + page);
                let skip = (next - self.pos).min(buf.len() as u64) as usize;
                self.pos += skip as u64;
                buf = &buf[skip..];
                continue;
            }
            let take = ((16 - in_page) as usize).min(buf.len());
            for (i, byte) in buf[..take].iter().enumerate() {
                if let Some(slot) = (in_page as usize + i).checked_sub(8) {
                    self.address[slot] = *byte;
                }
            }
            self.pos += take as u64;
            buf = &buf[take..];
            if self.pos - page_start == 16 {
                self.found = u64::from_le_bytes(self.address) == self.start.0 + page_start;
            }
        }
        // Past the answer, only the length counts.
        self.pos += buf.len() as u64;
    }
}

impl std::io::Write for OwnPageAfter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.observe(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wal::SegNo;

    /// A synthetic segment's first bytes, laid out as PostgreSQL 15 writes them.
    pub(crate) fn header_bytes(tli: u32, page_address: u64, sysid: u64, seg_size: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(LONG_HEADER_BYTES);
        h.extend_from_slice(&0xD110u16.to_le_bytes());
        h.extend_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        h.extend_from_slice(&tli.to_le_bytes());
        h.extend_from_slice(&page_address.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&sysid.to_le_bytes());
        h.extend_from_slice(&seg_size.to_le_bytes());
        h.extend_from_slice(&8192u32.to_le_bytes());
        h
    }

    const MIB: u32 = 1 << 20;

    fn name(tli: u32, segno: u64) -> SegmentName {
        SegmentName::new(
            TimelineId(tli),
            SegNo(segno),
            SegmentSize::new(MIB).unwrap(),
        )
    }

    #[test]
    fn accepts_a_matching_segment() {
        let h = LongPageHeader::parse(&header_bytes(1, 5 * u64::from(MIB), 42, MIB)).unwrap();
        assert_eq!(h.system_id, SystemId(42));
        assert_eq!(
            h.check_segment(name(1, 5), MIB.into()),
            Ok(SegmentSize::new(MIB).unwrap())
        );
        // After a promotion the first page of the new timeline's first segment still carries
        // the old timeline.
        assert!(h.check_segment(name(2, 5), MIB.into()).is_ok());
    }

    #[test]
    fn refuses_mismatches() {
        let h = LongPageHeader::parse(&header_bytes(2, 5 * u64::from(MIB), 42, MIB)).unwrap();
        assert!(matches!(
            h.check_segment(name(2, 6), MIB.into()),
            Err(PageHeaderError::WrongPageAddress { .. })
        ));
        assert!(matches!(
            h.check_segment(name(1, 5), MIB.into()),
            Err(PageHeaderError::WrongTimeline { .. })
        ));
        assert!(matches!(
            h.check_segment(name(2, 5), 4096),
            Err(PageHeaderError::WrongLength { .. })
        ));
        let odd = LongPageHeader::parse(&header_bytes(2, 0, 42, 3 * MIB)).unwrap();
        assert_eq!(
            odd.check_segment(name(2, 0), (3 * MIB).into()),
            Err(PageHeaderError::BadSegmentSize(3 * MIB))
        );
    }

    #[test]
    fn refuses_what_is_not_a_wal_page() {
        assert_eq!(
            LongPageHeader::parse(&[0; 10]),
            Err(PageHeaderError::TooShort(10))
        );
        assert_eq!(
            LongPageHeader::parse(&[0; 64]),
            Err(PageHeaderError::BadMagic(0, Unsupported::Foreign))
        );
        let mut newer = header_bytes(1, 0, 42, MIB);
        newer[..2].copy_from_slice(&0xD11Au16.to_le_bytes());
        let refused = LongPageHeader::parse(&newer).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "page magic 0xD11A is from a PostgreSQL release newer than 18; \
             walhalla supports PostgreSQL 13 to 18"
        );
        let mut short_header = header_bytes(1, 0, 42, MIB);
        short_header[2] = 0;
        assert_eq!(
            LongPageHeader::parse(&short_header),
            Err(PageHeaderError::NotLongHeader(0))
        );
    }
}
