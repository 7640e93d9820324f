//! What the daemon's parts share: the archive, the receiver's measurements and, once it knows
//! its cluster, where that cluster's WAL is (spool and archive); the fetch server reads them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::archive::{Archive, ClusterArchive, Direction};
use crate::metrics::{Metrics, Snapshot};

/// The state a receiver and a fetch server share; hold it in an `Arc`.
#[derive(Debug, Default)]
pub struct Shared {
    /// The measurements.
    pub metrics: Metrics,
    archive: Option<Archive>,
    served: OnceLock<ServedCluster>,
    server: OnceLock<ServerFacts>,
}

/// What a fetch server here listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerFacts {
    /// The address it listens on.
    pub listen: SocketAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
}

/// Where the WAL of the cluster being served is.
#[derive(Clone, Debug)]
pub struct ServedCluster {
    /// The cluster's part of the archive.
    pub archive: ClusterArchive,
    /// The receiver's spool, holding complete segments not yet archived.
    pub spool: Option<PathBuf>,
}

impl Shared {
    /// State for a daemon of `archive` whose cluster is not known yet.
    pub fn new(archive: Archive) -> Shared {
        Shared {
            archive: Some(archive),
            ..Shared::default()
        }
    }

    /// State for a server of `cluster` in `archive`, known from the start.
    pub fn serving(archive: Archive, cluster: ServedCluster) -> Shared {
        let shared = Shared::new(archive);
        shared.publish(cluster);
        shared
    }

    /// The archive, when this state has one.
    pub fn archive(&self) -> Option<&Archive> {
        self.archive.as_ref()
    }

    /// Publishes the cluster once it is known; later calls change nothing (a receiver
    /// serves one cluster for its whole life).
    pub fn publish(&self, cluster: ServedCluster) {
        let _ = self.served.set(cluster);
    }

    /// The cluster being served, once known.
    pub fn served(&self) -> Option<&ServedCluster> {
        self.served.get()
    }

    /// A fetch server runs here.
    pub fn server_started(&self, facts: ServerFacts) {
        let _ = self.server.set(facts);
    }

    /// The fetch server here, if one runs.
    pub fn server(&self) -> Option<ServerFacts> {
        self.server.get().copied()
    }

    /// The measurements now, with the archive's health.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = self.metrics.snapshot();
        if let Some(archive) = &self.archive {
            snapshot.archive_reads = archive.health().report(Direction::Read);
            snapshot.archive_writes = archive.health().report(Direction::Write);
        }
        snapshot
    }
}
