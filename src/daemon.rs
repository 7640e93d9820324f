//! What the daemon's parts share: the receiver publishes its measurements and, once it knows
//! the cluster, where that cluster's WAL is; the fetch server reads both.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::archive::ClusterArchive;
use crate::metrics::Metrics;

/// The state a receiver and a fetch server share; hold it in an `Arc`.
#[derive(Debug, Default)]
pub struct Shared {
    /// The measurements.
    pub metrics: Metrics,
    served: OnceLock<ServedCluster>,
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
    /// State for a server of `cluster` known from the start.
    pub fn serving(cluster: ServedCluster) -> Shared {
        let shared = Shared::default();
        shared.publish(cluster);
        shared
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
}
