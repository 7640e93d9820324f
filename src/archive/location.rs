//! Where an archive lives: a local directory (`/path`, `file:///path`) or an S3-compatible
//! bucket (`s3://bucket/prefix`, configured through the usual `AWS_*` variables).

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
}

impl FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("the archive location is empty".into());
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || bucket.contains(['@', ':', '?', '#']) {
                return Err(format!(
                    "invalid S3 archive {s:?}: expected s3://bucket/prefix"
                ));
            }
            let prefix = prefix.trim_matches('/');
            if prefix
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
                && !prefix.is_empty()
            {
                return Err(format!(
                    "invalid S3 archive {s:?}: the prefix has an empty, . or .. part"
                ));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
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
                "unsupported archive scheme {scheme:?} in {s:?}: use a directory path, file:// or s3://"
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
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
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
            "gs://b/x",
            "s3://u:p@b/x",
            "relative/dir",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad:?} accepted");
        }
    }
}
