//! Choosing the kernel and its modules directory, the way supermin 5 does but
//! without its blind spots.
//!
//! Order of rules: `SUPERMIN_KERNEL` (with `SUPERMIN_KERNEL_VERSION`,
//! `SUPERMIN_MODULES`) first; then `/lib/modules/*/vmlinuz` (Fedora, Arch);
//! then `/boot/vmlinu?-*`, preferring names that carry the host CPU. Within a
//! rule the newest kernel wins by [`compare_versions`] of the version read
//! from the bzImage header (file names lie: `vmlinuz-3.10.0.old`).
//!
//! Every file looked at becomes a [`Candidate`] with a verdict and a reason,
//! so `supermin kernel` can explain the choice. Unlike supermin, a variable
//! that points at nothing or a chosen kernel that cannot be read is an error,
//! never a silent fallback to something else.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::bzimage::{read_head, version_from_header};
use crate::version::{compare_versions, version_from_file_name};
use crate::ProbeError;

/// Kernel files smaller than this are placeholders (containers ship empty
/// `/boot/vmlinuz-*`), not kernels.
pub const MIN_KERNEL_SIZE: u64 = 10 * 1024;

/// Everything the choice depends on, resolved once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeEnv {
    /// `SUPERMIN_KERNEL`.
    pub kernel: Option<PathBuf>,
    /// `SUPERMIN_KERNEL_VERSION`: overrides the version read from `kernel`.
    pub kernel_version: Option<String>,
    /// `SUPERMIN_MODULES`: the modules directory, whichever kernel is chosen.
    pub modules: Option<PathBuf>,
    /// `--host-cpu`, e.g. `x86_64`.
    pub host_cpu: String,
    /// Where `lib/modules` and `boot` are looked up; `/` except in tests.
    pub root: PathBuf,
}

impl ProbeEnv {
    /// The `SUPERMIN_*` variables, looked up by `var` (the binary's snapshot of
    /// its environment: this crate never reads the environment itself). An empty
    /// variable counts as unset (`SUPERMIN_KERNEL= cmd` is the shell's way to
    /// unset it for one command). The host CPU defaults to the one this program
    /// was built for.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>, host_cpu: Option<&str>) -> ProbeEnv {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        ProbeEnv {
            kernel: var("SUPERMIN_KERNEL").map(PathBuf::from),
            kernel_version: var("SUPERMIN_KERNEL_VERSION")
                .map(|v| v.to_string_lossy().into_owned()),
            modules: var("SUPERMIN_MODULES").map(PathBuf::from),
            host_cpu: host_cpu.unwrap_or(std::env::consts::ARCH).to_string(),
            root: PathBuf::from("/"),
        }
    }

    fn lib_modules(&self) -> PathBuf {
        self.root.join("lib/modules")
    }

    fn boot(&self) -> PathBuf {
        self.root.join("boot")
    }
}

/// Which rule found the chosen kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSource {
    /// `SUPERMIN_KERNEL`.
    Env,
    /// `/lib/modules/VERSION/vmlinuz`.
    LibModules,
    /// `/boot/vmlinu?-VERSION`.
    Boot,
}

impl KernelSource {
    /// The rule's name, for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelSource::Env => "SUPERMIN_KERNEL",
            KernelSource::LibModules => "lib/modules",
            KernelSource::Boot => "boot",
        }
    }
}

/// Where a candidate's version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    /// `SUPERMIN_KERNEL_VERSION`.
    Env,
    /// The bzImage setup header.
    Header,
    /// The `vmlinuz-VERSION` file name.
    FileName,
    /// The `/lib/modules/VERSION` directory name.
    Directory,
}

impl VersionSource {
    /// Where the version came from, for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionSource::Env => "SUPERMIN_KERNEL_VERSION",
            VersionSource::Header => "bzImage header",
            VersionSource::FileName => "file name",
            VersionSource::Directory => "modules directory name",
        }
    }
}

/// What became of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// This is the kernel.
    Chosen,
    /// Usable, but an earlier rule or a newer kernel won.
    Passed,
    /// Not usable; the reason says why.
    Skipped,
}

impl Verdict {
    /// The verdict, for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Chosen => "chosen",
            Verdict::Passed => "passed",
            Verdict::Skipped => "skipped",
        }
    }
}

/// One file considered as the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The kernel file.
    pub path: PathBuf,
    /// Its version, when it could be told.
    pub version: Option<String>,
    /// Where the version came from.
    pub version_source: Option<VersionSource>,
    /// Its modules directory, when there is one.
    pub modules_dir: Option<PathBuf>,
    /// What became of it.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
}

/// The chosen kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The kernel file (a bzImage).
    pub path: PathBuf,
    /// Its version.
    pub version: String,
    /// Where the version came from.
    pub version_source: VersionSource,
    /// Its modules directory.
    pub modules_dir: PathBuf,
    /// Which rule chose it.
    pub source: KernelSource,
    /// `/boot/config-VERSION` when it exists: tells built-in from absent
    /// modules when the modules directory has no `modules.builtin`.
    pub config: Option<PathBuf>,
    /// Every file considered, in the order the rules looked at them.
    pub candidates: Vec<Candidate>,
}

/// One file's identity for a cache fingerprint: if none of these changed,
/// the file's contents did not change either (as far as `make`-style tools
/// can tell, and `ctime` catches `touch -r` tricks).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// The file.
    pub path: PathBuf,
    /// Its device.
    pub dev: u64,
    /// Its inode.
    pub ino: u64,
    /// Its size.
    pub size: u64,
    /// Its modification time, in nanoseconds.
    pub mtime_ns: i128,
    /// Its change time, in nanoseconds.
    pub ctime_ns: i128,
}

impl FileIdentity {
    /// Stats `path` (following symlinks, so a `vmlinuz` link that moves to a
    /// new target changes the identity).
    pub fn of(path: &Path) -> Result<FileIdentity, ProbeError> {
        let m = fs::metadata(path).map_err(|source| ProbeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(FileIdentity {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// Index files whose identity stands for the modules directory: `depmod`
/// rewrites them whenever a module is added, removed or updated.
pub(crate) const MODULE_INDEX_FILES: [&str; 4] = [
    "modules.dep",
    "modules.softdep",
    "modules.builtin",
    "modules.alias",
];

impl Kernel {
    /// The kernel file, the modules directory and its index files, and the
    /// kernel config if one was found, each with (dev, ino, size, mtime,
    /// ctime): cheap to stat, and enough for a cache key to notice a new
    /// kernel or a re-run `depmod`. Optional index files that do not exist
    /// are left out.
    pub fn identity(&self) -> Result<Vec<FileIdentity>, ProbeError> {
        let mut ids = vec![
            FileIdentity::of(&self.path)?,
            FileIdentity::of(&self.modules_dir)?,
        ];
        for name in MODULE_INDEX_FILES {
            let p = self.modules_dir.join(name);
            match FileIdentity::of(&p) {
                Ok(id) => ids.push(id),
                Err(ProbeError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && name != "modules.dep" =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(config) = &self.config {
            ids.push(FileIdentity::of(config)?);
        }
        Ok(ids)
    }
}

/// Chooses the kernel and modules directory for `env`.
pub fn probe(env: &ProbeEnv) -> Result<Kernel, ProbeError> {
    if let Some(modules) = &env.modules {
        if !modules.is_dir() {
            return Err(ProbeError::EnvModulesMissing {
                path: modules.clone(),
            });
        }
    }
    if let Some(kernel) = &env.kernel {
        return probe_env_kernel(env, kernel);
    }
    if let Some(version) = &env.kernel_version {
        return Err(ProbeError::EnvVersionWithoutKernel {
            version: version.clone(),
        });
    }

    let mut lib = scan_lib_modules(env)?;
    let mut boot = scan_boot(env)?;
    let kernel = if let Some(best) = pick(&mut lib, None) {
        mark_passed(
            &mut boot,
            "a /lib/modules/*/vmlinuz kernel takes precedence over /boot",
        );
        finish(env, KernelSource::LibModules, best, lib, boot)?
    } else if let Some(best) = pick(&mut boot, Some(env.host_cpu.as_str())) {
        finish(env, KernelSource::Boot, best, lib, boot)?
    } else {
        return Err(ProbeError::NoKernel {
            host_cpu: env.host_cpu.clone(),
            lib_modules: env.lib_modules(),
            boot: env.boot(),
            considered: lib.len() + boot.len(),
        });
    };
    Ok(kernel)
}

fn probe_env_kernel(env: &ProbeEnv, kernel: &Path) -> Result<Kernel, ProbeError> {
    let meta = match fs::metadata(kernel) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ProbeError::EnvKernelMissing {
                path: kernel.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(ProbeError::KernelUnreadable {
                path: kernel.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_file() {
        return Err(ProbeError::EnvKernelNotFile {
            path: kernel.to_path_buf(),
        });
    }
    // Reading the header doubles as the readability check.
    let head = read_head(kernel, 0x200 + 0x10000 + 0x100).map_err(|source| {
        ProbeError::KernelUnreadable {
            path: kernel.to_path_buf(),
            source,
        }
    })?;
    let file_name = kernel.file_name().map(|n| n.to_string_lossy().into_owned());
    let (version, version_source) = if let Some(v) = &env.kernel_version {
        (v.clone(), VersionSource::Env)
    } else if let Some(v) = version_from_header(&head) {
        (v, VersionSource::Header)
    } else if let Some(v) = file_name.as_deref().and_then(version_from_file_name) {
        (v.to_string(), VersionSource::FileName)
    } else {
        return Err(ProbeError::KernelVersionUnknown {
            path: kernel.to_path_buf(),
        });
    };
    let modules_dir = env
        .modules
        .clone()
        .unwrap_or_else(|| env.lib_modules().join(&version));
    check_modules_dir(&modules_dir)?;
    let reason = match &env.modules {
        Some(_) => "SUPERMIN_KERNEL and SUPERMIN_MODULES are set".to_string(),
        None => "SUPERMIN_KERNEL is set".to_string(),
    };
    Ok(Kernel {
        path: kernel.to_path_buf(),
        version: version.clone(),
        version_source,
        modules_dir: modules_dir.clone(),
        source: KernelSource::Env,
        config: config_of(env, &version, &modules_dir),
        candidates: vec![Candidate {
            path: kernel.to_path_buf(),
            version: Some(version),
            version_source: Some(version_source),
            modules_dir: Some(modules_dir),
            verdict: Verdict::Chosen,
            reason,
        }],
    })
}

/// The modules directory must exist, be readable, and hold `modules.dep`.
fn check_modules_dir(dir: &Path) -> Result<(), ProbeError> {
    if let Err(source) = fs::read_dir(dir) {
        return Err(match source.kind() {
            io::ErrorKind::NotFound => ProbeError::ModulesDepMissing {
                dir: dir.to_path_buf(),
            },
            _ => ProbeError::ModulesUnreadable {
                path: dir.to_path_buf(),
                source,
            },
        });
    }
    let dep = dir.join("modules.dep");
    match fs::File::open(&dep) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ProbeError::ModulesDepMissing {
            dir: dir.to_path_buf(),
        }),
        Err(source) => Err(ProbeError::ModulesUnreadable { path: dep, source }),
    }
}

/// The kernel config: Debian and Ubuntu keep it in `/boot`, Fedora and Arch
/// beside the modules.
fn config_of(env: &ProbeEnv, version: &str, modules_dir: &Path) -> Option<PathBuf> {
    [
        env.boot().join(format!("config-{version}")),
        modules_dir.join("config"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn has_modules_dep(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join("modules.dep")).is_ok_and(|m| m.is_file())
}

/// Why a kernel name is never usable in the appliance, if it is not.
fn excluded_by_name(name: &str, host_cpu: &str) -> Option<&'static str> {
    if name.contains("xen") {
        Some("Xen domU kernel (cannot boot under qemu as a plain guest)")
    } else if name.contains("zfcpdump") {
        Some("s390 zfcpdump kernel (dump-only)")
    } else if name.contains("+debug") {
        Some("debug kernel build")
    } else if host_cpu.starts_with("arm") && name.contains("tegra") {
        Some("Tegra board kernel")
    } else {
        None
    }
}

/// Names by which kernels of each CPU family are tagged in file names.
/// The first group containing the host CPU is the host's own.
const ARCH_GROUPS: &[&[&str]] = &[
    &["x86_64", "amd64"],
    &["i386", "i486", "i586", "i686", "486", "586", "686"],
    &["aarch64", "arm64"],
    &["armv7l", "armv7hl", "armmp", "armhf", "armv7"],
    &["ppc64le", "ppc64el", "powerpc64le"],
    &["ppc64", "powerpc64", "ppc", "powerpc"],
    &["s390x", "s390"],
    &["riscv64"],
    &["loongarch64", "loong64"],
    &["mips64el", "mips64", "mips", "mipsel", "malta"],
    &["sparc64", "sparc"],
    &["parisc", "parisc64", "hppa", "hppa64"],
];

fn host_arch_group(host_cpu: &str) -> Option<&'static [&'static str]> {
    let cpu = if host_cpu.len() == 4 && host_cpu.starts_with('i') && host_cpu.ends_with("86") {
        "i686"
    } else if host_cpu.starts_with("armv7") {
        "armv7l"
    } else {
        host_cpu
    };
    ARCH_GROUPS.iter().copied().find(|g| g.contains(&cpu))
}

#[derive(Debug, PartialEq, Eq)]
enum ArchMatch {
    Host,
    Unknown,
    Foreign(&'static str),
}

/// Looks for CPU tags in the distro part of a version (after the first `-`,
/// so a release number like `5.10.686` is never taken for a CPU).
fn arch_match(version: &str, host_cpu: &str) -> ArchMatch {
    let Some((_, distro)) = version.split_once('-') else {
        // Fedora style `6.5.6-300.fc39.x86_64` always has a dash; a bare
        // `6.1.0` says nothing.
        return ArchMatch::Unknown;
    };
    let host = host_arch_group(host_cpu).unwrap_or(&[]);
    let tokens: Vec<&str> = distro.split(['-', '.', '+']).collect();
    if tokens.iter().any(|t| host.contains(t) || *t == host_cpu) {
        return ArchMatch::Host;
    }
    for t in &tokens {
        for g in ARCH_GROUPS {
            if let Some(tag) = g.iter().find(|a| *a == t) {
                return ArchMatch::Foreign(tag);
            }
        }
    }
    ArchMatch::Unknown
}

/// A usable candidate plus what orders it against the others.
struct Scored {
    candidate: Candidate,
    /// Higher is preferred before versions are compared: a /boot kernel whose
    /// name carries the host CPU beats one whose name carries no CPU.
    tier: u8,
}

fn sorted_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, ProbeError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ProbeError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| ProbeError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    out.sort();
    Ok(out)
}

fn skipped(
    path: PathBuf,
    version: Option<String>,
    vs: Option<VersionSource>,
    reason: String,
) -> Scored {
    Scored {
        candidate: Candidate {
            path,
            version,
            version_source: vs,
            modules_dir: None,
            verdict: Verdict::Skipped,
            reason,
        },
        tier: 0,
    }
}

fn size_of(path: &Path) -> Option<u64> {
    fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

fn scan_lib_modules(env: &ProbeEnv) -> Result<Vec<Scored>, ProbeError> {
    let mut out = Vec::new();
    for (name, dir) in sorted_dir(&env.lib_modules())? {
        let path = dir.join("vmlinuz");
        if fs::symlink_metadata(&path).is_err() {
            continue;
        }
        let version = Some(name.clone());
        let vs = Some(VersionSource::Directory);
        if let Some(why) = excluded_by_name(&name, &env.host_cpu) {
            out.push(skipped(path, version, vs, why.to_string()));
            continue;
        }
        match size_of(&path) {
            None => {
                out.push(skipped(path, version, vs, "not a regular file".into()));
                continue;
            }
            Some(n) if n < MIN_KERNEL_SIZE => {
                out.push(skipped(
                    path,
                    version,
                    vs,
                    format!("only {n} bytes: a placeholder, not a kernel"),
                ));
                continue;
            }
            Some(_) => {}
        }
        if let ArchMatch::Foreign(tag) = arch_match(&name, &env.host_cpu) {
            out.push(skipped(
                path,
                version,
                vs,
                format!("built for {tag}, not {}", env.host_cpu),
            ));
            continue;
        }
        let modules_dir = env.modules.clone().unwrap_or_else(|| dir.clone());
        if !has_modules_dep(&modules_dir) {
            out.push(skipped(
                path,
                version,
                vs,
                format!("no modules.dep in {}", modules_dir.display()),
            ));
            continue;
        }
        out.push(Scored {
            candidate: Candidate {
                path,
                version,
                version_source: vs,
                modules_dir: Some(modules_dir),
                verdict: Verdict::Passed,
                reason: String::new(),
            },
            tier: 1,
        });
    }
    Ok(out)
}

fn scan_boot(env: &ProbeEnv) -> Result<Vec<Scored>, ProbeError> {
    let mut out = Vec::new();
    for (name, path) in sorted_dir(&env.boot())? {
        let Some(name_version) = version_from_file_name(&name) else {
            continue;
        };
        if let Some(why) = excluded_by_name(&name, &env.host_cpu) {
            out.push(skipped(
                path,
                Some(name_version.to_string()),
                Some(VersionSource::FileName),
                why.into(),
            ));
            continue;
        }
        match size_of(&path) {
            None => {
                out.push(skipped(path, None, None, "not a regular file".into()));
                continue;
            }
            Some(n) if n < MIN_KERNEL_SIZE => {
                out.push(skipped(
                    path,
                    Some(name_version.to_string()),
                    Some(VersionSource::FileName),
                    format!("only {n} bytes: a placeholder, not a kernel"),
                ));
                continue;
            }
            Some(_) => {}
        }
        // An unreadable file (Ubuntu's mode 0600) still gets a version from its
        // name; if it wins, `finish` reports that it cannot be read.
        let header_version = read_head(&path, 0x200 + 0x10000 + 0x100)
            .ok()
            .and_then(|head| version_from_header(&head));
        let lib = env.lib_modules();
        let mut tried = Vec::new();
        let mut found = None;
        for (v, vs) in [
            (header_version.as_deref(), VersionSource::Header),
            (Some(name_version), VersionSource::FileName),
        ] {
            let Some(v) = v else { continue };
            let dir = env.modules.clone().unwrap_or_else(|| lib.join(v));
            if has_modules_dep(&dir) {
                found = Some((v.to_string(), vs, dir));
                break;
            }
            tried.push(dir.display().to_string());
        }
        let Some((version, vs, modules_dir)) = found else {
            tried.dedup();
            out.push(skipped(
                path,
                Some(header_version.unwrap_or_else(|| name_version.to_string())),
                None,
                format!("no modules.dep in {}", tried.join(" or ")),
            ));
            continue;
        };
        let tier = match arch_match(&version, &env.host_cpu) {
            ArchMatch::Foreign(tag) => {
                out.push(skipped(
                    path,
                    Some(version),
                    Some(vs),
                    format!("built for {tag}, not {}", env.host_cpu),
                ));
                continue;
            }
            ArchMatch::Host => 2,
            ArchMatch::Unknown => 1,
        };
        out.push(Scored {
            candidate: Candidate {
                path,
                version: Some(version),
                version_source: Some(vs),
                modules_dir: Some(modules_dir),
                verdict: Verdict::Passed,
                reason: String::new(),
            },
            tier,
        });
    }
    Ok(out)
}

fn rank(a: &Scored, b: &Scored) -> Ordering {
    a.tier
        .cmp(&b.tier)
        .then_with(|| {
            compare_versions(
                a.candidate.version.as_deref().unwrap_or(""),
                b.candidate.version.as_deref().unwrap_or(""),
            )
        })
        // Two files with one version: prefer the lexically first path, stably.
        .then_with(|| b.candidate.path.cmp(&a.candidate.path))
}

/// Marks the best usable candidate chosen and explains the others; returns
/// its index.
fn pick(cands: &mut [Scored], host_cpu: Option<&str>) -> Option<usize> {
    let best = cands
        .iter()
        .enumerate()
        .filter(|(_, s)| s.candidate.verdict == Verdict::Passed)
        .max_by(|(_, a), (_, b)| rank(a, b))
        .map(|(i, _)| i)?;
    let best_version = cands[best].candidate.version.clone().unwrap_or_default();
    let best_tier = cands[best].tier;
    for (i, s) in cands.iter_mut().enumerate() {
        if s.candidate.verdict != Verdict::Passed {
            continue;
        }
        let cpu_note = match (host_cpu, s.tier) {
            (Some(cpu), 2) => format!(", name matches host CPU {cpu}"),
            (Some(_), _) => ", name carries no CPU".to_string(),
            (None, _) => String::new(),
        };
        if i == best {
            s.candidate.verdict = Verdict::Chosen;
            s.candidate.reason = format!("newest usable kernel{cpu_note}");
        } else if s.tier < best_tier {
            s.candidate.reason = "name carries no CPU; a kernel named for the host CPU wins".into();
        } else {
            s.candidate.reason = format!("older than {best_version}");
        }
    }
    Some(best)
}

fn mark_passed(cands: &mut [Scored], reason: &str) {
    for s in cands {
        if s.candidate.verdict == Verdict::Passed {
            s.candidate.reason = reason.to_string();
        }
    }
}

fn finish(
    env: &ProbeEnv,
    source: KernelSource,
    best: usize,
    lib: Vec<Scored>,
    boot: Vec<Scored>,
) -> Result<Kernel, ProbeError> {
    let chosen = match source {
        KernelSource::LibModules => &lib[best].candidate,
        _ => &boot[best].candidate,
    }
    .clone();
    let candidates: Vec<Candidate> = lib.into_iter().chain(boot).map(|s| s.candidate).collect();
    if let Err(source) = fs::File::open(&chosen.path) {
        return Err(ProbeError::KernelUnreadable {
            path: chosen.path,
            source,
        });
    }
    let modules_dir = chosen
        .modules_dir
        .clone()
        .unwrap_or_else(|| env.lib_modules());
    check_modules_dir(&modules_dir)?;
    let version = chosen.version.unwrap_or_default();
    Ok(Kernel {
        config: config_of(env, &version, &modules_dir),
        path: chosen.path,
        version,
        version_source: chosen.version_source.unwrap_or(VersionSource::FileName),
        modules_dir,
        source,
        candidates,
    })
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::bzimage::testutil::fake_bzimage;

    /// A fake root with `/boot` and `/lib/modules`.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            Tree {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn root(&self) -> &Path {
            self.dir.path()
        }
        fn env(&self) -> ProbeEnv {
            env_at(self.root())
        }
        /// A kernel file whose header says `header_version`, padded past the
        /// placeholder size limit.
        fn kernel(&self, rel: &str, header_version: Option<&str>) -> PathBuf {
            let p = self.root().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            let mut img = fake_bzimage(header_version, 30, b"payload");
            img.resize(MIN_KERNEL_SIZE as usize + 100, 0);
            fs::write(&p, img).unwrap();
            p
        }
        fn modules(&self, version: &str) -> PathBuf {
            let d = self.root().join("lib/modules").join(version);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("modules.dep"), "kernel/fs/ext4/ext4.ko:\n").unwrap();
            d
        }
        fn boot_kernel(&self, version: &str) -> PathBuf {
            self.modules(version);
            self.kernel(&format!("boot/vmlinuz-{version}"), Some(version))
        }
    }

    /// No variables set, an x86_64 host, and `root` as `/`.
    fn env_at(root: &Path) -> ProbeEnv {
        ProbeEnv {
            kernel: None,
            kernel_version: None,
            modules: None,
            host_cpu: "x86_64".into(),
            root: root.to_path_buf(),
        }
    }

    fn candidate<'a>(k: &'a Kernel, path: &Path) -> &'a Candidate {
        k.candidates
            .iter()
            .find(|c| c.path == path)
            .unwrap_or_else(|| {
                panic!(
                    "{} not among candidates: {:#?}",
                    path.display(),
                    k.candidates
                )
            })
    }

    #[test]
    fn the_newest_boot_kernel_wins_by_version_not_by_file_name() {
        let t = Tree::new();
        let old = t.boot_kernel("6.1.0-9-amd64");
        let new = t.boot_kernel("6.1.0-56-amd64");
        let k = probe(&t.env()).unwrap();
        assert_eq!(k.path, new);
        assert_eq!(k.version, "6.1.0-56-amd64");
        assert_eq!(k.version_source, VersionSource::Header);
        assert_eq!(k.source, KernelSource::Boot);
        assert_eq!(k.modules_dir, t.root().join("lib/modules/6.1.0-56-amd64"));
        assert_eq!(candidate(&k, &old).verdict, Verdict::Passed);
        assert!(candidate(&k, &old)
            .reason
            .contains("older than 6.1.0-56-amd64"));
        assert_eq!(candidate(&k, &new).verdict, Verdict::Chosen);
    }

    #[test]
    fn a_renamed_old_kernel_is_ranked_by_its_header_version() {
        // supermin 5 ranked vmlinuz-3.10.0.old by its name and could pick it.
        let t = Tree::new();
        let real = t.boot_kernel("6.1.0-56-amd64");
        t.modules("6.1.0-9-amd64");
        let renamed = t.kernel("boot/vmlinuz-9.0.old", Some("6.1.0-9-amd64"));
        let k = probe(&t.env()).unwrap();
        assert_eq!(k.path, real);
        let c = candidate(&k, &renamed);
        assert_eq!(c.version.as_deref(), Some("6.1.0-9-amd64"));
        assert_eq!(c.version_source, Some(VersionSource::Header));
        assert_eq!(c.verdict, Verdict::Passed);
    }

    #[test]
    fn the_file_name_gives_the_version_when_the_header_has_none() {
        let t = Tree::new();
        t.modules("5.10.0-1-amd64");
        let p = t.kernel("boot/vmlinuz-5.10.0-1-amd64", None);
        let k = probe(&t.env()).unwrap();
        assert_eq!(k.path, p);
        assert_eq!(k.version, "5.10.0-1-amd64");
        assert_eq!(k.version_source, VersionSource::FileName);
    }

    #[test]
    fn unusable_kernels_are_skipped_with_a_reason() {
        let t = Tree::new();
        let good = t.boot_kernel("6.1.0-1-amd64");
        let xen = t.boot_kernel("6.9.0-1-xen-amd64");
        let dump = t.boot_kernel("6.9.0-1-zfcpdump");
        let debug = t.boot_kernel("6.9.0-1.fc40.x86_64+debug");
        let nomods = t.kernel("boot/vmlinuz-6.9.0-2-amd64", Some("6.9.0-2-amd64"));
        t.modules("6.9.0-3-amd64");
        let tiny = t.root().join("boot/vmlinuz-6.9.0-3-amd64");
        fs::write(&tiny, b"").unwrap();
        let foreign = t.boot_kernel("6.9.0-4-arm64");

        let k = probe(&t.env()).unwrap();
        assert_eq!(k.path, good);
        for (path, needle) in [
            (&xen, "Xen"),
            (&dump, "zfcpdump"),
            (&debug, "debug"),
            (&nomods, "no modules.dep"),
            (&tiny, "placeholder"),
            (&foreign, "built for arm64"),
        ] {
            let c = candidate(&k, path);
            assert_eq!(c.verdict, Verdict::Skipped, "{}", path.display());
            assert!(
                c.reason.contains(needle),
                "{}: {}",
                path.display(),
                c.reason
            );
        }
    }

    #[test]
    fn a_kernel_named_for_the_host_cpu_beats_a_newer_unnamed_one() {
        let t = Tree::new();
        let named = t.boot_kernel("6.1.0-1-amd64");
        let generic = t.boot_kernel("6.8.0-45-generic");
        let k = probe(&t.env()).unwrap();
        assert_eq!(k.path, named);
        assert!(candidate(&k, &named).reason.contains("host CPU x86_64"));
        assert!(candidate(&k, &generic).reason.contains("no CPU"));
    }

    #[test]
    fn an_unnamed_kernel_is_used_when_none_names_the_host_cpu() {
        let t = Tree::new();
        let generic = t.boot_kernel("6.8.0-45-generic");
        let k = probe(&t.env()).unwrap();
        assert_eq!(k.path, generic);
    }

    #[test]
    fn fedora_names_with_a_dotted_arch_match_the_host() {
        assert_eq!(
            arch_match("6.5.6-300.fc39.x86_64", "x86_64"),
            ArchMatch::Host
        );
        assert_eq!(arch_match("6.1.0-56-amd64", "x86_64"), ArchMatch::Host);
        assert_eq!(arch_match("6.1.0-56-686-pae", "i686"), ArchMatch::Host);
        assert_eq!(
            arch_match("6.1.0-56-686-pae", "x86_64"),
            ArchMatch::Foreign("686")
        );
        assert_eq!(
            arch_match("6.5.6-300.fc39.aarch64", "x86_64"),
            ArchMatch::Foreign("aarch64")
        );
        assert_eq!(arch_match("6.1.0-56-arm64", "aarch64"), ArchMatch::Host);
        assert_eq!(arch_match("6.8.0-45-generic", "x86_64"), ArchMatch::Unknown);
        assert_eq!(arch_match("5.10.686", "x86_64"), ArchMatch::Unknown);
    }

    #[test]
    fn lib_modules_vmlinuz_takes_precedence_over_boot() {
        let t = Tree::new();
        let boot = t.boot_kernel("6.9.0-1-amd64");
        t.modules("6.5.6-300.fc39.x86_64");
        let lib = t.kernel(
            "lib/modules/6.5.6-300.fc39.x86_64/vmlinuz",
            Some("6.5.6-300.fc39.x86_64"),
        );
        let k = probe(&t.env()).unwrap();
        assert_eq!(k.path, lib);
        assert_eq!(k.source, KernelSource::LibModules);
        assert_eq!(k.version_source, VersionSource::Directory);
        assert_eq!(
            k.modules_dir,
            t.root().join("lib/modules/6.5.6-300.fc39.x86_64")
        );
        assert!(candidate(&k, &boot).reason.contains("takes precedence"));
        assert_eq!(k.config, None);
        let config = k.modules_dir.join("config");
        fs::write(&config, "CONFIG_EXT4_FS=y\n").unwrap();
        let k = probe(&t.env()).unwrap();
        assert_eq!(
            k.config.as_ref(),
            Some(&config),
            "Fedora keeps config beside the modules"
        );
        assert!(k.identity().unwrap().iter().any(|i| i.path == config));
    }

    #[test]
    fn lib_modules_kernels_are_ordered_by_version() {
        let t = Tree::new();
        for v in ["6.10.0-1.fc41.x86_64", "6.9.0-1.fc41.x86_64"] {
            t.modules(v);
            t.kernel(&format!("lib/modules/{v}/vmlinuz"), Some(v));
        }
        let k = probe(&t.env()).unwrap();
        assert_eq!(k.version, "6.10.0-1.fc41.x86_64");
    }

    #[test]
    fn no_kernel_at_all_is_an_error_that_counts_the_candidates() {
        let t = Tree::new();
        t.kernel("boot/vmlinuz-6.1.0-1-amd64", Some("6.1.0-1-amd64"));
        match probe(&t.env()) {
            Err(e @ ProbeError::NoKernel { considered: 1, .. }) => assert!(e.hint().is_some()),
            other => panic!("expected NoKernel, got {other:?}"),
        }
    }

    #[test]
    fn supermin_kernel_takes_the_version_from_its_header() {
        let t = Tree::new();
        t.boot_kernel("6.9.0-1-amd64");
        t.modules("6.1.0-56-amd64");
        let custom = t.kernel("custom/bzImage", Some("6.1.0-56-amd64"));
        let env = ProbeEnv {
            kernel: Some(custom.clone()),
            ..t.env()
        };
        let k = probe(&env).unwrap();
        assert_eq!(k.path, custom);
        assert_eq!(k.version, "6.1.0-56-amd64");
        assert_eq!(k.source, KernelSource::Env);
        assert_eq!(k.modules_dir, t.root().join("lib/modules/6.1.0-56-amd64"));
        assert_eq!(k.candidates.len(), 1);
    }

    #[test]
    fn supermin_kernel_version_overrides_the_header() {
        let t = Tree::new();
        t.modules("custom-1");
        let custom = t.kernel("custom/bzImage", Some("6.1.0-56-amd64"));
        let env = ProbeEnv {
            kernel: Some(custom),
            kernel_version: Some("custom-1".into()),
            ..t.env()
        };
        let k = probe(&env).unwrap();
        assert_eq!(k.version, "custom-1");
        assert_eq!(k.version_source, VersionSource::Env);
        assert_eq!(k.modules_dir, t.root().join("lib/modules/custom-1"));
    }

    #[test]
    fn supermin_modules_overrides_the_modules_directory() {
        let t = Tree::new();
        let custom = t.kernel("custom/bzImage", Some("6.1.0-56-amd64"));
        let mods = t.root().join("custom/modules");
        fs::create_dir_all(&mods).unwrap();
        fs::write(mods.join("modules.dep"), "").unwrap();
        let env = ProbeEnv {
            kernel: Some(custom),
            modules: Some(mods.clone()),
            ..t.env()
        };
        assert_eq!(probe(&env).unwrap().modules_dir, mods);
    }

    #[test]
    fn supermin_modules_applies_to_a_boot_kernel_too() {
        let t = Tree::new();
        let k = t.kernel("boot/vmlinuz-6.1.0-56-amd64", Some("6.1.0-56-amd64"));
        let mods = t.root().join("custom/modules");
        fs::create_dir_all(&mods).unwrap();
        fs::write(mods.join("modules.dep"), "").unwrap();
        let env = ProbeEnv {
            modules: Some(mods.clone()),
            ..t.env()
        };
        let got = probe(&env).unwrap();
        assert_eq!(got.path, k);
        assert_eq!(got.modules_dir, mods);
    }

    #[test]
    fn env_variables_pointing_at_nothing_are_errors() {
        let t = Tree::new();
        t.boot_kernel("6.1.0-56-amd64");
        let missing = t.root().join("nope");
        let env = ProbeEnv {
            kernel: Some(missing.clone()),
            ..t.env()
        };
        assert!(
            matches!(probe(&env), Err(ProbeError::EnvKernelMissing { path }) if path == missing)
        );

        let env = ProbeEnv {
            modules: Some(missing.clone()),
            ..t.env()
        };
        assert!(matches!(
            probe(&env),
            Err(ProbeError::EnvModulesMissing { .. })
        ));

        let env = ProbeEnv {
            kernel: Some(t.root().join("boot")),
            ..t.env()
        };
        assert!(matches!(
            probe(&env),
            Err(ProbeError::EnvKernelNotFile { .. })
        ));

        let env = ProbeEnv {
            kernel_version: Some("6.1.0-56-amd64".into()),
            ..t.env()
        };
        assert!(matches!(
            probe(&env),
            Err(ProbeError::EnvVersionWithoutKernel { .. })
        ));
    }

    #[test]
    fn supermin_kernel_without_modules_is_an_error_with_a_hint() {
        let t = Tree::new();
        let custom = t.kernel("custom/bzImage", Some("6.1.0-56-amd64"));
        let env = ProbeEnv {
            kernel: Some(custom),
            ..t.env()
        };
        let err = probe(&env).unwrap_err();
        assert!(
            matches!(err, ProbeError::ModulesDepMissing { .. }),
            "{err:?}"
        );
        assert!(err.hint().unwrap().contains("depmod"));
    }

    #[test]
    fn supermin_kernel_without_any_version_is_an_error() {
        let t = Tree::new();
        let custom = t.kernel("custom/bzImage", None);
        let env = ProbeEnv {
            kernel: Some(custom),
            ..t.env()
        };
        assert!(matches!(
            probe(&env),
            Err(ProbeError::KernelVersionUnknown { .. })
        ));
    }

    /// Set in the unprivileged child of
    /// [`an_unreadable_chosen_kernel_is_an_error_that_says_so`]: the fake
    /// root to probe.
    const UNREADABLE_ROOT_VAR: &str = "SUPERMIN_TEST_UNREADABLE_KERNEL_ROOT";

    /// The probe of a root whose only kernel, `boot/vmlinuz-6.1.0-56-amd64`,
    /// this process cannot read.
    fn check_unreadable_kernel_error(root: &Path) {
        let k = root.join("boot/vmlinuz-6.1.0-56-amd64");
        assert!(
            fs::File::open(&k).is_err(),
            "{} is readable: the check would prove nothing",
            k.display()
        );
        let err = probe(&env_at(root)).unwrap_err();
        assert!(
            matches!(&err, ProbeError::KernelUnreadable { path, .. } if *path == k),
            "{err:?}"
        );
        assert!(err.hint().unwrap().contains("chmod"));
    }

    /// The uid and gid of `nobody` from `/etc/passwd`, 65534 (its number on
    /// Debian, Fedora and Arch) if it is not listed.
    fn nobody() -> (u32, u32) {
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == "nobody")
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .unwrap_or((65534, 65534))
    }

    /// Ubuntu installs kernels mode 0600. Root reads them anyway, so when
    /// this runs as root the check runs again in a child of this test binary
    /// that has dropped to `nobody`; otherwise it runs here. Either way an
    /// unprivileged process looks at the unreadable kernel.
    #[test]
    fn an_unreadable_chosen_kernel_is_an_error_that_says_so() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        use std::process::Command;
        if let Some(root) = std::env::var_os(UNREADABLE_ROOT_VAR) {
            // The unprivileged child.
            check_unreadable_kernel_error(Path::new(&root));
            return;
        }
        let t = Tree::new();
        let k = t.boot_kernel("6.1.0-56-amd64");
        fs::set_permissions(&k, fs::Permissions::from_mode(0o600)).unwrap();
        if fs::File::open(&k).is_err() {
            check_unreadable_kernel_error(t.root());
            return;
        }
        // Root (or CAP_DAC_OVERRIDE): nobody must reach everything but the
        // kernel, and run a copy of this binary wherever the target
        // directory is.
        let (uid, gid) = nobody();
        for p in [
            "",
            "boot",
            "lib",
            "lib/modules",
            "lib/modules/6.1.0-56-amd64",
        ] {
            fs::set_permissions(t.root().join(p), fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(
            t.root().join("lib/modules/6.1.0-56-amd64/modules.dep"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let exe = t.root().join("test-binary");
        fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let name = format!(
            "{}::an_unreadable_chosen_kernel_is_an_error_that_says_so",
            module_path!().split_once("::").unwrap().1
        );
        let out = Command::new(&exe)
            .args(["--exact", &name, "--test-threads=1", "--nocapture"])
            .env(UNREADABLE_ROOT_VAR, t.root())
            .current_dir(t.root())
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap_or_else(|e| panic!("running {} as uid {uid}: {e}", exe.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("test result: ok. 1 passed"),
            "the check as uid {uid} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }

    #[test]
    fn identity_changes_when_depmod_rewrites_modules_dep() {
        let t = Tree::new();
        let dir = t.modules("6.1.0-56-amd64");
        t.kernel("boot/vmlinuz-6.1.0-56-amd64", Some("6.1.0-56-amd64"));
        let k = probe(&t.env()).unwrap();
        let before = k.identity().unwrap();
        assert_eq!(before, k.identity().unwrap(), "stable when nothing changed");
        assert!(before.iter().any(|i| i.path == k.path));
        assert!(before.iter().any(|i| i.path == dir.join("modules.dep")));
        // depmod writes a new file and renames it over the old one.
        let tmp = dir.join("modules.dep.tmp");
        fs::write(&tmp, "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n").unwrap();
        fs::rename(&tmp, dir.join("modules.dep")).unwrap();
        assert_ne!(before, k.identity().unwrap());
    }

    #[test]
    fn variables_are_read_and_empty_ones_count_as_unset() {
        let vars = |name: &str| match name {
            "SUPERMIN_KERNEL" => Some(OsString::from("/k/vmlinuz")),
            "SUPERMIN_KERNEL_VERSION" => Some(OsString::from("")),
            "SUPERMIN_MODULES" => Some(OsString::from("/k/modules")),
            _ => None,
        };
        let env = ProbeEnv::from_vars(vars, Some("aarch64"));
        assert_eq!(env.kernel.as_deref(), Some(Path::new("/k/vmlinuz")));
        assert_eq!(env.kernel_version, None);
        assert_eq!(env.modules.as_deref(), Some(Path::new("/k/modules")));
        assert_eq!(env.host_cpu, "aarch64");
        assert_eq!(env.root, PathBuf::from("/"));
        let env = ProbeEnv::from_vars(|_| None, None);
        assert_eq!(env.host_cpu, std::env::consts::ARCH);
        assert_eq!(env.kernel, None);
    }

    /// On this machine, with no `SUPERMIN_*` variables, the probe picks the
    /// newest installed kernel (by the version its header carries), with the
    /// modules directory and config installed for it.
    #[test]
    fn the_host_kernel_choice_is_the_newest_installed_kernel() {
        let lib_modules_kernels: Vec<PathBuf> = fs::read_dir("/lib/modules")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("vmlinuz"))
            .filter(|p| p.is_file())
            .collect();
        // Fedora and Arch put the kernel beside its modules, and that copy
        // takes precedence; Debian and Ubuntu have only /boot.
        let installed: Vec<(String, PathBuf)> = if lib_modules_kernels.is_empty() {
            crate::testhost::host_kernels()
                .into_iter()
                .map(|k| (k.version, k.path))
                .collect()
        } else {
            lib_modules_kernels
                .into_iter()
                .map(|p| {
                    (
                        p.parent()
                            .unwrap()
                            .file_name()
                            .unwrap()
                            .to_string_lossy()
                            .into(),
                        p,
                    )
                })
                .collect()
        };
        let (version, path) = installed
            .iter()
            .max_by(|a, b| compare_versions(&a.0, &b.0))
            .unwrap();
        let k = probe(&ProbeEnv::from_vars(|_| None, None)).unwrap();
        assert_eq!(&k.path, path, "{:#?}", k.candidates);
        assert_eq!(&k.version, version);
        assert_eq!(k.version_source, VersionSource::Header);
        let modules_dir = Path::new("/lib/modules").join(version);
        assert_eq!(k.modules_dir, modules_dir);
        let config = [
            PathBuf::from(format!("/boot/config-{version}")),
            modules_dir.join("config"),
        ]
        .into_iter()
        .find(|p| p.is_file());
        assert_eq!(k.config, config);
    }
}
