//! Checking each backup: its metadata, every piece (envelope and CRC-32), and every file of
//! its tar streams against the server's manifest (size and checksum), as a restore would,
//! without writing anything.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::{Finding, Tally};
use crate::archive::{BackupObject, ClusterArchive};
use crate::backup::catalog::NoMeta;
use crate::backup::manifest;
use crate::backup::meta::BackupMeta;
use crate::list::Survey;
use crate::restore::{extract, pieces};
use crate::{blocking, envelope};

/// Checks every backup of the cluster that stopped at or after `since` (all without it);
/// incomplete backups (whose WAL never arrived) and folders without metadata (a backup
/// interrupted or still running) are skipped: restore never uses them. Metadata that cannot
/// be read is a finding.
pub async fn check(
    cluster: &ClusterArchive,
    survey: &Survey,
    since: Option<jiff::Timestamp>,
    parallel: usize,
) -> (Tally, Vec<Finding>) {
    let mut tally = Tally::default();
    let mut findings = Vec::new();
    for (id, problem) in &survey.unusable {
        match problem {
            // A backup interrupted, or still running: nothing restorable to check.
            NoMeta::Absent => tally.skipped += 1,
            NoMeta::Unreadable(_) => findings.push(Finding {
                object: cluster.backup_object_key(id, &BackupObject::Meta),
                problem: problem.to_string(),
            }),
        }
    }
    for meta in &survey.backups {
        let recent = since.is_none_or(|s| meta.stop_timestamp().is_ok_and(|t| t >= s));
        if !meta.is_complete() || !recent {
            tally.skipped += 1;
            continue;
        }
        tally.objects += 1;
        tally.bytes += meta.stored_bytes;
        if let Err(finding) = check_backup(cluster, meta, parallel).await {
            findings.push(finding);
        }
    }
    (tally, findings)
}

/// One backup, to its first problem.
async fn check_backup(
    cluster: &ClusterArchive,
    meta: &BackupMeta,
    parallel: usize,
) -> Result<(), Finding> {
    let id = meta.backup_id().map_err(|problem| Finding {
        object: meta.id.clone(),
        problem,
    })?;
    let manifest_key = cluster.backup_object_key(&id, &BackupObject::Manifest);
    let finding = |object: &str, problem: String| Finding {
        object: object.to_string(),
        problem,
    };
    let stored = cluster
        .get_backup_object(&id, &BackupObject::Manifest)
        .await
        .map_err(|e| finding(&manifest_key, format!("cannot be read: {e}")))?
        .ok_or_else(|| finding(&manifest_key, "missing".into()))?;
    let manifest = blocking::run(move || {
        let content = envelope::decode(&stored)?;
        anyhow::Ok(manifest::parse(&content)?)
    })
    .await
    .map_err(|e| finding(&manifest_key, format!("{e:#}")))?;
    let manifest = Arc::new(manifest);
    let mut seen = HashSet::new();
    for archive in &meta.archives {
        let prefix = if archive.name == "base" {
            String::new()
        } else {
            format!("pg_tblspc/{}/", archive.name)
        };
        let reader = pieces::open(
            cluster.clone(),
            id.clone(),
            archive.name.clone(),
            archive.pieces,
            parallel,
            Arc::new(AtomicU64::new(0)),
        );
        let compression = archive.compression;
        let manifest = manifest.clone();
        let stream_name = format!("backup {} archive {}", meta.id, archive.name);
        let checked = blocking::run(move || {
            let stream = pieces::tar_stream(reader, compression)?;
            anyhow::Ok(extract::check(stream, &prefix, &manifest)?)
        })
        .await
        .map_err(|e| finding(&stream_name, format!("{e:#}")))?;
        seen.extend(checked.files);
    }
    if let Some(first) = extract::missing(&manifest, &seen).first() {
        return Err(finding(
            &manifest_key,
            format!("lists {first}, which no archive of the backup holds"),
        ));
    }
    Ok(())
}
