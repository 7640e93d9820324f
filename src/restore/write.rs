//! Writing the restored data directory: the backup's files, each verified against its
//! manifest ([`super::extract`]); the tablespaces where they go; then `tablespace_map`, the
//! recovery settings and the signal file, all made durable.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

use super::{RestoreOptions, extract, pieces, settings};
use crate::archive::ClusterArchive;
use crate::backup::manifest::Manifest;
use crate::backup::meta::BackupMeta;
use crate::progress::Progress;
use crate::{blocking, fsutil};

/// Where each tablespace goes: `--tablespace-map`, else where it was.
pub(super) fn tablespace_destinations(
    backup: &BackupMeta,
    map: &BTreeMap<u32, PathBuf>,
) -> anyhow::Result<BTreeMap<u32, PathBuf>> {
    let mut destinations = BTreeMap::new();
    for archive in backup.archives.iter().filter(|a| a.name != "base") {
        let oid: u32 = archive.name.parse().context("tablespace archive name")?;
        let dir = match (map.get(&oid), &archive.location) {
            (Some(dir), _) => dir.clone(),
            (None, Some(location)) => PathBuf::from(location),
            (None, None) => {
                bail!("tablespace {oid} has no location; give one with --tablespace-map {oid}=DIR")
            }
        };
        destinations.insert(oid, dir);
    }
    for (oid, dir) in &destinations {
        if !dir.is_absolute() {
            bail!(
                "tablespace {oid} was at {}, not an absolute path; give it one with --tablespace-map {oid}=DIR",
                dir.display()
            );
        }
    }
    if let Some(unknown) = map.keys().find(|oid| !destinations.contains_key(oid)) {
        bail!(
            "--tablespace-map names tablespace {unknown}, which backup {} does not have",
            backup.id
        );
    }
    Ok(destinations)
}

/// Writes every archive of the backup, verified against the manifest; checks that every file
/// the manifest lists was written. Returns the files and bytes written.
pub(super) async fn write_files(
    cluster: &ClusterArchive,
    backup: &BackupMeta,
    manifest: &Manifest,
    options: &RestoreOptions,
    tablespaces: &BTreeMap<u32, PathBuf>,
) -> anyhow::Result<(usize, u64)> {
    let id = backup.backup_id().map_err(|e| anyhow!(e))?;
    let manifest = std::sync::Arc::new(manifest.clone());
    let mut written = HashSet::new();
    let mut bytes = 0;
    let progress = Progress::start("restore");
    progress.set_total(backup.archives.iter().map(|a| a.bytes).sum());
    let extracted = async {
        for archive in &backup.archives {
            let (dest, prefix) = if archive.name == "base" {
                (options.dest.clone(), String::new())
            } else {
                let oid: u32 = archive.name.parse().context("tablespace archive name")?;
                (tablespaces[&oid].clone(), format!("pg_tblspc/{oid}/"))
            };
            let reader = pieces::open(
                cluster.clone(),
                id.clone(),
                archive.name.clone(),
                archive.pieces,
                options.parallelism,
                progress.counter(),
            );
            let manifest = manifest.clone();
            let compression = archive.compression;
            let done = blocking::run(move || {
                let job = extract::Extract {
                    dest: &dest,
                    manifest_prefix: &prefix,
                    manifest: &manifest,
                };
                let stream = pieces::tar_stream(reader, compression).context("zstd decoder")?;
                anyhow::Ok(extract::extract(stream, &job)?)
            })
            .await
            .with_context(|| format!("archive {} of backup {}", archive.name, backup.id))?;
            bytes += done.bytes;
            written.extend(done.files);
        }
        anyhow::Ok(())
    };
    let extracted = extracted.await;
    progress.finish().await;
    extracted?;
    let missing = extract::missing(&manifest, &written);
    if let Some(first) = missing.first() {
        bail!(
            "{} files of the manifest were not in the backup's archives, {first} first",
            missing.len()
        );
    }
    Ok((written.len(), bytes))
}

/// A `tablespace_map` file: `OID PATH` lines, the path's bytes as they are with `\\`, LF
/// and CR escaped by a backslash, as PostgreSQL writes and reads it.
fn tablespace_map(tablespaces: &BTreeMap<u32, PathBuf>) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut map = Vec::new();
    for (oid, dir) in tablespaces {
        map.extend_from_slice(format!("{oid} ").as_bytes());
        for &byte in dir.as_os_str().as_bytes() {
            if matches!(byte, b'\\' | b'\n' | b'\r') {
                map.push(b'\\');
            }
            map.push(byte);
        }
        map.push(b'\n');
    }
    map
}

/// Rewrites `tablespace_map` for the new locations, appends the recovery settings, writes the
/// signal file, and makes it all durable.
pub(super) fn finish_directory(
    dest: &Path,
    backup: &BackupMeta,
    settings: &[(&str, String)],
    tablespaces: &BTreeMap<u32, PathBuf>,
    signal: &str,
) -> anyhow::Result<()> {
    use std::io::Write;
    if !tablespaces.is_empty() {
        write_durable(&dest.join("tablespace_map"), &tablespace_map(tablespaces))
            .context("write tablespace_map")?;
        link_tablespaces(dest, tablespaces)?;
    }
    let auto = dest.join("postgresql.auto.conf");
    // Never through a symbolic link the backup carried: it could point out of the directory.
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&auto)
        .with_context(|| format!("open {}", auto.display()))?;
    file.write_all(settings::conf_block(&backup.id, settings).as_bytes())?;
    file.sync_all()?;
    for stale in ["recovery.signal", "standby.signal"] {
        let _ = std::fs::remove_file(dest.join(stale));
    }
    write_durable(&dest.join(signal), b"").with_context(|| format!("write {signal}"))?;
    fsutil::fsync_dir(dest).context("fsync the data directory")?;
    Ok(())
}

/// Links `pg_tblspc/OID` to each tablespace's directory, as pg_basebackup's plain format
/// does, so that pg_verifybackup finds the tablespaces' files before the first start. At that
/// start PostgreSQL makes these links again from `tablespace_map` (replacing these).
fn link_tablespaces(dest: &Path, tablespaces: &BTreeMap<u32, PathBuf>) -> anyhow::Result<()> {
    let links = dest.join("pg_tblspc");
    fsutil::create_dir_all_durable(&links).context("create pg_tblspc")?;
    for (oid, dir) in tablespaces {
        let link = links.join(oid.to_string());
        match std::fs::symlink_metadata(&link) {
            Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(&link)?,
            _ => {}
        }
        std::os::unix::fs::symlink(dir, &link)
            .with_context(|| format!("link {} to {}", link.display(), dir.display()))?;
    }
    fsutil::fsync_dir(&links).context("fsync pg_tblspc")
}

/// Writes `content` to `path` under a temporary name, fsyncs, renames it into place and
/// fsyncs the directory. Mode 0600, as PostgreSQL makes files in a data directory of mode
/// 0700, which a restore's is ([`super::destination::Destination::prepare`]).
pub(super) fn write_durable(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut file = fsutil::TempFile::create(path)?;
    file.file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.file().write_all(content)?;
    file.persist()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespace_map_escapes_as_postgresql_reads_it() {
        let map = BTreeMap::from([
            (16385, PathBuf::from("/srv/plain")),
            (16386, PathBuf::from("/srv/odd\\name\nline")),
        ]);
        assert_eq!(
            tablespace_map(&map),
            b"16385 /srv/plain\n16386 /srv/odd\\\\name\\\nline\n".to_vec()
        );
    }
}
