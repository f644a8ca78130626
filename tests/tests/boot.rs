//! Boot tests: this machine's kernels + our initrd (static init, modules from
//! `kernel-probe`) + a root image whose `/init` prints a marker and powers off, under
//! qemu TCG. Each test has its own directory and a hard timeout; a test fails if the
//! marker never appears, showing the console's last lines.

use std::path::Path;
use std::time::Duration;

use supermin_tests::{
    boot, build_initrd, build_initrd_preloading, host_kernel, kernel_by_version_prefix,
    marker_root, root_without_init, zstd_modules_copy, Boot, BootLog, Disk, TempDir, MARKER,
};

/// Under TCG a boot takes ~5 s; the bound only catches a hang.
const TIMEOUT: Duration = Duration::from_secs(120);
const UUID: &str = "5b1d2c3e-0f4a-4b6c-8d7e-9f0a1b2c3d4e";

fn run(dir: &TempDir, kernel: &Path, initrd: &Path, disk: Disk, append: &str) -> BootLog {
    run_root(
        &marker_root(dir.path(), UUID),
        dir,
        kernel,
        initrd,
        disk,
        append,
    )
}

fn run_root(
    root: &Path,
    dir: &TempDir,
    kernel: &Path,
    initrd: &Path,
    disk: Disk,
    append: &str,
) -> BootLog {
    run_cpu(root, dir, kernel, initrd, disk, append, None)
}

fn run_cpu(
    root: &Path,
    dir: &TempDir,
    kernel: &Path,
    initrd: &Path,
    disk: Disk,
    append: &str,
    cpu: Option<&str>,
) -> BootLog {
    let log = boot(
        &Boot {
            kernel,
            initrd,
            root,
            disk,
            append,
            timeout: TIMEOUT,
            cpu,
        },
        &dir.join("console.log"),
    );
    log.assert_powered_off();
    log
}

/// Checks what the root's `/init` saw: it is PID 1, has the kernel's environment, and
/// the root is the only thing mounted besides its own /proc (the initrd left nothing
/// behind), mounted `mode` ("rw" or "ro") through the ext4 driver.
fn assert_handover(log: &BootLog, mode: &str) {
    let line = log.line_with(MARKER);
    assert!(line.contains(" pid=1 "), "{line}");
    assert!(line.contains(" term=linux "), "{line}");
    let mounts = line
        .split(" mounts=")
        .nth(1)
        .unwrap_or_else(|| panic!("no mounts in {line}"));
    let mounts: Vec<&str> = mounts.split(',').filter(|m| !m.is_empty()).collect();
    assert_eq!(
        mounts,
        [
            format!("/dev/root:/:ext4:{mode}").as_str(),
            "proc:/proc:proc:rw"
        ],
        "{line}"
    );
}

#[test]
fn host_kernel_boots_root_by_uuid_on_virtio_scsi_quietly() {
    let dir = TempDir::new("boot-uuid-scsi");
    let kernel = host_kernel();
    let initrd = dir.join("initrd");
    build_initrd(&kernel, &initrd);
    let log = run(
        &dir,
        &kernel.path,
        &initrd,
        Disk::VirtioScsi,
        &format!("console=ttyS0 panic=1 quiet root=UUID={UUID}"),
    );
    assert_handover(&log, "rw");
    // Quiet unless asked: a good boot prints nothing of ours.
    assert!(
        !log.console.contains("supermin-init:"),
        "the init spoke on a quiet boot:\n{}",
        log.tail(40)
    );
}

/// The value of `key=` on the root's marker line.
fn marker_field<'a>(log: &'a BootLog, key: &str) -> &'a str {
    let line = log.line_with(MARKER);
    line.split(&format!(" {key}="))
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// The kernel's taint flag for an unsigned module (`TAINT_UNSIGNED_MODULE`, `E`).
const TAINT_UNSIGNED_MODULE: u64 = 1 << 13;

fn taint(log: &BootLog) -> u64 {
    let line = log.line_with(MARKER);
    let value = line
        .split(" tainted=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no tainted= in {line}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("bad tainted= in {line}"))
}

#[test]
fn signed_modules_load_without_signatures_unless_verify_modules_is_given() {
    let kernel = host_kernel();
    // Meaningful only with signed modules, as Debian ships them.
    let modules = supermin_kernel_probe::initrd_modules(&kernel, &[]).unwrap();
    let ext4 = modules
        .iter()
        .find(|m| m.name == "ext4")
        .expect("ext4 among the initrd modules");
    let image = supermin_kernel_probe::read_module(&ext4.path).unwrap();
    assert!(
        image.ends_with(b"~Module signature appended~\n"),
        "{} carries no signature: this test needs a kernel with signed modules",
        ext4.path.display()
    );
    // (command line, unsigned, static-call sites, ftrace call sites, kprobe on ext4)
    for (append, unsigned, static_calls, ftrace_sites, kprobe) in [
        ("", true, "hidden", "hidden", "refused"),
        (
            " supermin.verify_modules",
            false,
            "visible",
            "visible",
            "ok",
        ),
        (" supermin.trace_modules", true, "hidden", "visible", "ok"),
        // Asked for function tracing: modules keep their ftrace call sites.
        (
            " ftrace_filter=ext4_sync_fs",
            true,
            "hidden",
            "visible",
            "ok",
        ),
    ] {
        let dir = TempDir::new("boot-modsig");
        let initrd = dir.join("initrd");
        build_initrd(&kernel, &initrd);
        let log = run(
            &dir,
            &kernel.path,
            &initrd,
            Disk::VirtioBlk,
            &format!("console=ttyS0 panic=1 quiet root=UUID={UUID}{append}"),
        );
        // The root is mounted through ext4, whose every function starts at a call site.
        assert_handover(&log, "rw");
        let line = log.line_with(MARKER);
        assert_eq!(
            taint(&log) & TAINT_UNSIGNED_MODULE != 0,
            unsigned,
            "append {append:?}: {line}"
        );
        // A module handed over without its signature also has its static-call sites
        // hidden (calls through trampolines) and, unless tracing is asked for, its ftrace
        // call sites made no-ops and hidden, so that the kernel refuses a kprobe event on
        // its functions; with its signature it is left whole.
        for (field, expected) in [
            ("ext4_static_calls", static_calls),
            ("ext4_ftrace_sites", ftrace_sites),
            ("ext4_kprobe", kprobe),
        ] {
            assert_eq!(
                marker_field(&log, field),
                expected,
                "append {append:?}: {line}"
            );
        }
    }
}

#[test]
fn plain_ko_kernel_boots_root_dev_sda_on_virtio_scsi_verbosely() {
    let dir = TempDir::new("boot-sda");
    let kernel = kernel_by_version_prefix("6.1.");
    let initrd = dir.join("initrd");
    build_initrd(&kernel, &initrd);
    let log = run(
        &dir,
        &kernel.path,
        &initrd,
        Disk::VirtioScsi,
        "console=ttyS0 panic=1 quiet root=/dev/sda guestfs_verbose=1",
    );
    assert_handover(&log, "rw");
    log.line_with("supermin-init: loading module /lib/modules/sd_mod.ko");
    log.line_with("supermin-init: root device /dev/sda is sda (8:0)");
    // 6.1's modules too get no-ops at their ftrace call sites, and say so.
    log.line_with("and without their ftrace call sites");
    assert_eq!(marker_field(&log, "ext4_ftrace_sites"), "hidden");
    assert_eq!(marker_field(&log, "ext4_kprobe"), "refused");
}

#[test]
fn plain_ko_kernel_boots_root_dev_vda_read_only_on_virtio_blk() {
    let dir = TempDir::new("boot-vda");
    let kernel = kernel_by_version_prefix("6.1.");
    let initrd = dir.join("initrd");
    build_initrd(&kernel, &initrd);
    let log = run(
        &dir,
        &kernel.path,
        &initrd,
        Disk::VirtioBlk,
        "console=ttyS0 panic=1 quiet root=/dev/vda ro",
    );
    assert_handover(&log, "ro");
}

#[test]
fn xz_module_kernel_selected_by_env_boots_root_by_uuid() {
    let dir = TempDir::new("boot-xz");
    let kernel = kernel_by_version_prefix("6.12.");
    assert!(
        supermin_kernel_probe::initrd_modules(&kernel, &[])
            .unwrap()
            .iter()
            .all(|m| m.path.to_string_lossy().ends_with(".ko.xz")),
        "expected only .ko.xz modules in {}",
        kernel.modules_dir.display()
    );
    let initrd = dir.join("initrd");
    build_initrd(&kernel, &initrd);
    let log = run(
        &dir,
        &kernel.path,
        &initrd,
        Disk::VirtioBlk,
        &format!("console=ttyS0 panic=1 quiet root=UUID={UUID}"),
    );
    assert_handover(&log, "rw");
}

#[test]
fn zstd_compressed_modules_boot_root_dev_sda() {
    let dir = TempDir::new("boot-zst");
    let plain = kernel_by_version_prefix("6.1.");
    let modules = zstd_modules_copy(&plain, dir.path());
    let kernel = supermin_tests::probe_with(&[
        ("SUPERMIN_KERNEL", &plain.path),
        ("SUPERMIN_MODULES", &modules),
    ]);
    let chosen = supermin_kernel_probe::initrd_modules(&kernel, &[]).unwrap();
    assert!(
        chosen
            .iter()
            .all(|m| m.path.starts_with(&modules) && m.path.to_string_lossy().ends_with(".ko.zst")),
        "expected the .ko.zst copies, got {chosen:?}"
    );
    let initrd = dir.join("initrd");
    build_initrd(&kernel, &initrd);
    let log = run(
        &dir,
        &kernel.path,
        &initrd,
        Disk::VirtioScsi,
        "console=ttyS0 panic=1 quiet root=/dev/sda",
    );
    assert_handover(&log, "rw");
}

#[test]
fn missing_root_device_is_reported_and_the_guest_powers_off() {
    let dir = TempDir::new("boot-noroot");
    let kernel = kernel_by_version_prefix("6.1.");
    let initrd = dir.join("initrd");
    build_initrd(&kernel, &initrd);
    let log = run(
        &dir,
        &kernel.path,
        &initrd,
        Disk::VirtioBlk,
        "console=ttyS0 panic=1 quiet root=/dev/sdz rootwait=3",
    );
    let error = log.line_with("supermin-init: error:");
    assert!(
        error.contains("/dev/sdz did not appear within 3 s")
            && error.contains("block devices present: vda"),
        "{error}"
    );
    log.line_with("supermin-init: hint:");
    log.line_with("supermin-init: powering off");
    assert!(!log.console.contains(MARKER));
}

#[test]
fn root_without_init_is_reported_with_its_listing_and_the_guest_powers_off() {
    let dir = TempDir::new("boot-noinit");
    let kernel = kernel_by_version_prefix("6.1.");
    let initrd = dir.join("initrd");
    build_initrd(&kernel, &initrd);
    let root = root_without_init(dir.path(), UUID);
    let log = run_root(
        &root,
        &dir,
        &kernel.path,
        &initrd,
        Disk::VirtioScsi,
        &format!("console=ttyS0 panic=1 quiet root=UUID={UUID}"),
    );
    let error = log.line_with("supermin-init: error:");
    assert!(
        error.contains(&format!("the root UUID={UUID} has no /init")),
        "{error}"
    );
    // What the root does hold is listed, to show what went wrong.
    log.line_with(" bin");
    log.line_with("supermin-init: powering off");
}

#[test]
fn modules_this_boot_does_not_need_are_skipped_unless_all_modules_is_given() {
    // 6.1 has virtio_pci as a module (the virtio bus appears only once it loads), 6.12 has
    // it built in; both must find their disk driver on either bus.
    for prefix in ["6.1.", "6.12."] {
        let kernel = kernel_by_version_prefix(prefix);
        let names: Vec<String> = supermin_kernel_probe::initrd_modules(&kernel, &[])
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        for wanted in [
            "virtio_blk",
            "virtio_scsi",
            "crc32c_intel",
            "crc32c_generic",
        ] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{prefix}: no {wanted} in {names:?}"
            );
        }
        let dir = TempDir::new("boot-need");
        let initrd = dir.join("initrd");
        // With libguestfs's root preloads: dm_mod on every boot, sg only with a SCSI device.
        build_initrd_preloading(&kernel, &initrd, &["dm_mod"], &["sg"]);
        let root = marker_root(dir.path(), UUID);
        let boot = |disk, append: &str, cpu| {
            let log = run_cpu(&root, &dir, &kernel.path, &initrd, disk, append, cpu);
            assert_handover(&log, "rw");
            log
        };
        let skipped = |log: &BootLog, module: &str| {
            log.console.contains(&format!(
                "supermin-init: module /lib/modules/{module}.ko not needed"
            ))
        };
        // Tried, and no failure said of it afterwards.
        let loaded = |log: &BootLog, module: &str| {
            let path = format!("/lib/modules/{module}.ko");
            log.console
                .contains(&format!("supermin-init: loading module {path}"))
                && !log.console.contains(&format!("module {path}: "))
                && !log.console.contains(&format!("module {path} failed"))
        };
        // cryptomgr.notests, as libguestfs and the launcher boot: otherwise crc32c_intel's
        // self-test may still be running when crc32c_generic's turn comes, and an untested
        // algorithm does not count (then the generic one loads: safe, but not this test).
        let verbose =
            format!("console=ttyS0 panic=1 root=UUID={UUID} supermin.debug cryptomgr.notests");
        // libguestfs's disks, virtio-scsi only, on a CPU with SSE4.2 (what the launcher
        // asks for): no virtio_blk, and the accelerated crc32c makes the generic one idle.
        let log = boot(Disk::VirtioScsi, &verbose, Some("max"));
        let show = |log: &BootLog| format!("{prefix}:\n{}", log.tail(60));
        assert!(skipped(&log, "virtio_blk"), "{}", show(&log));
        assert!(loaded(&log, "virtio_scsi"), "{}", show(&log));
        assert!(loaded(&log, "dm_mod"), "{}", show(&log));
        assert!(loaded(&log, "sg"), "{}", show(&log));
        assert!(loaded(&log, "crc32c_intel"), "{}", show(&log));
        assert!(skipped(&log, "crc32c_generic"), "{}", show(&log));
        // crc32c is there for ext4 and anyone else, from the accelerated driver.
        assert_eq!(
            marker_field(&log, "crc32c"),
            "crc32c-intel,",
            "{}",
            show(&log)
        );
        // supermin run's disks, virtio-blk only, on qemu64 (no SSE4.2): crc32c_intel finds
        // no CPU support, and the generic one is what ext4 gets.
        // A preload the command line blacklists (or sets parameters of) is left to the
        // root's modprobe, which applies that.
        let log = boot(
            Disk::VirtioBlk,
            &format!("{verbose} modprobe.blacklist=dm_mod"),
            None,
        );
        assert!(loaded(&log, "virtio_blk"), "{}", show(&log));
        assert!(skipped(&log, "virtio_scsi"), "{}", show(&log));
        assert!(
            log.console.contains(
                "module /lib/modules/dm_mod.ko left to the root's modprobe: the kernel command line blacklists it"
            ),
            "{}",
            show(&log)
        );
        assert!(
            log.console
                .contains("module /lib/modules/sg.ko not needed: no SCSI device is present"),
            "{}",
            show(&log)
        );
        assert!(
            log.console
                .contains("module /lib/modules/crc32c_intel.ko: no such device"),
            "{}",
            show(&log)
        );
        assert!(loaded(&log, "crc32c_generic"), "{}", show(&log));
        assert!(!skipped(&log, "crc32c_generic"), "{}", show(&log));
        assert_eq!(
            marker_field(&log, "crc32c"),
            "crc32c-generic,",
            "{}",
            show(&log)
        );
        // The switch loads everything.
        let log = boot(
            Disk::VirtioBlk,
            &format!("{verbose} supermin.all_modules"),
            Some("max"),
        );
        for module in ["virtio_blk", "virtio_scsi", "crc32c_generic", "sg"] {
            assert!(loaded(&log, module), "{module} {}", show(&log));
            assert!(!skipped(&log, module), "{module} {}", show(&log));
        }
    }
}
