//! Whether KVM can be used, and the memory of hosts where it fails.
//!
//! `/dev/kvm` opening and answering `KVM_GET_API_VERSION` says KVM exists,
//! not that a guest makes progress: on nested or paravirtualised hosts
//! (`kvm_pvm`) a Debian kernel either hangs in early boot under KVM or makes
//! qemu abort (`failed to set MSR ...`), while tiny guests run. So
//! `--accel auto` boots with KVM and falls back to TCG on any failure before
//! the daemon answers; the verdict, with its reason, is written to a small
//! per-user file keyed by the host's boot id and the qemu binary's identity,
//! so later runs in the same host boot with the same qemu go straight to TCG,
//! and a reboot (new host kernel) or a qemu upgrade tries KVM again.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `_IO(KVMIO, 0x00)`; the stable API has answered 12 since Linux 2.6.22.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_API_VERSION: libc::c_int = 12;

/// The verdict file's name, per user, in `$XDG_RUNTIME_DIR` or the temporary
/// directory (both are emptied at reboot, which also ends a verdict).
pub const VERDICT_PREFIX: &str = "supermin-kvm-verdict-";

/// A reason is one console line at most; keep the file small whatever qemu printed.
const MAX_REASON: usize = 512;

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

/// Where this user's verdict lives: `runtime_dir` (`$XDG_RUNTIME_DIR`) when
/// it is a directory, else `tmp_dir`.
pub fn verdict_file(runtime_dir: Option<&Path>, tmp_dir: &Path) -> PathBuf {
    let uid = rustix::process::getuid().as_raw();
    let dir = runtime_dir
        .filter(|d| d.is_dir())
        .unwrap_or(tmp_dir)
        .to_path_buf();
    dir.join(format!("{VERDICT_PREFIX}{uid}"))
}

/// What a verdict is valid for: one host boot, one qemu binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictKey {
    pub boot_id: String,
    /// [`super::qemu::QemuBinary::identity`].
    pub qemu: String,
}

/// The reason KVM failed, when a verdict of ours for `key` is recorded at `path`.
pub fn recorded_failure(path: &Path, key: &VerdictKey) -> Option<String> {
    // Only a file of ours counts: the temporary directory is shared.
    let uid = rustix::process::getuid().as_raw();
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.uid() != uid || meta.len() > 4096 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let mut boot = None;
    let mut qemu = None;
    let mut reason = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("boot_id", v)) => boot = Some(v),
            Some(("qemu", v)) => qemu = Some(v),
            Some(("reason", v)) => reason = Some(v),
            _ => {}
        }
    }
    (boot? == key.boot_id && qemu? == key.qemu).then(|| reason.unwrap_or("").to_string())
}

/// Records that KVM failed for `key`, and why. Best effort: without the file
/// the next run just pays the probe again.
pub fn record_failure(path: &Path, key: &VerdictKey, reason: &str) {
    let mut reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    let text = format!(
        "boot_id={}\nqemu={}\nreason={reason}\n",
        key.boot_id, key.qemu
    );
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if written.is_ok() && std::fs::rename(&tmp, path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

/// Forgets the verdict (`--recheck-kvm`): the next `--accel auto` run tries KVM again.
pub fn forget(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether a line qemu printed on its stderr says that KVM itself failed
/// (an ioctl error, an internal error, an assertion in its KVM code), as
/// opposed to a warning about some device.
pub fn is_kvm_failure_line(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    lower.contains("kvm")
        && ["error", "failed", "assertion", "abort", "suberror"]
            .iter()
            .any(|w| lower.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(boot: &str, qemu: &str) -> VerdictKey {
        VerdictKey {
            boot_id: boot.into(),
            qemu: qemu.into(),
        }
    }

    #[test]
    fn a_recorded_failure_counts_only_for_the_same_host_boot_and_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("verdict");
        assert_eq!(recorded_failure(&file, &key("boot-a", "q1")), None);
        record_failure(&file, &key("boot-a", "q1"), "qemu was killed (SIGABRT)");
        assert_eq!(
            recorded_failure(&file, &key("boot-a", "q1")).as_deref(),
            Some("qemu was killed (SIGABRT)")
        );
        // A reboot, or a qemu upgrade, tries KVM again.
        assert_eq!(recorded_failure(&file, &key("boot-b", "q1")), None);
        assert_eq!(recorded_failure(&file, &key("boot-a", "q2")), None);
        record_failure(&file, &key("boot-b", "q1"), "hung");
        assert!(recorded_failure(&file, &key("boot-b", "q1")).is_some());
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        forget(&file).unwrap();
        assert_eq!(recorded_failure(&file, &key("boot-b", "q1")), None);
        // Forgetting twice is fine.
        forget(&file).unwrap();
    }

    #[test]
    fn a_reason_is_kept_to_one_bounded_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("verdict");
        let k = key("b", "q");
        let long = format!("first\nboot_id=evil\n{}", "x".repeat(10_000));
        record_failure(&file, &k, &long);
        let reason = recorded_failure(&file, &k).unwrap();
        assert!(reason.starts_with("first boot_id=evil"), "{reason}");
        assert!(reason.len() <= MAX_REASON);
    }

    #[test]
    fn a_symlink_planted_as_the_verdict_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real"), "boot_id=b\nqemu=q\nreason=r\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("verdict")).unwrap();
        assert_eq!(
            recorded_failure(&dir.path().join("verdict"), &key("b", "q")),
            None
        );
    }

    #[test]
    fn kvm_failures_are_told_from_other_qemu_messages() {
        assert!(is_kvm_failure_line(
            "qemu-system-x86_64: target/i386/kvm/kvm.c:3849: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed."
        ));
        assert!(is_kvm_failure_line("KVM internal error. Suberror: 1"));
        assert!(is_kvm_failure_line("error: kvm run failed Bad address"));
        assert!(!is_kvm_failure_line(
            "qemu-system-x86_64: warning: host doesn't support requested feature"
        ));
        assert!(!is_kvm_failure_line("[    0.000000] Linux version 6.1.0"));
    }
}
