//! `supermin cache list|gc|clean`: what this user has cached (our default appliance and
//! libguestfs's `appliance.d`), whether each entry is still fresh for this host, and removing
//! stale or all entries without ever taking one from under a builder.
//!
//! Freshness is the builder's own answer: the entry's stamp against the fingerprint a build
//! would compute now (the same request `supermin run` and libguestfs make). The fingerprint
//! is one hash, so the reason shown for a change is what can be seen beside it: a `kernel`
//! link to a removed file, a package database or a `supermin` binary newer than the build.
//! An `appliance.d` built by supermin 5 has no stamp and is judged the way supermin 5
//! judges it, by times.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde_json::json;
use supermin::appliance::{BuildOptions, BuildPlan, Source};
use supermin::cli::{CacheAction, CacheArgs, Format};

use super::Env;
use supermin_cache::{self as cache, Durability, Entry, Freshness, Removal, StaleReason};
use supermin_kernel_probe as kprobe;

/// The package databases whose change means "packages were upgraded".
const PACKAGE_DBS: &[&str] = &[
    "/var/lib/dpkg/status",
    "/var/lib/rpm/rpmdb.sqlite",
    "/var/lib/rpm/Packages",
    "/var/lib/pacman/local",
];

/// An entry and the verdict on it.
pub(super) struct Judged {
    pub entry: Entry,
    pub fresh: bool,
    pub why: String,
}

pub fn cache(args: &CacheArgs, env: &Env) -> anyhow::Result<ExitCode> {
    match &args.action {
        CacheAction::List { json } => list(*json, env),
        CacheAction::Gc {
            older_than,
            dry_run,
        } => {
            let age = older_than
                .as_deref()
                .map(parse_age)
                .transpose()
                .context("invalid --older-than")?;
            remove_saved(
                |s| age.is_some_and(|a| ago_duration(s.last_used) >= a),
                *dry_run,
                env,
            )?;
            remove(
                |j| !j.fresh || age.is_some_and(|a| unused_for(&j.entry) >= a),
                *dry_run,
                env,
            )
        }
        CacheAction::Clean { dry_run } => {
            remove_saved(|_| true, *dry_run, env)?;
            remove(|_| true, *dry_run, env)
        }
    }
}

/// Saved machines (`supermin run`'s fast start) are not appliances: no lock, no
/// fingerprint to judge. `gc --older-than` removes those not restored for that long,
/// `clean` all of them; a run that finds one gone boots cold and saves a new one.
fn saved_in(dir: &Path) -> Vec<supermin_launcher::SavedInfo> {
    supermin_launcher::list_saved(&dir.join(super::run::SAVED_DIR))
}

/// Every entry of this user's cache directories, judged.
pub(super) fn judge_all(env: &Env) -> anyhow::Result<Vec<(PathBuf, &'static str, Vec<Judged>)>> {
    let kernel = kprobe::probe(&env.build().probe_env(None));
    let mut out = Vec::new();
    for (dir, origin) in env.user_cache_dirs() {
        let origin = origin_name(origin);
        let entries = cache::list_entries(&dir)?;
        let mut judged = Vec::new();
        for entry in entries {
            let (fresh, why) = judge(&entry, &dir, &kernel, env)?;
            judged.push(Judged { entry, fresh, why });
        }
        out.push((dir, origin, judged));
    }
    Ok(out)
}

fn origin_name(o: cache::BaseOrigin) -> &'static str {
    match o {
        cache::BaseOrigin::LibguestfsCachedir => "LIBGUESTFS_CACHEDIR",
        cache::BaseOrigin::Tmpdir => "TMPDIR",
        cache::BaseOrigin::Default => "/var/tmp",
    }
}

/// Whether `entry` would be reused as it is by its builder on this host now, and why not.
fn judge(
    entry: &Entry,
    user_dir: &Path,
    kernel: &Result<kprobe::Kernel, kprobe::ProbeError>,
    env: &Env,
) -> anyhow::Result<(bool, String)> {
    let kernel = match kernel {
        Ok(k) => k,
        Err(e) => return Ok((false, format!("no usable kernel on this host ({e})"))),
    };
    let plan = if entry.kind == cache::DEFAULT_ENTRY {
        super::run::default_plan(user_dir, 0, false, env)?
    } else {
        let Some(supermin_d) = super::SUPERMIN_D_PLACES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
        else {
            return Ok((
                false,
                "libguestfs's supermin.d is not installed any more".into(),
            ));
        };
        if entry.stamp.is_none() {
            return Ok(judge_by_times(entry, kernel));
        }
        libguestfs_plan(user_dir, supermin_d, env)?
    };
    let fp = plan.fingerprint(Some(kernel))?;
    Ok(
        match cache::is_fresh(&entry.dir, &fp, &cache::APPLIANCE_FILES)? {
            Freshness::Fresh => (true, "fresh".into()),
            Freshness::Stale(StaleReason::FingerprintChanged) => {
                (false, explain_change(entry, kernel))
            }
            Freshness::Stale(r) => (false, r.to_string()),
        },
    )
}

/// What libguestfs asks of `/usr/bin/supermin` (`lib/appliance.c`).
fn libguestfs_plan(user_dir: &Path, supermin_d: PathBuf, env: &Env) -> anyhow::Result<BuildPlan> {
    Ok(BuildPlan {
        format: Format::Ext2,
        // The limit decides whether a build succeeds, not what it writes: not in the fingerprint.
        source: Source::Inputs {
            paths: vec![supermin_d],
            max_input_size: supermin_hostfiles::DEFAULT_MAX_INPUT_SIZE,
        },
        output: user_dir.join(cache::LIBGUESTFS_ENTRY.name),
        size: None,
        host_cpu: Some(std::env::consts::ARCH.to_string()),
        copy_kernel: true,
        fixed: false,
        include_packagelist: false,
        if_newer: true,
        lock: Some(user_dir.join(cache::LIBGUESTFS_ENTRY.lock)),
        vmlinux: false,
        vmlinux_cache: None,
        durability: Durability::Unsynced,
        verbose: 0,
        time: env.now_or_epoch()?,
        clamp_times: env.source_date_epoch()?,
        // libguestfs passes none of our options.
        options: BuildOptions::default(),
        env: env.build(),
    })
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The visible causes of a fingerprint change.
fn explain_change(entry: &Entry, kernel: &kprobe::Kernel) -> String {
    let mut why = Vec::new();
    if let Ok(target) = std::fs::read_link(entry.dir.join("kernel")) {
        if !target.exists() {
            why.push(format!("its kernel {} was removed", target.display()));
        } else if target != kernel.path {
            why.push(format!(
                "this host now uses kernel {}",
                kernel.path.display()
            ));
        }
    }
    let built = entry.built;
    let newer = |p: &Path| matches!((mtime(p), built), (Some(m), Some(b)) if m > b);
    if PACKAGE_DBS.iter().any(|p| newer(Path::new(p))) {
        why.push("packages were installed, removed or upgraded since it was built".into());
    }
    let tool_changed = match &entry.stamp {
        Some(Ok(s)) => s.tool_version != env!("CARGO_PKG_VERSION"),
        _ => false,
    } || std::env::current_exe().is_ok_and(|e| newer(&e));
    if tool_changed {
        why.push("supermin changed since it was built".into());
    }
    if why.is_empty() {
        why.push("its inputs changed (supermin.d, SUPERMIN_* variables or options)".into());
    }
    format!("stale: {}", why.join("; "))
}

/// supermin 5 writes no stamp; its `--if-newer` compares times, and so does this.
fn judge_by_times(entry: &Entry, kernel: &kprobe::Kernel) -> (bool, String) {
    if let Ok(target) = std::fs::read_link(entry.dir.join("kernel")) {
        if !target.exists() {
            return (
                false,
                format!("stale: its kernel {} was removed", target.display()),
            );
        }
    }
    for f in cache::APPLIANCE_FILES {
        if std::fs::metadata(entry.dir.join(f)).is_err() {
            return (false, format!("stale: it lacks {f} (built by supermin 5)"));
        }
    }
    let built = entry.built;
    let newer = |p: &Path| matches!((mtime(p), built), (Some(m), Some(b)) if m > b);
    if PACKAGE_DBS.iter().any(|p| newer(Path::new(p))) {
        return (
            false,
            "stale: packages changed since supermin 5 built it".into(),
        );
    }
    if newer(&kernel.path) {
        return (
            false,
            "stale: the kernel changed since supermin 5 built it".into(),
        );
    }
    (true, "fresh (built by supermin 5: judged by times)".into())
}

fn unused_for(e: &Entry) -> Duration {
    e.last_used
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or(Duration::MAX)
}

/// `N[smhdw]`, plain `N` meaning days.
fn parse_age(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "d"),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?}: expected a number followed by s, m, h, d or w"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => anyhow::bail!("{s:?}: unknown unit {unit:?} (use s, m, h, d or w)"),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

pub(super) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ago(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86400 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

fn unix(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

fn list(as_json: bool, env: &Env) -> anyhow::Result<ExitCode> {
    let all = judge_all(env)?;
    if as_json {
        let dirs: Vec<_> = all
            .iter()
            .map(|(dir, origin, entries)| {
                json!({
                    "dir": dir.to_string_lossy(),
                    "from": origin,
                    "free_bytes": free_bytes(dir),
                    "entries": entries.iter().map(|j| json!({
                        "name": j.entry.kind.name,
                        "path": j.entry.dir.to_string_lossy(),
                        "built_by": j.entry.kind.builder,
                        "bytes_on_disk": j.entry.bytes,
                        "last_used": unix(j.entry.last_used),
                        "built": unix(j.entry.built),
                        "fresh": j.fresh,
                        "why": j.why,
                        "in_use": j.entry.locked,
                    })).collect::<Vec<_>>(),
                    "saved_machines": saved_in(dir).iter().map(|s| json!({
                        "path": s.dir.to_string_lossy(),
                        "bytes_on_disk": s.bytes,
                        "last_used": unix(s.last_used),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", json!({ "cache_dirs": dirs }));
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!(
            "nothing cached (no .guestfs-UID directory in the cache bases this environment names)"
        );
    }
    for (dir, origin, entries) in &all {
        let total: u64 = entries.iter().map(|j| j.entry.bytes).sum();
        println!(
            "{} (from {origin}): {} entr{}, {} on disk{}",
            dir.display(),
            entries.len(),
            if entries.len() == 1 { "y" } else { "ies" },
            human(total),
            free_bytes(dir)
                .map(|f| format!(", {} free", human(f)))
                .unwrap_or_default()
        );
        for j in entries {
            println!(
                "  {:22} {:>10}  last used {:12}  {}{}",
                j.entry.kind.name,
                human(j.entry.bytes),
                ago(j.entry.last_used),
                j.why,
                if j.entry.locked {
                    "  [in use: a builder holds its lock]"
                } else {
                    ""
                }
            );
        }
        for s in saved_in(dir) {
            println!(
                "  saved machine {:8} {:>10}  last used {:12}  (supermin run's fast start)",
                s.dir
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
                    .chars()
                    .take(8)
                    .collect::<String>(),
                human(s.bytes),
                ago(s.last_used),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ago_duration(t: Option<SystemTime>) -> Duration {
    t.and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or(Duration::MAX)
}

fn remove_saved(
    select: impl Fn(&supermin_launcher::SavedInfo) -> bool,
    dry_run: bool,
    env: &Env,
) -> anyhow::Result<()> {
    for (dir, _) in env.user_cache_dirs() {
        for s in saved_in(&dir).iter().filter(|s| select(s)) {
            let name = s.dir.display();
            if dry_run {
                println!("would remove saved machine {name} ({})", human(s.bytes));
            } else {
                supermin_launcher::remove_saved(&s.dir)
                    .with_context(|| format!("cannot remove saved machine {name}"))?;
                println!("removed saved machine {name} ({})", human(s.bytes));
            }
        }
    }
    Ok(())
}

pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

fn remove(select: impl Fn(&Judged) -> bool, dry_run: bool, env: &Env) -> anyhow::Result<ExitCode> {
    let mut freed = 0u64;
    let mut removed = 0usize;
    for (dir, _, entries) in judge_all(env)? {
        for j in entries.iter().filter(|j| select(j)) {
            let name = j.entry.dir.display();
            if dry_run {
                let note = if j.entry.locked { " (in use now)" } else { "" };
                println!(
                    "would remove {name} ({}, {}){note}",
                    human(j.entry.bytes),
                    j.why
                );
                freed += j.entry.bytes;
                removed += 1;
                continue;
            }
            match cache::remove_entry(&j.entry)? {
                Removal::Removed { bytes } => {
                    println!("removed {name} ({}, {})", human(bytes), j.why);
                    freed += bytes;
                    removed += 1;
                }
                Removal::InUse => {
                    println!(
                        "kept {name}: in use (a builder holds {})",
                        j.entry.lock.display()
                    )
                }
            }
        }
        if !dry_run {
            // Leftovers of killed builds beside each entry: removed unless a builder is alive.
            for kind in cache::ENTRY_KINDS {
                if let Ok(n) = cache::clean_debris(&dir.join(kind.name)) {
                    if n > 0 {
                        println!(
                            "removed {n} leftover(s) of interrupted builds of {}",
                            kind.name
                        );
                    }
                }
            }
        }
    }
    let verb = if dry_run { "would free" } else { "freed" };
    println!(
        "{verb} {} in {removed} entr{}",
        human(freed),
        if removed == 1 { "y" } else { "ies" }
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_units_and_default_to_days() {
        assert_eq!(parse_age("30").unwrap(), Duration::from_secs(30 * 86400));
        assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse_age("0s").unwrap(), Duration::ZERO);
        assert!(parse_age("3y").is_err());
        assert!(parse_age("h").is_err());
    }
}
