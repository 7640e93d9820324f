//! Base backups: `walhalla backup` streams one from the server into the archive, in pieces of
//! its tar streams, beside the server's manifest and walhalla's metadata.

pub mod catalog;
pub mod label;
pub mod manifest;
pub mod meta;
pub mod protocol;
pub mod take;
pub mod wal;

use meta::BackupMeta;

/// One line about a backup, for a person.
pub fn describe(meta: &BackupMeta) -> String {
    let state = if meta.is_complete() {
        "complete".to_string()
    } else {
        format!(
            "INCOMPLETE: WAL segment {} never reached the archive",
            meta.wal_missing.as_deref().unwrap_or("?")
        )
    };
    format!(
        "backup {} ({}): {} to {} on timeline {}, {} MiB stored of {} MiB, {state}",
        meta.id,
        meta.label,
        meta.start_lsn,
        meta.stop_lsn,
        meta.stop_timeline,
        meta.stored_bytes >> 20,
        meta.bytes >> 20,
    )
}

/// The backups of the archive's clusters, for `walhalla list`.
#[derive(Debug, serde::Serialize)]
pub struct Listing {
    /// One entry per cluster.
    pub clusters: Vec<ClusterListing>,
}

/// One cluster's backups.
#[derive(Debug, serde::Serialize)]
pub struct ClusterListing {
    /// The cluster's system identifier, as text.
    pub system_id: String,
    /// Its backups, oldest first.
    pub backups: Vec<BackupMeta>,
    /// Backup folders without usable metadata (interrupted or damaged), with the reason.
    pub unusable: Vec<Unusable>,
}

/// A backup folder that restore cannot use.
#[derive(Debug, serde::Serialize)]
pub struct Unusable {
    /// The folder's name.
    pub id: String,
    /// Why.
    pub reason: String,
}

/// Reads every backup of `system_id`, or of every cluster in the archive.
pub async fn listing(
    archive: &crate::archive::Archive,
    system_id: Option<crate::wal::SystemId>,
) -> anyhow::Result<Listing> {
    let ids = match system_id {
        Some(id) => vec![id],
        None => archive.clusters().await?,
    };
    let mut clusters = Vec::new();
    for id in ids {
        let entries = catalog::read(&archive.cluster(id)).await?;
        let (mut backups, mut unusable) = (Vec::new(), Vec::new());
        for entry in entries {
            match entry.meta {
                Ok(meta) => backups.push(meta),
                Err(reason) => unusable.push(Unusable {
                    id: entry.id.to_string(),
                    reason,
                }),
            }
        }
        clusters.push(ClusterListing {
            system_id: id.to_string(),
            backups,
            unusable,
        });
    }
    Ok(Listing { clusters })
}

/// `walhalla list` for a person: a table per cluster.
pub fn describe_listing(listing: &Listing) -> String {
    let mut out = String::new();
    for cluster in &listing.clusters {
        out.push_str(&format!("cluster {}\n", cluster.system_id));
        out.push_str(&format!(
            "  {:<20} {:<28} {:<22} {:<22} {:>3} {:>10} {:>10}  {}\n",
            "BACKUP",
            "STOPPED (UTC)",
            "START LSN",
            "STOP LSN",
            "TLI",
            "SIZE MiB",
            "STORED MiB",
            "STATE"
        ));
        for b in &cluster.backups {
            let state = if b.is_complete() {
                "complete".to_string()
            } else {
                format!(
                    "incomplete (missing {})",
                    b.wal_missing.as_deref().unwrap_or("?")
                )
            };
            out.push_str(&format!(
                "  {:<20} {:<28} {:<22} {:<22} {:>3} {:>10} {:>10}  {state}{}\n",
                b.id,
                b.stop_time,
                b.start_lsn,
                b.stop_lsn,
                b.stop_timeline,
                b.bytes >> 20,
                b.stored_bytes >> 20,
                if b.from_standby {
                    ", from a standby"
                } else {
                    ""
                },
            ));
        }
        for u in &cluster.unusable {
            out.push_str(&format!("  {:<20} unusable: {}\n", u.id, u.reason));
        }
        if cluster.backups.is_empty() && cluster.unusable.is_empty() {
            out.push_str("  no backups\n");
        }
    }
    if listing.clusters.is_empty() {
        out.push_str("the archive holds no cluster\n");
    }
    out
}
