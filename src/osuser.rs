//! The operating-system user walhalla runs as: its name (libpq's default connection user) and
//! home directory, and the state directory derived from them, where per-user files live (the
//! default spools, the fetch server's token file).

use std::ffi::{CStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// Whether walhalla runs as root (effective user id 0).
pub fn is_root() -> bool {
    euid() == 0
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// When walhalla runs as root and `dir` belongs to another user: that user's name (or
/// `uid N`). What root writes there is root's, which that user (PostgreSQL's, as a rule)
/// cannot read or replace.
pub fn root_in_others_dir(dir: &std::path::Path) -> Option<String> {
    owner_if_root(dir)
        .filter(|(uid, _)| *uid != 0)
        .map(|(_, name)| name)
}

/// When walhalla runs as root: the user id and name (or `uid N`) of `dir`'s owner.
pub fn owner_if_root(dir: &std::path::Path) -> Option<(u32, String)> {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        return None;
    }
    let owner = std::fs::metadata(dir).ok()?.uid();
    Some((
        owner,
        name_of(owner).unwrap_or_else(|| format!("uid {owner}")),
    ))
}

/// The effective user's password-database entry: name and home directory.
struct Passwd {
    name: String,
    home: PathBuf,
}

/// Looks up the effective user (`getpwuid_r(geteuid())`), as libpq's `pg_get_user_name` and
/// `pqGetHomeDirectory` do; `None` when the user has no entry (a container's bare uid).
fn effective_user() -> Option<Passwd> {
    user(euid())
}

/// The name of the user `uid`, when the password database has one.
pub fn name_of(uid: u32) -> Option<String> {
    user(uid).map(|user| user.name)
}

/// User `uid`'s password-database entry.
fn user(uid: u32) -> Option<Passwd> {
    let mut buffer = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the strings getpwuid_r stores in
        // `entry` point into `buffer`, which outlives their use below.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut entry,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || entry.pw_name.is_null() {
            return None;
        }
        // SAFETY: getpwuid_r succeeded: both are NUL-terminated strings inside `buffer`.
        let (name, home) = unsafe {
            let home = match entry.pw_dir.is_null() {
                true => Vec::new(),
                false => CStr::from_ptr(entry.pw_dir).to_bytes().to_vec(),
            };
            (CStr::from_ptr(entry.pw_name).to_bytes().to_vec(), home)
        };
        return Some(Passwd {
            name: String::from_utf8(name).ok()?,
            home: PathBuf::from(OsString::from_vec(home)),
        });
    }
}

/// The effective user's name, whatever `USER` says: libpq's default for the connection's
/// `user` when neither the settings nor `PGUSER` give one.
pub fn name() -> Option<String> {
    effective_user().map(|user| user.name)
}

/// The home directory: `HOME`, else the effective user's entry (as libpq finds
/// `~/.pgpass` and `~/.postgresql`).
pub fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(|| effective_user().map(|user| user.home))
        .filter(|home| !home.as_os_str().is_empty())
}

/// walhalla's state directory: `$XDG_STATE_HOME/walhalla`, else `~/.local/state/walhalla`
/// (`./walhalla` when there is no home either).
pub fn state_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|home| home.join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("walhalla")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_effective_users_not_the_environments() {
        let uid = euid();
        let expected = std::process::Command::new("id")
            .arg("-un")
            .output()
            .expect("run id -un");
        let expected = String::from_utf8(expected.stdout).unwrap();
        assert_eq!(name().as_deref(), Some(expected.trim()), "uid {uid}");
    }
}
