//! End-to-end tests live in `tests/`; this library holds their shared helpers.
//!
//! Booting (used by `tests/boot.rs`): [`TempDir`] for a per-test scratch directory,
//! [`host_kernel`] / [`kernel_by_version_prefix`] to pick a kernel of this machine the way
//! `supermin` would (through `kernel-probe` and the `SUPERMIN_*` variables, passed as
//! values so parallel tests do not race on the process environment), [`build_initrd`]
//! for our initrd with the embedded static init, [`marker_root`] for a root image whose
//! `/init` prints a marker and powers off (written by our ext2 writer), and [`boot`] to run qemu (TCG: KVM hangs
//! Debian kernels on these machines) under a hard timeout.

#![allow(clippy::cast_possible_truncation)]

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use supermin::initrd::{write_initrd, InitrdModule, LoadWhen};
use supermin_ext2::{FileData, Meta, NodeKind, Tree};
use supermin_kernel_probe::{initrd_modules, probe, read_module, Kernel, ProbeEnv};

/// A scratch directory removed on drop (kept when `SUPERMIN_TEST_KEEP` is set, for
/// looking at a failure).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("supermin-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("SUPERMIN_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The kernel `supermin` would choose on this machine with the given `SUPERMIN_*`
/// variables (`None` = unset), without touching the process environment.
pub fn probe_with(vars: &[(&str, &Path)]) -> Kernel {
    let lookup = |name: &str| -> Option<OsString> {
        vars.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_os_str().to_owned())
    };
    let env = ProbeEnv::from_vars(lookup, None);
    probe(&env).unwrap_or_else(|err| panic!("kernel probe failed for {vars:?}: {err}"))
}

/// The kernel `supermin` picks by default.
pub fn host_kernel() -> Kernel {
    probe_with(&[])
}

/// The newest `/boot/vmlinuz-<prefix>*` whose `/lib/modules/<version>` exists, selected
/// through `SUPERMIN_KERNEL` and `SUPERMIN_MODULES` as a user would. Panics naming the
/// missing package when there is none (`.ci/setup` installs both test kernels).
pub fn kernel_by_version_prefix(prefix: &str) -> Kernel {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix("vmlinuz-")?.to_owned();
            (version.starts_with(prefix) && Path::new("/lib/modules").join(&version).is_dir())
                .then(|| (version, entry.path()))
        })
        .collect();
    found.sort_by(|a, b| supermin_kernel_probe::compare_versions(&a.0, &b.0));
    let Some((version, kernel)) = found.pop() else {
        panic!(
            "no /boot/vmlinuz-{prefix}* with /lib/modules/{prefix}* on this machine; \
             run .ci/setup (it installs the Debian kernels the boot tests use)"
        );
    };
    let modules = Path::new("/lib/modules").join(&version);
    probe_with(&[("SUPERMIN_KERNEL", &kernel), ("SUPERMIN_MODULES", &modules)])
}

/// Writes our initrd for `kernel` (its boot module set, decompressed, and the embedded
/// static init) to `out`.
pub fn build_initrd(kernel: &Kernel, out: &Path) {
    let modules: Vec<InitrdModule> = initrd_modules(kernel, &[])
        .unwrap_or_else(|err| panic!("initrd module set for {}: {err}", kernel.version))
        .into_iter()
        .map(|module| InitrdModule {
            data: read_module(&module.path)
                .unwrap_or_else(|err| panic!("reading {}: {err}", module.path.display())),
            name: module.name,
            when: LoadWhen::Always,
        })
        .collect();
    assert!(
        !modules.is_empty(),
        "no modules chosen for {}",
        kernel.version
    );
    write_initrd(out, supermin::embedded::init_binary(), &modules, 0)
        .unwrap_or_else(|err| panic!("writing {}: {err}", out.display()));
}

/// [`build_initrd`] plus modules the root would load at boot: `always` on every boot,
/// `scsi_device` only when the VM has a SCSI device (what the builder does for libguestfs's
/// `dm_mod` and `sg`).
pub fn build_initrd_preloading(kernel: &Kernel, out: &Path, always: &[&str], scsi_device: &[&str]) {
    let wanted: Vec<String> = always
        .iter()
        .chain(scsi_device)
        .map(|s| s.to_string())
        .collect();
    let set = supermin_kernel_probe::module_set_preloading(
        kernel,
        supermin_kernel_probe::BOOT_MODULES,
        &wanted,
    )
    .unwrap_or_else(|err| panic!("initrd module set for {}: {err}", kernel.version));
    let modules: Vec<InitrdModule> = set
        .modules
        .into_iter()
        .map(|module| InitrdModule {
            data: read_module(&module.path)
                .unwrap_or_else(|err| panic!("reading {}: {err}", module.path.display())),
            when: if scsi_device.contains(&module.name.as_str()) {
                LoadWhen::PreloadScsiDevice
            } else if always.contains(&module.name.as_str()) {
                LoadWhen::Preload
            } else {
                LoadWhen::Always
            },
            name: module.name,
        })
        .collect();
    for name in &wanted {
        assert!(
            modules.iter().any(|m| m.name == *name),
            "{name} is not a module of {}",
            kernel.version
        );
    }
    write_initrd(out, supermin::embedded::init_binary(), &modules, 0)
        .unwrap_or_else(|err| panic!("writing {}: {err}", out.display()));
}

/// The `supermin` binary under test: `$SUPERMIN_BIN`, or the one cargo built beside this
/// test executable (`target/PROFILE/supermin`; `.ci/test` builds it first).
pub fn supermin_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SUPERMIN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/PROFILE/deps/TEST-HASH -> target/PROFILE/supermin
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in target/PROFILE/deps")
        .join("supermin");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build -p supermin` first (or set SUPERMIN_BIN)",
        bin.display()
    );
    bin
}

/// The line the root's `/init` prints when it runs.
pub const MARKER: &str = "SUPERMIN-TEST-ROOT-INIT";

/// A root image whose `/init` (a busybox shell script) mounts /proc, prints
/// `MARKER pid=<pid> term=<TERM> ... mounts=<what is mounted>` and powers off, written by
/// the project's own ext2 writer with the given UUID. Between them: the kernel's taint, the
/// crc32c drivers that passed their self-test, whether ext4's static-call and ftrace
/// call-site sections are visible to the kernel, and whether a kprobe event can be put on
/// an ext4 function.
pub fn marker_root(dir: &Path, uuid: &str) -> PathBuf {
    // Everything is reported on one line so a test can match it whole.
    let script = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         mounts=$(/bin/busybox awk '{{printf \"%s:%s:%s:%s,\", $1, $2, $3, substr($4, 1, 2)}}' /proc/mounts)\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         crc=$(/bin/busybox awk -F': ' '/^name/{{n=$2}} /^driver/{{d=$2}} /^selftest/{{if (n==\"crc32c\" && $2==\"passed\") printf \"%s,\", d}}' /proc/crypto)\n\
         s=/sys/module/ext4/sections\n\
         if [ -e $s/.static_call_sites ]; then scs=visible; elif [ -e $s/static_call_sites ]; then scs=hidden; else scs=none; fi\n\
         if [ -e $s/__mcount_loc ]; then fts=visible; elif [ -e $s/_mcount_loc ]; then fts=hidden; else fts=none; fi\n\
         t=/sys/kernel/tracing\n\
         /bin/busybox mount -t tracefs nodev $t 2>/dev/null\n\
         if echo 'p:supermin_probe ext4_sync_fs' > $t/kprobe_events 2>/dev/null; then kp=ok; else kp=refused; fi\n\
         echo \"{MARKER} pid=$$ term=$TERM tainted=$(/bin/busybox cat /proc/sys/kernel/tainted) crc32c=$crc ext4_static_calls=$scs ext4_ftrace_sites=$fts ext4_kprobe=$kp mounts=$mounts\"\n\
         /bin/busybox poweroff -f\n"
    );
    root_image(dir, uuid, Some(&script))
}

/// A root image like [`marker_root`]'s but without `/init`, for the init's failure path.
pub fn root_without_init(dir: &Path, uuid: &str) -> PathBuf {
    root_image(dir, uuid, None)
}

fn root_image(dir: &Path, uuid: &str, init: Option<&str>) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    let busybox_len = std::fs::metadata(busybox)
        .expect("/bin/busybox (install busybox-static)")
        .len();
    let meta = |mode: u16| Meta {
        mode,
        ..Meta::default()
    };
    let mut tree = Tree::new(meta(0o755));
    let mut insert = |path: &str, kind: NodeKind, mode: u16| {
        tree.insert(path.as_bytes(), kind, meta(mode))
            .unwrap_or_else(|err| panic!("root tree {path}: {err}"));
    };
    for path in ["/bin", "/dev", "/proc", "/sys"] {
        insert(path, NodeKind::Dir, 0o755);
    }
    let busybox = FileData::Host {
        path: busybox.to_owned(),
        len: busybox_len,
    };
    insert("/bin/busybox", NodeKind::File(busybox), 0o755);
    if let Some(script) = init {
        let script = FileData::Bytes(script.as_bytes().into());
        insert("/init", NodeKind::File(script), 0o755);
    }
    let image = dir.join("root.img");
    let options = supermin_ext2::Options {
        uuid: Some(supermin_ext2::parse_uuid(uuid).expect("test UUID")),
        ..supermin_ext2::Options::default()
    };
    supermin_ext2::write_image(&tree, &image, &options)
        .unwrap_or_else(|err| panic!("writing {}: {err}", image.display()));
    assert_e2fsck_clean(&image);
    image
}

/// Every image a test writes is checked: `e2fsck -fn` must find nothing to fix.
#[track_caller]
pub fn assert_e2fsck_clean(image: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("run e2fsck (install e2fsprogs)");
    assert!(
        out.status.success(),
        "e2fsck -fn {} failed:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How the root disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// virtio-scsi controller + scsi-hd: the guest sees `/dev/sda` (libguestfs's default).
    VirtioScsi,
    /// virtio-blk: the guest sees `/dev/vda`.
    VirtioBlk,
}

/// One qemu boot.
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub root: &'a Path,
    pub disk: Disk,
    pub append: &'a str,
    pub timeout: Duration,
    /// qemu's `-cpu` model; qemu's default (`qemu64`, no SSE4.2) when `None`.
    pub cpu: Option<&'a str>,
}

/// What a boot printed and how it ended.
pub struct BootLog {
    pub console: String,
    pub timed_out: bool,
    pub exited: Option<std::process::ExitStatus>,
}

impl BootLog {
    /// The last `lines` lines of the console, for failure messages.
    pub fn tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.console.lines().collect();
        let start = all.len().saturating_sub(lines);
        let mut out = String::new();
        for line in &all[start..] {
            let _ = writeln!(out, "    | {line}");
        }
        out
    }

    /// The console line holding `needle`, or a panic showing the console tail.
    pub fn line_with(&self, needle: &str) -> &str {
        match self.console.lines().find(|line| line.contains(needle)) {
            Some(line) => line,
            None => panic!(
                "{needle:?} never appeared on the console (timed out: {}, qemu: {:?}); last lines:\n{}",
                self.timed_out,
                self.exited,
                self.tail(40)
            ),
        }
    }

    /// Panics with the console tail unless the guest powered itself off.
    pub fn assert_powered_off(&self) {
        assert!(
            !self.timed_out && self.exited.is_some_and(|status| status.success()),
            "the guest did not power off by itself (timed out: {}, qemu: {:?}); last lines:\n{}",
            self.timed_out,
            self.exited,
            self.tail(40)
        );
    }
}

/// Boots under qemu TCG, console on a serial log file; kills qemu at the timeout.
pub fn boot(spec: &Boot<'_>, log_path: &Path) -> BootLog {
    let drive = |extra: &str| {
        let mut arg = OsString::from("file=");
        arg.push(spec.root);
        arg.push(format!(",format=raw,snapshot=on,{extra}"));
        arg
    };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-nodefaults", "-display", "none"])
        .args(["-no-reboot", "-m", "512", "-monitor", "none"])
        .arg("-kernel")
        .arg(spec.kernel)
        .arg("-initrd")
        .arg(spec.initrd)
        .args(["-append", spec.append])
        .arg("-serial")
        .arg(format!("file:{}", log_path.display()));
    if let Some(cpu) = spec.cpu {
        cmd.args(["-cpu", cpu]);
    }
    match spec.disk {
        Disk::VirtioScsi => {
            cmd.args(["-device", "virtio-scsi-pci,id=scsi0", "-drive"])
                .arg(drive("if=none,id=d0"))
                .args(["-device", "scsi-hd,drive=d0,bus=scsi0.0"]);
        }
        Disk::VirtioBlk => {
            cmd.arg("-drive").arg(drive("if=virtio"));
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run qemu-system-x86_64: {err}"));
    let started = Instant::now();
    let (exited, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (Some(status), false),
            Ok(None) if started.elapsed() >= spec.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(err) => panic!("waiting for qemu: {err}"),
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    let mut console = std::fs::read_to_string(log_path).unwrap_or_default();
    if !stderr.is_empty() {
        console.push_str("\n[qemu stderr]\n");
        console.push_str(&stderr);
    }
    BootLog {
        console,
        timed_out,
        exited,
    }
}

/// Compresses each module file the initrd needs into a copy of `kernel`'s modules
/// directory with `.ko.zst` names (via the `zstd` tool), so the builder's decompression
/// is exercised as with a distribution that ships zstd modules. Returns the new directory.
pub fn zstd_modules_copy(kernel: &Kernel, dir: &Path) -> PathBuf {
    let src = &kernel.modules_dir;
    let dst = dir.join("modules");
    std::fs::create_dir_all(&dst).expect("create modules copy");
    for index in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.softdep",
        "modules.alias",
        "modules.order",
    ] {
        if src.join(index).exists() {
            std::fs::copy(src.join(index), dst.join(index)).expect("copy modules index");
        }
    }
    let dep = std::fs::read_to_string(src.join("modules.dep")).expect("read modules.dep");
    std::fs::write(
        dst.join("modules.dep"),
        dep.replace(".ko:", ".ko.zst:")
            .replace(".ko ", ".ko.zst ")
            .replace(".ko\n", ".ko.zst\n"),
    )
    .expect("write modules.dep");
    for module in initrd_modules(kernel, &[]).expect("module set") {
        let rel = module
            .path
            .strip_prefix(src)
            .expect("module inside its modules dir");
        let target = dst.join(rel).with_extension("ko.zst");
        std::fs::create_dir_all(target.parent().expect("parent")).expect("create dirs");
        let status = Command::new("zstd")
            .args(["-q", "-f", "-o"])
            .arg(&target)
            .arg(&module.path)
            .status()
            .expect("run zstd (install zstd)");
        assert!(status.success(), "zstd failed on {}", module.path.display());
    }
    dst
}

/// The newest installed kernel of each `MAJOR.MINOR` series that has its modules (Debian 12
/// with backports: 6.1 and 6.12), chosen through `SUPERMIN_KERNEL`/`SUPERMIN_MODULES` as a
/// user would; found at run time, so a machine with other kernels tests those. Panics when
/// there is none.
pub fn kernel_series() -> Vec<Kernel> {
    let mut newest: std::collections::BTreeMap<String, String> = Default::default();
    for entry in std::fs::read_dir("/boot").into_iter().flatten().flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(version) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        if !Path::new("/lib/modules").join(version).is_dir() {
            continue;
        }
        let series: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
        let slot = newest.entry(series).or_default();
        if slot.is_empty() || supermin_kernel_probe::compare_versions(version, slot).is_gt() {
            *slot = version.to_owned();
        }
    }
    assert!(
        !newest.is_empty(),
        "no /boot/vmlinuz-* with its /lib/modules on this machine; run .ci/setup"
    );
    newest
        .values()
        .map(|version| {
            let kernel = Path::new("/boot").join(format!("vmlinuz-{version}"));
            let modules = Path::new("/lib/modules").join(version);
            probe_with(&[("SUPERMIN_KERNEL", &kernel), ("SUPERMIN_MODULES", &modules)])
        })
        .collect()
}

/// A bzImage-shaped kernel that carries `version` in its setup header and whose payload (gzip,
/// via the `gzip` tool) is a minimal x86_64 ELF without the PVH entry note: what a kernel
/// built without `CONFIG_PVH` looks like to the builder. It does not boot.
pub fn fake_bzimage_without_pvh(version: &str, out: &Path) {
    // ELF64 header, no program headers, then filler standing in for the kernel text.
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little-endian
    elf[6] = 1;
    elf[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
    elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    elf.extend((0..64_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    let mut gzip = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = gzip.stdin.take().expect("gzip stdin");
    let writer = std::thread::spawn(move || io::Write::write_all(&mut stdin, &elf));
    let payload = gzip.wait_with_output().expect("gzip output").stdout;
    writer.join().expect("gzip writer").expect("write to gzip");

    // Boot protocol 2.15 setup header (Documentation/arch/x86/boot.rst): 4 setup sectors,
    // the version string in the setup code, the payload right after the setup sectors.
    let setup_sects = 4usize;
    let mut img = vec![0u8; (setup_sects + 1) * 512];
    img[0x1f1] = setup_sects as u8;
    img[0x1fe] = 0x55;
    img[0x1ff] = 0xaa;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    let text = format!("{version} (test@example) #1 SMP fake kernel without PVH\0");
    img[0x400..0x400 + text.len()].copy_from_slice(text.as_bytes());
    img[0x20e..0x210].copy_from_slice(&0x200u16.to_le_bytes());
    img[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    img.extend_from_slice(&payload);
    img.extend_from_slice(&[0xcc; 64]);
    std::fs::write(out, img).unwrap_or_else(|err| panic!("writing {}: {err}", out.display()));
}

/// `supermin ARGS` with an environment of its own: the cache (`LIBGUESTFS_CACHEDIR`), the
/// launcher's scratch and the KVM verdict (`TMPDIR`) in `cache` and `tmp`, no
/// `XDG_RUNTIME_DIR`, and none of the caller's `SUPERMIN_*` or `LIBGUESTFS_*` variables, so
/// a test neither reads nor changes this user's real cache.
pub fn supermin_in(cache: &Path, tmp: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(supermin_bin());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("SUPERMIN_") && key != "SUPERMIN_BIN" || key.starts_with("LIBGUESTFS_") {
            cmd.env_remove(&*key);
        }
    }
    cmd.args(args)
        .env("LIBGUESTFS_CACHEDIR", cache)
        .env("TMPDIR", tmp)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null());
    cmd
}

/// Sends `signal` (a name such as `TERM`) to process `pid` with kill(1),
/// asserting that it was delivered.
#[track_caller]
pub fn send_signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill(1)");
    assert!(sent.success(), "kill -{signal} {pid}: {sent}");
}

/// Runs `cmd`, returning (exit code, stdout, stderr) as text.
pub fn output_of(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
