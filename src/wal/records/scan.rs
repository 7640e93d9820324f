//! The walk over a segment's pages and records: page header checks, the skip over a record
//! continued from the previous segment, and reassembly of records that span pages.

use super::decode::{self, HEADER_BYTES, Header, Meaning};
use super::{Crossing, InvalidWal, RestorePoint, ScanEnd, SegmentRecords, XactEnd};
use crate::wal::{LongPageHeader, Lsn, SegmentSize};

const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
/// The page starts anew where a record was never finished: after a crash or a promotion, the
/// continuation PostgreSQL did not have was overwritten by an `OVERWRITE_CONTRECORD` record.
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// Every `xlp_info` flag (`XLP_ALL_FLAGS`, with `XLP_FIRST_IS_OVERWRITE_CONTRECORD` 0x8).
const XLP_ALL_FLAGS: u16 = 0x000F;
/// `SizeOfXLogShortPHD`.
const SHORT_HEADER_BYTES: usize = 24;
const LONG_HEADER_BYTES: usize = crate::wal::LONG_HEADER_BYTES;

/// A page header's fields that reading records needs.
struct Page {
    header_len: usize,
    info: u16,
    rem_len: u32,
}

/// What reading at a position found.
enum Step {
    /// A record, read whole and checked.
    Record(Read),
    /// A record whose continuation was overwritten (`XLP_FIRST_IS_OVERWRITE_CONTRECORD` on the
    /// page where it should continue): it is not part of the WAL, which goes on at the start of
    /// that page (at this offset), after the same previous record, as xlogreader.c restarts.
    Overwritten(usize),
}

/// A record read whole and checked.
struct Read {
    /// Offset of its first byte.
    start: usize,
    header: Header,
    /// Offset just past its last byte.
    end: usize,
}

/// Reads the records of one segment.
pub(super) struct Scanner<'a> {
    bytes: &'a [u8],
    start: Lsn,
    segment_len: usize,
    page_size: usize,
    first: LongPageHeader,
    major: u32,
    last_timeline: u32,
}

/// Rounds an offset up to PostgreSQL's MAXALIGN, 8 bytes.
pub(super) fn max_align(offset: usize) -> usize {
    offset.next_multiple_of(8)
}

impl<'a> Scanner<'a> {
    /// A scanner of `bytes`, whose first page header `first` passed [`super::scan_segment`]'s
    /// checks; `major` is the PostgreSQL version its magic names.
    pub fn new(bytes: &'a [u8], first: LongPageHeader, size: SegmentSize, major: u32) -> Self {
        Scanner {
            bytes,
            start: first.page_address,
            segment_len: size.bytes() as usize,
            page_size: first.block_size_bytes as usize,
            first,
            major,
            last_timeline: first.timeline.0,
        }
    }

    /// The position of `offset`. The end of the very last segment of the LSN space (2^64)
    /// saturates to `u64::MAX`.
    fn lsn(&self, offset: usize) -> Lsn {
        Lsn(self.start.0.saturating_add(offset as u64))
    }

    /// Reads every record, stopping where [`ScanEnd`] says. The walk only goes forward:
    /// before each record it calls `done_before` with the record's offset, before which
    /// nothing is read again.
    pub fn run(mut self, done_before: &mut dyn FnMut(usize)) -> SegmentRecords {
        let mut unread = None;
        let mut out = self.walk(done_before, &mut unread);
        // A record this scanner could not interpret ends the index's knowledge, not the WAL:
        // the walk went on checking what follows, and only a segment whose WAL is whole
        // otherwise ends this way.
        if let Some((at, problem)) = unread
            && matches!(
                out.end,
                ScanEnd::SegmentEnd | ScanEnd::Switch | ScanEnd::Continues { .. }
            )
        {
            out.end = ScanEnd::Uninterpreted { at, problem };
        }
        out
    }

    /// [`Self::run`]'s walk; the first record it could not interpret goes to `unread`.
    fn walk(
        &mut self,
        done_before: &mut dyn FnMut(usize),
        unread: &mut Option<(Lsn, InvalidWal)>,
    ) -> SegmentRecords {
        let mut out = SegmentRecords {
            records: 0,
            transactions: Vec::new(),
            restore_points: Vec::new(),
            valid_end: self.start,
            end: ScanEnd::SegmentEnd,
        };
        let mut pos = match self.first_record() {
            Ok(pos) => pos,
            Err(end) => {
                out.end = end;
                return out;
            }
        };
        out.valid_end = self.lsn(pos);
        let mut prev = None;
        let mut buf = Vec::new();
        loop {
            done_before(pos);
            let read = match self.read_record(pos, prev, &mut buf) {
                Ok(Step::Record(found)) => found,
                Ok(Step::Overwritten(page)) => {
                    pos = page;
                    continue;
                }
                Err(end) => {
                    out.end = end;
                    return out;
                }
            };
            let meaning = match decode::interpret(&buf, &read.header, self.major) {
                Ok(meaning) => meaning,
                Err(decode::Unread::Structure(problem)) => {
                    out.end = ScanEnd::Invalid {
                        at: self.lsn(read.start),
                        problem,
                    };
                    return out;
                }
                Err(decode::Unread::Content(problem)) => {
                    unread.get_or_insert((self.lsn(read.start), problem));
                    Meaning::Other
                }
            };
            pos = max_align(read.end);
            let (lsn, end) = (self.lsn(read.start), self.lsn(pos));
            out.records += 1;
            out.valid_end = end;
            prev = Some(lsn);
            match meaning {
                Meaning::Xact { kind, xid, time } => out.transactions.push(XactEnd {
                    kind,
                    xid,
                    lsn,
                    end,
                    time,
                }),
                Meaning::RestorePoint { name, time } => out.restore_points.push(RestorePoint {
                    name,
                    lsn,
                    end,
                    time,
                }),
                Meaning::Switch => {
                    out.end = ScanEnd::Switch;
                    return out;
                }
                Meaning::Other => {}
            }
        }
    }

    /// Checks the header of page `index` as xlogreader.c `XLogReaderValidatePageHeader` does.
    fn page(&mut self, index: usize) -> Result<Page, ScanEnd> {
        let offset = index * self.page_size;
        let at = self.lsn(offset);
        let invalid = |problem| ScanEnd::Invalid { at, problem };
        let short =
            self.bytes
                .get(offset..offset + SHORT_HEADER_BYTES)
                .ok_or(ScanEnd::Truncated {
                    at: self.lsn(self.bytes.len()),
                })?;
        let magic = u16::from_le_bytes([short[0], short[1]]);
        let info = u16::from_le_bytes([short[2], short[3]]);
        let timeline = u32::from_le_bytes([short[4], short[5], short[6], short[7]]);
        let mut address = [0; 8];
        address.copy_from_slice(&short[8..16]);
        let address = Lsn(u64::from_le_bytes(address));
        let rem_len = u32::from_le_bytes([short[16], short[17], short[18], short[19]]);
        if magic != self.first.magic {
            return Err(invalid(InvalidWal::PageMagic {
                expected: self.first.magic,
                found: magic,
            }));
        }
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(invalid(InvalidWal::PageInfo(info)));
        }
        let mut header_len = SHORT_HEADER_BYTES;
        if info & XLP_LONG_HEADER != 0 {
            header_len = LONG_HEADER_BYTES;
            let long = self
                .bytes
                .get(offset..)
                .and_then(|page| LongPageHeader::parse(page).ok());
            let same = long.is_some_and(|long| {
                long.system_id == self.first.system_id
                    && long.segment_size_bytes == self.first.segment_size_bytes
                    && long.block_size_bytes == self.first.block_size_bytes
            });
            if !same {
                return Err(invalid(InvalidWal::LongHeaderMismatch));
            }
        } else if index == 0 {
            return Err(invalid(InvalidWal::PageInfo(info)));
        }
        if address != at {
            return Err(invalid(InvalidWal::PageAddress { found: address }));
        }
        if timeline < self.last_timeline {
            return Err(invalid(InvalidWal::TimelineBack {
                found: timeline,
                previous: self.last_timeline,
            }));
        }
        self.last_timeline = timeline;
        Ok(Page {
            header_len,
            info,
            rem_len,
        })
    }

    /// Where the first record starting in this segment is: after the first page header, past
    /// the rest of a record continued from the previous segment, as xlogreader.c
    /// `XLogFindNextRecord` finds it. The segment's end when the continuation fills it.
    fn first_record(&mut self) -> Result<usize, ScanEnd> {
        let mut index = 0;
        // What the continued record still needs, as the page before said.
        let mut still: Option<u32> = None;
        loop {
            let page = self.page(index)?;
            let page_start = index * self.page_size;
            let problem = |problem| ScanEnd::Invalid {
                at: self.lsn(page_start),
                problem,
            };
            // A continuation lost in a crash is abandoned by a page marked so (PostgreSQL 15
            // and later): the record there overwrites it.
            if page.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                return Ok(page_start + page.header_len);
            }
            if page.info & XLP_FIRST_IS_CONTRECORD == 0 {
                if still.is_some() {
                    return Err(problem(InvalidWal::MissingContinuation));
                }
                return Ok(page_start + page.header_len);
            }
            // A continuation of nothing, or not of what the page before left (xlogreader.c's
            // "invalid contrecord length").
            if page.rem_len == 0 || still.is_some_and(|needed| needed != page.rem_len) {
                return Err(problem(InvalidWal::ContinuationLength {
                    expected: still.unwrap_or(0),
                    found: page.rem_len,
                }));
            }
            let room = self.page_size - page.header_len;
            if (page.rem_len as usize) < room {
                return Ok(max_align(
                    page_start + page.header_len + page.rem_len as usize,
                ));
            }
            still = Some(page.rem_len - room as u32);
            index += 1;
            if index * self.page_size >= self.segment_len {
                return Ok(self.segment_len);
            }
        }
    }

    /// Reads the record at `pos` (or after the page header there) into `buf`, reassembling it
    /// across pages, and checks its header and CRC.
    fn read_record(
        &mut self,
        mut pos: usize,
        prev: Option<Lsn>,
        buf: &mut Vec<u8>,
    ) -> Result<Step, ScanEnd> {
        if pos >= self.segment_len {
            return Err(ScanEnd::SegmentEnd);
        }
        if pos % self.page_size == 0 {
            let page = self.page(pos / self.page_size)?;
            if page.info & XLP_FIRST_IS_CONTRECORD != 0 {
                return Err(ScanEnd::Invalid {
                    at: self.lsn(pos),
                    problem: InvalidWal::UnexpectedContinuation,
                });
            }
            pos += page.header_len;
        }
        let at = self.lsn(pos);
        let invalid = |problem| ScanEnd::Invalid { at, problem };
        let truncated = ScanEnd::Truncated {
            at: self.lsn(self.bytes.len()),
        };
        let len = self.bytes.get(pos..pos + 4).ok_or(truncated.clone())?;
        let total_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        if total_len == 0 {
            return Err(ScanEnd::EndOfWal { at });
        }
        let total = total_len as usize;
        if total < HEADER_BYTES {
            return Err(invalid(InvalidWal::RecordLength(total_len)));
        }
        let room = self.page_size - pos % self.page_size;
        let mut checked = None;
        if room >= HEADER_BYTES {
            // The whole header is on this page: PostgreSQL checks it before reading on.
            let header = self.header_at(pos)?;
            header.check(at, prev, self.major).map_err(invalid)?;
            checked = Some(header);
        }
        buf.clear();
        let first = total.min(room);
        buf.extend_from_slice(self.bytes.get(pos..pos + first).ok_or(truncated.clone())?);
        let mut end = pos + first;
        let mut page_start = pos - pos % self.page_size + self.page_size;
        while buf.len() < total {
            if page_start >= self.segment_len {
                if checked.is_none() && buf.len() >= HEADER_BYTES {
                    let header = parse_header(buf);
                    header.check(at, prev, self.major).map_err(invalid)?;
                    checked = Some(header);
                }
                return Err(ScanEnd::Continues {
                    start: at,
                    total_len,
                    record: checked.map_or(Crossing::Unknown, |h| h.crossing()),
                });
            }
            let page = self.page(page_start / self.page_size)?;
            let page_problem = |problem| ScanEnd::Invalid {
                at: self.lsn(page_start),
                problem,
            };
            if page.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                return Ok(Step::Overwritten(page_start));
            }
            if page.info & XLP_FIRST_IS_CONTRECORD == 0 {
                return Err(page_problem(InvalidWal::MissingContinuation));
            }
            let needed = total - buf.len();
            if page.rem_len as usize != needed {
                return Err(page_problem(InvalidWal::ContinuationLength {
                    expected: needed as u32,
                    found: page.rem_len,
                }));
            }
            let data = page_start + page.header_len;
            let n = needed.min(self.page_size - page.header_len);
            buf.extend_from_slice(self.bytes.get(data..data + n).ok_or(truncated.clone())?);
            end = data + n;
            page_start += self.page_size;
        }
        let header = match checked {
            Some(header) => header,
            None => {
                let header = parse_header(buf);
                header.check(at, prev, self.major).map_err(invalid)?;
                header
            }
        };
        decode::check_crc(buf, &header).map_err(invalid)?;
        Ok(Step::Record(Read {
            start: pos,
            header,
            end,
        }))
    }

    /// The record header at `pos`, wholly on one page.
    fn header_at(&self, pos: usize) -> Result<Header, ScanEnd> {
        let bytes = self
            .bytes
            .get(pos..pos + HEADER_BYTES)
            .ok_or(ScanEnd::Truncated {
                at: self.lsn(self.bytes.len()),
            })?;
        Ok(parse_header(bytes))
    }
}

/// Parses the header at the start of `bytes`, which holds at least [`HEADER_BYTES`].
fn parse_header(bytes: &[u8]) -> Header {
    let mut header = [0; HEADER_BYTES];
    let n = bytes.len().min(HEADER_BYTES);
    header[..n].copy_from_slice(&bytes[..n]);
    Header::parse(&header)
}
