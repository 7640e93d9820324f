//! The commands PostgreSQL runs: `walhalla push %p` as `archive_command` and
//! `walhalla fetch %f %p` as `restore_command`, and the exit codes that are their contract.
//!
//! | command | exit | meaning for PostgreSQL |
//! |---|---|---|
//! | push | 0 | stored durably (or already archived with identical content): the segment may be recycled |
//! | push | 1 | not stored (invalid file, conflict, store down, deadline): the archiver retries |
//! | fetch | 0 | the file was written, complete and verified |
//! | fetch | 1 | the archive does not have the file: recovery moves on |
//! | fetch | 255 | the file exists but cannot be delivered (corrupt, store unreachable past the deadline, bad name or usage): recovery stops with FATAL rather than end early |

mod fetch;
mod namespace;
mod push;

pub use fetch::{FetchOutcome, fetch};
pub use namespace::{NamespaceError, resolve_system_id};
pub use push::push;

/// push: the file was not archived; PostgreSQL keeps it and retries.
pub const EXIT_PUSH_FAILED: u8 = 1;
/// fetch: the archive does not hold the file.
pub const EXIT_FETCH_NOT_FOUND: u8 = 1;
/// fetch: the file could not be delivered; above 125 so PostgreSQL aborts recovery instead of
/// taking the failure for the end of the archive (`wait_result_is_any_signal` in xlogarchive.c).
pub const EXIT_FETCH_FATAL: u8 = 255;
