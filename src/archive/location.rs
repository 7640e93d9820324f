//! Where an archive lives: a local directory (`/path`, `file:///path`), an S3-compatible
//! bucket (`s3://bucket/prefix`, configured through the usual `AWS_*` variables), a Google
//! Cloud Storage bucket (`gs://bucket/prefix`, `GOOGLE_*`) or an Azure Blob container
//! (`az://container/prefix`, `AZURE_*`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// An archive location, parsed from the `--archive` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory on a local (or mounted) file system.
    Local(PathBuf),
    /// A bucket and key prefix on S3 or an S3-compatible server.
    S3 {
        /// The bucket name.
        bucket: String,
        /// The key prefix inside the bucket, without leading or trailing `/`; may be empty.
        prefix: String,
    },
    /// A bucket and key prefix on Google Cloud Storage.
    Gcs {
        /// The bucket name.
        bucket: String,
        /// The key prefix, as for S3.
        prefix: String,
    },
    /// A container and key prefix on Azure Blob Storage.
    Azure {
        /// The container name.
        bucket: String,
        /// The key prefix, as for S3.
        prefix: String,
    },
}

impl Location {
    /// The bucket (or container) and prefix of an object store; `None` for a directory.
    pub fn bucket(&self) -> Option<(&str, &str)> {
        match self {
            Location::Local(_) => None,
            Location::S3 { bucket, prefix }
            | Location::Gcs { bucket, prefix }
            | Location::Azure { bucket, prefix } => Some((bucket, prefix)),
        }
    }
}

/// Makes a location from a bucket and a prefix.
type MakeLocation = fn(String, String) -> Location;

/// The object-store URL schemes, with the location each makes.
const SCHEMES: [(&str, MakeLocation); 3] = [
    ("s3", |bucket, prefix| Location::S3 { bucket, prefix }),
    ("gs", |bucket, prefix| Location::Gcs { bucket, prefix }),
    ("az", |bucket, prefix| Location::Azure { bucket, prefix }),
];

/// Parses the `bucket/prefix` after `scheme://`.
fn parse_bucket(s: &str, scheme: &str, rest: &str) -> Result<(String, String), String> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.contains('@') {
        // Not quoted: what comes before the `@` may be a secret.
        return Err(format!(
            "invalid archive {scheme}://…@…: credentials never go in the archive URL (set \
             them in the environment, such as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             or use a profile or role); expected {scheme}://bucket/prefix"
        ));
    }
    if bucket.is_empty() || bucket.contains([':', '?', '#']) {
        return Err(format!(
            "invalid archive {s:?}: expected {scheme}://bucket/prefix"
        ));
    }
    if prefix.contains(['?', '#']) {
        return Err(format!(
            "invalid archive {s:?}: a prefix holds no ? or # (settings such as the region \
             come from the environment); expected {scheme}://bucket/prefix"
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
        && !prefix.is_empty()
    {
        return Err(format!(
            "invalid archive {s:?}: the prefix has an empty, . or .. part"
        ));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

impl FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("the archive location is empty".into());
        }
        for (scheme, make) in SCHEMES {
            if let Some(rest) = s.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")) {
                let (bucket, prefix) = parse_bucket(s, scheme, rest)?;
                return Ok(make(bucket, prefix));
            }
        }
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(format!(
                    "invalid archive {s:?}: a file URL needs an absolute path, file:///dir"
                ));
            }
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "unsupported archive scheme {scheme:?} in {s:?}: use a directory path, file://, s3://, gs:// or az://"
            ));
        }
        if let Some((scheme, _)) = s.split_once(':').filter(|(scheme, _)| {
            !scheme.is_empty()
                && !scheme.contains('/')
                && scheme.bytes().all(|b| b.is_ascii_alphanumeric())
        }) {
            return Err(format!(
                "invalid archive {s:?}: {scheme}: is not followed by //; use a directory path, file:///dir, s3://, gs:// or az://bucket/prefix"
            ));
        }
        if !s.starts_with('/') {
            // The hooks run in the data directory: a relative archive would land inside it.
            return Err(format!("archive directory {s:?} must be an absolute path"));
        }
        Ok(Location::Local(PathBuf::from(s)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, bucket, prefix) = match self {
            Location::Local(path) => return write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } => ("s3", bucket, prefix),
            Location::Gcs { bucket, prefix } => ("gs", bucket, prefix),
            Location::Azure { bucket, prefix } => ("az", bucket, prefix),
        };
        match prefix.as_str() {
            "" => write!(f, "{scheme}://{bucket}"),
            _ => write!(f, "{scheme}://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_forms() {
        assert_eq!(
            "/var/lib/wal".parse(),
            Ok(Location::Local("/var/lib/wal".into()))
        );
        assert_eq!(
            "file:///var/lib/wal".parse(),
            Ok(Location::Local("/var/lib/wal".into()))
        );
        assert_eq!(
            "s3://bucket/a/b/".parse(),
            Ok(Location::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            })
        );
        assert_eq!(
            "gs://bucket/p".parse(),
            Ok(Location::Gcs {
                bucket: "bucket".into(),
                prefix: "p".into()
            })
        );
        assert_eq!(
            "az://container".parse::<Location>().map(|l| l.to_string()),
            Ok("az://container".into())
        );
        assert_eq!(
            "s3://bucket".parse(),
            Ok(Location::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            })
        );
    }

    #[test]
    fn refuses_the_rest() {
        for bad in [
            "",
            "s3://",
            "s3:///x",
            "s3://b/a//c",
            "s3://b/../x",
            "file://relative",
            "gs://",
            "az://c/a//x",
            "http://b/x",
            "s3://u:p@b/x",
            "s3://b/q?region=eu-west-1",
            "s3://b/q#frag",
            "relative/dir",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad:?} accepted");
        }
        // Credentials in the URL are refused without being repeated.
        let error = "s3://AKID:Secret99@b/x".parse::<Location>().unwrap_err();
        assert!(
            !error.contains("Secret99") && error.contains("credentials never go"),
            "{error}"
        );
        // A URL with a slash missing is named as one, not as a relative directory.
        let error = "s3:/bucket".parse::<Location>().unwrap_err();
        assert!(error.contains("s3: is not followed by //"), "{error}");
    }
}
