//! Holding a spool for the one receiver that uses it (see the spool's module documentation):
//! an abstract Unix socket named for the spool, bound for as long as the process runs.

use std::io;
use std::path::Path;

/// The names of the spools this process holds ([`hold_name`]): each is held once, until the
/// process ends (the kernel then releases the socket, however it ends).
static HELD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Holds the spool `dir` for this process, unless it does already: binds the abstract Unix
/// socket [`hold_name`] names, which one process at a time can. Refused (`WouldBlock`) while
/// another process holds it, naming that process. The socket is visible in this network
/// namespace only: receivers in other containers sharing a volume do not see each other.
pub(super) fn hold(dir: &Path) -> io::Result<()> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let name = hold_name(dir)?;
    let context = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot hold it (abstract Unix socket @{name}): {e}"),
        )
    };
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if held.contains(&name) {
        return Ok(());
    }
    let address =
        SocketAddrUnix::new_abstract_name(name.as_bytes()).map_err(|e| context(e.into()))?;
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| context(e.into()))?;
    match rustix::net::bind(&socket, &address) {
        Ok(()) => {}
        Err(rustix::io::Errno::ADDRINUSE) => {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another walhalla receive uses it{}: two receivers need a spool each \
                     (--spool), or one receiver",
                    holder(&address)
                ),
            ));
        }
        Err(e) => return Err(context(e.into())),
    }
    rustix::net::listen(&socket, 8).map_err(|e| context(e.into()))?;
    // Accepts (and drops) what `holder` connects, so that its queue never fills. The socket
    // is never closed: an error (out of descriptors, say) is waited out, not taken as the end.
    let listener = std::os::unix::net::UnixListener::from(socket);
    std::thread::Builder::new()
        .name("walhalla-spool-hold".into())
        .spawn(move || {
            loop {
                if listener.accept().is_err() {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        })
        .map_err(context)?;
    held.push(name);
    Ok(())
}

/// Whether this process holds the spool `dir` already.
pub(super) fn held_here(dir: &Path) -> io::Result<bool> {
    let name = hold_name(dir)?;
    let held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    Ok(held.contains(&name))
}

/// The abstract socket name that holds the spool `dir`: a hash of the identity of the
/// directory it is in (device and inode) and of its own name. The same spool reached by
/// another path (a symbolic link, a bind mount of a directory above it) has the same name,
/// and a spool removed and made again, or unmounted and mounted again, keeps it. A bind mount
/// of the spool directory itself puts it in another parent: that is not seen.
fn hold_name(dir: &Path) -> io::Result<String> {
    use sha2::Digest;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let canonical = dir.canonicalize()?;
    let (parent, own) = match (canonical.parent(), canonical.file_name()) {
        (Some(parent), Some(own)) => (parent, own),
        _ => (canonical.as_path(), canonical.as_os_str()),
    };
    let parent = std::fs::metadata(parent)?;
    let mut hash = sha2::Sha256::new();
    hash.update(parent.dev().to_le_bytes());
    hash.update(parent.ino().to_le_bytes());
    hash.update(own.as_bytes());
    let hex: String = hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("walhalla/spool/{hex}"))
}

/// Who holds the socket at `address`, for a message: ` (pid N)`, with the user when it is
/// not this one, from `SO_PEERCRED` of a connection to it; empty when that cannot be told at
/// once, or the holder is in another PID namespace (pid 0).
fn holder(address: &rustix::net::SocketAddrUnix) -> String {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let peer = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .and_then(|socket| {
        rustix::net::connect(&socket, address)?;
        rustix::net::sockopt::socket_peercred(&socket)
    });
    let Ok(peer) = peer else {
        return String::new();
    };
    let pid = peer.pid.as_raw_pid();
    let uid = peer.uid.as_raw();
    match (pid, uid == crate::osuser::euid()) {
        (0, _) => String::new(),
        (pid, true) => format!(" (pid {pid})"),
        (pid, false) => format!(" (pid {pid}, user id {uid})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::open;
    use crate::wal::SystemId;

    #[test]
    fn a_spool_another_process_holds_is_refused_naming_it() {
        const CHILD: &str = "WALHALLA_TEST_SPOOL_HOLDER";
        if let Some(spool) = std::env::var_os(CHILD) {
            // The child: holds the spool, says so, and waits to be killed.
            hold(Path::new(&spool)).unwrap();
            println!("held");
            std::thread::sleep(std::time::Duration::from_secs(60));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        let mut other = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "spool::hold::tests::a_spool_another_process_holds_is_refused_naming_it",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &spool)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = io::BufReader::new(other.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("held") {
            line.clear();
            use std::io::BufRead;
            assert!(out.read_line(&mut line).unwrap() > 0, "the child ended");
        }
        // Reached by another path: still the same spool.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&spool, &link).unwrap();
        let refused = open(&link, SystemId(9), false).unwrap_err();
        assert!(
            !crate::spool::remove_unless_held(&spool).unwrap(),
            "a held spool is not removed"
        );
        assert!(spool.is_dir());
        let _ = other.kill();
        other.wait().unwrap();
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock, "{refused}");
        let expected = format!("another walhalla receive uses it (pid {})", other.id());
        assert!(refused.to_string().contains(&expected), "{refused}");
        assert!(
            std::fs::read_dir(&spool).unwrap().next().is_none(),
            "nothing touched before the hold"
        );
        // The other process ended: this one holds it, and opening it again (a later session,
        // a spool removed and made anew) keeps its hold.
        open(&spool, SystemId(9), false).unwrap();
        assert!(
            !crate::spool::remove_unless_held(&spool).unwrap(),
            "a spool this process holds is not removed"
        );
        open(&spool, SystemId(9), false).unwrap();
        std::fs::remove_dir_all(&spool).unwrap();
        open(&spool, SystemId(9), false).unwrap();
        // No file of the spool's is held open: its filesystem could be unmounted.
        let open_in_spool = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
            .filter(|target| target.starts_with(&spool))
            .count();
        assert_eq!(open_in_spool, 0);
        // And the name is taken: another bind of it fails.
        let name = hold_name(&spool).unwrap();
        let address = rustix::net::SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap();
        let socket = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        assert_eq!(
            rustix::net::bind(&socket, &address),
            Err(rustix::io::Errno::ADDRINUSE)
        );
    }
}
