//! Settings shared by every command, resolved: [`crate::settings`] has already laid flags,
//! environment and the config file over each other; this module checks the values and fills in
//! the defaults that depend on nothing else.

use std::time::Duration;

use anyhow::bail;

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

/// A setting that cannot be right, found after the command line was parsed (an archive URL,
/// a connection string, a timeout, no archive at all): walhalla exits 255 for it, as for the
/// command line parser's own usage errors, so that a mistyped restore_command never reads as
/// "not found".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

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

impl Config {
    /// Checks the settings given and fills in the defaults.
    pub fn resolve(overrides: Overrides) -> anyhow::Result<Config> {
        let archive = match overrides.archive {
            Some(text) => Some(text.parse::<Location>().map_err(anyhow::Error::msg)?),
            None => None,
        };
        let compression_level = overrides
            .compression_level
            .unwrap_or(envelope::DEFAULT_LEVEL);
        if !COMPRESSION_LEVELS.contains(&compression_level) {
            bail!("compression level {compression_level} is outside {COMPRESSION_LEVELS:?}");
        }
        let timeout = match overrides.timeout_seconds {
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
        let encryption = encryption(overrides.sse, overrides.sse_kms_key_id)?;
        Ok(Config {
            archive,
            system_id: overrides.system_id,
            compression_level,
            timeout,
            store: StoreOptions {
                storage_class: overrides.storage_class,
                encryption,
            },
        })
    }
}

impl Config {
    /// The archive, which every command but `fetch --server` needs.
    pub fn archive(&self) -> anyhow::Result<&Location> {
        self.archive.as_ref().ok_or_else(|| {
            UsageError(
                "no archive configured: pass --archive URL, set WALHALLA_ARCHIVE, or set archive in the --config file"
                    .into(),
            )
            .into()
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_in_defaults_and_refuses_bad_values() {
        let c = Config::resolve(Overrides::default()).unwrap();
        assert_eq!(c.compression_level, envelope::DEFAULT_LEVEL);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert!(
            c.archive().is_err(),
            "an archive is required where one is used"
        );
        let bad = [
            Overrides {
                compression_level: Some(40),
                ..Default::default()
            },
            Overrides {
                timeout_seconds: Some(0),
                ..Default::default()
            },
            Overrides {
                timeout_seconds: Some(i64::MAX as u64),
                ..Default::default()
            },
            Overrides {
                archive: Some("relative/dir".into()),
                ..Default::default()
            },
        ];
        for overrides in bad {
            assert!(Config::resolve(overrides.clone()).is_err(), "{overrides:?}");
        }
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
