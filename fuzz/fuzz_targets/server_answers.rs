//! The answers to replication and SQL commands that the receiver and `backup` read as text:
//! IDENTIFY_SYSTEM's row, `SHOW wal_segment_size`, system identifiers, timelines and LSNs:
//! never panics; what is accepted prints as text that reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::protocol::commands::{parse_identity, parse_segment_size};
use walhalla::wal::{Lsn, SystemId};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Columns as the server sends them, separated by tabs; `\N` for NULL.
    let row: Vec<Option<String>> = text
        .split('\t')
        .map(|c| (c != "\\N").then(|| c.to_owned()))
        .collect();
    if let Ok(identity) = parse_identity(&row) {
        assert_eq!(
            identity.system_id.to_string().parse(),
            Ok(identity.system_id)
        );
        assert_eq!(identity.lsn.to_string().parse(), Ok(identity.lsn));
    }
    for column in row.iter().flatten() {
        if let Ok(size) = parse_segment_size(column) {
            let bytes = size.bytes();
            assert!(bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes));
        }
        if let Ok(lsn) = column.parse::<Lsn>() {
            assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
        if let Ok(id) = column.parse::<SystemId>() {
            assert_ne!(id.0, 0);
            assert_eq!(id.to_string().parse::<SystemId>(), Ok(id));
        }
    }
});
