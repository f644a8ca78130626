//! The daemon's PID 1 chores: the mounts a command expects, the loopback
//! interface, finding the host channel without udev, and powering off.
//!
//! The initrd's init unmounts its own `/proc`, `/sys` and `/dev` before it
//! switches root (like supermin's), so everything here starts from a bare
//! root that may be read-only. Every step is idempotent: a mount point that
//! is already a mount point is left alone.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;
use supermin_protocol::ShareFs;

/// Failures of the appliance setup; all of them end in a power-off.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot bring up the loopback interface")]
    Loopback {
        #[source]
        source: io::Error,
    },
    #[error("no virtio-serial port named {name} appeared within {waited:?}: the launcher must add `-device virtserialport,name={name}` and the initrd must load virtio_console")]
    PortNotFound { name: String, waited: Duration },
    #[error("cannot open the host channel {path}")]
    PortOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

struct MountSpec {
    fstype: &'static str,
    target: &'static str,
    flags: MountFlags,
    data: &'static str,
    mode: u32,
}

const MOUNTS: &[MountSpec] = &[
    MountSpec {
        fstype: "proc",
        target: "/proc",
        flags: MountFlags::NOSUID
            .union(MountFlags::NODEV)
            .union(MountFlags::NOEXEC),
        data: "",
        mode: 0o555,
    },
    MountSpec {
        fstype: "sysfs",
        target: "/sys",
        flags: MountFlags::NOSUID
            .union(MountFlags::NODEV)
            .union(MountFlags::NOEXEC),
        data: "",
        mode: 0o555,
    },
    MountSpec {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MountFlags::NOSUID,
        data: "mode=0755",
        mode: 0o755,
    },
    MountSpec {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: "mode=0620,ptmxmode=0666",
        mode: 0o755,
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: "mode=1777",
        mode: 0o1777,
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/run",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: "mode=0755",
        mode: 0o755,
    },
    MountSpec {
        fstype: "tmpfs",
        target: "/tmp",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: "mode=1777",
        mode: 0o1777,
    },
];

/// Mounts `/proc`, `/sys`, `/dev` (devtmpfs), `/dev/pts`, `/dev/shm`, `/run`
/// and `/tmp`, skipping any that is already mounted.
pub fn mount_filesystems() -> Result<(), SetupError> {
    for m in MOUNTS {
        let target = Path::new(m.target);
        if !target.exists() {
            // A read-only root without the directory: the mount fails below and says so.
            let _ = std::fs::create_dir(target);
            let _ = rustix::fs::chmod(target, Mode::from_raw_mode(m.mode));
        }
        if is_mount_point(target) {
            continue;
        }
        let data = std::ffi::CString::new(m.data).unwrap_or_default();
        rustix::mount::mount(m.fstype, m.target, m.fstype, m.flags, data.as_c_str()).map_err(
            |e| SetupError::Mount {
                fstype: m.fstype,
                target: m.target,
                source: e.into(),
            },
        )?;
    }
    Ok(())
}

/// A directory on another device than its parent is a mount point.
fn is_mount_point(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(p), Ok(q)) => p.dev() != q.dev(),
        _ => false,
    }
}

/// Sets `IFF_UP` on `lo`, which is all the loopback needs: the kernel adds
/// 127.0.0.1 itself when the interface comes up.
pub fn loopback_up() -> Result<(), SetupError> {
    let err = |source: io::Error| SetupError::Loopback { source };
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .map_err(|e| err(e.into()))?;
    // SAFETY: ifreq is plain old data for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: `sock` is an open socket and `req` a valid ifreq naming "lo";
    // SIOCGIFFLAGS only writes the flags field inside it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // IFF_UP | IFF_RUNNING is 0x41, which libc types as c_int while
    // ifr_flags is a short.
    #[allow(clippy::cast_possible_truncation)]
    let up = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCGIFFLAGS succeeded, so the flags member of the union is the
    // initialised one.
    unsafe {
        req.ifr_ifru.ifru_flags |= up;
    }
    // SAFETY: as above; SIOCSIFFLAGS reads the name and flags from `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Finds the virtio-serial port called `name` through sysfs (no udev, so no
/// `/dev/virtio-ports/NAME` symlink) and opens it non-blocking. The port's
/// device node can appear a moment after the driver binds, so this retries
/// with a growing back-off until `wait` has passed.
pub fn open_port(name: &str, wait: Duration) -> Result<OwnedFd, SetupError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(2);
    loop {
        if let Some(dev) = find_port(Path::new("/sys/class/virtio-ports"), name) {
            let path = Path::new("/dev").join(&dev);
            match rustix::fs::open(
                &path,
                OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
                Mode::empty(),
            ) {
                Ok(fd) => return Ok(fd),
                Err(e) if start.elapsed() >= wait => {
                    return Err(SetupError::PortOpen {
                        path,
                        source: e.into(),
                    })
                }
                Err(_) => {}
            }
        }
        if start.elapsed() >= wait {
            return Err(SetupError::PortNotFound {
                name: name.to_string(),
                waited: wait,
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// The device name (e.g. `vport1p1`) whose `name` attribute is `name`.
fn find_port(class_dir: &Path, name: &str) -> Option<String> {
    let entries = std::fs::read_dir(class_dir).ok()?;
    let mut found: Vec<String> = entries
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim_end() == name)
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Asks every disk to write its volatile cache (a FLUSH to virtio-blk, which
/// makes qemu write out qcow2 metadata too). `sync()` writes dirty pages but
/// only file systems send a FLUSH; a disk written raw (`dd of=/dev/vdb`)
/// gets none, and the host may stop qemu the moment we say we are done.
pub fn flush_block_devices() {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Memory-backed devices have no cache to flush.
        if ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        if let Ok(dev) = std::fs::File::open(Path::new("/dev").join(&*name)) {
            let _ = dev.sync_all();
        }
    }
}

/// After the machine was restored from a saved state: the wall clock from
/// the host, and the host's entropy credited to the kernel's pool, then the
/// CRNG reseeded, so that no two restored runs share random numbers (the
/// vmgenid device makes Linux >= 5.18 reseed too; this does not depend on it).
pub fn resume(secs: i64, nanos: u32, entropy: &[u8]) -> Result<(), String> {
    let now = rustix::time::Timespec {
        tv_sec: secs,
        tv_nsec: i64::from(nanos),
    };
    rustix::time::clock_settime(rustix::time::ClockId::Realtime, now)
        .map_err(|e| format!("cannot set the clock: {e}"))?;
    add_entropy(entropy).map_err(|e| format!("cannot add the host's entropy: {e}"))
}

/// Waits until `count` virtio disks (`/sys/block/vd*`) exist, or `wait` passes.
pub fn await_disks(count: u32, wait: Duration) -> Result<(), String> {
    let until = Instant::now() + wait;
    loop {
        let have = std::fs::read_dir("/sys/block")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().as_encoded_bytes().starts_with(b"vd"))
                    .count()
            })
            .unwrap_or(0);
        if have >= count as usize {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!(
                "only {have} of {count} disks appeared within {wait:?} of being added"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long a virtiofs tag may take to appear: a device hot-plugged after a
/// restore is probed by the guest's PCI hotplug a little after `device_add`
/// returns on the host.
const VIRTIOFS_TAG_WAIT: Duration = Duration::from_secs(10);

/// Loads `modules` unless `/proc/filesystems` already lists `fstype`.
fn load_fs_modules(fstype: &str, modules: &[&str]) -> Result<(), String> {
    let listed = format!("\t{fstype}\n");
    if std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains(&listed)) {
        return Ok(());
    }
    let loaded = std::process::Command::new("modprobe")
        .arg("-a")
        .args(modules)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run modprobe for the {fstype} modules: {e}"))?;
    if !loaded.status.success() {
        return Err(format!(
            "cannot load the {fstype} modules: {}",
            String::from_utf8_lossy(&loaded.stderr).trim()
        ));
    }
    Ok(())
}

/// Mounts the host directory shared as `tag` (9p or virtiofs) on `target`
/// (its directories made first), loading the file system's modules from the
/// root's modules tree the first time. Always `nosuid,nodev`: what the host
/// directory holds never gains privileges in the guest.
pub fn mount_share(tag: &str, target: &Path, readonly: bool, fs: ShareFs) -> Result<(), String> {
    match fs {
        ShareFs::NineP => load_fs_modules("9p", &["9pnet_virtio", "9p"])?,
        ShareFs::Virtiofs => load_fs_modules("virtiofs", &["virtiofs"])?,
    }
    std::fs::create_dir_all(target)
        .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if readonly {
        flags |= MountFlags::RDONLY;
    }
    let failed =
        |e: rustix::io::Errno| format!("cannot mount the share {tag} on {}: {e}", target.display());
    match fs {
        ShareFs::NineP => {
            // msize: larger messages than the 8 KiB default make reads of many
            // files much faster. A read-only share keeps what it read
            // (cache=loose); a writable one writes through (cache=mmap), so the
            // host has every write even if the run is killed.
            let options = if readonly {
                c"trans=virtio,version=9p2000.L,msize=512000,cache=loose"
            } else {
                c"trans=virtio,version=9p2000.L,msize=512000,cache=mmap"
            };
            rustix::mount::mount(tag, target, "9p", flags, Some(options)).map_err(failed)
        }
        ShareFs::Virtiofs => {
            // The caching policy is virtiofsd's (its --cache); the guest side
            // needs no options. A tag the guest has not probed yet is EINVAL
            // ("tag not found"): a hot-plugged device is still coming.
            let until = Instant::now() + VIRTIOFS_TAG_WAIT;
            loop {
                match rustix::mount::mount(tag, target, "virtiofs", flags, Some(c"")) {
                    Ok(()) => return Ok(()),
                    Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT)
                        if Instant::now() < until =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(failed(e)),
                }
            }
        }
    }
}

/// `RNDADDENTROPY` (`_IOW('R', 0x03, int[2])`) and `RNDRESEEDCRNG` (`_IO('R', 0x07)`)
/// from `<linux/random.h>`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

fn add_entropy(entropy: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; },
    // the count in bits; the host's bytes come from its own CSPRNG.
    let len =
        i32::try_from(entropy.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&(len * 8).to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(entropy);
    // SAFETY: `info` is a complete rand_pool_info of `8 + len` bytes that
    // outlives the call; the kernel only reads it.
    let credited = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if credited != 0 {
        // Without CAP_SYS_ADMIN: mixed in, not credited.
        urandom.write_all(entropy)?;
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let _ = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG as _, 0) };
    Ok(())
}

/// Whether the kernel command line asks for a verbose appliance.
pub fn verbose_cmdline(cmdline: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| {
        matches!(
            w,
            "supermin.debug" | "supermin.verbose" | "guestfs_verbose=1"
        ) || w.starts_with("supermin.debug=1")
    })
}

/// Flushes file systems and powers the machine off. Never returns: if the
/// kernel refuses, PID 1 exiting panics it, and `panic=` plus qemu's
/// `-no-reboot` end the VM all the same.
pub fn power_off() -> ! {
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_is_found_by_its_name_attribute_not_its_device_name() {
        let dir = std::env::temp_dir().join(format!("supermin-ports-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (dev, name) in [
            ("vport0p1", "org.qemu.guest_agent.0"),
            ("vport1p1", "org.supermin.daemon.0"),
        ] {
            std::fs::create_dir_all(dir.join(dev)).unwrap();
            std::fs::write(dir.join(dev).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find_port(&dir, "org.supermin.daemon.0").as_deref(),
            Some("vport1p1")
        );
        assert_eq!(find_port(&dir, "org.other"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_sysfs_class_means_no_port() {
        assert_eq!(find_port(Path::new("/nonexistent/virtio-ports"), "x"), None);
    }

    #[test]
    fn verbose_flags_are_recognised_only_as_whole_words() {
        assert!(verbose_cmdline("quiet supermin.debug console=ttyS0"));
        assert!(verbose_cmdline("guestfs_verbose=1"));
        assert!(!verbose_cmdline("quiet console=ttyS0 root=/dev/vda"));
        assert!(!verbose_cmdline("xsupermin.debug"));
    }

    #[test]
    fn root_is_not_a_mount_point_of_its_parent_but_proc_is() {
        assert!(!is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
    }
}
