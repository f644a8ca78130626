//! The mounts and the move into the real root.
//!
//! The initramfs is the kernel's rootfs and can be neither unmounted nor pivot_root'ed
//! away (see the kernel's `ramfs-rootfs-initramfs.rst`), so we do what busybox's
//! `switch_root` does: delete our files from it to free their memory, mount the new root
//! over `/` with `MS_MOVE`, chroot into it and exec its `/init`.
//!
//! The new root starts with nothing mounted on it, exactly as supermin's init leaves it:
//! libguestfs's `/init` mounts /proc, /sys and devtmpfs itself, and the default
//! appliance's daemon does the same.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use rustix::fs::{FileType, Mode};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

/// Mounts a pseudo file system; already mounted (`EBUSY`) counts as success.
pub fn mount_pseudo(fstype: &str, target: &str) -> Result<(), Errno> {
    let _ = rustix::fs::mkdir(target, Mode::from_raw_mode(0o755));
    match rustix::mount::mount(fstype, target, fstype, MountFlags::empty(), None) {
        Ok(()) | Err(Errno::BUSY) => Ok(()),
        Err(errno) => Err(errno),
    }
}

/// Creates a block device node at `path` (replacing whatever is there).
pub fn make_block_node(path: &str, major: u32, minor: u32) -> Result<(), Errno> {
    let _ = rustix::fs::unlink(path);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        FileType::BlockDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(major, minor),
    )
}

/// Opens a block device by number through a private node, for reading its superblock.
/// Our own node rather than devtmpfs's: devtmpfs creates its nodes asynchronously.
pub fn open_block(major: u32, minor: u32) -> io::Result<std::fs::File> {
    const PROBE: &str = "/dev/.supermin-probe";
    make_block_node(PROBE, major, minor)?;
    let file = std::fs::File::open(PROBE);
    let _ = rustix::fs::unlink(PROBE);
    file
}

/// Why the root could not be mounted: the errno of each file system type tried.
#[derive(Debug)]
pub struct MountFailure {
    pub tries: Vec<(&'static str, Errno)>,
}

/// Mounts `device` on `target`, trying the ext4 driver first (it handles ext2 and ext3
/// too, and is the one distribution kernels ship) and the ext2 driver after.
pub fn mount_root(
    device: &str,
    target: &str,
    read_only: bool,
    options: &str,
) -> Result<&'static str, MountFailure> {
    let mut flags = MountFlags::NOATIME;
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    let data = std::ffi::CString::new(options).unwrap_or_default();
    let mut tries = Vec::new();
    for fstype in ["ext4", "ext2"] {
        match rustix::mount::mount(device, target, fstype, flags, data.as_c_str()) {
            Ok(()) => return Ok(fstype),
            Err(errno) => tries.push((fstype, errno)),
        }
    }
    Err(MountFailure { tries })
}

/// Unmounts what we mounted in the initramfs so the new root starts clean.
pub fn unmount_pseudo() {
    for target in ["/dev", "/sys", "/proc"] {
        // Lazy: nothing of ours holds them open, but a stray kernel reference must not
        // stop the boot.
        let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
    }
}

/// Deletes everything below `dir` that lives on the file system `dev` (the initramfs),
/// leaving other mounts (the new root on /root) and the directories holding them alone.
/// Best effort: what cannot be deleted only costs memory.
pub fn delete_tree(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            delete_tree(&path, dev);
            // Fails (ENOTEMPTY, EBUSY) for directories that hold mount points: kept.
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Moves the mount at `new_root` over `/` and chroots into it.
pub fn enter(new_root: &str) -> Result<(), (&'static str, Errno)> {
    rustix::process::chdir(new_root).map_err(|e| ("chdir to the new root", e))?;
    rustix::mount::mount_move(".", "/").map_err(|e| ("move the new root onto /", e))?;
    rustix::process::chroot(".").map_err(|e| ("chroot into the new root", e))?;
    rustix::process::chdir("/").map_err(|e| ("chdir to /", e))?;
    Ok(())
}

/// Replaces this process with `/init`, argv[0] "init" and our environment (the kernel's
/// `HOME`, `TERM` and unknown `key=value` parameters), as supermin's init does. Returns
/// only on failure.
pub fn exec_init() -> io::Error {
    std::process::Command::new("/init").arg0("init").exec()
}

/// `ls -la`-like lines for a directory, to show what the root holds when `/init` fails.
pub fn describe_dir(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![format!("{}: cannot be listed", dir.display())];
    };
    let mut lines: Vec<String> = entries
        .flatten()
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            match entry.metadata() {
                Ok(meta) => {
                    let target = std::fs::read_link(entry.path())
                        .map(|t| format!(" -> {}", t.display()))
                        .unwrap_or_default();
                    format!(
                        "{:06o} {:>10} {}:{} {name}{target}",
                        meta.mode(),
                        meta.size(),
                        meta.uid(),
                        meta.gid()
                    )
                }
                Err(err) => format!("{name}: {err}"),
            }
        })
        .collect();
    lines.sort();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_tree_empties_the_tree_but_keeps_the_top() {
        let top = std::env::temp_dir().join(format!("supermin-init-delete-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(top.join("lib/modules")).unwrap();
        std::fs::write(top.join("init"), b"x").unwrap();
        std::fs::write(top.join("lib/modules/a.ko"), b"x").unwrap();
        std::os::unix::fs::symlink("init", top.join("link")).unwrap();
        let dev = std::fs::metadata(&top).unwrap().dev();
        delete_tree(&top, dev);
        assert_eq!(std::fs::read_dir(&top).unwrap().count(), 0);
        std::fs::remove_dir(&top).unwrap();
    }

    #[test]
    fn delete_tree_leaves_other_file_systems_alone() {
        let top = std::env::temp_dir().join(format!("supermin-init-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(&top).unwrap();
        std::fs::write(top.join("file"), b"x").unwrap();
        // Pretend the tree is on another device: nothing may be touched.
        let dev = std::fs::metadata(&top).unwrap().dev();
        delete_tree(&top, dev.wrapping_add(1));
        assert!(top.join("file").exists());
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn describe_dir_lists_entries_with_modes_and_link_targets() {
        let top = std::env::temp_dir().join(format!("supermin-init-ls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(&top).unwrap();
        std::fs::write(top.join("init"), b"abc").unwrap();
        std::os::unix::fs::symlink("/bin/sh", top.join("sh")).unwrap();
        let lines = describe_dir(&top);
        assert_eq!(lines.len(), 2);
        assert!(lines
            .iter()
            .any(|l| l.ends_with(" init") && l.contains(" 3 ")));
        assert!(lines.iter().any(|l| l.ends_with("sh -> /bin/sh")));
        std::fs::remove_dir_all(&top).unwrap();
    }
}
