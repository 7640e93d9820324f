//! The object_store client behind an archive location: a local directory, S3 (configured
//! the AWS way, credentials from the AWS default chain when none are in the environment),
//! Google Cloud Storage (`GOOGLE_*`) or Azure Blob Storage (`AZURE_*`).
//!
//! Each request is attempted once: walhalla's own retry loop ([`super::retry`]) is the only
//! one, so an outage is retried within the deadline exactly once over, and a permanent error
//! returns at once.

use std::sync::Arc;
use std::time::Duration;

use object_store::ClientConfigKey as Key;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path;

use super::credentials::AwsChain;
use super::{ArchiveOptions, Location};

/// How new objects are stored: their storage class and, on S3, server-side encryption.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// The storage class (S3: `STANDARD_IA`, `GLACIER_IR`…; GCS: `NEARLINE`…; Azure: the
    /// access tier, `Cool`…); the bucket's default when `None`.
    pub storage_class: Option<String>,
    /// S3 server-side encryption; the bucket's default when `None`.
    pub encryption: Option<Encryption>,
}

/// S3 server-side encryption of new objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// SSE-S3: keys managed by S3 (`AES256`).
    S3Managed,
    /// SSE-KMS, with this key, or the account's default KMS key.
    Kms {
        /// The KMS key id or ARN.
        key_id: Option<String>,
    },
}

/// An opened store.
pub(super) struct Opened {
    /// The client.
    pub store: Arc<dyn ObjectStore>,
    /// The archive's root inside it.
    pub root: Path,
    /// The endpoint it talks to, where one is configured: with the location, it names the
    /// store (the same bucket name on another server is another store).
    pub endpoint: String,
}

/// Opens the store at `location`; the error is the reason, in one line.
pub(super) fn open(location: &Location, options: &ArchiveOptions) -> Result<Opened, String> {
    let (store, endpoint): (Arc<dyn ObjectStore>, String) = match location {
        Location::Local(dir) => {
            if let Some(problem) = not_a_directory(dir) {
                return Err(problem);
            } else if options.create {
                crate::fsutil::create_dir_all_durable(dir).map_err(|e| e.to_string())?;
            } else if !dir.is_dir() {
                return Err("no such directory".into());
            }
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| e.to_string())?
                .with_fsync(true);
            return Ok(Opened {
                store: Arc::new(fs),
                root: Path::default(),
                endpoint: String::new(),
            });
        }
        Location::S3 { bucket, .. } => {
            let (s3, endpoint) = s3(bucket, options)?;
            (Arc::new(s3), endpoint)
        }
        _ if options.store.encryption.is_some() && !matches!(location, Location::S3 { .. }) => {
            return Err(
                "server-side encryption settings (--sse) apply to s3:// archives only".into(),
            );
        }
        Location::Gcs { bucket, .. } => {
            let mut gcs = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
            for (key, value) in client_settings(options.timeout) {
                gcs = gcs.with_config(GoogleConfigKey::Client(key), value);
            }
            let endpoint = gcs
                .get_config_value(&GoogleConfigKey::BaseUrl)
                .unwrap_or_default();
            let gcs = gcs.with_retry(one_attempt()).build();
            (Arc::new(gcs.map_err(|e| e.to_string())?), endpoint)
        }
        Location::Azure { bucket, .. } => {
            let mut azure = MicrosoftAzureBuilder::from_env().with_container_name(bucket);
            for (key, value) in client_settings(options.timeout) {
                azure = azure.with_config(AzureConfigKey::Client(key), value);
            }
            let endpoint = [AzureConfigKey::AccountName, AzureConfigKey::Endpoint]
                .map(|key| azure.get_config_value(&key).unwrap_or_default())
                .join(" ");
            let azure = azure.with_retry(one_attempt()).build();
            (Arc::new(azure.map_err(|e| e.to_string())?), endpoint)
        }
    };
    let (_, prefix) = location.bucket().expect("an object store location");
    Ok(Opened {
        store,
        root: Path::from(prefix),
        endpoint,
    })
}

/// The S3 client and its endpoint.
fn s3(
    bucket: &str,
    options: &ArchiveOptions,
) -> Result<(object_store::aws::AmazonS3, String), String> {
    let mut s3 = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (key, value) in client_settings(options.timeout) {
        s3 = s3.with_config(AmazonS3ConfigKey::Client(key), value);
    }
    let setting = |s3: &AmazonS3Builder, key| s3.get_config_value(&key).unwrap_or_default();
    let endpoint = setting(&s3, AmazonS3ConfigKey::Endpoint);
    // object_store panics on an endpoint it cannot make requests to (no scheme, say).
    let usable = reqwest::Url::parse(&endpoint)
        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
    if !endpoint.is_empty() && !usable {
        return Err(format!(
            "the endpoint {endpoint:?} (AWS_ENDPOINT_URL) is not a URL such as \
             https://s3.example.com or http://127.0.0.1:9000"
        ));
    }
    let allow_http = setting(&s3, AmazonS3ConfigKey::Client(Key::AllowHttp));
    if endpoint.starts_with("http://") && !truthy(&allow_http) {
        return Err(format!(
            "the endpoint {endpoint} is plain HTTP: set AWS_ALLOW_HTTP=true to allow it, or use https://"
        ));
    }
    if let Some(encryption) = &options.store.encryption {
        // object_store does not export the encryption keys' type: name them.
        let key = |name: &str| {
            name.parse::<AmazonS3ConfigKey>()
                .expect("a known S3 setting")
        };
        let (kind, key_id) = match encryption {
            Encryption::S3Managed => ("AES256", None),
            Encryption::Kms { key_id } => ("aws:kms", key_id.as_ref()),
        };
        s3 = s3.with_config(key("aws_server_side_encryption"), kind);
        if let Some(key_id) = key_id {
            s3 = s3.with_config(key("aws_sse_kms_key_id"), key_id);
        }
    }
    let keys_given = !setting(&s3, AmazonS3ConfigKey::AccessKeyId).is_empty();
    let unsigned = truthy(&setting(&s3, AmazonS3ConfigKey::SkipSignature));
    if !keys_given && !unsigned {
        let region = Some(setting(&s3, AmazonS3ConfigKey::Region)).filter(|r| !r.is_empty());
        s3 = s3.with_credentials(Arc::new(AwsChain::new(region)));
    }
    let s3 = s3.with_retry(one_attempt()).build();
    Ok((s3.map_err(|e| e.to_string())?, endpoint))
}

/// Whether a setting's text means yes, as object_store reads booleans.
fn truthy(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "on"
    )
}

/// Why a local archive's path can neither be used nor made a directory, if it cannot: it is
/// something else, or a symbolic link to nothing (which creating it would fail on with "File
/// exists").
fn not_a_directory(dir: &std::path::Path) -> Option<String> {
    let link = std::fs::symlink_metadata(dir).ok()?;
    if dir.is_dir() {
        None
    } else if dir.exists() {
        Some("it exists and is not a directory".into())
    } else if link.file_type().is_symlink() {
        let target =
            std::fs::read_link(dir).map_or_else(|_| "?".into(), |t| t.display().to_string());
        Some(format!(
            "it is a symbolic link to {target}, which does not exist"
        ))
    } else {
        None
    }
}

/// One attempt per request: retries are walhalla's.
fn one_attempt() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 0,
        ..Default::default()
    }
}

/// The HTTP client's timeouts. Set as config keys: `with_client_options` would replace what
/// `from_env` read (`AWS_ALLOW_HTTP` among them).
fn client_settings(timeout: Duration) -> [(Key, String); 2] {
    let seconds = |d: Duration| format!("{}s", d.as_secs().max(1));
    [
        // The per-request timeout outlasts the deadline, which then fires first with the
        // clearer message.
        (Key::Timeout, seconds(timeout + Duration::from_secs(5))),
        (
            Key::ConnectTimeout,
            seconds(Duration::from_secs(5).min(timeout)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::not_a_directory;

    /// `.cargo/config.toml` builds aws-lc without its CPU jitter entropy collector, which
    /// costs every process about 55 ms of CPU at its first TLS handshake (a restore_command
    /// that misses the readahead cache, a push to S3): see benches/README.md. aws-lc also
    /// leaves the collector out on a VM that offers `/dev/sysgenid`, where this passes anyway.
    #[test]
    fn aws_lc_is_built_without_the_cpu_jitter_entropy_collector() {
        // SAFETY: takes no arguments and only reads which entropy source the build selected.
        let jitter = unsafe { aws_lc_sys::FIPS_is_entropy_cpu_jitter() };
        assert_eq!(
            jitter, 0,
            "aws-lc seeds from CPU jitter: build with AWS_LC_SYS_NO_JITTER_ENTROPY=1 \
             (.cargo/config.toml)"
        );
    }

    #[test]
    fn a_local_archive_path_that_cannot_be_a_directory_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("nowhere"), root.join("dangling")).unwrap();
        std::os::unix::fs::symlink(root, root.join("to-a-dir")).unwrap();
        std::os::unix::fs::symlink(root.join("file"), root.join("to-a-file")).unwrap();
        assert_eq!(not_a_directory(root), None);
        assert_eq!(not_a_directory(&root.join("to-a-dir")), None);
        assert_eq!(not_a_directory(&root.join("missing")), None);
        for name in ["file", "to-a-file"] {
            assert_eq!(
                not_a_directory(&root.join(name)).as_deref(),
                Some("it exists and is not a directory"),
                "{name}"
            );
        }
        let dangling = not_a_directory(&root.join("dangling")).unwrap();
        assert_eq!(
            dangling,
            format!(
                "it is a symbolic link to {}, which does not exist",
                root.join("nowhere").display()
            )
        );
    }
}
