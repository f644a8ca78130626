//! Command-line parsing: turns `argv` into one [`Command`] value and nothing more.
//!
//! Two grammars share one binary. supermin 5's is mode flags (`--build`, `--prepare`,
//! `--list-drivers`, `--version`) plus free inputs, and libguestfs and packagers call it
//! exactly so; ours adds subcommands (`run`, `mkfs`, `kernel`, `update-appliance`). The first
//! word decides which grammar applies, so an input directory named like a subcommand is
//! still reachable as `./run`.
//!
//! Errors from here are usage errors: the binary prints them on one line and exits 1, like
//! supermin's `error` (clap's own exit status 2 is not used).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

pub use crate::plan::{Format, KernelFormat};

/// What the user asked for, fully parsed.
#[derive(Debug)]
pub enum Command {
    /// `--version`.
    Version,
    /// `--list-drivers`.
    ListDrivers,
    /// `--prepare`.
    Prepare(PrepareArgs),
    /// `--build`.
    Build(BuildArgs),
    /// `mkfs`.
    Mkfs(MkfsArgs),
    /// `kernel`.
    Kernel(KernelArgs),
    // Boxed: the largest arguments by far, parsed once.
    /// `run`.
    Run(Box<RunArgs>),
    /// `update-appliance`.
    UpdateAppliance(UpdateArgs),
    /// `doctor`.
    Doctor(DoctorArgs),
    /// `cache`.
    Cache(CacheArgs),
}

/// `supermin --prepare`'s arguments.
#[derive(Debug, Clone)]
pub struct PrepareArgs {
    /// `-v` count.
    pub verbose: u8,
    /// `--use-installed`.
    pub use_installed: bool,
    /// `--packager-config`.
    pub packager_config: Option<PathBuf>,
    /// `-o DIR`.
    pub output: PathBuf,
    /// The package names.
    pub packages: Vec<String>,
}

/// `supermin --build`'s arguments.
#[derive(Debug, Clone)]
pub struct BuildArgs {
    /// `-v` count.
    pub verbose: u8,
    /// `-f`.
    pub format: Format,
    /// `--if-newer`.
    pub if_newer: bool,
    /// `--lock FILE`.
    pub lock: Option<PathBuf>,
    /// `--copy-kernel`.
    pub copy_kernel: bool,
    /// `--fixed`.
    pub fixed: bool,
    /// `--size`, in bytes.
    pub size: Option<u64>,
    /// `--host-cpu`.
    pub host_cpu: Option<String>,
    /// `--include-packagelist`.
    pub include_packagelist: bool,
    /// `--kernel-format`.
    pub kernel_format: KernelFormat,
    /// `--complete-deps`.
    pub complete_deps: bool,
    /// `-o DIR`.
    pub output: PathBuf,
    /// The inputs (none: the embedded default appliance).
    pub inputs: Vec<PathBuf>,
}

/// A usage error: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// Neither `--prepare` nor `--build`.
    #[error("you must use --prepare or --build to select the mode")]
    NoMode,
    /// Both `--prepare` and `--build`.
    #[error("you must use only one of --prepare and --build")]
    TwoModes,
    /// `--format` with `--prepare`.
    #[error("cannot use --prepare and --format options together")]
    FormatWithPrepare,
    /// `--build` without `--format`.
    #[error("when using --build, you must specify an output --format")]
    NoFormat,
    /// A `--format` other than ext2 or chroot; what was given.
    #[error("unknown --format option ({0}): use ext2 or chroot")]
    BadFormat(String),
    /// No `-o`.
    #[error("output directory (-o option) must be supplied")]
    NoOutput,
    /// A `--size` that is not a size.
    #[error("invalid --size: {reason}")]
    BadSize {
        /// What was given.
        value: String,
        /// Why it is not a size.
        reason: String,
    },
    /// A `--build` option without `--build`.
    #[error("{option} is only meaningful with --build")]
    BuildOnly {
        /// The option.
        option: &'static str,
    },
    /// `--prepare` without packages.
    #[error("--prepare needs at least one package name")]
    NoPackages,
    /// supermin 4's `--dtb`.
    #[error("the --dtb option was removed in supermin 5.1.18; drop it and the wildcard after it")]
    Dtb,
    /// supermin 4's `--names`.
    #[error(
        "this is supermin version 5, but --names belongs to supermin 4: upgrade libguestfs (>= 1.26)"
    )]
    Names,
    /// What the parser said.
    #[error("{0}")]
    Clap(String),
}

/// `--help` and friends are not errors, but they end the run successfully with text.
#[derive(Debug)]
pub enum Parsed {
    /// A command to run.
    Command(Command),
    /// Help or version text to print.
    Help(String),
}

/// The supermin 5 grammar.
#[derive(Parser, Debug)]
#[command(
    name = "supermin",
    disable_version_flag = true,
    about = "Build supermin appliances (kernel, initrd, ext2 root) from the host's own files",
    after_help = "\
Subcommands (beyond supermin 5):
  supermin run [OPTIONS] -- CMD [ARG...]   boot an appliance and run CMD in it
  supermin mkfs SRC_DIR -o IMAGE           ext2 image from a directory, no root needed
  supermin kernel [--json]                 which kernel and modules would be used, and why
  supermin update-appliance [DIR]          build libguestfs's fixed appliance system-wide
  supermin doctor [--json]                 check qemu, KVM, kernel, cache, libguestfs; boot
  supermin cache list|gc|clean             what is cached, its size and freshness; remove it
Run `supermin SUBCOMMAND --help` for each one's options."
)]
struct Legacy {
    /// Build a full appliance
    #[arg(long)]
    build: bool,
    /// Prepare a supermin appliance
    #[arg(long)]
    prepare: bool,
    /// Copy the kernel instead of symlinking it
    #[arg(long)]
    copy_kernel: bool,
    /// Also copy the kernel and write README.fixed (a fixed appliance for LIBGUESTFS_PATH)
    #[arg(long)]
    fixed: bool,
    /// Output format: ext2 or chroot
    #[arg(short = 'f', long = "format", value_name = "FORMAT")]
    format: Option<String>,
    /// Host CPU architecture
    #[arg(long, value_name = "ARCH")]
    host_cpu: Option<String>,
    /// Only build if the output is out of date
    #[arg(long)]
    if_newer: bool,
    /// Add a file with the list of packages
    #[arg(long)]
    include_packagelist: bool,
    /// What `kernel` is: auto (the PVH vmlinux where it boots, else the bzImage) or bzimage
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = KernelFormat::Auto)]
    kernel_format: KernelFormat,
    /// Follow every package dependency (`:any`, virtual packages, any installed
    /// alternative) instead of supermin 5's rules
    #[arg(long)]
    complete_deps: bool,
    /// Display the list of package handlers and exit
    #[arg(long)]
    list_drivers: bool,
    /// Serialize concurrent builders on this lock file
    #[arg(long, value_name = "LOCKFILE")]
    lock: Option<PathBuf>,
    /// Output directory
    #[arg(short = 'o', value_name = "OUTPUTDIR")]
    output: Option<PathBuf>,
    /// Package manager configuration file
    #[arg(long, value_name = "CONFIGFILE")]
    packager_config: Option<PathBuf>,
    /// Size of the ext2 filesystem, e.g. 4G
    #[arg(long, value_name = "SIZE")]
    size: Option<String>,
    /// Use installed files instead of downloading packages
    #[arg(long)]
    use_installed: bool,
    /// Enable debugging messages (repeat for more)
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    verbose: u8,
    /// Display the version and exit
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// Obsolete option (removed in supermin 5.1.18)
    #[arg(long, hide = true, value_name = "WILDCARD")]
    dtb: Option<String>,
    /// supermin 4 option, refused
    #[arg(long, hide = true)]
    names: bool,
    /// Inputs (--build) or packages (--prepare)
    #[arg(value_name = "INPUT")]
    inputs: Vec<OsString>,
}

#[derive(Parser, Debug)]
#[command(name = "supermin", disable_version_flag = true)]
struct Extended {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Boot an appliance and run a command in it
    Run(RunArgs),
    /// Write an ext2 image from a directory tree (no root needed)
    Mkfs(MkfsArgs),
    /// Show which kernel and modules would be used, and why
    Kernel(KernelArgs),
    /// Build libguestfs's appliance as a fixed appliance, system-wide
    UpdateAppliance(UpdateArgs),
    /// Check qemu, KVM, the kernel, the cache and libguestfs, then build and boot the default
    /// appliance; say what is wrong and the way out (paste the output into a bug report)
    Doctor(DoctorArgs),
    /// List or remove cached appliances (ours and libguestfs's)
    Cache(CacheArgs),
}

/// `supermin doctor`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    /// Only the checks: do not build or boot the default appliance
    #[arg(long)]
    pub no_boot: bool,
    /// Show the console and what is done while booting
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
}

/// `supermin cache`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: CacheAction,
}

/// What `supermin cache` does.
#[derive(Subcommand, Debug, Clone)]
pub enum CacheAction {
    /// Each cached appliance: size on disk, last use, still fresh for this host
    List {
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
    },
    /// Remove stale entries (and, with --older-than, those unused for that long); never one
    /// a builder holds
    Gc {
        /// Also remove entries not used for this long: N followed by s, m, h, d or w
        /// (plain N means days)
        #[arg(long, value_name = "D")]
        older_than: Option<String>,
        /// Say what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove every cached appliance of this user (but one a builder holds)
    Clean {
        /// Say what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
    },
}

/// `supermin mkfs`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct MkfsArgs {
    /// Directory whose tree becomes the filesystem
    pub source: PathBuf,
    /// Image file to write
    #[arg(short = 'o', long = "output", value_name = "IMAGE")]
    pub output: PathBuf,
    /// Image size (e.g. 512M); default: the content plus headroom
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Filesystem UUID; default: derived from the content
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,
    /// Filesystem label (at most 16 bytes)
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Print what is done
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
}

/// `supermin kernel`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct KernelArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
    /// Host CPU architecture
    #[arg(long, value_name = "ARCH")]
    pub host_cpu: Option<String>,
}

/// `supermin update-appliance`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    /// Where to write the appliance
    #[arg(default_value = "/usr/local/lib/guestfs/appliance")]
    pub dir: PathBuf,
    /// libguestfs's supermin.d; default: found in the usual places
    #[arg(long, value_name = "DIR")]
    pub supermin_d: Option<PathBuf>,
    /// What `kernel` is: auto (the PVH vmlinux where it boots, else the bzImage) or bzimage
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = KernelFormat::Auto)]
    pub kernel_format: KernelFormat,
    /// Follow every package dependency instead of supermin 5's rules
    #[arg(long)]
    pub complete_deps: bool,
    /// Print what is done
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
}

/// `supermin run`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Appliance directory (kernel, initrd, root) whose /init is supermin's daemon, as built by
    /// `supermin --build -f ext2 -o DIR` with no input; default: that appliance, built and
    /// cached on demand
    #[arg(long, value_name = "DIR")]
    pub appliance: Option<PathBuf>,
    /// Accelerator: auto, kvm or tcg (default: $SUPERMIN_ACCEL or auto). auto tries KVM and
    /// falls back to TCG on any failure before the appliance answers, saying so once; the
    /// verdict is kept until the host reboots or qemu changes
    #[arg(long, value_name = "ACCEL")]
    pub accel: Option<String>,
    /// Forget that KVM failed on this host and try it again (with --accel auto)
    #[arg(long)]
    pub recheck_kvm: bool,
    /// Share a host directory with the guest, mounted at GUEST (default: the same path),
    /// read-only unless :rw is given: a read-write share is the one place where the guest can
    /// change host files. qemu (9p) or virtiofsd (virtiofs) reads it as the user qemu runs as
    /// (see --qemu-user); repeatable
    #[arg(long = "share", value_name = "HOST[:GUEST][:rw]")]
    pub share: Vec<OsString>,
    /// How shares reach the guest: auto (virtiofs when a usable virtiofsd is installed, much
    /// faster on many small files; qemu's 9p otherwise; -v says which and why), 9p or
    /// virtiofs (an error without virtiofsd). virtiofsd is looked for in $SUPERMIN_VIRTIOFSD,
    /// /usr/libexec, /usr/lib/qemu, /usr/local/libexec, $PATH, then ~/.cargo/bin
    #[arg(long, value_name = "auto|9p|virtiofs", default_value = "auto")]
    pub share_transport: String,
    /// Share the current directory (read-only) at the same path and run the command there:
    /// `runner = "supermin run --cwd-share --"` in .cargo/config.toml runs each test binary in
    /// a fresh appliance
    #[arg(long)]
    pub cwd_share: bool,
    /// Boot the appliance instead of restoring its saved machine (and save none). Without it,
    /// the first run of an appliance saves the booted machine in the runtime cache and later
    /// runs restore it in a fraction of the boot time (TCG, no --add disks)
    #[arg(long)]
    pub cold: bool,
    /// When run as root, the user qemu switches to after opening its files (default:
    /// $SUPERMIN_QEMU_USER or nobody; `root` keeps root, which a hostile guest that escapes
    /// qemu would then have)
    #[arg(long, value_name = "USER")]
    pub qemu_user: Option<String>,
    /// Guest memory in MiB (at least 128)
    #[arg(long, value_name = "MIB", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(128..))]
    pub memory: u32,
    /// Guest CPUs
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=255))]
    pub cpus: u32,
    /// Add a disk image, attached as /dev/vdb, /dev/vdc, ... in order; repeatable. Raw unless
    /// :format=qcow2 is given: the format is never guessed from the content, which a guest can
    /// write. A qcow2 naming a backing file is refused unless :allow-backing is given (it can
    /// name any host file), one with an external data file always. :ro attaches it read-only
    #[arg(
        long = "add",
        value_name = "DISK[:ro][:format=raw|qcow2][:allow-backing]"
    )]
    pub add: Vec<String>,
    /// Kill the VM after this many seconds, boot (2-3 s under TCG) included
    #[arg(long, value_name = "S")]
    pub timeout: Option<f64>,
    /// Show the console and what is done
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
    /// Interactive: run CMD (default: a login shell) on a terminal in the appliance connected
    /// to ours (stdin must be a terminal). Type ~. after Enter to end a stuck session
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// Set a variable for the command; repeatable
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// The command's working directory in the appliance (default: /)
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<OsString>,
    /// Copy a host file or directory (modes, times and symlinks kept) into a directory of the
    /// appliance before the command; repeatable
    #[arg(long = "copy-in", value_name = "HOST_PATH:GUEST_DIR")]
    pub copy_in: Vec<String>,
    /// Copy an appliance file or directory into a host directory after the command, even when
    /// it failed; repeatable. Set-id and sticky bits are dropped
    #[arg(long = "copy-out", value_name = "GUEST_PATH:HOST_DIR")]
    pub copy_out: Vec<String>,
    /// Most bytes one --copy-out may bring (file data, names, link targets), e.g. 512M, 8G
    #[arg(long = "copy-out-limit", value_name = "SIZE", default_value = "4G")]
    pub copy_out_limit: String,
    /// The command and its arguments (optional with -i)
    #[arg(
        last = true,
        required_unless_present = "interactive",
        value_name = "CMD"
    )]
    pub argv: Vec<OsString>,
}

const SUBCOMMANDS: &[&str] = &[
    "run",
    "mkfs",
    "kernel",
    "update-appliance",
    "doctor",
    "cache",
];

/// The whole command line as one clap tree: supermin 5's options and inputs at the top,
/// our subcommands beneath. It exists for what is generated from the CLI definition (man
/// pages, shell completions: see `xtask`), so that `supermin r<TAB>` offers `run` although
/// the supermin 5 grammar has no subcommands. [`parse`] never uses it: there the first word
/// picks one grammar.
pub fn command_tree() -> clap::Command {
    use clap::CommandFactory;
    let legacy = Legacy::command();
    // Hidden arguments (the refusals of --dtb and --names) are left out: they are there to
    // say why they are refused, and shell completions would offer them.
    let visible: Vec<clap::Arg> = legacy
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .cloned()
        .collect();
    let subcommands: Vec<clap::Command> = Extended::command().get_subcommands().cloned().collect();
    let mut tree = clap::Command::new("supermin")
        .disable_version_flag(true)
        .args(visible)
        .subcommands(subcommands)
        // `supermin help` is not a command (the first word would be an input).
        .disable_help_subcommand(true);
    if let Some(about) = legacy.get_about() {
        tree = tree.about(about.clone());
    }
    if let Some(after) = legacy.get_after_help() {
        tree = tree.after_help(after.clone());
    }
    tree
}

/// Parses `args` (without the program name).
pub fn parse(args: Vec<OsString>) -> Result<Parsed, UsageError> {
    let first = args.first().and_then(|a| a.to_str()).unwrap_or("");
    let argv = std::iter::once(OsString::from("supermin")).chain(args.iter().cloned());
    if SUBCOMMANDS.contains(&first) {
        return match Extended::try_parse_from(argv) {
            Ok(ext) => Ok(Parsed::Command(match ext.command {
                Sub::Run(a) => Command::Run(Box::new(a)),
                Sub::Mkfs(a) => Command::Mkfs(a),
                Sub::Kernel(a) => Command::Kernel(a),
                Sub::UpdateAppliance(a) => Command::UpdateAppliance(a),
                Sub::Doctor(a) => Command::Doctor(a),
                Sub::Cache(a) => Command::Cache(a),
            })),
            Err(e) => {
                let unknown = e.kind() == clap::error::ErrorKind::UnknownArgument;
                let hint = if first == "run" && unknown {
                    "supermin run [OPTIONS] -- CMD [ARG...]: the command goes after `--`; see `supermin run --help`".to_string()
                } else {
                    format!("see `supermin {first} --help`")
                };
                clap_outcome(e, &hint)
            }
        };
    }
    match Legacy::try_parse_from(argv) {
        Ok(l) => legacy_command(l).map(Parsed::Command),
        Err(e) => clap_outcome(e, "see `supermin --help`"),
    }
}

fn clap_outcome(e: clap::Error, help: &str) -> Result<Parsed, UsageError> {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(Parsed::Help(e.to_string())),
        _ => {
            // clap's rendering is several lines (what, the arguments concerned, a tip,
            // usage); everything before the usage says what is wrong: keep it on one line.
            let text = e.to_string();
            let what: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(|l| l.trim().trim_start_matches("error: "))
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            let what = if what.is_empty() {
                "invalid arguments".to_string()
            } else {
                what.join(" ")
            };
            Err(UsageError::Clap(format!("{what} ({help})")))
        }
    }
}

fn legacy_command(l: Legacy) -> Result<Command, UsageError> {
    if l.names {
        return Err(UsageError::Names);
    }
    if l.dtb.is_some() {
        return Err(UsageError::Dtb);
    }
    // supermin acts on --version and --list-drivers as soon as it sees them.
    if l.version {
        return Ok(Command::Version);
    }
    if l.list_drivers {
        return Ok(Command::ListDrivers);
    }
    let format = match l.format.as_deref() {
        None => None,
        Some("chroot" | "fs" | "filesystem") => Some(Format::Chroot),
        Some("ext2") => Some(Format::Ext2),
        Some(other) => return Err(UsageError::BadFormat(other.to_string())),
    };
    match (l.prepare, l.build) {
        (false, false) => Err(UsageError::NoMode),
        (true, true) => Err(UsageError::TwoModes),
        (true, false) => {
            if format.is_some() {
                return Err(UsageError::FormatWithPrepare);
            }
            for (set, option) in [
                (l.if_newer, "--if-newer"),
                (l.copy_kernel, "--copy-kernel"),
                (l.fixed, "--fixed"),
                (l.size.is_some(), "--size"),
                (l.include_packagelist, "--include-packagelist"),
                (l.complete_deps, "--complete-deps"),
                (l.kernel_format != KernelFormat::Auto, "--kernel-format"),
            ] {
                if set {
                    return Err(UsageError::BuildOnly { option });
                }
            }
            let output = l.output.ok_or(UsageError::NoOutput)?;
            let packages: Vec<String> = l
                .inputs
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if packages.is_empty() {
                return Err(UsageError::NoPackages);
            }
            Ok(Command::Prepare(PrepareArgs {
                verbose: l.verbose,
                use_installed: l.use_installed,
                packager_config: l.packager_config,
                output: strip_trailing_slash(output),
                packages,
            }))
        }
        (false, true) => {
            let format = format.ok_or(UsageError::NoFormat)?;
            let output = l.output.ok_or(UsageError::NoOutput)?;
            let size = match l.size {
                None => None,
                Some(s) => {
                    Some(
                        supermin_ext2::parse_size(&s).map_err(|e| UsageError::BadSize {
                            value: s.clone(),
                            reason: e.to_string(),
                        })?,
                    )
                }
            };
            Ok(Command::Build(BuildArgs {
                verbose: l.verbose,
                format,
                if_newer: l.if_newer,
                lock: l.lock,
                copy_kernel: l.copy_kernel || l.fixed,
                fixed: l.fixed,
                size,
                host_cpu: l.host_cpu,
                include_packagelist: l.include_packagelist,
                kernel_format: l.kernel_format,
                complete_deps: l.complete_deps,
                output: strip_trailing_slash(output),
                inputs: l.inputs.into_iter().map(PathBuf::from).collect(),
            }))
        }
    }
}

/// `-o dir/` and `-o dir` name the same output (supermin RHBZ#1146753); the temporary
/// sibling is derived from the name, so the slash must go.
fn strip_trailing_slash(p: PathBuf) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    match bytes.strip_suffix(b"/") {
        Some(trimmed) if !trimmed.is_empty() => PathBuf::from(std::ffi::OsStr::from_bytes(trimmed)),
        _ => p,
    }
}

/// A byte count as a user writes it in a variable such as `SUPERMIN_MAX_INPUT_SIZE`:
/// digits, optionally followed by `K`, `M`, `G` or `T` (binary units, either case).
/// `None` for anything else, or a count past 2^64.
pub fn parse_byte_count(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        b'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_binary_unit_suffixes() {
        assert_eq!(parse_byte_count("4096"), Some(4096));
        assert_eq!(parse_byte_count("64M"), Some(64 << 20));
        assert_eq!(parse_byte_count("16g"), Some(16 << 30));
        assert_eq!(parse_byte_count(" 2T "), Some(2 << 40));
        assert_eq!(parse_byte_count("0"), Some(0));
        for bad in ["", "G", "1.5G", "-1", "4GiB", "12x", "99999999999T"] {
            assert_eq!(parse_byte_count(bad), None, "{bad:?}");
        }
    }

    fn parse_str(args: &[&str]) -> Result<Parsed, UsageError> {
        parse(args.iter().map(OsString::from).collect())
    }

    fn build(args: &[&str]) -> BuildArgs {
        match parse_str(args) {
            Ok(Parsed::Command(Command::Build(b))) => b,
            other => panic!("expected a build, got {other:?}"),
        }
    }

    #[test]
    fn libguestfs_build_call_parses() {
        let b = build(&[
            "--build",
            "--verbose",
            "--if-newer",
            "--lock",
            "/var/tmp/.guestfs-0/lock",
            "--copy-kernel",
            "-f",
            "ext2",
            "--host-cpu",
            "x86_64",
            "/usr/lib/x86_64-linux-gnu/guestfs/supermin.d",
            "-o",
            "/var/tmp/.guestfs-0/appliance.d",
        ]);
        assert_eq!(b.format, Format::Ext2);
        assert!(b.if_newer && b.copy_kernel);
        assert_eq!(b.verbose, 1);
        assert_eq!(b.lock.as_deref(), Some("/var/tmp/.guestfs-0/lock".as_ref()));
        assert_eq!(b.host_cpu.as_deref(), Some("x86_64"));
        assert_eq!(
            b.inputs,
            vec![PathBuf::from(
                "/usr/lib/x86_64-linux-gnu/guestfs/supermin.d"
            )]
        );
        assert_eq!(b.output, PathBuf::from("/var/tmp/.guestfs-0/appliance.d"));
    }

    #[test]
    fn no_mode_is_the_supermin_error() {
        let e = parse_str(&["-o", "x", "in"]).unwrap_err();
        assert!(matches!(e, UsageError::NoMode), "{e}");
    }

    #[test]
    fn format_with_prepare_is_refused() {
        let e = parse_str(&["--prepare", "-f", "ext2", "-o", "d", "bash"]).unwrap_err();
        assert!(matches!(e, UsageError::FormatWithPrepare), "{e}");
    }

    #[test]
    fn build_without_format_is_refused() {
        let e = parse_str(&["--build", "-o", "d", "in"]).unwrap_err();
        assert!(matches!(e, UsageError::NoFormat), "{e}");
    }

    #[test]
    fn bad_size_names_the_value() {
        let e = parse_str(&["--build", "-f", "ext2", "--size", "4X", "-o", "d"]).unwrap_err();
        assert!(e.to_string().contains("4X"), "{e}");
    }

    #[test]
    fn size_accepts_supermin_syntax_and_equals_form() {
        let b = build(&["--build", "--format=ext2", "--size=2G", "-o", "d"]);
        assert_eq!(b.size, Some(2 << 30));
    }

    #[test]
    fn trailing_slash_of_output_is_dropped() {
        let b = build(&["--build", "-f", "chroot", "-o", "/tmp/out/"]);
        assert_eq!(b.output, PathBuf::from("/tmp/out"));
    }

    #[test]
    fn fixed_implies_copy_kernel() {
        let b = build(&["--build", "-f", "ext2", "--fixed", "-o", "d"]);
        assert!(b.fixed && b.copy_kernel);
    }

    #[test]
    fn kernel_format_and_complete_deps_parse_with_auto_and_supermin_rules_by_default() {
        let b = build(&["--build", "-f", "ext2", "-o", "d"]);
        assert_eq!(b.kernel_format, KernelFormat::Auto);
        assert!(!b.complete_deps);
        let b = build(&[
            "--build",
            "-f",
            "ext2",
            "--kernel-format",
            "bzimage",
            "--complete-deps",
            "-o",
            "d",
        ]);
        assert_eq!(b.kernel_format, KernelFormat::Bzimage);
        assert!(b.complete_deps);
        let e = parse_str(&["--build", "-f", "ext2", "--kernel-format=elf", "-o", "d"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("elf") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn repeated_verbose_counts() {
        let b = build(&["--build", "-f", "ext2", "-v", "-v", "-o", "d"]);
        assert_eq!(b.verbose, 2);
    }

    #[test]
    fn version_wins_like_supermin() {
        assert!(matches!(
            parse_str(&["--version"]),
            Ok(Parsed::Command(Command::Version))
        ));
        assert!(matches!(
            parse_str(&["-V", "--build"]),
            Ok(Parsed::Command(Command::Version))
        ));
    }

    #[test]
    fn unknown_option_is_one_line() {
        let e = parse_str(&["--build", "--bogus"]).unwrap_err();
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        assert!(s.contains("--bogus"), "{s}");
    }

    #[test]
    fn run_takes_the_command_after_double_dash() {
        match parse_str(&[
            "run", "--accel", "tcg", "--add", "d.img:ro", "--", "ls", "-l",
        ]) {
            Ok(Parsed::Command(Command::Run(r))) => {
                assert_eq!(r.accel.as_deref(), Some("tcg"));
                assert_eq!(r.add, vec!["d.img:ro".to_string()]);
                assert_eq!(r.argv, vec![OsString::from("ls"), OsString::from("-l")]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_subcommand_argument_is_named_on_one_line() {
        let e = parse_str(&["run"]).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("<CMD>"), "{e}");
        assert!(e.contains("supermin run --help"), "{e}");
        let e = parse_str(&["run", "uname"]).unwrap_err().to_string();
        assert!(e.contains("'uname'") && e.contains("after `--`"), "{e}");
    }

    #[test]
    fn run_takes_interactive_files_env_and_cwd() {
        match parse_str(&[
            "run",
            "-i",
            "--env",
            "A=b",
            "--env",
            "C=",
            "--cwd",
            "/tmp",
            "--copy-in",
            "x:/root",
            "--copy-out",
            "/etc/fstab:.",
            "--copy-out-limit",
            "1G",
        ]) {
            Ok(Parsed::Command(Command::Run(r))) => {
                assert!(r.interactive && r.argv.is_empty());
                assert_eq!(r.env, ["A=b", "C="]);
                assert_eq!(r.cwd.as_deref(), Some(std::ffi::OsStr::new("/tmp")));
                assert_eq!(r.copy_in, ["x:/root"]);
                assert_eq!(r.copy_out, ["/etc/fstab:."]);
                assert_eq!(r.copy_out_limit, "1G");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mkfs_parses() {
        match parse_str(&["mkfs", "src", "-o", "img", "--label", "root"]) {
            Ok(Parsed::Command(Command::Mkfs(m))) => {
                assert_eq!(m.source, PathBuf::from("src"));
                assert_eq!(m.output, PathBuf::from("img"));
                assert_eq!(m.label.as_deref(), Some("root"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn command_tree_holds_both_grammars() {
        let tree = command_tree();
        tree.clone().debug_assert();
        let subs: Vec<&str> = tree.get_subcommands().map(|s| s.get_name()).collect();
        assert_eq!(subs, SUBCOMMANDS, "subcommands of the documentation tree");
        // Every visible option of the supermin 5 grammar, and none of the hidden ones.
        use clap::CommandFactory;
        let longs: Vec<&str> = tree.get_arguments().filter_map(|a| a.get_long()).collect();
        for arg in Legacy::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            assert_eq!(longs.contains(&long), !arg.is_hide_set(), "--{long}");
        }
        assert!(longs.contains(&"build") && !longs.contains(&"dtb"));
        assert!(tree.get_about().is_some());
    }

    #[test]
    fn help_is_not_an_error() {
        assert!(matches!(parse_str(&["--help"]), Ok(Parsed::Help(_))));
        assert!(matches!(parse_str(&["run", "--help"]), Ok(Parsed::Help(_))));
    }

    #[test]
    fn prepare_collects_packages() {
        match parse_str(&[
            "--prepare",
            "--use-installed",
            "bash",
            "coreutils",
            "-o",
            "d",
        ]) {
            Ok(Parsed::Command(Command::Prepare(p))) => {
                assert!(p.use_installed);
                assert_eq!(p.packages, vec!["bash", "coreutils"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
