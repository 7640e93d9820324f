//! Log sequence numbers: byte positions in the WAL stream, written `X/X` as PostgreSQL does.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log (PostgreSQL's `XLogRecPtr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[doc(alias = "XLogRecPtr")]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    /// Parses `X/X` (each half up to 8 hex digits), as `pg_lsn` and the replication protocol print.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("invalid LSN {s:?}: expected two hexadecimal numbers as X/X");
        let (hi, lo) = s.split_once('/').ok_or_else(invalid)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            u32::from_str_radix(part, 16).map_err(|_| invalid())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (text, value) in [
            ("0/0", 0),
            ("0/1A2B3C", 0x1A2B3C),
            ("16/B374D848", 0x16_B374_D848),
        ] {
            assert_eq!(text.parse::<Lsn>(), Ok(Lsn(value)));
            assert_eq!(Lsn(value).to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "0",
            "/",
            "0/",
            "/0",
            "G/0",
            "0/123456789",
            "0/-1",
            "0/+1",
            "1/2/3",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }
}
