//! Checking a backup's tar stream against its manifest without writing anything: what
//! `walhalla verify` does with a backup, by the same rules as a restore.

use std::io::{self, Read};

use super::{
    COPY_BUFFER_BYTES, EntryName, ExtractError, Extracted, copy_verified, listed_file, open_tar,
};
use crate::backup::manifest::Manifest;

/// Reads the tar stream `reader` to its end, checking every regular file's size and checksum
/// against `manifest` (paths under `manifest_prefix`) as a restore would; the files seen.
/// The first problem ends the check. Blocking: run it off the reactor.
pub fn check(
    reader: impl Read,
    manifest_prefix: &str,
    manifest: &Manifest,
) -> Result<Extracted, ExtractError> {
    let whole = |source| ExtractError::Archive {
        path: format!("{manifest_prefix}(the tar stream)"),
        source,
    };
    let mut archive = open_tar(reader);
    let mut seen = Extracted::default();
    let mut buffer = vec![0; COPY_BUFFER_BYTES];
    for entry in archive.entries().map_err(whole)? {
        let mut entry = entry.map_err(whole)?;
        let Some(name) = EntryName::parse(&entry.path_bytes(), manifest_prefix)? else {
            continue;
        };
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let size = entry.size();
        let listed = listed_file(manifest, &name, size)?;
        copy_verified(
            &mut entry,
            &mut io::sink(),
            &name,
            listed,
            &mut buffer,
            |e| name.archive_error(e),
        )?;
        seen.bytes += size;
        seen.files.push(name.manifest_path);
    }
    if archive.into_inner().into_inner().ended {
        return Err(ExtractError::Truncated {
            path: manifest_prefix.into(),
        });
    }
    Ok(seen)
}
