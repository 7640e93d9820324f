//! Settings shared by every command, resolved with the precedence flag > environment > config
//! file > default. The command line and environment are read by `cli`; this module adds the
//! TOML config file and the defaults.
//!
//! ```toml
//! archive = "s3://bucket/prefix"      # or "/var/lib/walhalla" or "file:///var/lib/walhalla"
//! system_id = "7312029512345678901"    # optional; normally read from pg_control
//! compression_level = 3
//! timeout_seconds = 60
//! storage_class = "STANDARD_IA"       # optional; the bucket's default otherwise
//! sse = "aws:kms"                      # optional, S3: "AES256" or "aws:kms"
//! sse_kms_key_id = "arn:aws:kms:…"     # optional, with sse = "aws:kms"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::archive::{Encryption, Location, StoreOptions};
use crate::envelope;
use crate::wal::SystemId;

/// Deadline of one archive operation, retries included, unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest deadline accepted: one day.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);
/// The zstd levels accepted: 1 (fastest) to 19 (smallest).
pub const COMPRESSION_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

/// Settings given on the command line or in the environment (already merged, flag first).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--archive` / `WALHALLA_ARCHIVE`.
    pub archive: Option<String>,
    /// `--config` / `WALHALLA_CONFIG`.
    pub config_file: Option<PathBuf>,
    /// `--system-id` / `WALHALLA_SYSTEM_ID`.
    pub system_id: Option<SystemId>,
    /// `--compression-level` / `WALHALLA_COMPRESSION_LEVEL`.
    pub compression_level: Option<i32>,
    /// `--timeout` / `WALHALLA_TIMEOUT`, in seconds.
    pub timeout_seconds: Option<u64>,
    /// `--storage-class`.
    pub storage_class: Option<String>,
    /// `--sse`.
    pub sse: Option<String>,
    /// `--sse-kms-key-id`.
    pub sse_kms_key_id: Option<String>,
}

/// The resolved settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the archive lives, when configured (only `fetch --server` can do without).
    pub archive: Option<Location>,
    /// The cluster, when given explicitly; otherwise commands find it out.
    pub system_id: Option<SystemId>,
    /// zstd level for new objects.
    pub compression_level: i32,
    /// Deadline, retries included: of a whole hook run, or of each archive operation of a
    /// daemon.
    pub timeout: Duration,
    /// How new objects are stored (storage class, encryption).
    pub store: StoreOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    archive: Option<String>,
    system_id: Option<FileSystemId>,
    compression_level: Option<i32>,
    timeout_seconds: Option<u64>,
    storage_class: Option<String>,
    sse: Option<String>,
    sse_kms_key_id: Option<String>,
}

/// TOML integers stop at i64::MAX while system identifiers use all 64 bits: take either form.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileSystemId {
    Number(u64),
    Text(String),
}

impl Config {
    /// Resolves the settings: `overrides` first, then the config file, then defaults.
    pub fn resolve(overrides: Overrides) -> anyhow::Result<Config> {
        let file = match &overrides.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let archive = match overrides.archive.or(file.archive) {
            Some(text) => Some(text.parse::<Location>().map_err(anyhow::Error::msg)?),
            None => None,
        };
        let file_system_id = match file.system_id {
            None => None,
            Some(FileSystemId::Number(n)) => {
                Some(n.to_string().parse().map_err(anyhow::Error::msg)?)
            }
            Some(FileSystemId::Text(s)) => Some(s.parse().map_err(anyhow::Error::msg)?),
        };
        let compression_level = overrides
            .compression_level
            .or(file.compression_level)
            .unwrap_or(envelope::DEFAULT_LEVEL);
        if !COMPRESSION_LEVELS.contains(&compression_level) {
            bail!("compression level {compression_level} is outside {COMPRESSION_LEVELS:?}");
        }
        let timeout = match overrides.timeout_seconds.or(file.timeout_seconds) {
            Some(0) => bail!("timeout must be at least 1 second"),
            Some(seconds) if seconds > MAX_TIMEOUT.as_secs() => {
                bail!(
                    "timeout of {seconds} seconds is longer than the {} allowed",
                    MAX_TIMEOUT.as_secs()
                )
            }
            Some(seconds) => Duration::from_secs(seconds),
            None => DEFAULT_TIMEOUT,
        };
        let encryption = encryption(
            overrides.sse.or(file.sse),
            overrides.sse_kms_key_id.or(file.sse_kms_key_id),
        )?;
        Ok(Config {
            archive,
            system_id: overrides.system_id.or(file_system_id),
            compression_level,
            timeout,
            store: StoreOptions {
                storage_class: overrides.storage_class.or(file.storage_class),
                encryption,
            },
        })
    }
}

impl Config {
    /// The archive, which every command but `fetch --server` needs.
    pub fn archive(&self) -> anyhow::Result<&Location> {
        self.archive.as_ref().context(
            "no archive configured: pass --archive URL, set WALHALLA_ARCHIVE, or set archive in the --config file",
        )
    }
}

/// The server-side encryption that `sse` and `kms_key_id` ask for.
fn encryption(
    sse: Option<String>,
    kms_key_id: Option<String>,
) -> anyhow::Result<Option<Encryption>> {
    Ok(match (sse.as_deref(), kms_key_id) {
        (None, None) => None,
        (Some("AES256"), None) => Some(Encryption::S3Managed),
        (Some("aws:kms"), key_id) => Some(Encryption::Kms { key_id }),
        (Some("AES256") | None, Some(_)) => bail!("an SSE-KMS key id needs sse = aws:kms"),
        (Some(other), _) => {
            bail!("unknown server-side encryption {other:?}: use AES256 or aws:kms")
        }
    })
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parse config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str, overrides: Overrides) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walhalla.toml");
        std::fs::write(&path, text).unwrap();
        Config::resolve(Overrides {
            config_file: Some(path),
            ..overrides
        })
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = "archive = \"/from/file\"\ncompression_level = 7\nsystem_id = \"9300000000000000001\"\n";
        let c = with_file(file, Overrides::default()).unwrap();
        assert_eq!(c.archive, Some(Location::Local("/from/file".into())));
        assert_eq!(c.compression_level, 7);
        assert_eq!(c.system_id, Some(SystemId(9_300_000_000_000_000_001)));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);

        let flags = Overrides {
            archive: Some("s3://b/p".into()),
            compression_level: Some(2),
            ..Default::default()
        };
        let c = with_file(file, flags).unwrap();
        assert_eq!(
            c.archive,
            Some(Location::S3 {
                bucket: "b".into(),
                prefix: "p".into()
            })
        );
        assert_eq!(c.compression_level, 2);
    }

    #[test]
    fn refuses_bad_settings() {
        assert!(
            Config::resolve(Overrides::default())
                .unwrap()
                .archive()
                .is_err(),
            "an archive is required where one is used"
        );
        assert!(with_file("archive = \"/a\"\nunknown_key = 1\n", Overrides::default()).is_err());
        assert!(
            with_file(
                "archive = \"/a\"\ncompression_level = 40\n",
                Overrides::default()
            )
            .is_err()
        );
        assert!(
            with_file(
                "archive = \"/a\"\ntimeout_seconds = 0\n",
                Overrides::default()
            )
            .is_err()
        );
        assert!(with_file("archive = \"/a\"\nsystem_id = 0\n", Overrides::default()).is_err());
        assert!(with_file("archive = [", Overrides::default()).is_err());
        let huge = format!("archive = \"/a\"\ntimeout_seconds = {}\n", i64::MAX);
        assert!(with_file(&huge, Overrides::default()).is_err());
        assert!(with_file("archive = \"relative/dir\"\n", Overrides::default()).is_err());
    }

    #[test]
    fn server_side_encryption_settings() {
        assert_eq!(encryption(None, None).unwrap(), None);
        assert_eq!(
            encryption(Some("AES256".into()), None).unwrap(),
            Some(Encryption::S3Managed)
        );
        assert_eq!(
            encryption(Some("aws:kms".into()), Some("key-1".into())).unwrap(),
            Some(Encryption::Kms {
                key_id: Some("key-1".into())
            })
        );
        assert!(encryption(None, Some("key-1".into())).is_err());
        assert!(encryption(Some("AES256".into()), Some("key-1".into())).is_err());
        assert!(encryption(Some("aes256".into()), None).is_err());
    }
}
