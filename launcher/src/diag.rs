//! What `supermin doctor` asks the launcher: which qemu a run would use, whether it starts
//! at all, what the accelerator logic knows about KVM on this host, and which virtiofsd
//! shares would use. Read-only: nothing
//! here boots a guest or changes the recorded verdict.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{accel, qemu, virtiofs, LaunchEnv};

/// The qemu binary a run would use.
#[derive(Debug, Clone)]
pub struct QemuFound {
    /// Where it is.
    pub path: PathBuf,
    /// The first line of `-help` (`QEMU emulator version ...`).
    pub version: String,
    /// What a KVM verdict is keyed by (path, inode, size, mtime).
    pub identity: String,
}

/// The program looked up in `PATH`.
pub const QEMU_PROGRAM: &str = qemu::QEMU;

/// Finds qemu the way a run does.
pub fn find_qemu(env: &LaunchEnv) -> std::io::Result<QemuFound> {
    let q = qemu::QemuBinary::find(env.path.as_deref())?;
    Ok(QemuFound {
        path: q.path,
        version: q.version,
        identity: q.identity,
    })
}

/// The virtiofsd a run with `--share` would use (`--share-transport auto`), as its path
/// and version, or why there is none (shares then use 9p).
pub fn find_virtiofsd(env: &LaunchEnv) -> Result<(PathBuf, String), String> {
    virtiofs::find(
        env.virtiofsd.as_deref(),
        env.path.as_deref(),
        env.home.as_deref(),
    )
    .map(|v| (v.path, v.version))
}

/// Starts qemu with no machine at all (`-machine none`, TCG) and quits it through its
/// monitor: proves the binary, its libraries and its permissions work, without a guest.
/// `Err` carries what qemu printed.
pub fn qemu_starts(q: &QemuFound, timeout: Duration) -> Result<(), String> {
    let mut child = Command::new(&q.path)
        .args(["-machine", "none", "-accel", "tcg", "-nodefaults"])
        .args(["-display", "none", "-serial", "none", "-monitor", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", q.path.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // qemu may already have died; its exit status says so below.
        let _ = stdin.write_all(b"quit\n");
    }
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "qemu -machine none did not quit within {}s",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for qemu: {e}")),
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ =
            std::io::Read::read_to_string(&mut std::io::Read::take(&mut pipe, 8192), &mut stderr);
    }
    if status.success() {
        Ok(())
    } else {
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        Err(format!(
            "qemu -machine none failed ({status}){}",
            last.map(|l| format!(": {}", l.trim())).unwrap_or_default()
        ))
    }
}

/// What `--accel auto` knows about KVM here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmState {
    /// `/dev/kvm` does not exist (no KVM module, or a container without the device).
    Absent,
    /// `/dev/kvm` exists but this user cannot use it (the reason, e.g. EACCES).
    NotUsable {
        /// What opening it said.
        reason: String,
        /// The failure is a permission denial (the fix is a group).
        permission: bool,
    },
    /// KVM failed earlier in this host boot with this qemu: runs use TCG.
    Failed {
        /// What was recorded about the failure.
        reason: String,
    },
    /// `/dev/kvm` works and no failure is recorded: the next run tries KVM.
    NotTriedOrWorks,
}

/// Where the verdict is kept for `env`.
pub fn verdict_path(env: &LaunchEnv) -> PathBuf {
    accel::verdict_file(env.runtime_dir.as_deref(), &env.tmp_dir)
}

/// The state of KVM for runs with `qemu`.
pub fn kvm_state(env: &LaunchEnv, qemu: &QemuFound) -> KvmState {
    if !std::path::Path::new("/dev/kvm").exists() {
        return KvmState::Absent;
    }
    if let Err(reason) = accel::kvm_usable() {
        let permission = reason.contains("ermission denied");
        return KvmState::NotUsable { reason, permission };
    }
    let key = supermin_cache::current_boot_id().map(|boot_id| accel::VerdictKey {
        boot_id,
        qemu: qemu.identity.clone(),
    });
    match key.and_then(|k| accel::recorded_failure(&verdict_path(env), &k)) {
        Some(reason) => KvmState::Failed { reason },
        None => KvmState::NotTriedOrWorks,
    }
}
