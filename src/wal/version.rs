//! The PostgreSQL major versions walhalla supports, and how each one shows in the files it
//! handles: the magic number on every WAL page (`XLOG_PAGE_MAGIC`, xlog_internal.h) and the
//! layout version at the start of `pg_control` (`PG_CONTROL_VERSION`, pg_control.h). Both change
//! only with a major release; a value this table does not list is refused with what it looks
//! like, never accepted on the chance that the format did not change.

use std::fmt;

/// A supported major version and its on-disk markers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Major {
    /// The major version number.
    pub number: u32,
    /// `XLOG_PAGE_MAGIC`.
    pub page_magic: u16,
    /// `PG_CONTROL_VERSION`.
    pub control_version: u32,
}

/// Every supported major, oldest first. Read off each release's own initdb output (tests/prepare.sh
/// installs them all; the integration suite runs on each).
pub const SUPPORTED: &[Major] = &[
    major(13, 0xD106, 1300),
    major(14, 0xD10D, 1300),
    major(15, 0xD110, 1300),
    major(16, 0xD113, 1300),
    major(17, 0xD116, 1700),
    major(18, 0xD118, 1800),
];

/// The supported range, as `walhalla --version` and error messages state it.
pub const SUPPORTED_RANGE: &str = "PostgreSQL 13 to 18";

const fn major(number: u32, page_magic: u16, control_version: u32) -> Major {
    Major {
        number,
        page_magic,
        control_version,
    }
}

/// `XLOG_PAGE_MAGIC` has lived in 0xD0xx and 0xD1xx since PostgreSQL 9.0; anything else is not
/// a WAL page at all.
const MAGIC_FAMILY: std::ops::Range<u16> = 0xD000..0xD200;

/// What an on-disk marker that is not in [`SUPPORTED`] looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// A release older than the oldest supported one.
    Older,
    /// A release newer than the newest supported one.
    Newer,
    /// Between two supported releases: a development or beta build.
    Between(u32, u32),
    /// No PostgreSQL release writes this value.
    Foreign,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let oldest = SUPPORTED[0].number;
        let newest = SUPPORTED[SUPPORTED.len() - 1].number;
        match self {
            Unsupported::Older => write!(f, "a PostgreSQL release older than {oldest}"),
            Unsupported::Newer => write!(f, "a PostgreSQL release newer than {newest}"),
            Unsupported::Between(a, b) => {
                write!(f, "a development build between PostgreSQL {a} and {b}")
            }
            Unsupported::Foreign => write!(f, "no PostgreSQL release"),
        }?;
        write!(f, "; walhalla supports {SUPPORTED_RANGE}")
    }
}

/// The major whose WAL pages carry `magic`.
pub fn by_page_magic(magic: u16) -> Result<&'static Major, Unsupported> {
    if !MAGIC_FAMILY.contains(&magic) {
        return Err(Unsupported::Foreign);
    }
    locate(magic.into(), |m| m.page_magic.into())
}

/// The major a server's `server_version_num` / 10000 or `server_version` names.
pub fn by_number(number: u32) -> Result<&'static Major, Unsupported> {
    locate(number, |m| m.number)
}

/// Whether `version` is a `pg_control` layout of a supported major.
pub fn check_control_version(version: u32) -> Result<(), Unsupported> {
    // PG_CONTROL_VERSION is the release number times 100 when the layout changed, and only
    // ever grows (942 for 9.4 … 1300, 1700, 1800); anything else is not a pg_control file.
    if !(900..10_000).contains(&version) {
        return Err(Unsupported::Foreign);
    }
    locate(version, |m| m.control_version).map(|_| ())
}

/// Finds the major whose `key` is `value`; otherwise says where `value` falls, given that the
/// key grows with each release.
fn locate(value: u32, key: impl Fn(&Major) -> u32) -> Result<&'static Major, Unsupported> {
    if let Some(found) = SUPPORTED.iter().find(|m| key(m) == value) {
        return Ok(found);
    }
    let first = &SUPPORTED[0];
    let last = &SUPPORTED[SUPPORTED.len() - 1];
    if value < key(first) {
        return Err(Unsupported::Older);
    }
    if value > key(last) {
        return Err(Unsupported::Newer);
    }
    let after = SUPPORTED
        .windows(2)
        .find(|pair| key(&pair[0]) < value && value < key(&pair[1]))
        .expect("value is inside the table's range but not in it");
    Err(Unsupported::Between(after[0].number, after[1].number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_grows_with_each_release_and_matches_the_stated_range() {
        for pair in SUPPORTED.windows(2) {
            assert_eq!(pair[1].number, pair[0].number + 1);
            assert!(pair[0].page_magic < pair[1].page_magic);
            assert!(pair[0].control_version <= pair[1].control_version);
        }
        let range = format!(
            "PostgreSQL {} to {}",
            SUPPORTED[0].number,
            SUPPORTED[SUPPORTED.len() - 1].number
        );
        assert_eq!(SUPPORTED_RANGE, range);
    }

    #[test]
    fn page_magic_names_the_release_or_what_it_looks_like() {
        assert_eq!(by_page_magic(0xD110).map(|m| m.number), Ok(15));
        assert_eq!(by_page_magic(0xD118).map(|m| m.number), Ok(18));
        assert_eq!(by_page_magic(0xD11A), Err(Unsupported::Newer));
        assert_eq!(by_page_magic(0xD101), Err(Unsupported::Older));
        assert_eq!(by_page_magic(0xD111), Err(Unsupported::Between(15, 16)));
        assert_eq!(by_page_magic(0), Err(Unsupported::Foreign));
        assert_eq!(by_page_magic(0xD200), Err(Unsupported::Foreign));
        assert_eq!(
            Unsupported::Newer.to_string(),
            "a PostgreSQL release newer than 18; walhalla supports PostgreSQL 13 to 18"
        );
    }

    #[test]
    fn control_versions_and_server_versions() {
        assert_eq!(check_control_version(1300), Ok(()));
        assert_eq!(check_control_version(1800), Ok(()));
        assert_eq!(check_control_version(1201), Err(Unsupported::Older));
        assert_eq!(check_control_version(1900), Err(Unsupported::Newer));
        assert_eq!(
            check_control_version(0xABAB_ABAB),
            Err(Unsupported::Foreign)
        );
        assert_eq!(by_number(17).map(|m| m.page_magic), Ok(0xD116));
        assert_eq!(by_number(19), Err(Unsupported::Newer));
        assert_eq!(by_number(12), Err(Unsupported::Older));
    }
}
