//! `supermin doctor [--json]`: the one command a user runs and pastes into a bug report
//! (what libguestfs-test-tool and the libguestfs FAQ's "Help, it does not work!" are for).
//!
//! Checks run in a fixed order: qemu (found, version, starts; KVM: the device, this user's
//! access, the accelerator logic's recorded verdict), the kernel (as `supermin kernel`
//! chooses it, readable, its modules, decompressible), the cache (directory checks, free
//! space, what is cached), libguestfs (installed, its supermin.d, the variables that steer
//! it and us); then the default appliance is built (or reused) and booted as `supermin run`
//! boots it, each phase timed. Every check is one line: ok, or what is wrong and the way
//! out. A failed boot shows the console's last lines and the matching FAQ entry.
//!
//! Severity: a `problem` keeps `supermin run` from working and makes the exit status 1; a
//! `warning` only affects libguestfs (or speed), a `note` is information.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use supermin::appliance::{self, Outcome};
use supermin::cli::DoctorArgs;

use super::Env;
use supermin_kernel_probe as kprobe;
use supermin_launcher::diag::{self, KvmState};
use supermin_launcher::{self as launcher, Accel, LaunchEnv, LaunchError, Notice, RunOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Note,
    Warning,
    Problem,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Note => "note",
            Status::Warning => "warning",
            Status::Problem => "problem",
        }
    }
}

#[derive(Debug, Clone)]
struct Check {
    group: &'static str,
    status: Status,
    detail: String,
    fix: Option<String>,
    faq: Option<&'static str>,
}

/// The checks so far; printed as they come in text mode.
struct Doctor {
    json: bool,
    checks: Vec<Check>,
    phases: Vec<(&'static str, Duration, String)>,
    console_tail: Vec<String>,
}

impl Doctor {
    fn add(&mut self, group: &'static str, status: Status, detail: impl Into<String>) {
        self.push(Check {
            group,
            status,
            detail: detail.into(),
            fix: None,
            faq: None,
        });
    }

    fn add_fix(
        &mut self,
        group: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Check {
            group,
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
            faq: None,
        });
    }

    fn push(&mut self, c: Check) {
        if !self.json {
            println!("{:8} {}: {}", c.status.as_str(), c.group, c.detail);
            if let Some(fix) = &c.fix {
                println!("{:8} fix: {fix}", "");
            }
            if let Some(faq) = c.faq {
                println!("{:8} FAQ: {faq}", "");
            }
        }
        self.checks.push(c);
    }

    fn phase(&mut self, name: &'static str, took: Duration, what: String) {
        if !self.json {
            println!("{:8} {name}: {what} in {:.2} s", "time", took.as_secs_f64());
        }
        self.phases.push((name, took, what));
    }

    fn failed(&self, group: &str) -> bool {
        self.checks
            .iter()
            .any(|c| c.group == group && c.status == Status::Problem)
    }
}

/// The libguestfs FAQ entries (`guestfs-faq(1)`, "Common problems" / «Типові проблеми»)
/// whose symptom appears on a console or in qemu's message, with the way out each gives.
const FAQ: &[(&str, &str, &str)] = &[
    (
        "could not allocate dynamic translator buffer",
        "\"Could not allocate dynamic translator buffer\"",
        "SELinux stops qemu's TCG from mapping executable memory: `setsebool -P virt_use_execmem=on`",
    ),
    (
        "execl: /init",
        "\"execl: /init: Permission denied\"",
        "the appliance's /init, or a program or library it needs, is missing or not executable: `supermin cache clean` and run again, and read the build's warnings (they name the file and what it lacks)",
    ),
    (
        "child process died unexpectedly",
        "\"child process died unexpectedly\"",
        "qemu failed or the kernel did not boot: the console lines above say which; run `supermin doctor -v` for the whole console",
    ),
    (
        "failed to set msr",
        "KVM (\"Ubuntu: add your user to the kvm group\"; nested/paravirtualised hosts)",
        "KVM itself fails on this host: use `--accel tcg` (or `auto`, which falls back by itself)",
    ),
    (
        "unable to mount root",
        "\"child process died unexpectedly\" (the kernel could not mount the root)",
        "the initrd lacks the disk or filesystem driver for this kernel: `supermin cache clean` and run again; check `supermin kernel`",
    ),
];

fn faq_for(text: &str) -> Option<(&'static str, &'static str)> {
    let lower = text.to_ascii_lowercase();
    FAQ.iter()
        .find(|(needle, _, _)| lower.contains(needle))
        .map(|(_, entry, fix)| (*entry, *fix))
}

/// The KvmFallback reason of the boot, captured from the launcher's notice callback
/// (a plain `fn`, so it cannot capture state itself).
static FALLBACK: Mutex<Option<String>> = Mutex::new(None);

fn capture_notice(n: &Notice) {
    if let Notice::KvmFallback { reason } = n {
        if let Ok(mut slot) = FALLBACK.lock() {
            *slot = Some(reason.clone());
        }
    }
}

pub fn doctor(args: &DoctorArgs, snapshot: &Env) -> anyhow::Result<ExitCode> {
    let mut d = Doctor {
        json: args.json,
        checks: Vec::new(),
        phases: Vec::new(),
        console_tail: Vec::new(),
    };
    let env = LaunchEnv::from_vars(|name| snapshot.var(name));
    if !d.json {
        println!(
            "supermin doctor (supermin-rs {}, uid {}, host kernel {})",
            env!("CARGO_PKG_VERSION"),
            rustix::process::geteuid().as_raw(),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into())
        );
    }
    let kvm = check_qemu(&mut d, &env);
    check_shares(&mut d, &env);
    let kernel = check_kernel(&mut d, snapshot);
    check_cache(&mut d, snapshot);
    let accel = check_env(&mut d, kvm.as_ref(), snapshot);
    if args.no_boot {
        d.add("boot", Status::Note, "skipped (--no-boot)");
    } else if d.failed("qemu") || d.failed("kernel") || d.failed("cache") || accel.is_none() {
        d.add(
            "boot",
            Status::Problem,
            "the default appliance was not built or booted: fix the problems above first",
        );
    } else if let (Some(accel), Some(_)) = (accel, kernel) {
        build_and_boot(&mut d, &env, accel, args.verbose, kvm.as_ref(), snapshot);
    }
    summary(&d)
}

/// qemu found, its version, starts; KVM's state. Returns the KVM state when qemu was found.
fn check_qemu(d: &mut Doctor, env: &LaunchEnv) -> Option<KvmState> {
    let qemu = match diag::find_qemu(env) {
        Ok(q) => q,
        Err(e) => {
            d.add_fix(
                "qemu",
                Status::Problem,
                format!("{} not found in PATH ({e})", diag::QEMU_PROGRAM),
                "install qemu-system-x86 (Debian, Ubuntu) or qemu-system-x86-core (Fedora)",
            );
            return None;
        }
    };
    d.add(
        "qemu",
        Status::Ok,
        format!("{} ({})", qemu.path.display(), qemu.version),
    );
    match diag::qemu_starts(&qemu, Duration::from_secs(20)) {
        Ok(()) => d.add("qemu", Status::Ok, "starts (-machine none, TCG)"),
        Err(why) => {
            let faq = faq_for(&why);
            d.push(Check {
                group: "qemu",
                status: Status::Problem,
                detail: format!("does not start: {why}"),
                fix: Some(faq.map(|f| f.1.to_string()).unwrap_or_else(|| {
                    format!(
                        "run `{} -machine none -nodefaults -display none -monitor stdio` by hand and fix what it says (reinstall qemu)",
                        qemu.path.display()
                    )
                })),
                faq: faq.map(|f| f.0),
            });
        }
    }
    let state = diag::kvm_state(env, &qemu);
    match &state {
        KvmState::Absent => d.add_fix(
            "kvm",
            Status::Warning,
            "/dev/kvm does not exist: runs use TCG (software emulation, several times slower)",
            "load the KVM module (`modprobe kvm_intel` or `kvm_amd`), enable virtualization in the firmware, or nested virtualization on the host of this VM",
        ),
        KvmState::NotUsable { reason, permission } => d.add_fix(
            "kvm",
            Status::Warning,
            format!("/dev/kvm is not usable by this user ({reason}): runs use TCG"),
            if *permission {
                "add your user to the kvm group, as the libguestfs FAQ says: `sudo usermod -a -G kvm $USER`, then log in again".to_string()
            } else {
                "check the KVM module (`dmesg | grep -i kvm`)".to_string()
            },
        ),
        KvmState::Failed { reason } => d.add_fix(
            "kvm",
            Status::Note,
            format!(
                "/dev/kvm opens, but a KVM guest failed on this host in this boot with this qemu ({reason}): runs use TCG (verdict in {})",
                diag::verdict_path(env).display()
            ),
            "nothing to do for supermin run; `supermin run --recheck-kvm` tries KVM again after a host or qemu change",
        ),
        KvmState::NotTriedOrWorks => d.add(
            "kvm",
            Status::Ok,
            "/dev/kvm opens; whether a KVM guest boots: not tried yet in this host boot with this qemu (the boot below tries it)",
        ),
    }
    Some(state)
}

/// Which transport `--share` directories take: virtiofs with a usable virtiofsd, else 9p.
fn check_shares(d: &mut Doctor, env: &LaunchEnv) {
    match diag::find_virtiofsd(env) {
        Ok((path, version)) => d.add(
            "shares",
            Status::Ok,
            format!("{} ({version}): --share uses virtiofs", path.display()),
        ),
        Err(why) => d.add_fix(
            "shares",
            Status::Note,
            format!("{why}: --share uses qemu's 9p, slower on many small files"),
            "install virtiofsd (Debian: apt install virtiofsd, or cargo install virtiofsd and copy it to /usr/local/libexec) or point SUPERMIN_VIRTIOFSD at one",
        ),
    }
}

/// The kernel as `supermin kernel` chooses it; its modules; their decompression.
fn check_kernel(d: &mut Doctor, snapshot: &Env) -> Option<kprobe::Kernel> {
    let k = match kprobe::probe(&snapshot.build().probe_env(None)) {
        Ok(k) => k,
        Err(e) => {
            let detail = super::one_line(&e);
            let fix = e.hint().unwrap_or_else(|| {
                "`supermin kernel` lists every candidate and why it was skipped".into()
            });
            d.add_fix("kernel", Status::Problem, detail, fix);
            return None;
        }
    };
    let why = k
        .candidates
        .iter()
        .find(|c| c.verdict == kprobe::Verdict::Chosen)
        .map(|c| c.reason.clone())
        .unwrap_or_default();
    d.add(
        "kernel",
        Status::Ok,
        format!(
            "{} (version {} from the {}; found by {}{}), readable",
            k.path.display(),
            k.version,
            k.version_source.as_str(),
            k.source.as_str(),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            }
        ),
    );
    let set = match kprobe::module_set(&k, &[]) {
        Ok(s) => s,
        Err(e) => {
            let fix = e
                .hint()
                .unwrap_or_else(|| format!("reinstall the modules of kernel {}", k.version));
            d.add_fix("kernel", Status::Problem, format!("modules: {e}"), fix);
            return None;
        }
    };
    d.add(
        "kernel",
        Status::Ok,
        format!(
            "modules in {}: {} for the initrd",
            k.modules_dir.display(),
            set.modules.len()
        ),
    );
    let compressed = set
        .modules
        .iter()
        .filter(|m| !m.path.to_string_lossy().ends_with(".ko"))
        .count();
    for m in &set.modules {
        if let Err(e) = kprobe::read_module(&m.path) {
            let detail = match std::error::Error::source(&e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            };
            d.add_fix(
                "kernel",
                Status::Problem,
                detail,
                format!("reinstall the modules package of kernel {}", k.version),
            );
            return None;
        }
    }
    d.add(
        "kernel",
        Status::Ok,
        format!(
            "initrd modules read and decompressed ({compressed} of {} compressed)",
            set.modules.len()
        ),
    );
    Some(k)
}

fn check_cache(d: &mut Doctor, snapshot: &Env) {
    let dir = match snapshot.runtime_cache_dir() {
        Ok(dir) => dir,
        Err(e) => {
            // A cache error's way out is its hint, or follows a semicolon in its message.
            let text = super::one_line(&e);
            let (what, fix) = match (e.hint(), text.split_once("; ")) {
                (Some(hint), _) => (text, hint),
                (None, Some((w, f))) => (w.to_string(), f.to_string()),
                (None, None) => (
                    text,
                    "set LIBGUESTFS_CACHEDIR to a directory you own".to_string(),
                ),
            };
            d.add_fix("cache", Status::Problem, what, fix);
            return;
        }
    };
    d.add(
        "cache",
        Status::Ok,
        format!(
            "{}: a directory owned by this user, not writable by others",
            dir.display()
        ),
    );
    match super::cache::free_bytes(&dir) {
        Some(free) if free < 256 << 20 => d.add_fix(
            "cache",
            Status::Problem,
            format!("only {} free in {}", super::cache::human(free), dir.display()),
            "free space there (`supermin cache gc`), or set LIBGUESTFS_CACHEDIR to a roomier directory",
        ),
        Some(free) if free < 1 << 30 => d.add_fix(
            "cache",
            Status::Warning,
            format!(
                "{} free: enough for supermin run, tight for libguestfs's appliance (about 0.5 GiB)",
                super::cache::human(free)
            ),
            "`supermin cache gc`, or set LIBGUESTFS_CACHEDIR to a roomier directory",
        ),
        Some(free) => d.add("cache", Status::Ok, format!("{} free", super::cache::human(free))),
        None => d.add("cache", Status::Note, "free space unknown (statvfs failed)"),
    }
    match super::cache::judge_all(snapshot) {
        Ok(all) => {
            let entries: Vec<_> = all.iter().flat_map(|(_, _, e)| e.iter()).collect();
            let total: u64 = entries.iter().map(|j| j.entry.bytes).sum();
            let list: Vec<String> = entries
                .iter()
                .map(|j| format!("{} {}", j.entry.dir.display(), j.why))
                .collect();
            let stale = entries.iter().any(|j| !j.fresh);
            let detail = format!(
                "{} cached appliance(s), {} on disk{}{}",
                entries.len(),
                super::cache::human(total),
                if list.is_empty() { "" } else { ": " },
                list.join(", ")
            );
            if stale {
                d.add_fix(
                    "cache",
                    Status::Note,
                    detail,
                    "`supermin cache gc` removes the stale ones",
                );
            } else {
                d.add("cache", Status::Ok, detail);
            }
        }
        Err(e) => d.add(
            "cache",
            Status::Note,
            format!("cannot list the cache: {e:#}"),
        ),
    }
}

/// Where libguestfs's shared library lives on the usual distributions.
const LIBGUESTFS_LIBS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libguestfs.so.0",
    "/usr/lib64/libguestfs.so.0",
    "/usr/lib/libguestfs.so.0",
    "/usr/local/lib/libguestfs.so.0",
];

/// libguestfs and the variables. Returns the accelerator `supermin run` would use, or
/// `None` when `SUPERMIN_ACCEL` makes runs fail.
fn check_env(d: &mut Doctor, kvm: Option<&KvmState>, snapshot: &Env) -> Option<Accel> {
    match LIBGUESTFS_LIBS.iter().find(|p| Path::new(p).exists()) {
        Some(lib) => d.add("libguestfs", Status::Ok, format!("installed ({lib})")),
        None => d.add(
            "libguestfs",
            Status::Note,
            "not installed: only what supermin run needs is checked",
        ),
    }
    match super::SUPERMIN_D_PLACES.iter().find(|p| Path::new(p).is_dir()) {
        Some(p) => d.add("libguestfs", Status::Ok, format!("its supermin.d: {p}")),
        None => d.add_fix(
            "libguestfs",
            Status::Warning,
            format!(
                "its supermin.d is in none of {}",
                super::SUPERMIN_D_PLACES.join(", ")
            ),
            "install libguestfs's appliance package (Debian: libguestfs0), or set LIBGUESTFS_PATH to a fixed appliance",
        ),
    }
    let var = |n: &str| snapshot.var(n).filter(|v| !v.is_empty());
    if let Some(v) = var("LIBGUESTFS_PATH") {
        for elem in std::env::split_paths(&v) {
            let has = |f: &str| elem.join(f).exists();
            let ok = has("supermin.d") || (has("kernel") && has("initrd") && has("root"));
            if ok {
                d.add(
                    "libguestfs",
                    Status::Ok,
                    format!(
                        "LIBGUESTFS_PATH element {}: holds an appliance",
                        elem.display()
                    ),
                );
            } else {
                d.add_fix(
                    "libguestfs",
                    Status::Warning,
                    format!(
                        "LIBGUESTFS_PATH element {} holds neither supermin.d nor kernel, initrd and root",
                        elem.display()
                    ),
                    "point LIBGUESTFS_PATH at a fixed appliance (`supermin update-appliance DIR` builds one) or unset it",
                );
            }
        }
    }
    if let Some(v) = var("LIBGUESTFS_BACKEND") {
        let v = v.to_string_lossy().into_owned();
        let root = rustix::process::geteuid().is_root();
        if v == "direct" {
            d.add("libguestfs", Status::Ok, "LIBGUESTFS_BACKEND=direct");
        } else if v == "libvirt" || v.starts_with("libvirt:") {
            if root {
                d.add_fix(
                    "libguestfs",
                    Status::Warning,
                    format!("LIBGUESTFS_BACKEND={v} as root: libvirt runs qemu as user qemu, which cannot open root's disk images (FAQ: \"Permission denied\" when running libguestfs as root)"),
                    "export LIBGUESTFS_BACKEND=direct",
                );
            } else {
                d.add("libguestfs", Status::Ok, format!("LIBGUESTFS_BACKEND={v}"));
            }
        } else {
            d.add_fix(
                "libguestfs",
                Status::Warning,
                format!("LIBGUESTFS_BACKEND={v} is not a backend libguestfs knows"),
                "use direct or libvirt, or unset it",
            );
        }
    }
    if let Some(v) = var("LIBGUESTFS_CACHEDIR") {
        let p = PathBuf::from(&v);
        if p.is_dir() {
            d.add(
                "env",
                Status::Ok,
                format!("LIBGUESTFS_CACHEDIR={}: a directory", p.display()),
            );
        } else {
            d.add_fix(
                "env",
                Status::Problem,
                format!("LIBGUESTFS_CACHEDIR={} is not a directory", p.display()),
                "point it at an existing directory, or unset it",
            );
        }
    }
    let supermin_vars: Vec<(String, OsString)> = snapshot
        .with_prefix("SUPERMIN_")
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let mut accel = Some(Accel::Auto);
    for (k, v) in supermin_vars {
        let shown = format!("{k}={}", v.to_string_lossy());
        match k.as_str() {
            "SUPERMIN_KERNEL" | "SUPERMIN_MODULES" => {
                let p = Path::new(&v);
                let want_dir = k == "SUPERMIN_MODULES";
                let sane = if want_dir { p.is_dir() } else { p.is_file() };
                if sane {
                    d.add("env", Status::Ok, format!("{shown}: exists"));
                } else {
                    d.add_fix(
                        "env",
                        Status::Problem,
                        format!(
                            "{shown} is not {}",
                            if want_dir { "a directory" } else { "a file" }
                        ),
                        format!(
                            "point {k} at a {}, or unset it",
                            if want_dir {
                                "/lib/modules/VERSION directory"
                            } else {
                                "kernel image"
                            }
                        ),
                    );
                }
            }
            "SUPERMIN_KERNEL_VERSION" => d.add("env", Status::Ok, shown),
            "SUPERMIN_ACCEL" => match v.to_str().unwrap_or("").parse::<Accel>() {
                Ok(Accel::Kvm) if !matches!(kvm, Some(KvmState::NotTriedOrWorks)) => {
                    accel = None;
                    d.add_fix(
                        "env",
                        Status::Problem,
                        format!("{shown}, but KVM is not usable here (see the kvm line above): supermin run fails"),
                        "set SUPERMIN_ACCEL=auto (falls back to TCG) or tcg, or unset it",
                    );
                }
                Ok(a) => {
                    accel = Some(a);
                    d.add("env", Status::Ok, shown);
                }
                Err(e) => {
                    accel = None;
                    d.add_fix(
                        "env",
                        Status::Problem,
                        format!("{shown}: {e}"),
                        "set it to auto, kvm or tcg, or unset it",
                    );
                }
            },
            "SUPERMIN_QEMU_USER" => {
                if rustix::process::geteuid().is_root() {
                    d.add("env", Status::Ok, format!("{shown}: qemu switches to it"));
                } else {
                    d.add_fix(
                        "env",
                        Status::Problem,
                        format!("{shown}: only root can make qemu switch users; supermin run refuses it"),
                        "unset SUPERMIN_QEMU_USER",
                    );
                    accel = None;
                }
            }
            // Checked by the "shares" line, which says whether it is usable.
            "SUPERMIN_VIRTIOFSD" => d.add(
                "env",
                Status::Ok,
                format!("{shown}: the virtiofsd for --share"),
            ),
            _ => d.add(
                "env",
                Status::Note,
                format!("{shown}: not read by supermin"),
            ),
        }
    }
    accel
}

fn build_and_boot(
    d: &mut Doctor,
    env: &LaunchEnv,
    accel: Accel,
    verbose: u8,
    kvm_before: Option<&KvmState>,
    snapshot: &Env,
) {
    let cache = match snapshot.runtime_cache_dir() {
        Ok(c) => c,
        Err(_) => return, // reported by check_cache
    };
    let req = match super::run::default_plan(&cache, verbose.saturating_sub(1), false, snapshot) {
        Ok(r) => r,
        Err(e) => {
            d.add("build", Status::Problem, format!("{e:#}"));
            return;
        }
    };
    let start = Instant::now();
    match appliance::build(&req, &super::print_event) {
        Ok(outcome) => {
            let what = match outcome {
                Outcome::UpToDate => "reused (fresh)".to_string(),
                Outcome::Built { warnings } if warnings.is_empty() => "built".to_string(),
                Outcome::Built { warnings } => format!("built, {} warning(s)", warnings.len()),
            };
            d.phase(
                "build",
                start.elapsed(),
                format!("default appliance {}: {what}", req.output.display()),
            );
        }
        Err(e) => {
            let e = anyhow::Error::new(e);
            d.add_fix(
                "build",
                Status::Problem,
                format!("cannot build the default appliance: {e:#}"),
                super::hint_for(&e)
                    .unwrap_or_else(|| "run `supermin run -v -- true` for details".into()),
            );
            return;
        }
    }
    let opts = RunOptions {
        env: env.clone(),
        recheck_kvm: false,
        qemu_user: if rustix::process::geteuid().is_root() {
            snapshot
                .var("SUPERMIN_QEMU_USER")
                .and_then(|v| v.into_string().ok())
                .filter(|u| !u.is_empty() && u != "root")
                .or_else(|| Some("nobody".into()))
        } else {
            None
        },
        on_notice: capture_notice,
        // The boot the user's runs would do: the saved machine when there is one.
        saved_machines: snapshot
            .runtime_cache_dir()
            .ok()
            .map(|d| d.join(super::run::SAVED_DIR)),
        cold: false,
        shares: Vec::new(),
        share_transport: supermin_launcher::ShareTransport::Auto,
        appliance: req.output.clone(),
        accel,
        memory_mib: 512,
        cpus: 1,
        disks: Vec::new(),
        timeout: Some(Duration::from_secs(600)),
        verbose: verbose > 0,
        argv: Vec::new(),
        stdin: false,
        command_env: Vec::new(),
        cwd: None,
        interactive: None,
        copy_in: Vec::new(),
        copy_out: Vec::new(),
        copy_out_limit: 0,
    };
    let start = Instant::now();
    let result = launcher::Session::boot(&opts).and_then(|mut s| {
        let booted = start.elapsed();
        let t = Instant::now();
        let status = s.exec(&[OsString::from("true")], false)?;
        let ran = t.elapsed();
        let t = Instant::now();
        let info = s.daemon_info().to_string();
        s.shutdown();
        Ok((booted, ran, t.elapsed(), status.shell_code(), info))
    });
    let fallback = FALLBACK.lock().ok().and_then(|s| s.clone());
    let tcg_why = match (accel, &fallback, kvm_before) {
        (Accel::Tcg, _, _) => Some("TCG was asked for (SUPERMIN_ACCEL=tcg)".to_string()),
        (_, Some(reason), _) => Some(format!("KVM failed on this host ({reason}); the verdict is remembered until the host reboots or qemu changes")),
        (_, None, Some(KvmState::Failed { reason })) => Some(format!(
            "KVM failed on this host earlier in this boot ({reason})"
        )),
        (_, None, Some(KvmState::Absent)) => Some("/dev/kvm does not exist".into()),
        (_, None, Some(KvmState::NotUsable { reason, .. })) => {
            Some(format!("/dev/kvm is not usable by this user ({reason})"))
        }
        _ => None,
    };
    match result {
        Ok((booted, ran, down, code, info)) => {
            let accel_used = if tcg_why.is_some() { "TCG" } else { "KVM" };
            d.phase(
                "boot",
                booted,
                format!("booted with {accel_used}; the daemon answered ({info})"),
            );
            d.phase(
                "exec",
                ran,
                format!("`true` ran in the appliance (exit {code})"),
            );
            d.phase("shutdown", down, "powered off".into());
            match &tcg_why {
                Some(why) => d.add(
                    "accel",
                    Status::Note,
                    format!("KVM is not used: {why}; TCG works"),
                ),
                None => d.add("accel", Status::Ok, "KVM works"),
            }
            if code != 0 {
                d.add_fix(
                    "boot",
                    Status::Problem,
                    format!("`true` in the appliance exited {code}"),
                    "`supermin cache clean` and run again; report a bug with this output if it stays",
                );
            }
        }
        Err(e) => {
            let took = start.elapsed();
            let console = match &e {
                LaunchError::BootFailed { console, .. } | LaunchError::VmDied { console } => {
                    console.clone()
                }
                _ => String::new(),
            };
            let message = match &e {
                LaunchError::BootFailed { reason, .. } => {
                    format!("the appliance did not start: {reason}")
                }
                LaunchError::VmDied { .. } => {
                    "the VM went away while the command was running".into()
                }
                other => super::one_line(other),
            };
            d.console_tail = console
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>();
            let n = d.console_tail.len();
            d.console_tail.drain(..n.saturating_sub(15));
            let faq = faq_for(&format!("{message}\n{console}"))
                .or_else(|| faq_for("child process died unexpectedly"));
            if !d.json && !d.console_tail.is_empty() {
                println!("{:8} boot: the console's last lines:", "");
                for l in &d.console_tail {
                    println!("{:8}   | {l}", "");
                }
            }
            d.push(Check {
                group: "boot",
                status: Status::Problem,
                detail: format!("after {:.1} s: {message}", took.as_secs_f64()),
                fix: faq.map(|f| f.1.to_string()).or_else(|| e.hint()),
                faq: faq.map(|f| f.0),
            });
        }
    }
}

fn summary(d: &Doctor) -> anyhow::Result<ExitCode> {
    let count = |s: Status| d.checks.iter().filter(|c| c.status == s).count();
    let (problems, warnings) = (count(Status::Problem), count(Status::Warning));
    let accel_note = d
        .checks
        .iter()
        .find(|c| c.group == "accel")
        .map(|c| format!(" ({})", c.detail))
        .unwrap_or_default();
    let booted = d.phases.iter().any(|(name, _, _)| *name == "boot");
    let text = if problems == 0 && !booted {
        format!(
            "no problem found, but the appliance was not booted (--no-boot); {warnings} warning(s)"
        )
    } else if problems == 0 {
        format!(
            "supermin run works on this host{accel_note}; {warnings} warning(s) (they affect libguestfs or speed only)"
        )
    } else {
        let first: Vec<String> = d
            .checks
            .iter()
            .filter(|c| c.status == Status::Problem)
            .map(|c| format!("{}: {}", c.group, c.detail))
            .collect();
        format!(
            "{problems} problem(s) keep supermin run from working: {}; {warnings} warning(s)",
            first.join("; ")
        )
    };
    if d.json {
        let v = json!({
            "ok": problems == 0,
            "summary": text,
            "checks": d.checks.iter().map(|c| json!({
                "group": c.group,
                "status": c.status.as_str(),
                "detail": c.detail,
                "fix": c.fix,
                "faq": c.faq,
            })).collect::<Vec<_>>(),
            "phases": d.phases.iter().map(|(name, took, what)| json!({
                "phase": name,
                "seconds": took.as_secs_f64(),
                "detail": what,
            })).collect::<Vec<_>>(),
            "console_tail": d.console_tail,
        });
        println!("{v}");
    } else {
        println!("summary: {text}");
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_symptoms_find_their_faq_entry() {
        let (entry, fix) = faq_for("[ 1.2] execl: /init: Permission denied").unwrap();
        assert!(entry.contains("execl: /init"));
        assert!(fix.contains("supermin cache clean"));
        let (_, fix) = faq_for("qemu: Could not allocate dynamic translator buffer").unwrap();
        assert!(fix.contains("virt_use_execmem"));
        assert!(faq_for("all is well").is_none());
    }
}
