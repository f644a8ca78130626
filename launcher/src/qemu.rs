//! The qemu command line and the kernel command line, as pure functions of a
//! [`Plan`], so what we ask qemu for can be read and tested in one place.
//!
//! Choices, each measured or forced (see DESIGN.md "Where boot time goes"):
//! - `-nodefaults -no-user-config -display none`: no VGA, no NIC, no
//!   floppy/CD probing, no host config files; the console is the one 8250 UART.
//! - The root is a virtio-blk disk opened with `snapshot=on`, so the guest may
//!   write but the image never changes; qemu puts the overlay in `$TMPDIR`,
//!   which the launcher points at its private scratch directory.
//! - The daemon's channel is a virtio-serial port on a socket passed as an
//!   inherited fd (`-chardev socket,fd=N`): already connected, never on disk.
//! - `panic=-1` + `-no-reboot`: a guest that panics makes qemu exit at once.
//! - `-machine pc` boots slightly faster than `q35` (less PCIe/ACPI setup;
//!   about 0.05 s of 2.4 s under TCG here). `-cpu max` under TCG costs about
//!   0.1 s over `qemu64` but runs host binaries built for newer ISA levels
//!   (x86-64-v2/v3 distributions), so it stays, without the "fast string"
//!   flags (see [`TCG_CPU`]). `acpi=off` would break the
//!   guest's power-off. What dominates is the kernel's own init and loading
//!   modules (the SCSI stack alone is 0.3 s).

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use supermin_protocol::PORT_NAME;

/// The program name looked up in `PATH`.
pub const QEMU: &str = "qemu-system-x86_64";

/// The qemu binary a run uses, found once, and what it supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuBinary {
    pub path: PathBuf,
    /// The first line of `-help` (`QEMU emulator version ...`).
    pub version: String,
    /// Changes whenever the binary is replaced (an upgrade, another build):
    /// its path, device, inode, size and modification time.
    pub identity: String,
    /// `-sandbox` (seccomp) is available.
    pub sandbox: bool,
    /// `-run-with user=` is available (qemu >= 9.1; older ones have `-runas`).
    pub run_with: bool,
    /// qemu's own copy of qboot, the minimal firmware (`share/qemu/qboot.rom`
    /// beside its `bin/`), when it ships one.
    pub qboot: Option<PathBuf>,
}

impl QemuBinary {
    /// Finds `qemu-system-x86_64` in `path_var` (`$PATH`) and asks it what it
    /// supports (one `-help`, about 20 ms).
    pub fn find(path_var: Option<&OsStr>) -> io::Result<QemuBinary> {
        let path = std::env::split_paths(path_var.unwrap_or(OsStr::new("/usr/bin:/bin")))
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(QEMU))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found in PATH"))?;
        let meta = std::fs::metadata(&path)?;
        let identity = format!(
            "{}:{}:{}:{}:{}.{}",
            path.display(),
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        let out = Command::new(&path)
            .arg("-help")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()?;
        let help = String::from_utf8_lossy(&out.stdout);
        let version = help.lines().next().unwrap_or("").trim().to_string();
        let has = |opt: &str| help.lines().any(|l| l.starts_with(opt));
        let qboot = path
            .parent()
            .and_then(Path::parent)
            .map(|prefix| prefix.join("share/qemu/qboot.rom"))
            .filter(|rom| rom.is_file());
        Ok(QemuBinary {
            path,
            version,
            identity,
            sandbox: has("-sandbox "),
            run_with: has("-run-with "),
            qboot,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAccel {
    Kvm,
    Tcg,
}

/// The format a disk is opened with. Always named on qemu's command line:
/// qemu never probes it (a raw disk whose guest wrote a qcow2 header naming
/// `/etc/shadow` as its backing file must stay a raw disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A plain image.
    Raw,
    /// A qcow2 image (its backing file only with `allow_backing`).
    Qcow2,
}

impl DiskFormat {
    /// The name qemu's `format=` takes.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::str::FromStr for DiskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            other => Err(format!("unknown disk format {other:?}: use raw or qcow2")),
        }
    }
}

/// What a qcow2 header says that decides whether opening it is safe: the
/// host files it would make qemu open besides itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Qcow2Refs {
    /// The backing file it names, if any.
    pub backing_file: Option<Vec<u8>>,
    /// It keeps its data in an external file (incompatible feature bit 2,
    /// or a data-file header extension): guest writes would land there.
    pub external_data_file: bool,
}

const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Header extension "external data file name" (`DATA`).
const QCOW2_EXT_DATA_FILE: u32 = 0x4441_5441;
/// Incompatible feature bit 2: external data file.
const QCOW2_INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// The header and its extensions live in the first cluster (at most 2 MiB);
/// the extensions that matter come first in practice. Read no more than this.
const QCOW2_HEADER_READ: usize = 64 * 1024;

/// Whether `path` starts with the qcow2 magic.
#[cfg(test)]
pub fn looks_like_qcow2(path: &Path) -> io::Result<bool> {
    looks_like_qcow2_in(&std::fs::File::open(path)?)
}

/// [`looks_like_qcow2`] of an open file (read at offset 0, its position kept).
pub fn looks_like_qcow2_in(file: &std::fs::File) -> io::Result<bool> {
    let mut head = [0u8; 4];
    let got = read_up_to(&mut At(file, 0), &mut head)?;
    Ok(got == 4 && head == QCOW2_MAGIC)
}

/// Reads a file from an offset with `pread`, leaving its position alone
/// (qemu shares the descriptor).
struct At<'a>(&'a std::fs::File, u64);

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.0.read_at(buf, self.1)?;
        self.1 += n as u64;
        Ok(n)
    }
}

/// Parses the qcow2 header of `path` (see qemu's docs/interop/qcow2.txt);
/// `Ok(None)` when it is not a qcow2 image at all.
#[cfg(test)]
pub fn read_qcow2_refs(path: &Path) -> io::Result<Option<Qcow2Refs>> {
    read_qcow2_refs_in(&std::fs::File::open(path)?)
}

/// [`read_qcow2_refs`] of an open file (its position kept).
pub fn read_qcow2_refs_in(file: &std::fs::File) -> io::Result<Option<Qcow2Refs>> {
    let mut buf = vec![0u8; QCOW2_HEADER_READ];
    let got = read_up_to(&mut At(file, 0), &mut buf)?;
    buf.truncate(got);
    Ok(parse_qcow2_refs(&buf))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn parse_qcow2_refs(h: &[u8]) -> Option<Qcow2Refs> {
    if h.get(..4)? != QCOW2_MAGIC {
        return None;
    }
    let mut refs = Qcow2Refs::default();
    let version = be32(h, 4)?;
    let backing_offset = usize::try_from(be64(h, 8)?).unwrap_or(usize::MAX);
    let backing_size = be32(h, 16)? as usize;
    if backing_offset != 0 && backing_size != 0 {
        // A name we cannot read is still a backing file: refuse by default.
        refs.backing_file = Some(
            backing_offset
                .checked_add(backing_size)
                .and_then(|end| h.get(backing_offset..end))
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| b"(beyond the header)".to_vec()),
        );
    }
    if version >= 3 {
        let incompatible = be64(h, 72)?;
        refs.external_data_file = incompatible & QCOW2_INCOMPAT_DATA_FILE != 0;
        // Extensions follow the header (its length at byte 100), each
        // type(4) length(4) data padded to 8 bytes, until type 0.
        let mut at = be32(h, 100).map_or(104, |l| l as usize);
        while let (Some(kind), Some(len)) = (be32(h, at), be32(h, at + 4)) {
            if kind == 0 {
                break;
            }
            if kind == QCOW2_EXT_DATA_FILE {
                refs.external_data_file = true;
            }
            at = at
                .saturating_add(8)
                .saturating_add((len as usize).saturating_add(7) & !7);
        }
    }
    Some(refs)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A disk attached to the guest (`--add`), after `/dev/vda` (the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The image (a `/dev/fdset/N` path once the launcher has opened it).
    pub path: PathBuf,
    /// Attached read-only.
    pub readonly: bool,
    /// The format it is opened with.
    pub format: DiskFormat,
    /// A qcow2's backing file may be opened (the user trusts the chain).
    pub allow_backing: bool,
}

/// One VM to start.
#[derive(Debug, Clone)]
pub struct Plan {
    pub qemu: QemuBinary,
    /// The user qemu switches to once it has opened its files (when we run as root).
    pub run_as: Option<String>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub root: PathBuf,
    pub cmdline: String,
    pub disks: Vec<Disk>,
    pub accel: VmAccel,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The root's writes go to this qcow2 overlay (whose backing is `root`,
    /// named here, never read from its header) instead of qemu's own
    /// throwaway `snapshot=on` one: a saved machine needs its overlay saved
    /// with it. Must be UTF-8, as are `root`'s path then (JSON).
    pub root_overlay: Option<PathBuf>,
    /// Give qemu a monitor (QMP) on an inherited socket.
    pub qmp: bool,
    /// Wait for a saved machine (`-incoming defer`) instead of booting.
    pub incoming: bool,
    /// This VM is never saved (a TCG cold boot that saves nothing: `--cold`,
    /// a disk with a backing file): it boots with qboot instead of SeaBIOS
    /// when qemu ships it (0.05-0.1 s less under TCG) and without the vmgenid
    /// device, which only a restored machine needs and which qboot cannot set
    /// up. KVM boots keep SeaBIOS: there it costs little, and qboot under KVM
    /// is not tested here (this project's CI hosts cannot run KVM guests).
    pub never_saved: bool,
    /// Inherited descriptors qemu sees as `/dev/fdset/SET` (`-add-fd`): how
    /// a qemu that dropped root still reads and writes files in our private
    /// cache.
    pub fdsets: Vec<(i32, u32)>,
    /// Host directories shared with the guest over 9p, in order (tags
    /// [`share_tag`]); `true` = the guest may write.
    pub shares: Vec<(PathBuf, bool)>,
    /// Guest RAM in a shared memfd (`memory-backend-memfd,share=on`), which
    /// a vhost-user device (virtiofsd) maps: needed for virtiofs shares,
    /// present or hot-plugged later.
    pub shared_memory: bool,
    /// virtiofs shares on the command line, in order (tags [`share_tag`]):
    /// each one's connected vhost-user socket as qemu inherits it.
    pub virtiofs: Vec<i32>,
}

/// The CPU model under TCG: everything TCG can emulate, except the flags that say
/// `rep movsb`/`rep stosb` are the fastest way to copy and clear memory (ERMS, FSRM).
/// Under TCG each iteration of a `rep` string instruction runs as its own translated
/// block, so a byte-wise `rep movsb` costs eight times the iterations of the 8-byte
/// loops the kernel (and glibc) use without those flags: 0.07 s of guest instructions of
/// a cold boot's 0.94 s to the root (`-icount`), in module loading, page clearing and the
/// initramfs. Neither flag is part of an x86-64 ISA level, so every host binary still runs.
pub const TCG_CPU: &str = "max,-erms,-fsrm";

/// The 9p mount tag of the `i`th share.
pub fn share_tag(i: usize) -> String {
    format!("supermin{i}")
}

/// The kernel command line for our init (see `init/src/cmdline.rs`) and the
/// daemon. The tuning flags skip work a short-lived VM does not need: timer
/// and TSC calibration checks, probing 32 UARTs, SMP alternatives patching,
/// crypto self-tests, and the jitter entropy source's start-up health test
/// (0.13 s of guest instructions under TCG, measured with `-icount`: the
/// largest single initcall of Debian's 6.12 kernel; nothing in the appliance
/// asks for it, and the kernel's own RNG does not use it). `rodata=off` skips
/// write-protecting the kernel's read-only data and the W+X page-table walk that
/// checks it (0.14 s of guest instructions, 0.1-0.2 s of TCG boot): that
/// protection hardens the guest kernel against the guest, and the guest is
/// already untrusted here (qemu, not the guest kernel, is the boundary).
///
/// Under TCG two more, measured the same way and then in wall time (0.2 s of
/// a 1.5 s boot together), where each costs what KVM makes cheap:
/// - `nolapic_timer` with one vCPU: TCG's CPU has no TSC-deadline timer, so
///   the kernel spends 100 ms of real time calibrating the local APIC timer
///   against the TSC; without it the tick comes from the HPET, which a single
///   CPU needs no broadcast for. With more vCPUs the local timer stays (the
///   others would get their ticks by IPI).
/// - `trace_eval_init` is skipped: it rewrites every trace event's format
///   string, replacing enum names with their values (0.11 s of guest
///   instructions). The trace output itself (`trace`, `trace_pipe`, perf's
///   and BPF's tracepoints) is unchanged; only tools that parse the `format`
///   files' print strings (perf script, trace-cmd report) see enum names
///   where numbers would be, for the few events that print enums. KVM boots
///   keep it.
pub fn kernel_cmdline(root_uuid: &str, verbose: bool, accel: VmAccel, cpus: u32) -> String {
    let tcg = accel == VmAccel::Tcg;
    let blacklist = if tcg {
        "initcall_blacklist=jent_mod_init,trace_eval_init"
    } else {
        "initcall_blacklist=jent_mod_init"
    };
    let mut words = vec![
        format!("root=UUID={root_uuid}"),
        "rw".to_string(),
        "console=ttyS0".to_string(),
        "panic=-1".to_string(),
        "8250.nr_uarts=1".to_string(),
        "no_timer_check".to_string(),
        "tsc=reliable".to_string(),
        "noreplace-smp".to_string(),
        "cryptomgr.notests".to_string(),
        blacklist.to_string(),
        "rodata=off".to_string(),
        "edd=off".to_string(),
        "printk.time=1".to_string(),
    ];
    if tcg && cpus <= 1 {
        words.push("nolapic_timer".to_string());
    }
    if verbose {
        words.push("supermin.debug".to_string());
    } else {
        words.push("quiet".to_string());
    }
    words.join(" ")
}

/// A JSON string literal (the caller has checked the text is the path's own
/// UTF-8: a lossy conversion would name another file).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// qemu's option syntax ends a value at a comma; a literal one is doubled.
fn escape(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(path.as_os_str().len());
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn opt(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(escape(path));
    s.push(suffix);
    s
}

/// The arguments after the program name; `channel_fd` is the daemon's
/// socket as qemu inherits it.
pub fn args(plan: &Plan, channel_fd: i32, qmp_fd: Option<i32>) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-msg",
        "timestamp=off",
    ]);
    if plan.qemu.sandbox {
        // seccomp: no obsolete system calls, no spawning, no resource control.
        // Changing uid stays allowed only when qemu itself must drop root
        // (`-run-with user=` calls setuid after installing the filter); it
        // cannot regain root once it has.
        let elevate = if plan.run_as.is_some() {
            "allow"
        } else {
            "deny"
        };
        let sandbox =
            format!("on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny");
        push(&["-sandbox", &sandbox]);
    }
    if let Some(user) = &plan.run_as {
        if plan.qemu.run_with {
            push(&["-run-with", &format!("user={user}")]);
        } else {
            push(&["-runas", user]);
        }
    }
    if plan.never_saved {
        if let Some(rom) = &plan.qemu.qboot {
            a.push("-bios".into());
            a.push(rom.clone().into());
        }
    }
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    // vhost-user needs the guest's RAM in memory the daemon can map: a
    // memfd shared with it, named as the machine's RAM.
    let backend = if plan.shared_memory {
        ",memory-backend=mem"
    } else {
        ""
    };
    let (machine, cpu) = match plan.accel {
        VmAccel::Kvm => ("pc,accel=kvm", "host"),
        VmAccel::Tcg => ("pc,accel=tcg", TCG_CPU),
    };
    push(&["-machine", &format!("{machine}{backend}"), "-cpu", cpu]);
    let memory = plan.memory_mib.to_string();
    let cpus = plan.cpus.to_string();
    push(&["-m", &memory, "-smp", &cpus]);
    if plan.shared_memory {
        let object = format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            plan.memory_mib
        );
        push(&["-object", &object]);
    }
    push(&["-serial", "stdio"]);
    push(&["-device", "virtio-serial-pci,id=vserial"]);
    let chardev = format!("socket,id=channel,fd={channel_fd}");
    let port = format!("virtserialport,bus=vserial.0,chardev=channel,name={PORT_NAME}");
    push(&["-chardev", &chardev, "-device", &port]);
    // A new generation id on every start: a restored Linux (>= 5.18) reseeds
    // its random number generator when it changes.
    if !plan.never_saved {
        push(&["-device", "vmgenid,guid=auto"]);
    }
    if let Some(fd) = qmp_fd {
        let chardev = format!("socket,id=qmp,fd={fd}");
        push(&["-chardev", &chardev, "-mon", "chardev=qmp,mode=control"]);
    }
    for (fd, set) in &plan.fdsets {
        push(&["-add-fd", &format!("fd={fd},set={set}")]);
    }
    if plan.incoming {
        push(&["-incoming", "defer"]);
    }

    a.push("-kernel".into());
    a.push(plan.kernel.clone().into());
    a.push("-initrd".into());
    a.push(plan.initrd.clone().into());
    a.push("-append".into());
    a.push(plan.cmdline.clone().into());

    for (i, (dir, writable)) in plan.shares.iter().enumerate() {
        // Files are accessed as qemu's own user. A read-only share is
        // security_model=none with readonly=on (qemu refuses every write). A
        // writable one is mapped-xattr: what the guest sets as mode, owner or
        // device goes into an xattr, never onto the host file, so a guest
        // cannot plant a set-uid program or a device node in a shared directory.
        let model = if *writable {
            ",security_model=mapped-xattr"
        } else {
            ",security_model=none,readonly=on"
        };
        a.push("-fsdev".into());
        a.push(opt(&format!("local,id=fs{i},path="), dir, model));
        a.push("-device".into());
        a.push(format!("virtio-9p-pci,fsdev=fs{i},mount_tag={}", share_tag(i)).into());
    }
    for (i, fd) in plan.virtiofs.iter().enumerate() {
        // The socket is already connected to its virtiofsd (see virtiofs.rs).
        a.push("-chardev".into());
        a.push(format!("socket,id=vfs{i},fd={fd}").into());
        a.push("-device".into());
        a.push(format!("vhost-user-fs-pci,chardev=vfs{i},tag={}", share_tag(i)).into());
    }
    match &plan.root_overlay {
        None => {
            a.push("-drive".into());
            a.push(opt(
                "file=",
                &plan.root,
                ",format=raw,if=none,id=root,snapshot=on,cache=unsafe",
            ));
        }
        Some(overlay) => {
            a.push("-blockdev".into());
            a.push(
                format!(
                    "{{\"driver\":\"qcow2\",\"node-name\":\"root\",\"cache\":{{\"no-flush\":true}},\"file\":{{\"driver\":\"file\",\"filename\":{}}},\"backing\":{{\"driver\":\"raw\",\"file\":{{\"driver\":\"file\",\"filename\":{},\"read-only\":true}}}}}}",
                    json_string(&overlay.to_string_lossy()),
                    json_string(&plan.root.to_string_lossy())
                )
                .into(),
            );
        }
    }
    a.push("-device".into());
    a.push("virtio-blk-pci,drive=root".into());
    for (i, disk) in plan.disks.iter().enumerate() {
        match disk.format {
            // Raw: `-drive` with the format named, which is all raw needs.
            DiskFormat::Raw => {
                let ro = if disk.readonly { ",readonly=on" } else { "" };
                a.push("-drive".into());
                a.push(opt(
                    "file=",
                    &disk.path,
                    &format!(",format=raw,if=none,id=disk{i},cache=writeback{ro}"),
                ));
            }
            // qcow2: `-blockdev` in JSON, the one syntax that can say
            // `"backing": null` (no backing file, whatever the header names).
            DiskFormat::Qcow2 => {
                let ro = if disk.readonly { "true" } else { "false" };
                let backing = if disk.allow_backing {
                    ""
                } else {
                    ",\"backing\":null"
                };
                a.push("-blockdev".into());
                a.push(
                    format!(
                        "{{\"driver\":\"qcow2\",\"node-name\":\"disk{i}\",\"read-only\":{ro},\"file\":{{\"driver\":\"file\",\"filename\":{},\"read-only\":{ro}}}{backing}}}",
                        json_string(&disk.path.to_string_lossy())
                    )
                    .into(),
                );
            }
        }
        a.push("-device".into());
        a.push(format!("virtio-blk-pci,drive=disk{i}").into());
    }
    a
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn qemu() -> QemuBinary {
        QemuBinary {
            path: "/usr/bin/qemu-system-x86_64".into(),
            version: "QEMU emulator version 10.0.2".into(),
            identity: "x".into(),
            sandbox: true,
            run_with: true,
            qboot: Some("/usr/share/qemu/qboot.rom".into()),
        }
    }

    fn plan() -> Plan {
        Plan {
            qemu: qemu(),
            run_as: None,
            kernel: "/a/vmlinux".into(),
            initrd: "/a/initrd".into(),
            root: "/a/root".into(),
            cmdline: kernel_cmdline("u-u-i-d", false, VmAccel::Tcg, 2),
            disks: vec![
                Disk {
                    path: "/d/one,two.img".into(),
                    readonly: false,
                    format: DiskFormat::Raw,
                    allow_backing: false,
                },
                Disk {
                    path: "/d/b\"q.qcow2".into(),
                    readonly: true,
                    format: DiskFormat::Qcow2,
                    allow_backing: false,
                },
            ],
            accel: VmAccel::Tcg,
            memory_mib: 512,
            cpus: 2,
            root_overlay: None,
            qmp: false,
            incoming: false,
            never_saved: false,
            fdsets: Vec::new(),
            shares: vec![("/h/a,b".into(), false), ("/h/w".into(), true)],
            shared_memory: false,
            virtiofs: Vec::new(),
        }
    }

    fn joined(plan: &Plan) -> String {
        args(plan, 7, None)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn root_is_the_first_disk_with_a_throwaway_overlay_and_added_disks_follow() {
        let s = joined(&plan());
        let root = s
            .find("file=/a/root,format=raw,if=none,id=root,snapshot=on")
            .unwrap();
        let first = s.find("id=disk0").unwrap();
        let second = s.find("\"node-name\":\"disk1\"").unwrap();
        assert!(root < first && first < second, "{s}");
        assert!(
            s.contains(r#"{"driver":"qcow2","node-name":"disk1","read-only":true,"file":{"driver":"file","filename":"/d/b\"q.qcow2","read-only":true},"backing":null}"#),
            "{s}"
        );
        assert!(
            s.contains("format=raw,if=none,id=disk0,cache=writeback "),
            "{s}"
        );
    }

    #[test]
    fn commas_in_paths_are_doubled_for_qemu() {
        assert!(joined(&plan()).contains("file=/d/one,,two.img,format=raw"));
    }

    #[test]
    fn channel_is_a_named_virtio_serial_port_on_the_inherited_fd() {
        let s = joined(&plan());
        assert!(s.contains("socket,id=channel,fd=7"), "{s}");
        assert!(s.contains(&format!("name={PORT_NAME}")), "{s}");
    }

    #[test]
    fn accelerator_picks_cpu_model() {
        assert!(joined(&plan()).contains("accel=tcg -cpu max,-erms,-fsrm "));
        let kvm = Plan {
            accel: VmAccel::Kvm,
            ..plan()
        };
        assert!(joined(&kvm).contains("accel=kvm -cpu host"));
    }

    #[test]
    fn only_a_machine_never_saved_gets_qboot_and_loses_vmgenid() {
        let saved = joined(&plan());
        assert!(!saved.contains("-bios"), "{saved}");
        assert!(saved.contains("-device vmgenid,guid=auto"), "{saved}");
        let cold = joined(&Plan {
            never_saved: true,
            ..plan()
        });
        assert!(
            cold.starts_with("-bios /usr/share/qemu/qboot.rom ")
                || cold.contains(" -bios /usr/share/qemu/qboot.rom "),
            "{cold}"
        );
        assert!(!cold.contains("vmgenid"), "{cold}");
        // A qemu without qboot keeps its default firmware.
        let mut plain = Plan {
            never_saved: true,
            ..plan()
        };
        plain.qemu.qboot = None;
        assert!(!joined(&plain).contains("-bios"));
    }

    #[test]
    fn cmdline_names_the_root_by_uuid_and_is_quiet_unless_verbose() {
        let quiet = kernel_cmdline("abc", false, VmAccel::Kvm, 1);
        assert!(quiet.starts_with("root=UUID=abc "));
        assert!(quiet.split(' ').any(|w| w == "quiet"));
        assert!(quiet.split(' ').any(|w| w == "panic=-1"));
        let verbose = kernel_cmdline("abc", true, VmAccel::Kvm, 1);
        assert!(verbose.split(' ').any(|w| w == "supermin.debug"));
        assert!(!verbose.split(' ').any(|w| w == "quiet"));
    }

    #[test]
    fn tcg_skips_the_apic_timer_calibration_on_one_cpu_and_the_trace_eval_rewrite() {
        let words = |accel, cpus| {
            kernel_cmdline("abc", false, accel, cpus)
                .split(' ')
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let has = |w: &[String], x: &str| w.iter().any(|y| y == x);
        let tcg1 = words(VmAccel::Tcg, 1);
        assert!(has(&tcg1, "nolapic_timer"));
        assert!(has(
            &tcg1,
            "initcall_blacklist=jent_mod_init,trace_eval_init"
        ));
        // More CPUs keep their local timers (no tick broadcast by IPI).
        let tcg2 = words(VmAccel::Tcg, 2);
        assert!(!has(&tcg2, "nolapic_timer"));
        assert!(has(
            &tcg2,
            "initcall_blacklist=jent_mod_init,trace_eval_init"
        ));
        // KVM has a TSC-deadline timer and boots fast: it keeps both.
        for cpus in [1, 4] {
            let kvm = words(VmAccel::Kvm, cpus);
            assert!(!has(&kvm, "nolapic_timer"));
            assert!(has(&kvm, "initcall_blacklist=jent_mod_init"));
            assert!(!kvm.iter().any(|w| w.contains("trace_eval_init")));
        }
    }

    #[test]
    fn every_disk_names_its_format_and_a_qcow2_gets_no_backing_unless_allowed() {
        let s = joined(&plan());
        // Every -drive/-blockdev names its format: qemu never probes.
        for word in s.split(' ').filter(|w| w.contains("file")) {
            assert!(
                word.contains("format=") || word.contains(r#""driver":"qcow2""#),
                "{word}"
            );
        }
        let mut p = plan();
        p.disks[1].allow_backing = true;
        let allowed = joined(&p);
        assert!(!allowed.contains("backing"), "{allowed}");
    }

    #[test]
    fn shares_are_9p_devices_read_only_unless_writable() {
        let s = joined(&plan());
        assert!(
            s.contains("-fsdev local,id=fs0,path=/h/a,,b,security_model=none,readonly=on"),
            "{s}"
        );
        assert!(
            s.contains("-fsdev local,id=fs1,path=/h/w,security_model=mapped-xattr -device"),
            "{s}"
        );
        assert!(
            s.contains("virtio-9p-pci,fsdev=fs1,mount_tag=supermin1"),
            "{s}"
        );
    }

    #[test]
    fn virtiofs_shares_put_ram_in_a_shared_memfd_and_use_the_inherited_sockets() {
        let mut p = plan();
        assert!(!joined(&p).contains("memory-backend"));
        p.shares.clear();
        p.shared_memory = true;
        p.virtiofs = vec![9, 11];
        let s = joined(&p);
        assert!(
            s.contains("-machine pc,accel=tcg,memory-backend=mem -cpu max,-erms,-fsrm"),
            "{s}"
        );
        assert!(
            s.contains("-object memory-backend-memfd,id=mem,size=512M,share=on"),
            "{s}"
        );
        assert!(
            s.contains("-chardev socket,id=vfs1,fd=11 -device vhost-user-fs-pci,chardev=vfs1,tag=supermin1"),
            "{s}"
        );
        assert!(!s.contains("9p"), "{s}");
        // Hot-plugged later: shared memory, no device yet.
        p.virtiofs.clear();
        let s = joined(&p);
        assert!(s.contains("share=on") && !s.contains("vhost-user"), "{s}");
    }

    #[test]
    fn sandbox_and_user_switch_follow_what_qemu_supports() {
        let s = joined(&plan());
        assert!(
            s.contains(
                "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ),
            "{s}"
        );
        assert!(!s.contains("-run-with"), "{s}");
        let mut p = plan();
        p.run_as = Some("nobody".into());
        let s = joined(&p);
        assert!(s.contains("elevateprivileges=allow"), "{s}");
        assert!(s.contains("-run-with user=nobody"), "{s}");
        p.qemu.run_with = false;
        assert!(joined(&p).contains("-runas nobody"));
        p.qemu.sandbox = false;
        assert!(!joined(&p).contains("-sandbox"));
    }

    fn qcow2_header(
        version: u32,
        backing: Option<&[u8]>,
        incompatible: u64,
        ext: Option<u32>,
    ) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(&QCOW2_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        if let Some(name) = backing {
            h[8..16].copy_from_slice(&300u64.to_be_bytes());
            h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            h[300..300 + name.len()].copy_from_slice(name);
        }
        if version >= 3 {
            h[72..80].copy_from_slice(&incompatible.to_be_bytes());
            h[100..104].copy_from_slice(&112u32.to_be_bytes());
            if let Some(kind) = ext {
                // One unrelated extension first, then the one asked for.
                h[112..116].copy_from_slice(&0x6803_f857u32.to_be_bytes());
                h[116..120].copy_from_slice(&5u32.to_be_bytes());
                h[128..132].copy_from_slice(&kind.to_be_bytes());
                h[132..136].copy_from_slice(&3u32.to_be_bytes());
            }
        }
        h
    }

    #[test]
    fn qcow2_headers_reveal_backing_and_data_files() {
        assert_eq!(parse_qcow2_refs(&[0u8; 512]), None);
        assert_eq!(parse_qcow2_refs(b"QFI"), None);
        let plain = parse_qcow2_refs(&qcow2_header(3, None, 0, None)).unwrap();
        assert_eq!(plain, Qcow2Refs::default());
        let backed = parse_qcow2_refs(&qcow2_header(2, Some(b"/etc/shadow"), 0, None)).unwrap();
        assert_eq!(backed.backing_file.as_deref(), Some(&b"/etc/shadow"[..]));
        let by_bit =
            parse_qcow2_refs(&qcow2_header(3, None, QCOW2_INCOMPAT_DATA_FILE, None)).unwrap();
        assert!(by_bit.external_data_file);
        let by_ext =
            parse_qcow2_refs(&qcow2_header(3, None, 0, Some(QCOW2_EXT_DATA_FILE))).unwrap();
        assert!(by_ext.external_data_file);
        // A backing name that points outside what was read still counts.
        let mut h = qcow2_header(3, None, 0, None);
        h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        h[16..20].copy_from_slice(&8u32.to_be_bytes());
        assert!(parse_qcow2_refs(&h).unwrap().backing_file.is_some());
        // Extension lengths cannot make the walk run away.
        let mut h = qcow2_header(3, None, 0, None);
        h[112..116].copy_from_slice(&1u32.to_be_bytes());
        h[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(!parse_qcow2_refs(&h).unwrap().external_data_file);
    }

    #[test]
    fn real_qcow2_images_made_by_qemu_img_are_read_right() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("secret"), b"host secret\n").unwrap();
        std::fs::write(d.join("data.raw"), vec![0u8; 1 << 20]).unwrap();
        let make = |args: &[&str]| {
            let ok = std::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .args(args)
                .current_dir(d)
                .status()
                .expect("qemu-img (bash .ci/setup installs qemu-utils)");
            assert!(ok.success(), "qemu-img {args:?}");
        };
        make(&["plain.qcow2", "1M"]);
        make(&[
            "-F",
            "raw",
            "-b",
            &d.join("secret").to_string_lossy(),
            "backed.qcow2",
            "1M",
        ]);
        make(&[
            "-o",
            &format!(
                "data_file={},data_file_raw=on",
                d.join("data.raw").display()
            ),
            "data.qcow2",
            "1M",
        ]);
        assert_eq!(
            read_qcow2_refs(&d.join("plain.qcow2")).unwrap(),
            Some(Qcow2Refs::default())
        );
        let backed = read_qcow2_refs(&d.join("backed.qcow2")).unwrap().unwrap();
        assert_eq!(
            backed.backing_file.unwrap(),
            d.join("secret").to_string_lossy().as_bytes()
        );
        assert!(
            read_qcow2_refs(&d.join("data.qcow2"))
                .unwrap()
                .unwrap()
                .external_data_file
        );
        assert_eq!(read_qcow2_refs(&d.join("secret")).unwrap(), None);
        assert!(looks_like_qcow2(&d.join("plain.qcow2")).unwrap());
        assert!(!looks_like_qcow2(&d.join("secret")).unwrap());
    }
}
