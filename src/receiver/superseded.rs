//! Whether the timeline being streamed has been superseded while it streams: the archive
//! holds the history file of a newer timeline (a promotion elsewhere, archived by the new
//! primary's `archive_command` or by another receiver). A server that goes on writing on the
//! old timeline past the point where the newer one forked from it is an old primary left
//! running, a split brain: what it writes there is on no timeline the cluster follows, and a
//! synchronous receiver must not confirm it. Up to the fork it is the newer timeline's WAL
//! too, and a standby being promoted sends it before ending its timeline.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::archive::ClusterArchive;
use crate::wal::{HistoryEntry, Lsn, TimelineId, WalFileName, parse_history};

/// A newer timeline the archive holds, and where the one streamed stops being on its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fork {
    /// The newest timeline whose history file the archive holds.
    pub newer: TimelineId,
    /// The first position of the streamed timeline that is not on the newer one's path
    /// (`Lsn(0)` when the newer timeline does not descend from it at all).
    pub at: Lsn,
}

/// Where `timeline` leaves the path of `newer`, whose history is `entries`; `None` when
/// `newer` is not newer.
pub fn fork_of(timeline: TimelineId, newer: TimelineId, entries: &[HistoryEntry]) -> Option<Fork> {
    if newer <= timeline {
        return None;
    }
    let at = (entries.iter())
        .find(|e| e.timeline == timeline)
        .map_or(Lsn(0), |e| e.switch_point);
    Some(Fork { newer, at })
}

/// A task that looks for a newer timeline in the archive every so often while a timeline
/// streams; stopped when dropped.
pub struct SupersededWatch {
    found: watch::Receiver<Option<Fork>>,
    task: JoinHandle<()>,
}

impl SupersededWatch {
    /// Starts looking, every `every`, for a timeline newer than `timeline`.
    pub fn start(cluster: ClusterArchive, timeline: TimelineId, every: Duration) -> Self {
        let (tell, found) = watch::channel(None);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                // An archive that cannot be read now is asked again at the next tick: its
                // health says what fails.
                if let Ok(Some(fork)) = newer_fork(&cluster, timeline).await {
                    let _ = tell.send(Some(fork));
                    return;
                }
            }
        });
        SupersededWatch { found, task }
    }

    /// Resolves once a newer timeline is found (never, if none is).
    pub async fn found(&mut self) -> Fork {
        let found = self.found.wait_for(Option::is_some).await.map(|fork| *fork);
        match found {
            Ok(fork) => fork.expect("waited for"),
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for SupersededWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The newest timeline the archive holds a history of, if newer than `timeline`, with where
/// `timeline` leaves its path.
pub async fn newer_fork(
    cluster: &ClusterArchive,
    timeline: TimelineId,
) -> anyhow::Result<Option<Fork>> {
    let Some(&newer) = cluster.history_timelines().await?.last() else {
        return Ok(None);
    };
    if newer <= timeline {
        return Ok(None);
    }
    // Listed but gone (pruned by hand meanwhile): no newer timeline to go by.
    let Some(content) = cluster.get_verified(&WalFileName::History(newer)).await? else {
        return Ok(None);
    };
    let entries = parse_history(newer, &content).map_err(anyhow::Error::msg)?;
    Ok(fork_of(timeline, newer, &entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_timeline_forks_where_its_history_says() {
        let entries = [
            HistoryEntry {
                timeline: TimelineId(1),
                switch_point: Lsn(0x3000000),
            },
            HistoryEntry {
                timeline: TimelineId(2),
                switch_point: Lsn(0x5000000),
            },
        ];
        let fork = |streamed: u32| fork_of(TimelineId(streamed), TimelineId(3), &entries);
        assert_eq!(
            fork(2),
            Some(Fork {
                newer: TimelineId(3),
                at: Lsn(0x5000000)
            })
        );
        assert_eq!(fork(1).map(|f| f.at), Some(Lsn(0x3000000)));
        assert_eq!(fork(3), None);
        assert_eq!(fork(4), None);
        // A branch the newer timeline does not descend from is off its path throughout.
        let sibling = [HistoryEntry {
            timeline: TimelineId(1),
            switch_point: Lsn(0x3000000),
        }];
        assert_eq!(
            fork_of(TimelineId(2), TimelineId(3), &sibling).map(|f| f.at),
            Some(Lsn(0))
        );
    }
}
