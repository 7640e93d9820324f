//! The `backup_label` file a base backup starts with: where its WAL starts, on which timeline,
//! and whether it was taken on a standby. It is the first member of the main tar stream
//! (basebackup.c sends it before anything else), so it is read from the stream's first bytes.

use thiserror::Error;

use crate::wal::{Lsn, TimelineId};

/// What walhalla reads from a `backup_label`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupLabel {
    /// `START WAL LOCATION`.
    pub start_lsn: Lsn,
    /// `START TIMELINE`.
    pub start_timeline: TimelineId,
    /// `BACKUP FROM: standby`.
    pub from_standby: bool,
    /// `START TIME`, as the server wrote it (in its log time zone).
    pub start_time: String,
}

/// A `backup_label` walhalla cannot read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LabelError {
    /// The tar stream does not start with `backup_label`.
    #[error("the backup's main archive does not start with backup_label")]
    NotFirst,
    /// A line is missing or malformed.
    #[error("backup_label: {0}")]
    Malformed(String),
}

/// The length of a tar header block.
const BLOCK: usize = 512;
/// The largest `backup_label` read.
const MAX_LABEL_BYTES: u64 = 64 * 1024;
/// How much of the stream's start is kept while looking for the label.
const HEAD_LIMIT: usize = 1 << 20;

/// Finds the `backup_label` in the first bytes of the main tar stream as they arrive, the
/// stream compressed with zstd when the server compressed it (`--server-compression`).
#[derive(Debug, Default)]
pub struct LabelFinder {
    head: Vec<u8>,
    zstd: bool,
    done: bool,
}

impl LabelFinder {
    /// A finder for a plain (`zstd` false) or zstd-compressed stream.
    pub fn new(zstd: bool) -> LabelFinder {
        LabelFinder {
            zstd,
            ..LabelFinder::default()
        }
    }

    /// Takes the stream's next bytes; the label once they complete it (then nothing more).
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<BackupLabel>, LabelError> {
        if self.done {
            return Ok(None);
        }
        let room = HEAD_LIMIT - self.head.len();
        self.head.extend_from_slice(&data[..data.len().min(room)]);
        let text = if self.zstd {
            from_tar_head(&decoded_prefix(&self.head))?
        } else {
            from_tar_head(&self.head)?
        };
        match text {
            Some(text) => {
                self.done = true;
                self.head = Vec::new();
                parse(&text).map(Some)
            }
            None if self.head.len() == HEAD_LIMIT => Err(LabelError::Malformed(format!(
                "not complete in the stream's first {HEAD_LIMIT} bytes"
            ))),
            None => Ok(None),
        }
    }
}

/// What the start of a zstd stream decodes to, as far as it goes (a label's worth at most).
fn decoded_prefix(compressed: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if let Ok(decoder) = zstd::stream::read::Decoder::with_buffer(compressed) {
        // A stream cut short ends in an error: what was decoded before it is what counts.
        let _ = decoder
            .take(BLOCK as u64 + MAX_LABEL_BYTES)
            .read_to_end(&mut out);
    }
    out
}

/// The content of the `backup_label` at the start of a tar stream, once `head` holds all of
/// it; `Ok(None)` while more bytes are needed.
pub fn from_tar_head(head: &[u8]) -> Result<Option<String>, LabelError> {
    let Some(block) = head.get(..BLOCK) else {
        return Ok(None);
    };
    let header = tar::Header::from_byte_slice(block);
    let is_label = header.path_bytes().as_ref() == b"backup_label"
        && header.entry_type() == tar::EntryType::Regular;
    if !is_label {
        return Err(LabelError::NotFirst);
    }
    let size = header
        .size()
        .map_err(|e| LabelError::Malformed(format!("size field: {e}")))?;
    if size > MAX_LABEL_BYTES {
        return Err(LabelError::Malformed(format!("{size} bytes")));
    }
    let Some(content) = head.get(BLOCK..BLOCK + size as usize) else {
        return Ok(None);
    };
    String::from_utf8(content.to_vec())
        .map(Some)
        .map_err(|_| LabelError::Malformed("not UTF-8".into()))
}

/// Parses a `backup_label`.
pub fn parse(text: &str) -> Result<BackupLabel, LabelError> {
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(": "))
            .ok_or_else(|| LabelError::Malformed(format!("no {key} line")))
    };
    let start = field("START WAL LOCATION")?;
    let start_lsn = start
        .split_whitespace()
        .next()
        .and_then(|lsn| lsn.parse().ok())
        .ok_or_else(|| LabelError::Malformed(format!("START WAL LOCATION {start:?}")))?;
    let timeline = field("START TIMELINE")?;
    let start_timeline = timeline
        .trim()
        .parse()
        .map(TimelineId)
        .map_err(|_| LabelError::Malformed(format!("START TIMELINE {timeline:?}")))?;
    let from = field("BACKUP FROM")?.trim();
    let from_standby = match from {
        "standby" => true,
        // PostgreSQL 13 still says "master".
        "primary" | "master" => false,
        other => return Err(LabelError::Malformed(format!("BACKUP FROM {other:?}"))),
    };
    Ok(BackupLabel {
        start_lsn,
        start_timeline,
        from_standby,
        start_time: field("START TIME")?.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000080\n\
        BACKUP METHOD: streamed\n\
        BACKUP FROM: standby\n\
        START TIME: 2026-12-02 08:25:13 UTC\n\
        LABEL: it's: a label\n\
        START TIMELINE: 3\n";

    fn tar_head(name: &str, content: &str) -> Vec<u8> {
        let mut header = vec![0u8; BLOCK];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[124..135].copy_from_slice(format!("{:011o}", content.len()).as_bytes());
        header[156] = b'0';
        header.extend_from_slice(content.as_bytes());
        header
    }

    #[test]
    fn reads_the_label_from_the_stream_head() {
        let head = tar_head("backup_label", LABEL);
        assert_eq!(from_tar_head(&head[..300]), Ok(None));
        assert_eq!(from_tar_head(&head[..600]), Ok(None));
        let text = from_tar_head(&head).unwrap().unwrap();
        assert_eq!(
            parse(&text),
            Ok(BackupLabel {
                start_lsn: "0/2000028".parse().unwrap(),
                start_timeline: TimelineId(3),
                from_standby: true,
                start_time: "2026-12-02 08:25:13 UTC".into(),
            })
        );
        assert_eq!(
            from_tar_head(&tar_head("global/pg_control", "x")),
            Err(LabelError::NotFirst)
        );
    }

    #[test]
    fn refuses_malformed_labels() {
        assert!(parse("").is_err());
        assert!(parse(&LABEL.replace("standby", "elsewhere")).is_err());
        assert!(
            !parse(&LABEL.replace("standby", "master"))
                .unwrap()
                .from_standby
        );
        assert!(parse(&LABEL.replace("0/2000028", "nowhere")).is_err());
        assert!(parse(&LABEL.replace("TIMELINE: 3", "TIMELINE: three")).is_err());
    }

    #[test]
    fn the_label_is_found_in_a_zstd_stream_fed_piecemeal() {
        let mut tar = tar_head("backup_label", LABEL);
        tar.extend(std::iter::repeat_n(7u8, 200_000));
        let compressed = zstd::encode_all(&tar[..], 3).unwrap();
        let mut finder = LabelFinder::new(true);
        let mut found = None;
        for chunk in compressed.chunks(7) {
            if let Some(label) = finder.feed(chunk).unwrap() {
                found = Some(label);
            }
        }
        assert_eq!(found, Some(parse(LABEL).unwrap()));
        let mut plain = LabelFinder::new(false);
        assert!(plain.feed(&tar[..100]).unwrap().is_none());
        assert_eq!(
            plain.feed(&tar[100..]).unwrap(),
            Some(parse(LABEL).unwrap())
        );
    }
}
