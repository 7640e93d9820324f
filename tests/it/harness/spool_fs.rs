//! A filesystem of its own for a receiver's spool, to break under it: a small tmpfs to fill up,
//! or an ext4 image on a loop device (mounted `errors=remount-ro`) to turn read-only with a
//! filesystem error and repair with `e2fsck`. Needs root (mount, losetup); unmounted and
//! detached on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{TestDir, describe, running_as_root, wait_for};

/// A mounted filesystem holding a spool directory.
pub struct SpoolFs {
    mountpoint: PathBuf,
    /// The loop device and image of an ext4 filesystem.
    ext4: Option<(String, PathBuf)>,
    _dir: TestDir,
}

impl SpoolFs {
    /// A tmpfs of `mib` MiB.
    pub fn tmpfs(mib: u32) -> SpoolFs {
        let (dir, mountpoint) = Self::mountpoint();
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(&mountpoint));
        let fs = SpoolFs {
            mountpoint,
            ext4: None,
            _dir: dir,
        };
        fs.make_spool();
        fs
    }

    /// An ext4 filesystem of `mib` MiB in an image file on a loop device, mounted with
    /// `errors=remount-ro`. Fails the test, saying why, where loop devices are not available.
    pub fn ext4_on_loop(mib: u32) -> SpoolFs {
        let (dir, mountpoint) = Self::mountpoint();
        let image = dir.path().join("spool.ext4");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(u64::from(mib) << 20))
            .expect("create the filesystem image");
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        let attach = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .expect("run losetup (package mount)");
        assert!(
            attach.status.success(),
            "this test needs a loop device (losetup --find --show), which this machine does not \
             give: {}",
            describe(&attach)
        );
        let device = String::from_utf8_lossy(&attach.stdout).trim().to_string();
        let fs = SpoolFs {
            mountpoint,
            ext4: Some((device, image)),
            _dir: dir,
        };
        fs.mount_ext4();
        fs.make_spool();
        fs
    }

    fn mountpoint() -> (TestDir, PathBuf) {
        assert!(running_as_root(), "mounting a spool filesystem needs root");
        let dir = TestDir::new("spoolfs");
        let mountpoint = dir.subdir("mnt");
        (dir, mountpoint)
    }

    fn mount_ext4(&self) {
        let (device, _) = self.ext4.as_ref().expect("an ext4 filesystem");
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "errors=remount-ro", device])
            .arg(&self.mountpoint));
    }

    /// Creates the spool directory in it, owned by the PostgreSQL user (a subdirectory: while
    /// the filesystem is unmounted, the spool is missing rather than empty).
    fn make_spool(&self) {
        let spool = self.spool();
        if !spool.exists() {
            std::fs::create_dir(&spool).expect("create the spool directory");
            super::chown_to_pg(&spool);
            std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700))
                .expect("chmod the spool directory");
        }
    }

    /// The spool directory.
    pub fn spool(&self) -> PathBuf {
        self.mountpoint.join("spool")
    }

    /// Fills the filesystem with a root-owned ballast file until not a byte more fits.
    pub fn fill(&self) {
        use std::io::Write as _;
        let mut ballast = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ballast())
            .expect("create the ballast");
        let block = vec![0xa5u8; 64 << 10];
        loop {
            match ballast.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("fill {}: {e}", self.mountpoint.display()),
            }
        }
        // The last few bytes, one at a time.
        while ballast.write(&[0xa5]).is_ok_and(|n| n == 1) {}
    }

    /// Removes the ballast: the space is back.
    pub fn free(&self) {
        std::fs::remove_file(self.ballast()).expect("remove the ballast");
    }

    fn ballast(&self) -> PathBuf {
        self.mountpoint.join("ballast")
    }

    /// Raises a filesystem error in the ext4 filesystem (`trigger_fs_error`), which
    /// `errors=remount-ro` turns into a read-only filesystem; waits until writes fail.
    pub fn break_read_only(&self) {
        let (device, _) = self.ext4.as_ref().expect("an ext4 filesystem");
        let name = Path::new(device).file_name().expect("a device name");
        let trigger = Path::new("/sys/fs/ext4")
            .join(name)
            .join("trigger_fs_error");
        std::fs::write(&trigger, "1")
            .unwrap_or_else(|e| panic!("write {}: {e}", trigger.display()));
        let probe = self.mountpoint.join("probe");
        wait_for(
            "the spool's filesystem to turn read-only",
            Duration::from_secs(10),
            || {
                let write = std::fs::write(&probe, b"x");
                let _ = std::fs::remove_file(&probe);
                (write.err()?.raw_os_error() == Some(libc::EROFS)).then_some(())
            },
        );
    }

    /// Repairs the ext4 filesystem as an operator would: unmounts it (waiting, up to
    /// `within`, until no process holds a file in it), runs `e2fsck -fy`, mounts it again.
    pub fn repair(&self, within: Duration) {
        wait_for(
            "no process to hold the broken spool filesystem (umount)",
            within,
            || {
                Command::new("umount")
                    .arg(&self.mountpoint)
                    .output()
                    .expect("run umount")
                    .status
                    .success()
                    .then_some(())
            },
        );
        let (device, _) = self.ext4.as_ref().expect("an ext4 filesystem");
        let fsck = Command::new("e2fsck")
            .args(["-f", "-y", device])
            .output()
            .expect("run e2fsck (package e2fsprogs)");
        // 0: clean, 1: errors corrected.
        assert!(
            matches!(fsck.status.code(), Some(0 | 1)),
            "e2fsck: {}",
            describe(&fsck)
        );
        self.mount_ext4();
    }
}

impl Drop for SpoolFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(&self.mountpoint)
            .status();
        if let Some((device, _)) = &self.ext4 {
            let _ = Command::new("losetup").args(["-d", device]).status();
        }
    }
}

/// Runs `command`, failing the test with its output unless it succeeds.
fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        describe(&output)
    );
}
