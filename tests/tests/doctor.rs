//! End-to-end tests of `supermin doctor` through the real binary, on this host: qemu with
//! TCG, KVM present but unusable (`kvm_pvm`: qemu aborts), the Debian kernels of `.ci/setup`.
//! Each test has its own cache (`LIBGUESTFS_CACHEDIR`) and `TMPDIR`, so the KVM verdict and
//! the default appliance are its own.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use supermin_tests::{assert_e2fsck_clean, host_kernel, output_of, supermin_in, TempDir};

fn scratch(tag: &str) -> TempDir {
    let dir = TempDir::new(&format!("doctor-{tag}"));
    for d in ["cache", "tmp"] {
        std::fs::create_dir(dir.join(d)).unwrap();
    }
    dir
}

#[test]
fn doctor_on_this_host_exits_0_and_says_why_kvm_is_not_used() {
    let s = scratch("host");
    let (code, out, err) = output_of(&mut supermin_in(
        &s.join("cache"),
        &s.join("tmp"),
        &["doctor"],
    ));
    assert_eq!(code, 0, "doctor failed:\n{out}\n{err}");
    // "shares:" is ok with virtiofsd, which `.ci/setup` installs.
    for group in [
        "qemu:",
        "kvm:",
        "shares:",
        "kernel:",
        "cache:",
        "libguestfs:",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ok") && l.contains(group)),
            "no ok line for {group}:\n{out}"
        );
    }
    for phase in ["build:", "boot:", "exec:"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("time") && l.contains(phase)),
            "phase {phase} not timed:\n{out}"
        );
    }
    let summary = out.lines().last().unwrap_or("");
    assert!(
        summary.starts_with("summary: supermin run works on this host"),
        "{out}"
    );
    if !out.contains("booted with KVM") {
        // This host: KVM opens but its guests abort; doctor must say so, with the reason.
        let accel = out
            .lines()
            .find(|l| l.contains("accel: KVM is not used: "))
            .unwrap_or_else(|| panic!("doctor does not say why KVM is not used:\n{out}"));
        let reason = accel.split("KVM is not used: ").nth(1).unwrap_or("");
        assert!(reason.len() > 10, "no reason given: {accel}");
        assert!(summary.contains("KVM is not used"), "{summary}");
    }
    let root = user_cache_dir(&s.join("cache")).join("supermin-rs-default.d/root");
    assert_e2fsck_clean(&root);

    // The second run reuses the appliance, knows the verdict already, and says the same in
    // JSON for tools.
    let (code, out, err) = output_of(&mut supermin_in(
        &s.join("cache"),
        &s.join("tmp"),
        &["doctor", "--json"],
    ));
    assert_eq!(code, 0, "doctor --json failed:\n{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["ok"], true);
    let phases = v["phases"].as_array().unwrap();
    let build = phases.iter().find(|p| p["phase"] == "build").unwrap();
    assert!(
        build["detail"].as_str().unwrap().contains("reused"),
        "{build}"
    );
    let kvm = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["group"] == "kvm")
        .unwrap();
    if !v["summary"].as_str().unwrap().contains("KVM works") {
        assert!(
            kvm["detail"].as_str().unwrap().contains("runs use TCG"),
            "{kvm}"
        );
    }
}

/// The one `.guestfs-UID` directory a run made under `base`.
fn user_cache_dir(base: &Path) -> std::path::PathBuf {
    std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".guestfs-")
        })
        .unwrap_or_else(|| panic!("no .guestfs-UID in {}", base.display()))
}

#[test]
fn doctor_with_an_unreadable_kernel_exits_1_and_names_the_fix() {
    let s = scratch("unreadable");
    // Ubuntu's /boot/vmlinuz-* are 0600 root: a copy like that, used by an unprivileged user.
    let k = host_kernel();
    let copy = s.join("vmlinuz-0600");
    std::fs::copy(&k.path, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The scratch directory itself, and a cache base anyone may use (like /var/tmp).
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["cache", "tmp"] {
        std::fs::set_permissions(s.join(d), std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let bin = supermin_tests::supermin_bin();
    assert_traversable_by_others(&bin);
    // Run as nobody through setpriv (util-linux), with the same environment.
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--reset-env",
        ])
        .arg("env")
        .arg(format!("LIBGUESTFS_CACHEDIR={}", s.join("cache").display()))
        .arg(format!("TMPDIR={}", s.join("tmp").display()))
        .arg(format!("SUPERMIN_KERNEL={}", copy.display()))
        .arg(format!("SUPERMIN_MODULES={}", k.modules_dir.display()))
        .arg(&bin)
        .arg("doctor");
    let (code, out, err) = output_of(&mut setpriv);
    assert_eq!(code, 1, "doctor must fail:\n{out}\n{err}");
    let problem = out
        .lines()
        .position(|l| l.starts_with("problem") && l.contains("kernel:"))
        .unwrap_or_else(|| panic!("no kernel problem:\n{out}"));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[problem].contains("not readable by this user"),
        "{}",
        lines[problem]
    );
    let fix = lines[problem + 1];
    assert!(
        fix.contains("fix:") && fix.contains("chmod 0644") && fix.contains("SUPERMIN_KERNEL"),
        "{fix}"
    );
    assert!(
        out.contains("not built or booted"),
        "the boot must be skipped:\n{out}"
    );
    assert!(
        out.lines().last().unwrap_or("").contains("problem(s)"),
        "{out}"
    );
}

/// Every directory leading to `path` must be searchable by others, or nobody cannot run it.
fn assert_traversable_by_others(path: &Path) {
    for dir in path.ancestors().skip(1) {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        assert!(
            mode & 0o001 != 0,
            "{} is not searchable by others; the unprivileged test cannot run {}",
            dir.display(),
            path.display()
        );
    }
}
