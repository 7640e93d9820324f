//! Which cluster's namespace a hook works in: `--system-id` if given, else the data
//! directory's `pg_control` (PostgreSQL runs the hooks there), else the identifier a segment
//! carries in its page header, else the only cluster the archive holds.

use std::path::Path;

use thiserror::Error;

use crate::archive::{self, Archive, OnlyCluster};
use crate::wal::{CONTROL_FILE_PATH, SystemId, system_id_from_control_file};

/// Why the cluster could not be determined.
#[derive(Debug, Error)]
pub enum NamespaceError {
    /// Two sources disagree: the file belongs to another cluster.
    #[error(
        "the file belongs to cluster {content} but this is cluster {expected} ({source_name}): refusing to mix two clusters' WAL"
    )]
    Mismatch {
        /// The identifier the file carries.
        content: SystemId,
        /// The namespace in use.
        expected: SystemId,
        /// Where the namespace came from.
        source_name: String,
    },
    /// Nothing names a cluster and the archive holds none.
    #[error(
        "cannot tell which cluster this is: no --system-id, no {CONTROL_FILE_PATH} here, and archive {0} holds no cluster yet"
    )]
    NoCluster(String),
    /// Nothing names a cluster and the archive holds several.
    #[error("cannot tell which cluster this is: archive {location} holds clusters {}; pass --system-id", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// The archive.
        location: String,
        /// The clusters it holds.
        ids: Vec<SystemId>,
    },
    /// `pg_control` exists but cannot be read.
    #[error("cannot read the system identifier")]
    ControlFile(#[source] std::io::Error),
    /// Listing the archive failed.
    #[error(transparent)]
    Archive(#[from] archive::Error),
}

/// Determines the cluster, checking `from_content` (the identifier in a segment's header)
/// against an explicit or `pg_control` identifier.
pub async fn resolve_system_id(
    explicit: Option<SystemId>,
    data_dir: &Path,
    from_content: Option<SystemId>,
    archive: &Archive,
) -> Result<SystemId, NamespaceError> {
    let declared = match explicit {
        Some(id) => Some((id, "--system-id".to_string())),
        None => system_id_from_control_file(data_dir)
            .map_err(NamespaceError::ControlFile)?
            .map(|id| (id, format!("{}/{CONTROL_FILE_PATH}", data_dir.display()))),
    };
    match (declared, from_content) {
        (Some((expected, source_name)), Some(content)) if content != expected => {
            Err(NamespaceError::Mismatch {
                content,
                expected,
                source_name,
            })
        }
        (Some((id, _)), _) => Ok(id),
        (None, Some(id)) => Ok(id),
        (None, None) => match archive.only_cluster().await? {
            OnlyCluster::Only(id) => Ok(id),
            OnlyCluster::NoneYet => Err(NamespaceError::NoCluster(archive.location().to_string())),
            OnlyCluster::Several(ids) => Err(NamespaceError::Ambiguous {
                location: archive.location().to_string(),
                ids,
            }),
        },
    }
}
