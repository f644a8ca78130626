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
//!   (x86-64-v2/v3 distributions), so it stays. `acpi=off` would break the
//!   guest's power-off. What dominates is the kernel's own init and loading
//!   modules (the SCSI stack alone is 0.3 s).

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use supermin_daemon::protocol::PORT_NAME;

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
        Ok(QemuBinary {
            path,
            version,
            identity,
            sandbox: has("-sandbox "),
            run_with: has("-run-with "),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAccel {
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    /// qcow2 by its magic, raw otherwise: naming the format stops qemu from
    /// probing (and from warning about it), and a raw image that happens to
    /// start like qcow2 is not what anyone passes to `--add`.
    pub fn sniff(path: &Path) -> io::Result<DiskFormat> {
        let mut f = std::fs::File::open(path)?;
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match f.read(&mut magic[got..])? {
                0 => break,
                n => got += n,
            }
        }
        Ok(if got == 4 && magic == *b"QFI\xfb" {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        })
    }

    fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub readonly: bool,
    pub format: DiskFormat,
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
}

/// The kernel command line for our init (see `init/src/cmdline.rs`) and the
/// daemon. The tuning flags skip work a short-lived VM does not need: timer
/// and TSC calibration checks, probing 32 UARTs, SMP alternatives patching,
/// crypto self-tests.
pub fn kernel_cmdline(root_uuid: &str, verbose: bool) -> String {
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
        "edd=off".to_string(),
        "printk.time=1".to_string(),
    ];
    if verbose {
        words.push("supermin.debug".to_string());
    } else {
        words.push("quiet".to_string());
    }
    words.join(" ")
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
pub fn args(plan: &Plan, channel_fd: i32) -> Vec<OsString> {
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
    match plan.accel {
        VmAccel::Kvm => push(&["-machine", "pc,accel=kvm", "-cpu", "host"]),
        VmAccel::Tcg => push(&["-machine", "pc,accel=tcg", "-cpu", "max"]),
    }
    let memory = plan.memory_mib.to_string();
    let cpus = plan.cpus.to_string();
    push(&["-m", &memory, "-smp", &cpus]);
    push(&["-serial", "stdio"]);
    push(&["-device", "virtio-serial-pci,id=vserial"]);
    let chardev = format!("socket,id=channel,fd={channel_fd}");
    let port = format!("virtserialport,bus=vserial.0,chardev=channel,name={PORT_NAME}");
    push(&["-chardev", &chardev, "-device", &port]);

    a.push("-kernel".into());
    a.push(plan.kernel.clone().into());
    a.push("-initrd".into());
    a.push(plan.initrd.clone().into());
    a.push("-append".into());
    a.push(plan.cmdline.clone().into());

    a.push("-drive".into());
    a.push(opt(
        "file=",
        &plan.root,
        ",format=raw,if=none,id=root,snapshot=on,cache=unsafe",
    ));
    a.push("-device".into());
    a.push("virtio-blk-pci,drive=root".into());
    for (i, disk) in plan.disks.iter().enumerate() {
        let ro = if disk.readonly { ",readonly=on" } else { "" };
        a.push("-drive".into());
        a.push(opt(
            "file=",
            &disk.path,
            &format!(
                ",format={},if=none,id=disk{i},cache=writeback{ro}",
                disk.format.name()
            ),
        ));
        a.push("-device".into());
        a.push(format!("virtio-blk-pci,drive=disk{i}").into());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu() -> QemuBinary {
        QemuBinary {
            path: "/usr/bin/qemu-system-x86_64".into(),
            version: "QEMU emulator version 10.0.2".into(),
            identity: "x".into(),
            sandbox: true,
            run_with: true,
        }
    }

    fn plan() -> Plan {
        Plan {
            qemu: qemu(),
            run_as: None,
            kernel: "/a/vmlinux".into(),
            initrd: "/a/initrd".into(),
            root: "/a/root".into(),
            cmdline: kernel_cmdline("u-u-i-d", false),
            disks: vec![
                Disk {
                    path: "/d/one,two.img".into(),
                    readonly: false,
                    format: DiskFormat::Raw,
                },
                Disk {
                    path: "/d/b.qcow2".into(),
                    readonly: true,
                    format: DiskFormat::Qcow2,
                },
            ],
            accel: VmAccel::Tcg,
            memory_mib: 512,
            cpus: 2,
        }
    }

    fn joined(plan: &Plan) -> String {
        args(plan, 7)
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
        let second = s.find("id=disk1").unwrap();
        assert!(root < first && first < second, "{s}");
        assert!(
            s.contains("format=qcow2,if=none,id=disk1,cache=writeback,readonly=on"),
            "{s}"
        );
        assert!(!s.contains("id=disk0,cache=writeback,readonly"), "{s}");
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
        assert!(joined(&plan()).contains("accel=tcg -cpu max"));
        let kvm = Plan {
            accel: VmAccel::Kvm,
            ..plan()
        };
        assert!(joined(&kvm).contains("accel=kvm -cpu host"));
    }

    #[test]
    fn cmdline_names_the_root_by_uuid_and_is_quiet_unless_verbose() {
        let quiet = kernel_cmdline("abc", false);
        assert!(quiet.starts_with("root=UUID=abc "));
        assert!(quiet.split(' ').any(|w| w == "quiet"));
        assert!(quiet.split(' ').any(|w| w == "panic=-1"));
        let verbose = kernel_cmdline("abc", true);
        assert!(verbose.split(' ').any(|w| w == "supermin.debug"));
        assert!(!verbose.split(' ').any(|w| w == "quiet"));
    }

    #[test]
    fn qcow2_is_recognised_by_magic_and_anything_else_is_raw() {
        let dir = std::env::temp_dir().join(format!("supermin-sniff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("q"), b"QFI\xfb\0\0\0\x03").unwrap();
        std::fs::write(dir.join("r"), [0u8; 512]).unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        assert_eq!(
            DiskFormat::sniff(&dir.join("q")).unwrap(),
            DiskFormat::Qcow2
        );
        assert_eq!(DiskFormat::sniff(&dir.join("r")).unwrap(), DiskFormat::Raw);
        assert_eq!(
            DiskFormat::sniff(&dir.join("empty")).unwrap(),
            DiskFormat::Raw
        );
        assert!(DiskFormat::sniff(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
