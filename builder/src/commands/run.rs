//! `supermin run`: make sure an appliance exists (the embedded default one, built into the
//! runtime cache on demand and reused while its fingerprint holds), then boot it and run
//! the command through the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Env;
use anyhow::Context;
use supermin::appliance::{self, BuildPlan, Source};
use supermin::cli::{Format, RunArgs};
use supermin_cache::Durability;
use supermin_launcher::{
    self as launcher, Accel, CopyIn, CopyOut, Interactive, LaunchEnv, LaunchError, Notice,
    RunOptions,
};

/// The default appliance's directory inside the runtime cache (beside libguestfs's own
/// `appliance.d`, which it must not clobber), and its builders' lock.
const DEFAULT_DIR: &str = supermin_cache::DEFAULT_ENTRY.name;
const DEFAULT_LOCK: &str = supermin_cache::DEFAULT_ENTRY.lock;
/// Saved machines (booted appliances, restored instead of booting), beside it.
pub(super) const SAVED_DIR: &str = "supermin-rs-saved";

pub fn run(args: &RunArgs, env: &Env) -> anyhow::Result<ExitCode> {
    let accel = Accel::resolve(args.accel.as_deref(), env.var("SUPERMIN_ACCEL").as_deref())?;
    let mut disks = Vec::new();
    for spec in &args.add {
        let disk = launcher::parse_disk_spec(spec).map_err(|e| anyhow::anyhow!("--add {e}"))?;
        // Checked here, where the message can say what to do; qemu would only fail the boot.
        std::fs::OpenOptions::new()
            .read(true)
            .write(!disk.readonly)
            .open(&disk.path)
            .with_context(|| {
                let path = disk.path.display();
                if disk.readonly {
                    format!("cannot read disk {path}")
                } else {
                    format!(
                        "cannot open disk {path} for writing (add it as {spec}:ro to attach it read-only)"
                    )
                }
            })?;
        disks.push(disk);
    }
    let timeout = match args.timeout {
        Some(t) if t.is_finite() && t > 0.0 => Some(std::time::Duration::from_secs_f64(t)),
        Some(t) => anyhow::bail!("--timeout {t} is not a positive number of seconds"),
        None => None,
    };
    let qemu_user = qemu_user(args.qemu_user.as_deref(), env)?;
    let mut shares = Vec::new();
    for spec in &args.share {
        shares.push(launcher::parse_share_spec(spec).map_err(|e| anyhow::anyhow!("--share {e}"))?);
    }
    let share_transport = args
        .share_transport
        .parse::<launcher::ShareTransport>()
        .map_err(|e| anyhow::anyhow!("--share-transport: {e}"))?;
    let mut cwd = None;
    if args.cwd_share {
        let here =
            std::env::current_dir().context("--cwd-share: cannot tell the current directory")?;
        // Not through the spec parser: a directory named `x:rw` is just that.
        let host = std::fs::canonicalize(&here)
            .with_context(|| format!("--cwd-share: {}", here.display()))?;
        shares.push(launcher::Share {
            guest: host.clone(),
            host,
            writable: false,
        });
        cwd = Some(here.into_os_string());
    }
    if let Some(user) = &qemu_user {
        for share in &shares {
            if let Some(why) = launcher::unreachable_by_others(&share.host, share.writable) {
                anyhow::bail!(
                    "qemu runs as {user}, which cannot {} {} ({why}): make it reachable, or pass --qemu-user root to share it as root",
                    if share.writable { "write" } else { "read" },
                    share.host.display()
                );
            }
        }
    }
    let mut command_env = Vec::new();
    for kv in &args.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => command_env.push((k.into(), v.into())),
            _ => anyhow::bail!("--env {kv:?}: expected NAME=VALUE"),
        }
    }
    let mut copy_in = Vec::new();
    for spec in &args.copy_in {
        let (host, guest_dir) =
            launcher::parse_copy_spec(spec).map_err(|e| anyhow::anyhow!("--copy-in {e}"))?;
        // Checked before the boot, where the message costs nothing.
        std::fs::symlink_metadata(&host)
            .with_context(|| format!("--copy-in {spec}: cannot read {}", host.display()))?;
        copy_in.push(CopyIn { host, guest_dir });
    }
    let mut copy_out = Vec::new();
    for spec in &args.copy_out {
        let (guest, host_dir) =
            launcher::parse_copy_spec(spec).map_err(|e| anyhow::anyhow!("--copy-out {e}"))?;
        if !host_dir.is_dir() {
            anyhow::bail!(
                "--copy-out {spec}: {} is not a directory (create it first)",
                host_dir.display()
            );
        }
        copy_out.push(CopyOut { guest, host_dir });
    }
    let copy_out_limit = supermin_ext2::parse_size(&args.copy_out_limit)
        .map_err(|e| anyhow::anyhow!("--copy-out-limit {}: {e}", args.copy_out_limit))?;
    let interactive = if args.interactive {
        if !rustix::termios::isatty(std::io::stdin()) {
            anyhow::bail!(LaunchError::NotATerminal);
        }
        Some(Interactive {
            term: env.var("TERM").filter(|t| !t.is_empty()),
        })
    } else {
        None
    };
    let appliance = match &args.appliance {
        Some(dir) => dir.clone(),
        None => default_appliance(args.verbose, false, env)?,
    };
    let mut opts = RunOptions {
        env: LaunchEnv::from_vars(|name| env.var(name)),
        recheck_kvm: args.recheck_kvm,
        qemu_user,
        on_notice: print_notice,
        saved_machines: match env.runtime_cache_dir() {
            Ok(dir) => Some(dir.join(SAVED_DIR)),
            Err(_) => None,
        },
        cold: args.cold,
        shares,
        share_transport,
        appliance,
        accel,
        memory_mib: args.memory,
        cpus: args.cpus,
        disks,
        timeout,
        verbose: args.verbose > 0,
        argv: args.argv.clone(),
        stdin: true,
        command_env,
        // --cwd wins over --cwd-share's directory.
        cwd: args.cwd.clone().or(cwd),
        interactive,
        copy_in,
        copy_out,
        copy_out_limit,
    };
    // The command's own status, or the error that kept it from finishing.
    let mut result = launcher::run(&opts);
    if args.appliance.is_none() {
        if let Err(
            e @ (LaunchError::ApplianceIncomplete { .. } | LaunchError::RootNotExt2 { .. }),
        ) = &result
        {
            // The cached default appliance is damaged in a way its stamp cannot see (say,
            // a truncated root): nothing has run yet, so rebuild it once and try again.
            eprintln!("supermin: warning: {e}; rebuilding the default appliance");
            opts.appliance = default_appliance(args.verbose, true, env)?;
            result = launcher::run(&opts);
        }
    }
    // What kept the command from finishing is an error like any other: `main` reports it
    // and ends with its exit code (`super::exit_code`).
    let status = result?;
    Ok(ExitCode::from(status.clamp(0, 255) as u8))
}

fn print_notice(notice: &Notice) {
    // Notices can quote what a disk image holds: print them as one tame line.
    eprintln!("supermin: {notice}");
}

/// The user qemu switches to: only when we are root (qemu can drop privileges, not gain
/// them), `nobody` unless `--qemu-user` or `$SUPERMIN_QEMU_USER` says otherwise, and none
/// for `root`.
fn qemu_user(flag: Option<&str>, env: &Env) -> anyhow::Result<Option<String>> {
    let env = env
        .var("SUPERMIN_QEMU_USER")
        .and_then(|v| v.into_string().ok())
        .filter(|s| !s.is_empty());
    let named = flag.map(str::to_string).or(env);
    if !rustix::process::geteuid().is_root() {
        if let Some(user) = named.filter(|u| u != "root") {
            anyhow::bail!(
                "--qemu-user/SUPERMIN_QEMU_USER {user:?}: qemu can switch users only when supermin runs as root; it already runs as you"
            );
        }
        return Ok(None);
    }
    let user = named.unwrap_or_else(|| "nobody".to_string());
    let valid = !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-:".contains(&b))
        && !user.starts_with('-');
    if !valid {
        anyhow::bail!("--qemu-user {user:?} is not a user name (or UID:GID)");
    }
    Ok((user != "root").then_some(user))
}

/// Builds (or finds fresh, unless `force`) the embedded default appliance in the runtime
/// cache.
pub(super) fn default_appliance(verbose: u8, force: bool, env: &Env) -> anyhow::Result<PathBuf> {
    let cache = env.runtime_cache_dir()?;
    let plan = default_plan(&cache, verbose, force, env)?;
    let out = plan.output.clone();
    appliance::build(&plan, &super::print_event)
        .with_context(|| format!("cannot build the default appliance in {}", out.display()))?;
    Ok(out)
}

/// The build of the default appliance in the per-user cache directory `cache` (also what
/// `supermin cache` compares a cached one against).
pub(super) fn default_plan(
    cache: &std::path::Path,
    verbose: u8,
    force: bool,
    env: &Env,
) -> anyhow::Result<BuildPlan> {
    let out = cache.join(DEFAULT_DIR);
    Ok(BuildPlan {
        format: Format::Ext2,
        source: Source::Default,
        output: out.clone(),
        size: None,
        host_cpu: None,
        copy_kernel: false,
        fixed: false,
        include_packagelist: false,
        if_newer: !force,
        lock: Some(cache.join(DEFAULT_LOCK)),
        vmlinux: true,
        vmlinux_cache: env.vmlinux_cache(),
        durability: Durability::Unsynced,
        verbose: verbose.saturating_sub(1),
        time: env.now_or_epoch()?,
        clamp_times: env.source_date_epoch()?,
        options: appliance::BuildOptions::default(),
        env: env.build(),
    })
}
