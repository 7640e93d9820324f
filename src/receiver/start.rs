//! Where a stream starts, and on which timeline.
//!
//! Normally after the newest segment the spool or the archive holds. But the archive may have
//! holes: parallel uploads store N+1 before N, and losing the host at that moment loses N from
//! the spool. So the segments from the slot's restart position (the WAL the server still
//! keeps for the receiver) to the newest held are checked, and streaming starts at the first
//! one missing: re-received segments that are already archived are stored again harmlessly
//! (create-only with identical bytes). Missing segments the server no longer keeps are
//! reported as gaps, loudly, and never treated as archived.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::anyhow;

use super::ReceiveOptions;
use super::history::archive_history;
use super::session::{Context, SessionError};
use crate::metrics::ArchiveGap;
use crate::protocol::connection::Connection;
use crate::protocol::conninfo::HostAddr;
use crate::spool;
use crate::wal::{HistoryEntry, Lsn, SegNo, SegmentName, SegmentSize, TimelineId, WalFileName};

/// At most this many groups (4 GiB of WAL each) are listed to look for holes.
const MAX_GROUPS_CHECKED: u64 = 64;

/// Where and how a stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartPlan {
    /// The timeline to ask for.
    pub timeline: TimelineId,
    /// The segment streaming starts at.
    pub segment: SegNo,
    /// One past the segments known missing from `segment` on: if the server no longer has
    /// `segment`, these are lost to the archive.
    pub missing_until: SegNo,
    /// The slot keeps this WAL on the server: a server that lacks it is a real problem.
    pub guaranteed: bool,
    /// One past the newest segment held.
    pub resume: SegNo,
}

/// Plans where to stream from on one timeline: at the first segment missing from what the
/// archive and the spool hold (`held`, at least from the start of the listing) that is not
/// known `lost`, else at `resume` (one past the newest held). A segment the uploader
/// `refused` (its spool file did not read back as received) counts as missing even when its
/// file is listed: it must come from the server again. `keeps_from` is the first segment the
/// slot keeps on the server, when known: missing segments from there on are guaranteed; those
/// before it (and after the oldest held or refused) are tried all the same, since the server
/// may still have them, and become lost only when it says it has not.
pub fn plan(
    timeline: TimelineId,
    held: &BTreeSet<SegNo>,
    refused: &BTreeSet<SegNo>,
    resume: SegNo,
    keeps_from: Option<SegNo>,
    lost: &BTreeSet<SegNo>,
) -> StartPlan {
    let again = refused.iter().find(|n| !lost.contains(n));
    let oldest = (held.first().into_iter().chain(again))
        .min()
        .copied()
        .unwrap_or(resume);
    let from = keeps_from.map_or(oldest, |k| k.min(oldest));
    let missing = |n: SegNo| (!held.contains(&n) || refused.contains(&n)) && !lost.contains(&n);
    let segment = (from.0..resume.0)
        .map(SegNo)
        .find(|&n| missing(n))
        .unwrap_or_else(|| {
            let mut n = resume;
            while lost.contains(&n) {
                n = SegNo(n.0 + 1);
            }
            n
        });
    let missing_until = if segment < resume {
        // A run the server may lack ends where the slot's guarantee begins.
        let guaranteed_from = keeps_from.filter(|&k| k > segment);
        (segment.0..resume.0)
            .map(SegNo)
            .find(|&n| !missing(n) || guaranteed_from == Some(n))
            .unwrap_or(resume)
    } else {
        keeps_from
            .filter(|&k| k > segment)
            .unwrap_or(SegNo(segment.0 + 1))
    };
    StartPlan {
        timeline,
        segment,
        missing_until,
        guaranteed: keeps_from.is_some_and(|k| segment >= k),
        resume,
    }
}

/// A server on an older timeline than the archive holds: an old primary left running after a
/// failover (or a standby that has not followed it yet). The receiver tries its other hosts
/// first from then on, since one of them may be the promoted server.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} is on timeline {} but the archive already holds timeline {}: waiting for a server \
     on a newer timeline (the other hosts are tried first; if that timeline's promotion was a \
     mistake and its server is gone, remove its segments and {:08X}.history from the archive)",
    server.0,
    archive.0,
    archive.0
)]
pub struct BehindArchive {
    /// The server's host.
    pub host: HostAddr,
    /// Its timeline.
    pub server: TimelineId,
    /// The archive's newest.
    pub archive: TimelineId,
}

impl BehindArchive {
    /// The session's end for `host`, on timeline `server` where the archive holds `archive`.
    pub fn refusal(host: &HostAddr, server: TimelineId, archive: TimelineId) -> SessionError {
        anyhow::Error::new(BehindArchive {
            host: host.clone(),
            server,
            archive,
        })
        .into()
    }
}

/// Where to start, and on which timeline. After the newest segment the spool or the archive
/// holds, or at the first hole the server can still fill; on an empty archive at
/// `--start-lsn`, else `fallback` (the slot's restart position or the server's current
/// one). When the server is on a newer timeline, the old timeline is asked for (the server
/// streams it to its end, then switches), unless the archive holds WAL past the point where
/// the server's history forked: then streaming restarts at the fork on the timeline that
/// followed, and what was archived of the old timeline stays.
pub async fn start_point(
    options: &ReceiveOptions,
    ctx: &Context,
    conn: &mut Connection,
    server_timeline: TimelineId,
    slot_restart: Option<Lsn>,
    fallback: Lsn,
) -> Result<StartPlan, SessionError> {
    let size = ctx.segment_size;
    let spooled = ctx.take_over_spool().await?;
    let next_after = |s: SegmentName| s.segno(size).map(|n| (s.timeline, SegNo(n.0 + 1)));
    let at = |s: SegmentName| s.segno(size).map(|n| (s.timeline, n));
    // A snapshot in the archive counts like a tail in the spool: that segment was archived
    // up to inside it. Without it, an archive holding only a snapshot would look empty, and
    // the stream would start where the server is, past WAL it no longer has, unreported.
    let (newest, snapshot) = ctx.cluster.newest_segment_and_snapshot().await?;
    let held = [
        spooled.complete.last().and_then(|s| next_after(*s)),
        spooled.tails.last().and_then(|(s, _)| at(*s)),
        newest.and_then(next_after),
        snapshot.and_then(at),
    ]
    .into_iter()
    .flatten()
    .max();
    let history = match server_timeline.0 {
        1 => Vec::new(),
        _ => archive_history(conn, &ctx.cluster, server_timeline).await?,
    };
    let Some((timeline, next)) = held else {
        let segment = SegNo::containing(options.start_lsn.unwrap_or(fallback), size);
        return Ok(StartPlan {
            timeline: server_timeline,
            segment,
            missing_until: SegNo(segment.0 + 1),
            guaranteed: slot_restart.is_some(),
            resume: segment,
        });
    };
    if timeline < server_timeline {
        let ends = HeldEnds {
            newest,
            snapshot,
            spooled: &spooled,
        };
        warn_of_wal_past_the_fork(ctx, &history, timeline, ends, size).await;
    }
    let (timeline, resume) = if timeline == server_timeline {
        (timeline, next)
    } else if timeline > server_timeline {
        return Err(BehindArchive::refusal(
            conn.host(),
            server_timeline,
            timeline,
        ));
    } else {
        past_fork(conn, &history, timeline, next, server_timeline, size)?
    };
    let plan = plan_on(ctx, &history, (timeline, resume), slot_restart, &spooled).await?;
    ctx.archive_copies_behind(&plan, &spooled).await;
    Ok(plan)
}

/// Plans the start on `timeline`, where streaming resumes at `resume` unless the archive has a
/// hole the server can still fill ([`plan`]) or the uploader refused a segment that must come
/// from the server again. The server's `history` leads to `timeline`; `slot_restart` is
/// where its slot keeps WAL from; `spooled`, what the spool held at this start.
async fn plan_on(
    ctx: &Context,
    history: &[HistoryEntry],
    (timeline, resume): (TimelineId, SegNo),
    slot_restart: Option<Lsn>,
    spooled: &spool::SpoolContents,
) -> Result<StartPlan, SessionError> {
    let size = ctx.segment_size;
    let begin = SegNo::containing(timeline_begin(history, timeline), size);
    let keeps_from = slot_restart.map(|l| SegNo::containing(l, size).max(begin));
    let on_timeline = |s: &SegmentName| (s.timeline == timeline).then(|| s.segno(size)).flatten();
    let spooled_here: BTreeSet<SegNo> = spooled.complete.iter().filter_map(on_timeline).collect();
    let per_group = size.segments_per_xlog_id();
    let group_start = |n: SegNo| SegNo(n.0 / per_group * per_group).max(begin);
    let newest_group = resume.0.saturating_sub(1) / per_group;
    let first_group = match keeps_from {
        Some(keeps) => keeps.0 / per_group,
        // Nothing says where the server's WAL begins: look back from the oldest segment the
        // spool holds, one group further, for where the archive ends before it.
        None => (spooled_here.first())
            .map_or(newest_group, |n| n.0 / per_group)
            .min(newest_group)
            .saturating_sub(1),
    };
    let first_group = first_group.max(newest_group.saturating_sub(MAX_GROUPS_CHECKED - 1));
    let mut scan_from = SegNo(first_group * per_group).max(begin);
    let mut held = ctx
        .cluster
        .segments_between(timeline, scan_from, resume, size)
        .await?;
    // One reading of what the uploader refused (a file found damaged while the archive was
    // listed, say), for the plan and for what it leaves behind; one refused after it ends the
    // stream instead ([`super::upload::Uploader::refused_before`]).
    let refused = ctx.uploader.refused_segments();
    if let Some((timeline, segment)) = refused_on_ancestor(&refused, history, timeline, size) {
        let plan = StartPlan {
            timeline,
            segment,
            missing_until: SegNo(segment.0 + 1),
            guaranteed: slot_restart.is_some_and(|l| SegNo::containing(l, size) <= segment),
            resume: SegNo(segment.0 + 1),
        };
        tracing::warn!(
            segment = %SegmentName::new(timeline, segment, size),
            "a segment of an earlier timeline did not read back from the spool as it was \
             received: streaming again from it, then along the server's history"
        );
        ctx.give_up_refused_behind(&refused, &plan);
        return Ok(plan);
    }
    let refused_here: BTreeSet<SegNo> = (refused.iter())
        .filter_map(on_timeline)
        .filter(|n| (begin..resume).contains(n))
        .collect();
    // One refused before what was listed (possible in --synchronous mode, where refusals do
    // not hold the slot back): list back to it, so that what lies between is not taken for
    // missing.
    if let Some(&oldest) = refused_here.first().filter(|&&n| n < scan_from) {
        let from = group_start(oldest);
        held.extend(
            ctx.cluster
                .segments_between(timeline, from, scan_from, size)
                .await?,
        );
        scan_from = from;
    }
    held.extend(spooled_here);
    let plan = plan(
        timeline,
        &held,
        &refused_here,
        resume,
        keeps_from.map(|k| k.max(scan_from)),
        &ctx.lost,
    );
    let planned = SegmentName::new(timeline, plan.segment, size);
    if refused_here.contains(&plan.segment) {
        tracing::warn!(
            segment = %planned,
            "a spool segment did not read back as it was received: streaming again from it"
        );
    } else if ctx.uploader.is_unchecked(planned) {
        tracing::warn!(
            segment = %planned,
            "a spool segment an earlier run left could not be checked: streaming again from it"
        );
    } else if plan.segment < resume {
        tracing::warn!(
            first_missing = %planned,
            newest_held = %SegmentName::new(timeline, SegNo(resume.0 - 1), size),
            "the archive has a hole: streaming again from its start"
        );
    }
    ctx.give_up_refused_behind(&refused, &plan);
    Ok(plan)
}

/// The oldest segment the uploader `refused` on an ancestor of `timeline` that the server's
/// `history` still leads through (at or before the segment where that timeline was left): the
/// server streams it on that timeline, then follows the history to `timeline` again.
fn refused_on_ancestor(
    refused: &[SegmentName],
    history: &[HistoryEntry],
    timeline: TimelineId,
    size: SegmentSize,
) -> Option<(TimelineId, SegNo)> {
    (refused.iter())
        .filter(|s| s.timeline < timeline)
        .filter_map(|s| {
            let n = s.segno(size)?;
            let left = history
                .iter()
                .find(|e| e.timeline == s.timeline)?
                .switch_point;
            (n <= SegNo::containing(left, size)).then_some((s.timeline, n))
        })
        .min_by_key(|&(timeline, n)| (n, timeline))
}

/// What the archive and the spool hold at their newest: a complete segment, a snapshot, the
/// spool's segments and tails.
struct HeldEnds<'a> {
    newest: Option<SegmentName>,
    snapshot: Option<SegmentName>,
    spooled: &'a spool::SpoolContents,
}

/// When the archive (or the spool) holds WAL of `timeline` past the point where the server's
/// history leaves it (a failover to a node that had not received everything the receiver
/// confirmed), says so with the range and how to restore it: the server's timeline goes on
/// without it.
async fn warn_of_wal_past_the_fork(
    ctx: &Context,
    history: &[HistoryEntry],
    timeline: TimelineId,
    held: HeldEnds<'_>,
    size: SegmentSize,
) {
    let Some(switch_point) = history
        .iter()
        .find(|e| e.timeline == timeline)
        .map(|e| e.switch_point)
    else {
        return;
    };
    let on = |s: &SegmentName| s.timeline == timeline;
    let after = |s: &SegmentName| s.segno(size).map(|n| SegNo(n.0 + 1).start_lsn(size));
    let mut ends: Vec<Lsn> = [held.newest, held.spooled.complete.last().copied()]
        .iter()
        .flatten()
        .filter(|s| on(s))
        .filter_map(after)
        .collect();
    ends.extend(
        (held.spooled.tails.iter())
            .filter(|(s, _)| on(s))
            .map(|(_, end)| *end),
    );
    if let Some(snapshot) = held.snapshot.filter(on)
        && let Ok(Some(end)) = ctx.cluster.newest_snapshot_end(snapshot).await
    {
        ends.push(end);
    }
    let Some(end) = ends.into_iter().max().filter(|end| *end > switch_point) else {
        return;
    };
    tracing::warn!(
        timeline = timeline.0,
        %switch_point,
        "the archive holds WAL of timeline {} past where the server's history left it \
         ({switch_point} to {end}, in the archive or the spool): any commit there is not on the \
         server's timeline (a few bytes may be only the rest of a record the server never \
         completed), and stays restorable with walhalla restore --target-timeline {} \
         (--partial for what only a snapshot holds)",
        timeline.0,
        timeline.0
    );
}

/// Where `timeline` begins: where its parent's history ends (0 for the first timeline).
fn timeline_begin(history: &[HistoryEntry], timeline: TimelineId) -> Lsn {
    history
        .iter()
        .filter(|e| e.timeline < timeline)
        .map(|e| e.switch_point)
        .max()
        .unwrap_or(Lsn(0))
}

/// The archive's newest timeline is an ancestor of the server's: continue on it up to the
/// fork, or, when the archive already holds WAL past the fork, restart at the fork on the
/// timeline that followed.
fn past_fork(
    conn: &Connection,
    history: &[HistoryEntry],
    timeline: TimelineId,
    next: SegNo,
    server_timeline: TimelineId,
    size: SegmentSize,
) -> Result<(TimelineId, SegNo), SessionError> {
    let Some(position) = history.iter().position(|e| e.timeline == timeline) else {
        return Err(SessionError::fatal(anyhow!(
            "the archive holds timeline {}, which is not in the history of {}'s timeline {}",
            timeline.0,
            conn.host(),
            server_timeline.0
        )));
    };
    let switch_point = history[position].switch_point;
    if next.start_lsn(size) <= switch_point {
        return Ok((timeline, next));
    }
    let successor = history
        .get(position + 1)
        .map_or(server_timeline, |e| e.timeline);
    tracing::info!(
        "the archive holds complete segments of timeline {} past the fork: restarting at the \
         fork on timeline {}",
        timeline.0,
        successor.0
    );
    Ok((successor, SegNo::containing(switch_point, size)))
}

impl Context {
    /// Reports as lost the segments of `refused` (the uploader's, read once for `plan`) that a
    /// stream started at `plan` will not receive again (on an older timeline the server's
    /// history does not lead through, or before the plan's start: outside what the start
    /// looks at, or already lost). Otherwise each session would end over them again, and the
    /// flush position would never pass them.
    fn give_up_refused_behind(&self, refused: &[SegmentName], plan: &StartPlan) {
        let size = self.segment_size;
        for &refused in refused {
            let Some(segno) = refused.segno(size) else {
                continue;
            };
            let behind = refused.timeline < plan.timeline
                || (refused.timeline == plan.timeline && segno < plan.segment);
            if behind {
                self.report_gap(refused.timeline, segno, segno);
            }
        }
    }

    /// Reports missing segments the server no longer keeps: an error line, `/status` and
    /// `walhalla_archive_gap_segments`.
    /// A segment held only by a spool file the take-over could not check is not lost yet: its
    /// upload goes on, and a refusal reports it then ([`Self::give_up_refused_behind`]).
    pub(super) fn report_gap(&self, timeline: TimelineId, first: SegNo, last: SegNo) {
        let size = self.segment_size;
        // Refused segments among them can no longer be streamed again.
        self.uploader
            .forget_refused(timeline, first, SegNo(last.0 + 1));
        let unchecked = |n: SegNo| {
            self.uploader
                .is_unchecked(SegmentName::new(timeline, n, size))
        };
        let mut run: Option<(SegNo, SegNo)> = None;
        for n in (first.0..=last.0).map(SegNo) {
            if unchecked(n) {
                tracing::warn!(
                    segment = %SegmentName::new(timeline, n, size),
                    "the server no longer has this segment, and only a spool file an earlier run \
                     left holds it, which has not read back yet: archived if it does, else \
                     reported lost then"
                );
                if let Some((a, b)) = run.take() {
                    self.report_lost(timeline, a, b);
                }
            } else {
                run = Some(run.map_or((n, n), |(a, _)| (a, n)));
            }
        }
        if let Some((a, b)) = run {
            self.report_lost(timeline, a, b);
        }
    }

    /// Reports segments `first` to `last` of `timeline` lost (see [`Self::report_gap`]), and
    /// the damaged copies the spool keeps of them.
    fn report_lost(&self, timeline: TimelineId, first: SegNo, last: SegNo) {
        let size = self.segment_size;
        let copies = self.uploader.damaged().within(timeline, first, last, size);
        let segments = last.0 + 1 - first.0;
        let (first, last) = (
            SegmentName::new(timeline, first, size),
            SegmentName::new(timeline, last, size),
        );
        tracing::error!(
            %first, %last, segments,
            "the archive lacks WAL the server no longer has: these segments are lost to the archive; a recovery through them needs another source (take a new base backup)"
        );
        self.shared.metrics.archive_gap(ArchiveGap {
            first: first.to_string(),
            last: last.to_string(),
            segments,
        });
        for (segment, copy) in &copies {
            tracing::warn!(
                %segment,
                copy = %copy.display(),
                "the spool keeps a damaged copy of this lost segment: it holds the WAL the \
                 receiver got up to the damage; keep it (see the README, \"Damaged spool files\")"
            );
        }
        for (segment, copies) in complete_copies(copies) {
            (self.uploader).archive_valid_prefix(self.cluster.clone(), segment, copies);
        }
    }

    /// Archives the WAL up to the damage of the damaged copies of segments of `plan`'s
    /// timeline before where it streams from, which the archive lacks and of which the spool
    /// (`spooled`) holds no good file: this run will not receive them, so they are lost to the
    /// archive. A loss an earlier run reported, whose snapshot was not stored (it stopped
    /// before the task ran, or the spool was full), gets it now. Once a process per segment
    /// ([`super::damaged::DamagedCopies::begin_prefix`]); nothing is stored when the archive
    /// holds a snapshot of the segment that reaches as far.
    async fn archive_copies_behind(&self, plan: &StartPlan, spooled: &spool::SpoolContents) {
        let Some(before) = plan.segment.0.checked_sub(1) else {
            return;
        };
        let size = self.segment_size;
        let damaged = self.uploader.damaged();
        // A segment this process archives or archived the prefix of costs no request to the
        // archive: every session start comes here.
        let copies = (damaged.within(plan.timeline, SegNo(0), SegNo(before), size))
            .into_iter()
            .filter(|(segment, _)| {
                !spooled.complete.contains(segment) && !damaged.prefix_begun(*segment)
            });
        for (segment, copies) in complete_copies(copies) {
            if let Ok(false) = self.cluster.holds(&WalFileName::Segment(segment)).await {
                (self.uploader).archive_valid_prefix(self.cluster.clone(), segment, copies);
            }
        }
    }
}

/// The damaged copies of complete segments among `copies`, by segment: a kept tail's copy
/// ends before the stream did anyway.
fn complete_copies(
    copies: impl IntoIterator<Item = (SegmentName, PathBuf)>,
) -> BTreeMap<SegmentName, Vec<PathBuf>> {
    let mut complete = BTreeMap::<SegmentName, Vec<PathBuf>>::new();
    for (segment, copy) in copies {
        if spool::is_complete_copy(&copy, segment) {
            complete.entry(segment).or_default().push(copy);
        }
    }
    complete
}

#[cfg(test)]
mod tests {
    use super::*;

    const TL: TimelineId = TimelineId(1);

    fn set(segments: &[u64]) -> BTreeSet<SegNo> {
        segments.iter().map(|&n| SegNo(n)).collect()
    }

    fn start(held: &[u64], resume: u64, keeps: Option<u64>, lost: &[u64]) -> (u64, u64, bool) {
        refused_start(held, &[], resume, keeps, lost)
    }

    fn refused_start(
        held: &[u64],
        refused: &[u64],
        resume: u64,
        keeps: Option<u64>,
        lost: &[u64],
    ) -> (u64, u64, bool) {
        let (held, refused, lost) = (set(held), set(refused), set(lost));
        let p = plan(TL, &held, &refused, SegNo(resume), keeps.map(SegNo), &lost);
        (p.segment.0, p.missing_until.0, p.guaranteed)
    }

    #[test]
    fn a_refused_segment_is_streamed_again_though_its_file_is_listed() {
        // CI67: a repaired spool gave back 5C empty; the uploader refused it while the archive
        // was listed, and the plan counted the listed file as held, so started at 5D.
        assert_eq!(
            refused_start(&[0x5a, 0x5b, 0x5c], &[0x5c], 0x5d, Some(0x5a), &[]),
            (0x5c, 0x5d, true)
        );
        // The newest spooled file refused, with no slot: still tried, not skipped.
        assert_eq!(refused_start(&[4, 5, 6], &[6], 7, None, &[]), (6, 7, false));
        // Refused and gone from the spool, nothing else held: from it, not from resume.
        assert_eq!(refused_start(&[], &[6], 7, None, &[]), (6, 7, false));
        // Refused before the slot's start (--synchronous, where refusals do not hold it back).
        assert_eq!(
            refused_start(&[10, 11, 12], &[8], 13, Some(10), &[]),
            (8, 10, false)
        );
        // A refused run, ending at a held segment.
        assert_eq!(
            refused_start(&[4, 5, 6, 7], &[5, 6], 8, Some(4), &[]),
            (5, 7, true)
        );
        // Refused at or past where streaming resumes anyway.
        assert_eq!(refused_start(&[4, 5], &[6], 6, Some(4), &[]), (6, 7, true));
        assert_eq!(refused_start(&[], &[9], 6, None, &[]), (6, 7, false));
        // Refused again after it was reported lost: not where the start looks back to.
        assert_eq!(refused_start(&[7], &[5], 8, None, &[5]), (8, 9, false));
        // Already known lost (the server said it no longer has it): not tried again.
        assert_eq!(
            refused_start(&[4, 5, 6], &[5], 7, Some(4), &[5]),
            (7, 8, true)
        );
    }

    #[test]
    fn a_hole_the_slot_still_keeps_is_filled_from_its_start() {
        // The review's case: slot at 06, archive 06..09 and 12.
        assert_eq!(start(&[6, 7, 8, 9, 12], 13, Some(6), &[]), (10, 12, true));
        // The oldest segment itself lost in flight (07 stored before 06).
        assert_eq!(start(&[7, 8], 9, Some(6), &[]), (6, 7, true));
        // No hole: after the newest.
        assert_eq!(start(&[6, 7, 8], 9, Some(6), &[]), (9, 10, true));
    }

    #[test]
    fn holes_before_the_slot_are_tried_and_skipped_once_lost() {
        let held = [2, 3, 6, 7, 10];
        assert_eq!(start(&held, 11, Some(9), &[]), (4, 6, false));
        assert_eq!(start(&held, 11, Some(9), &[4, 5]), (8, 9, false));
        assert_eq!(start(&held, 11, Some(9), &[4, 5, 8]), (9, 10, true));
        // A slot ahead of everything held: what lies between is tried, then skipped.
        assert_eq!(start(&held, 11, Some(14), &[4, 5, 8, 9]), (11, 14, false));
        assert_eq!(
            start(&held, 11, Some(14), &[4, 5, 8, 9, 11, 12, 13]),
            (14, 15, true)
        );
    }

    #[test]
    fn a_refused_segment_of_an_earlier_timeline_is_streamed_again_while_the_history_leads_there() {
        let size = SegmentSize::new(1 << 24).unwrap();
        let name = |t: u32, n: u64| SegmentName::new(TimelineId(t), SegNo(n), size);
        let entry = |t: u32, segment: u64, offset: u64| HistoryEntry {
            timeline: TimelineId(t),
            switch_point: Lsn(SegNo(segment).start_lsn(size).0 + offset),
        };
        // Timeline 1 left inside 0x20, timeline 2 inside 0x30; streaming on timeline 3.
        let history = [entry(1, 0x20, 0x100), entry(2, 0x30, 0x200)];
        let on = |refused: &[SegmentName]| {
            refused_on_ancestor(refused, &history, TimelineId(3), size).map(|(t, n)| (t.0, n.0))
        };
        assert_eq!(on(&[name(1, 0x1f)]), Some((1, 0x1f)));
        // The segment the switch lies in is on the old timeline up to the switch.
        assert_eq!(on(&[name(1, 0x20)]), Some((1, 0x20)));
        // Past where timeline 1 was left: no server streams it.
        assert_eq!(on(&[name(1, 0x21)]), None);
        // The oldest position first, whatever its timeline.
        assert_eq!(on(&[name(2, 0x2a), name(1, 0x1e)]), Some((1, 0x1e)));
        // The current timeline's and a timeline off the history: left to the plan and to
        // what it leaves behind.
        assert_eq!(on(&[name(3, 0x31), name(4, 0x10)]), None);
        let sibling = [entry(1, 0x20, 0x100)];
        assert_eq!(
            refused_on_ancestor(&[name(2, 0x22)], &sibling, TimelineId(3), size),
            None
        );
    }

    #[test]
    fn without_a_slot_holes_after_the_oldest_held_are_tried() {
        assert_eq!(start(&[4, 5, 7], 8, None, &[]), (6, 7, false));
        assert_eq!(start(&[4, 5, 6, 7], 8, None, &[]), (8, 9, false));
        // Nothing held: where the slot keeps WAL.
        assert_eq!(start(&[], 8, Some(3), &[]), (3, 8, true));
    }
}
