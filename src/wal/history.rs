//! Timeline history files (`%08X.history`): one line per ancestor timeline,
//! `parentTLI<TAB>switchpoint X/X<TAB>reason`, ancestors oldest first; blank lines and lines
//! starting with `#` are comments. Accepts what PostgreSQL's `readTimeLineHistory` accepts and
//! nothing less: the reason is free text in the database's encoding, and only the timelines
//! are checked (increasing, below the file's own).

use super::{Lsn, SegmentName, SegmentSize, TimelineId};

/// One ancestor of a timeline: the timeline and the position where its child branched off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub timeline: TimelineId,
    /// The first position that is no longer on `timeline`.
    pub switch_point: Lsn,
}

/// Where a timeline with these ancestors branched off `segment`'s timeline, when that lies
/// inside `segment` (its first byte included).
pub fn switch_point_in(
    ancestors: &[HistoryEntry],
    segment: SegmentName,
    size: SegmentSize,
) -> Option<Lsn> {
    let fork = ancestors.iter().find(|e| e.timeline == segment.timeline)?;
    (Some(super::SegNo::containing(fork.switch_point, size)) == segment.segno(size))
        .then_some(fork.switch_point)
}

/// Parses the history file of `timeline`.
pub fn parse_history(timeline: TimelineId, content: &[u8]) -> Result<Vec<HistoryEntry>, String> {
    // Timeline 1 is the first and 0 is not one: neither has ancestors, so neither a history.
    if timeline.0 < 2 {
        return Err(format!("timeline {} has no history file", timeline.0));
    }
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (number, line) in content.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii_start();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let bad = |what: &str| {
            format!(
                "history line {}: {what}: {:?}",
                number + 1,
                String::from_utf8_lossy(line)
            )
        };
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let mut field = || fields.next().and_then(|f| std::str::from_utf8(f).ok());
        let parent = field()
            .and_then(|f| f.parse::<u32>().ok())
            .ok_or_else(|| bad("expected a parent timeline number"))?;
        let switch_point = field()
            .and_then(|f| f.parse::<Lsn>().ok())
            .ok_or_else(|| bad("expected a switch point X/X"))?;
        let entry = HistoryEntry {
            timeline: TimelineId(parent),
            switch_point,
        };
        if parent == 0 || entry.timeline >= timeline {
            return Err(bad(&format!(
                "parent timeline must be between 1 and {}",
                timeline.0 - 1
            )));
        }
        if entries
            .last()
            .is_some_and(|prev| entry.timeline <= prev.timeline)
        {
            return Err(bad("timeline IDs must be in increasing sequence"));
        }
        entries.push(entry);
    }
    if entries.is_empty() {
        return Err("history file lists no parent timeline".into());
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_point_is_found_in_the_segment_of_the_parent_timeline_holding_it() {
        let size = SegmentSize::new(16 << 20).unwrap();
        let ancestors =
            parse_history(TimelineId(3), b"1\t0/3000000\tr\n2\t0/5000A28\tr\n").unwrap();
        let name =
            |tli: u32, seg: u64| SegmentName::new(TimelineId(tli), super::super::SegNo(seg), size);
        assert_eq!(
            switch_point_in(&ancestors, name(2, 5), size),
            Some(Lsn(0x5000A28))
        );
        // Timeline 1 ends at the first byte of segment 3.
        assert_eq!(
            switch_point_in(&ancestors, name(1, 3), size),
            Some(Lsn(0x3000000))
        );
        assert_eq!(switch_point_in(&ancestors, name(1, 2), size), None);
        assert_eq!(switch_point_in(&ancestors, name(2, 4), size), None);
        assert_eq!(switch_point_in(&ancestors, name(3, 5), size), None);
    }

    #[test]
    fn parses_what_postgres_writes() {
        // The restore point name is in the database encoding: here LATIN1 "é".
        let content = b"1\t0/3000000\tno recovery target specified\n\n2\t0/5000A28\tat restore point \"caf\xe9\"\n";
        let entries = parse_history(TimelineId(3), content).unwrap();
        assert_eq!(
            entries,
            vec![
                HistoryEntry {
                    timeline: TimelineId(1),
                    switch_point: Lsn(0x300_0000)
                },
                HistoryEntry {
                    timeline: TimelineId(2),
                    switch_point: Lsn(0x500_0A28)
                },
            ]
        );
    }

    #[test]
    fn refuses_what_postgres_refuses() {
        for bad in [
            &b""[..],
            b"# only a comment\n",
            b"2\t0/3000000\treason\n",
            b"1\tnot-an-lsn\n",
            b"x\t0/1\n",
            b"1\t0/5000000\n1\t0/6000000\n",
        ] {
            assert!(
                parse_history(TimelineId(2), bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn refuses_a_history_for_timeline_0_or_1() {
        // Found by the timeline_history fuzzer: timeline 0 overflowed the error message's
        // upper bound (`0 - 1`) and panicked.
        for timeline in [0, 1] {
            assert_eq!(
                parse_history(TimelineId(timeline), b"1\t0/3000000\treason\n"),
                Err(format!("timeline {timeline} has no history file"))
            );
        }
    }
}
