//! Listing one folder of the archive: the names under it, with each object's size and time,
//! parsed level by level with the parsers of [`keys`](super::keys); names walhalla does not
//! write are logged and skipped.

use object_store::ObjectStore;
use object_store::path::Path;

use super::{Archive, Location, Result};

impl Archive {
    /// The names directly under folder `dir`, retried like every operation. Walhalla's
    /// listings go through here and parse what it returns with the parsers of
    /// [`keys`](self::keys), level by level.
    pub(super) async fn list(&self, dir: &Path) -> Result<Listing> {
        match &self.location {
            Location::Local(root) => {
                let folder = root.join(dir.as_ref());
                self.retrying("list", dir, || {
                    let folder = folder.clone();
                    crate::blocking::run(move || list_local(&folder))
                })
                .await
            }
            _ => {
                let listing = self
                    .retrying("list", dir, || self.store.list_with_delimiter(Some(dir)))
                    .await?;
                let names = |paths: Vec<Path>| -> Vec<Result<String, String>> {
                    paths
                        .into_iter()
                        .map(|p| {
                            p.filename()
                                .map(str::to_string)
                                .ok_or_else(|| p.to_string())
                        })
                        .collect()
                };
                let infos = listing
                    .objects
                    .iter()
                    .map(|o| ObjectInfo {
                        size: o.size,
                        modified: jiff::Timestamp::from_millisecond(
                            o.last_modified.timestamp_millis(),
                        )
                        .ok(),
                    })
                    .collect();
                Ok(Listing {
                    folders: names(listing.common_prefixes),
                    objects: names(listing.objects.into_iter().map(|o| o.location).collect()),
                    infos,
                })
            }
        }
    }
}

/// The names directly under a folder, as a listing found them: `Err` holds a name that is not
/// valid Unicode (lossily converted) or a path with no file name, to be logged and skipped.
#[derive(Debug, Default)]
pub(super) struct Listing {
    pub(super) folders: Vec<Result<String, String>>,
    pub(super) objects: Vec<Result<String, String>>,
    /// Size and modification time of each of `objects`, in the same order.
    pub(super) infos: Vec<ObjectInfo>,
}

/// What a listing tells of an object besides its name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its size in bytes, as stored.
    pub size: u64,
    /// When it was stored, where the store says.
    pub modified: Option<jiff::Timestamp>,
}

impl Listing {
    /// The sub-folders `parse` accepts; the others are logged and skipped.
    pub(super) fn folders_as<T>(&self, dir: &Path, parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
        parse_names(dir, "folder", &self.folders, parse)
    }

    /// The objects `parse` accepts; the others are logged and skipped.
    pub(super) fn objects_as<T>(&self, dir: &Path, parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
        parse_names(dir, "file", &self.objects, parse)
    }

    /// The objects `parse` accepts, with their size and time.
    pub(super) fn objects_with_info<T>(
        &self,
        dir: &Path,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Vec<(T, ObjectInfo)> {
        self.objects
            .iter()
            .zip(&self.infos)
            .filter_map(|(name, info)| parse_name(dir, "file", name, &parse).map(|t| (t, *info)))
            .collect()
    }
}

fn parse_names<T>(
    dir: &Path,
    kind: &str,
    names: &[Result<String, String>],
    parse: impl Fn(&str) -> Option<T>,
) -> Vec<T> {
    names
        .iter()
        .filter_map(|name| parse_name(dir, kind, name, &parse))
        .collect()
}

/// `name` parsed, or `None` (logged) when it is not a name walhalla writes in `dir`.
fn parse_name<T>(
    dir: &Path,
    kind: &str,
    name: &Result<String, String>,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let parsed = name.as_deref().ok().and_then(parse);
    if parsed.is_none() {
        let name = name.as_ref().unwrap_or_else(|lossy| lossy);
        tracing::debug!(folder = %dir, "ignoring {kind} {name:?}: not a name walhalla writes there");
    }
    parsed
}

/// Lists a local folder with the standard library rather than object_store, which fails a
/// whole listing on one name that is not valid Unicode. A missing folder is empty, as on S3;
/// symbolic links count as what they point to, and broken ones are skipped.
fn list_local(folder: &std::path::Path) -> object_store::Result<Listing> {
    let io_error = |e: std::io::Error| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(std::io::Error::new(
            e.kind(),
            format!("list {}: {e}", folder.display()),
        )),
    };
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Listing::default()),
        Err(e) => return Err(io_error(e)),
    };
    let mut listing = Listing::default();
    for entry in entries {
        let entry = entry.map_err(io_error)?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|raw| raw.to_string_lossy().into_owned());
        match std::fs::metadata(entry.path()) {
            Ok(meta) if meta.is_dir() => listing.folders.push(name),
            Ok(meta) => {
                listing.objects.push(name);
                listing.infos.push(ObjectInfo {
                    size: meta.len(),
                    modified: meta
                        .modified()
                        .ok()
                        .and_then(|t| jiff::Timestamp::try_from(t).ok()),
                });
            }
            // Removed meanwhile, or a broken link.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(listing)
}
