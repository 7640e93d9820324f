//! Holding a spool for the one receiver that uses it (see the spool's module documentation):
//! an abstract Unix socket named for the user and the spool's path, bound for as long as the
//! process runs.

use std::io;
use std::path::{Path, PathBuf};

/// The spools this process holds, by their canonical paths: each is held once, until the
/// process ends (the kernel then releases the socket, however it ends).
static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Holds the spool `dir` for this process, unless it does already: binds the abstract Unix
/// socket [`hold_name`] names, which one process at a time can. Refused (`WouldBlock`) while
/// another process holds it, naming that process. The socket is visible in this network
/// namespace only: receivers in other containers sharing a volume do not see each other.
pub(super) fn hold(dir: &Path) -> io::Result<()> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let canonical = dir.canonicalize()?;
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if held.contains(&canonical) {
        return Ok(());
    }
    let address = SocketAddrUnix::new_abstract_name(hold_name(&canonical).as_bytes())?;
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    match rustix::net::bind(&socket, &address) {
        Ok(()) => {}
        Err(rustix::io::Errno::ADDRINUSE) => {
            let holder = holder_pid(&address).map_or(String::new(), |pid| format!(" (pid {pid})"));
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another walhalla receive uses it{holder}: two receivers need a spool each \
                     (--spool), or one receiver"
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    rustix::net::listen(&socket, 8)?;
    // Accepts (and drops) what holder_pid connects, so that its queue never fills.
    let listener = std::os::unix::net::UnixListener::from(socket);
    std::thread::Builder::new()
        .name("walhalla-spool-hold".into())
        .spawn(move || while listener.accept().is_ok() {})?;
    held.push(canonical);
    Ok(())
}

/// The abstract socket name that holds the spool at `canonical` for this user: a hash of the
/// path, which may be longer than a socket name can be.
fn hold_name(canonical: &Path) -> String {
    use sha2::Digest;
    use std::os::unix::ffi::OsStrExt;
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("walhalla/spool/{}/{hex}", crate::osuser::euid())
}

/// The process that holds the socket at `address` (`SO_PEERCRED` of a connection to it), when
/// it can be told at once.
fn holder_pid(address: &rustix::net::SocketAddrUnix) -> Option<i32> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .ok()?;
    rustix::net::connect(&socket, address).ok()?;
    let peer = rustix::net::sockopt::socket_peercred(&socket).ok()?;
    Some(peer.pid.as_raw_pid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::open;
    use crate::wal::SystemId;

    #[test]
    fn a_spool_another_process_holds_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        // Another process's hold: a child that binds the name and waits.
        let name = hold_name(&spool.canonicalize().unwrap());
        let mut other = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket, sys, time\n\
                 s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
                 s.bind('\\0' + sys.argv[1]); s.listen(1); print('held', flush=True)\n\
                 time.sleep(60)",
                &name,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        io::BufReader::new(other.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "held");
        let refused = open(&spool, SystemId(9), false).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock, "{refused}");
        let expected = format!("another walhalla receive uses it (pid {})", other.id());
        assert!(refused.to_string().contains(&expected), "{refused}");
        assert!(
            std::fs::read_dir(&spool).unwrap().next().is_none(),
            "nothing touched before the hold"
        );
        // The other process ends: this one holds it, and opening it again (a later session,
        // a spool removed and made anew under the same path) keeps its hold.
        other.kill().unwrap();
        other.wait().unwrap();
        open(&spool, SystemId(9), false).unwrap();
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
        // And a second holder is refused, naming this process.
        let again = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket, sys\n\
                 s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
                 try:\n    s.bind('\\0' + sys.argv[1]); print('bound')\n\
                 except OSError as e:\n    print(e.errno)",
                &name,
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&again.stdout).trim(),
            libc::EADDRINUSE.to_string()
        );
    }
}
