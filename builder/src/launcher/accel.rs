//! Whether KVM can be used, and the memory of hosts where it hangs.
//!
//! `/dev/kvm` opening and answering `KVM_GET_API_VERSION` says KVM exists,
//! not that a guest makes progress: on nested or paravirtualised hosts a
//! Debian kernel can hang in early boot under KVM while tiny guests run. So
//! `--accel auto` boots with KVM under a short deadline and falls back to
//! TCG; the verdict is written to a small per-user file keyed by the host's
//! boot id, so later runs in the same host boot go straight to TCG.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `_IO(KVMIO, 0x00)`; the stable API has answered 12 since Linux 2.6.22.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_API_VERSION: libc::c_int = 12;

/// `Ok` when `/dev/kvm` opens read-write and speaks the stable API;
/// otherwise why not, for the user.
pub fn kvm_usable() -> Result<(), String> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    // SAFETY: `kvm` is an open fd; KVM_GET_API_VERSION takes no argument
    // and only returns a number.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != KVM_API_VERSION {
        return Err(format!(
            "/dev/kvm answers API version {version}, not {KVM_API_VERSION}"
        ));
    }
    Ok(())
}

fn verdict_file() -> PathBuf {
    // SAFETY: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("supermin-kvm-hangs-{uid}"))
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Whether a KVM guest already hung earlier in this host boot.
pub fn kvm_known_to_hang() -> bool {
    boot_id().is_some_and(|id| recorded_at(&verdict_file(), &id))
}

/// Records that a KVM guest hung in this host boot. Best effort: without the
/// file the next run just pays the probe again.
pub fn remember_kvm_hangs() {
    if let Some(id) = boot_id() {
        record_at(&verdict_file(), &id);
    }
}

fn recorded_at(path: &Path, boot_id: &str) -> bool {
    // Only a file of ours counts: /tmp is shared.
    // SAFETY: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    let ours = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.uid() == uid);
    ours && std::fs::read_to_string(path).is_ok_and(|s| s.trim() == boot_id)
}

fn record_at(path: &Path, boot_id: &str) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("{boot_id}\n").as_bytes()));
    if written.is_ok() && std::fs::rename(&tmp, path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_hang_counts_only_for_the_same_host_boot() {
        let dir = std::env::temp_dir().join(format!("supermin-kvm-verdict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("verdict");
        assert!(!recorded_at(&file, "boot-a"));
        record_at(&file, "boot-a");
        assert!(recorded_at(&file, "boot-a"));
        assert!(!recorded_at(&file, "boot-b"));
        record_at(&file, "boot-b");
        assert!(recorded_at(&file, "boot-b"));
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_planted_as_the_verdict_is_ignored() {
        let dir = std::env::temp_dir().join(format!("supermin-kvm-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("real"), "boot-a\n").unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("verdict")).unwrap();
        assert!(!recorded_at(&dir.join("verdict"), "boot-a"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
