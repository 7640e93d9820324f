//! The system identifier in a data directory's `global/pg_control`. The hooks run in the data
//! directory, so this names the cluster for files that carry no identifier of their own.
//!
//! `ControlFileData` starts with `system_identifier` (u64) then `pg_control_version` (u32),
//! in native byte order; the rest of its layout changes between releases and is not read.

use std::path::Path;

use super::SystemId;
use super::version::{self, Unsupported};

/// Where `pg_control` lives, relative to the data directory.
pub const CONTROL_FILE_PATH: &str = "global/pg_control";

/// Reads the system identifier from the `pg_control` file under `data_dir`. `Ok(None)` when
/// there is no such file (the command is not running in a data directory).
pub fn system_id_from_control_file(data_dir: &Path) -> std::io::Result<Option<SystemId>> {
    let path = data_dir.join(CONTROL_FILE_PATH);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    parse_control_file(&bytes).map(Some).map_err(|why| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    })
}

/// Reads the system identifier from `pg_control`'s bytes, checking its version.
pub fn parse_control_file(bytes: &[u8]) -> Result<SystemId, String> {
    let (Some(id), Some(version)) = (bytes.get(0..8), bytes.get(8..12)) else {
        return Err(format!(
            "only {} bytes, too short for pg_control",
            bytes.len()
        ));
    };
    let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
    if id == 0 {
        return Err("does not look like pg_control (system id 0)".into());
    }
    match version::check_control_version(version) {
        Ok(()) => {}
        Err(Unsupported::Foreign) => {
            return Err(format!(
                "does not look like pg_control (version {version}, system id {id})"
            ));
        }
        Err(why) => return Err(format!("pg_control version {version} is from {why}")),
    }
    Ok(SystemId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_identifier_and_refuses_garbage() {
        let mut bytes = 7_312_029_512_345_678_901u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&1300u32.to_le_bytes());
        bytes.resize(8192, 0);
        assert_eq!(
            parse_control_file(&bytes),
            Ok(SystemId(7_312_029_512_345_678_901))
        );
        assert!(parse_control_file(&bytes[..10]).is_err());
        assert!(parse_control_file(&[0xAB; 8192]).is_err());
        bytes[8..12].copy_from_slice(&1900u32.to_le_bytes());
        assert_eq!(
            parse_control_file(&bytes),
            Err(
                "pg_control version 1900 is from a PostgreSQL release newer than 18; \
                 walhalla supports PostgreSQL 13 to 18"
                    .into()
            )
        );
    }
}
