//! supermin-init: PID 1 of the appliance's initrd.
//!
//! It mounts /proc, /sys and devtmpfs, loads the modules listed in `/modules`, finds the
//! root device named by `root=` on the kernel command line, mounts it (ext4 driver, ext2
//! fallback), frees the initramfs, moves into the root and execs its `/init`. Quiet unless
//! the command line asks for verbose output; on any failure it says what failed and what
//! to check, then powers the machine off rather than hang.
//!
//! Static and self-contained: it needs no file outside the initrd, and talks to the
//! kernel through `rustix` only.

mod cmdline;
mod console;
mod elf;
mod ftrace;
mod modules;
mod need;
mod rootdev;
mod switch;

use std::path::Path;
use std::time::Duration;

use cmdline::{Config, RootSpec};

/// Where the initrd keeps things (the layout is the builder's `initrd.rs`).
const MODULE_LIST: &str = "/modules";
const NEW_ROOT: &str = "/root";
const ROOT_NODE: &str = "/dev/root";
const SYS_BLOCK: &str = "/sys/class/block";

/// Why the boot stopped, and what the user can do about it.
struct Failure {
    message: String,
    hint: Option<String>,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }
}

fn main() {
    if !rustix::process::getpid().is_init() {
        say!(
            "refusing to run: this is the appliance's PID 1 (it mounts, deletes files and \
             powers off); it belongs in an initrd, not on a running system"
        );
        std::process::exit(2);
    }
    // A panic is a bug, but PID 1 exiting would leave the machine hanging unless the
    // command line has panic=N: report it and power off like any other failure.
    std::panic::set_hook(Box::new(|info| {
        console::fail(
            format_args!("internal error (a bug in supermin-init): {info}"),
            None,
        )
    }));
    let failure = boot();
    console::fail(format_args!("{}", failure.message), failure.hint.as_deref())
}

/// The whole boot; returns only when something failed (success ends in exec).
fn boot() -> Failure {
    // First the console, so that every later failure is seen.
    if let Err(errno) = switch::mount_pseudo("devtmpfs", "/dev") {
        // Not fatal: we make our own device nodes; only a missing console would hurt.
        say!("warning: cannot mount devtmpfs on /dev: {errno}");
    }
    console::ensure_console();
    if let Err(errno) = switch::mount_pseudo("proc", "/proc") {
        return Failure::new(format!("cannot mount /proc: {errno}"));
    }
    let cmdline = match std::fs::read_to_string("/proc/cmdline") {
        Ok(text) => text,
        Err(err) => return Failure::new(format!("cannot read /proc/cmdline: {err}")),
    };
    let config = match Config::parse(&cmdline) {
        Ok(config) => config,
        Err(bad) => {
            return Failure::new(format!(
                "unusable root={} on the kernel command line",
                bad.value
            ))
            .hint(bad.why)
        }
    };
    let verbose = config.verbose;
    verbose!(
        verbose,
        "starting ({} {}), uptime {}",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        uptime()
    );
    verbose!(verbose, "cmdline: {}", cmdline.trim_end());
    if let Err(errno) = switch::mount_pseudo("sysfs", "/sys") {
        return Failure::new(format!("cannot mount /sys: {errno}"))
            .hint("the kernel needs CONFIG_SYSFS to find the root device");
    }

    let signatures = modules::signature_policy(config.verify_modules);
    let loaded = modules::load_all(
        Path::new(MODULE_LIST),
        verbose,
        modules::Handover {
            signatures,
            ftrace_sites: modules::ftrace_policy(config.function_tracing),
        },
        config.all_modules,
        &cmdline,
    );
    verbose!(verbose, "{loaded} modules loaded, uptime {}", uptime());

    let Some(root) = config.root.clone() else {
        return Failure::new("no root= parameter on the kernel command line")
            .hint("boot with root=/dev/NAME or root=UUID=<uuid> naming the appliance's root disk");
    };
    if let Err(failure) = mount_new_root(&config, &root) {
        return failure;
    }

    verbose!(verbose, "switching to the new root, uptime {}", uptime());
    switch::unmount_pseudo();
    match std::fs::symlink_metadata("/") {
        Ok(meta) => switch::delete_tree(Path::new("/"), std::os::unix::fs::MetadataExt::dev(&meta)),
        Err(err) => say!("warning: cannot stat the initramfs, not freeing it: {err}"),
    }
    if let Err((what, errno)) = switch::enter(NEW_ROOT) {
        return Failure::new(format!("cannot {what}: {errno}"));
    }
    let err = switch::exec_init();
    say!("the root's /init could not be executed; the root holds:");
    for line in switch::describe_dir(Path::new("/")) {
        say!("  {line}");
    }
    Failure::new(format!("cannot execute /init of the root {root}: {err}")).hint(
        "/init must be a program for this machine (a static binary, or a script whose \
         interpreter is in the root)",
    )
}

/// Waits for the root device, mounts it on [`NEW_ROOT`] and checks it has an `/init`.
fn mount_new_root(config: &Config, root: &RootSpec) -> Result<(), Failure> {
    let verbose = config.verbose;
    let sleep = |pause: Duration| std::thread::sleep(pause);
    let open = |_: &str, major: u32, minor: u32| switch::open_block(major, minor);
    let mut waiting = || {
        say!(
            "waiting up to {} s for the root device {root} to appear",
            config.root_wait.as_secs()
        );
    };
    let found = rootdev::wait_for(
        Path::new(SYS_BLOCK),
        root,
        config.root_wait,
        &open,
        &sleep,
        &mut waiting,
    );
    let Some(found) = found else {
        let present = rootdev::list_devices(Path::new(SYS_BLOCK));
        let present = if present.is_empty() {
            "none".to_owned()
        } else {
            present.join(" ")
        };
        return Err(Failure::new(format!(
            "the root device {root} did not appear within {} s (block devices present: {present})",
            config.root_wait.as_secs()
        ))
        .hint(
            "the kernel needs the disk's driver (virtio_blk, or virtio_scsi and sd_mod) built \
             in or listed in the initrd's modules; boot with guestfs_verbose=1 to see each \
             module load, and check that the disk is attached",
        ));
    };
    verbose!(
        verbose,
        "root device {root} is {} ({}:{}), uptime {}",
        found.name,
        found.major,
        found.minor,
        uptime()
    );
    if let Err(errno) = switch::make_block_node(ROOT_NODE, found.major, found.minor) {
        return Err(Failure::new(format!("cannot create {ROOT_NODE}: {errno}")));
    }
    // Persistent memory roots are mounted with DAX, as supermin's init does.
    let options = if found.name.starts_with("pmem") {
        "dax"
    } else {
        ""
    };
    match switch::mount_root(ROOT_NODE, NEW_ROOT, config.read_only, options) {
        Ok(fstype) => verbose!(
            verbose,
            "mounted {} on {NEW_ROOT} as {fstype} ({})",
            found.name,
            if config.read_only { "ro" } else { "rw" }
        ),
        Err(failure) => {
            let tries: Vec<String> = failure
                .tries
                .iter()
                .map(|(fstype, errno)| format!("{fstype}: {errno}"))
                .collect();
            return Err(Failure::new(format!(
                "cannot mount the root {root} ({}) on {NEW_ROOT} ({})",
                found.name,
                tries.join("; ")
            ))
            .hint(
                "the root must be an ext2/3/4 file system and the initrd must carry the ext4 \
                 module (or the kernel have it built in); boot with guestfs_verbose=1 to see \
                 the module loading",
            ));
        }
    }
    if std::fs::symlink_metadata(Path::new(NEW_ROOT).join("init")).is_err() {
        say!("the root {root} holds:");
        for line in switch::describe_dir(Path::new(NEW_ROOT)) {
            say!("  {line}");
        }
        return Err(Failure::new(format!("the root {root} has no /init"))
            .hint("the appliance's root image must provide /init (libguestfs's init script, or the daemon)"));
    }
    Ok(())
}

/// Seconds since boot, from /proc/uptime, for verbose timing lines.
fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(|s| format!("{s} s")))
        .unwrap_or_else(|| "unknown".to_owned())
}
