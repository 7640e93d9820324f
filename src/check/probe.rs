//! Whether the archive can be reached, written, and refuses to overwrite: the create-only
//! rule every WAL object relies on.

use bytes::Bytes;

use super::Check;
use crate::archive::{Archive, Error, ObjectName};
use crate::envelope::Encoder;
use crate::wal::{SegNo, SegmentName, SegmentSize, SystemId, TimelineId, WalFileName};

/// The check `archive_reachable` for `archive`, saying whether it holds WAL of `system_id`
/// yet (a new cluster's first segment may still be on its way: the round trip decides); and
/// whether it could be listed at all.
pub async fn reachable(archive: &Archive, system_id: Option<SystemId>) -> (Check, bool) {
    let location = archive.location();
    let clusters = match archive.clusters().await {
        Ok(clusters) => clusters,
        Err(e) => {
            let check = Check::fail(
                "archive_reachable",
                format!("cannot list {location}: {e}"),
                "check the archive URL, the credentials (AWS_*) and that this host reaches it",
            );
            return (check, false);
        }
    };
    let this_one = match system_id {
        Some(id) if clusters.contains(&id) => format!(", this cluster ({id}) among them"),
        Some(id) => format!(", nothing yet of this cluster ({id})"),
        None => String::new(),
    };
    let detail = format!("{location} lists {} cluster(s){this_one}", clusters.len());
    (Check::pass("archive_reachable", detail), true)
}

/// The scratch object's content, then the different content the archive must refuse.
const FIRST: &[u8] = b"walhalla check 1";
const SECOND: &[u8] = b"walhalla check 2";

/// The checks `archive_writable` and `archive_create_only`: stores a scratch object, then
/// different bytes under the same key, which the archive must refuse; removes the object.
///
/// The scratch object lives under cluster folder `0`, which no cluster has (a system
/// identifier is never 0) and every listing skips, so a probe cut short leaves nothing a
/// restore or a listing would take for WAL.
pub async fn create_only(archive: &Archive) -> Vec<Check> {
    let scratch = archive.cluster(SystemId(0));
    let name = scratch_name();
    // zstd, even on a few bytes, stays off the reactor.
    let encoded = crate::blocking::run(|| -> Result<_, String> {
        let mut encoder = Encoder::new(1, 1).map_err(|e| e.to_string())?;
        let mut envelope = |content| encoder.encode(content).map_err(|e| e.to_string());
        Ok((envelope(FIRST)?, envelope(SECOND)?))
    })
    .await;
    let (first, second) = match encoded {
        Ok(envelopes) => envelopes,
        Err(e) => {
            let hint = "a bug in walhalla: report it";
            return vec![Check::fail("archive_writable", e, hint)];
        }
    };
    let key = scratch.key(&name);
    if let Err(e) = scratch.put(&name, Bytes::from_static(FIRST), first).await {
        return vec![
            Check::fail(
                "archive_writable",
                format!("cannot store {key}: {e}"),
                "give this host write access (s3:PutObject, or the directory's owner)",
            ),
            Check::skip("archive_create_only", "the archive cannot be written"),
        ];
    }
    let writable = Check::pass("archive_writable", format!("stored scratch object {key}"));
    let create_only = match scratch.put(&name, Bytes::from_static(SECOND), second).await {
        Err(Error::Conflict { .. }) => Check::pass(
            "archive_create_only",
            "different bytes under an existing key were refused",
        ),
        Ok(_) => Check::fail(
            "archive_create_only",
            format!("{key} was overwritten with different bytes"),
            "the store ignores create-only writes (S3 If-None-Match: *): an archived segment could be replaced; use a store that honours conditional writes",
        ),
        Err(e) => Check::fail(
            "archive_create_only",
            format!("the second write of {key} failed otherwise: {e}"),
            "check the archive's health and permissions",
        ),
    };
    let mut checks = vec![writable, create_only];
    if let Err(e) = scratch.delete_wal_object(&ObjectName::File(name)).await {
        checks.push(Check::fail(
            "archive_scratch_removed",
            format!("cannot delete {key}: {e}"),
            "delete it by hand; walhalla ignores it, but it takes space",
        ));
    }
    checks
}

/// A scratch name unlikely to meet another check's at the same moment, always in the same
/// group, so a local archive keeps at most one empty folder of them.
fn scratch_name() -> WalFileName {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let size = SegmentSize::new(16 << 20).expect("16 MiB is a segment size");
    let segno = SegNo((nanos ^ u64::from(std::process::id())) % size.segments_per_xlog_id());
    WalFileName::Segment(SegmentName::new(TimelineId(1), segno, size))
}
