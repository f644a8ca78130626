//! What each command does, given its parsed arguments. This is the only place that uses
//! `anyhow`: library crates return typed errors, and here they get their context for the
//! one line the user reads.

use std::process::ExitCode;

use anyhow::Context;

mod cache;
mod doctor;
mod run;

use supermin::appliance::{self, BuildOptions, BuildRequest, Source};
use supermin::cli::{BuildArgs, Command, Format, KernelArgs, MkfsArgs, PrepareArgs, UpdateArgs};
use supermin_cache::Durability;

/// The first line of `--version`: libguestfs and packagers parse `supermin 5.x`.
pub const SUPERMIN_COMPAT_VERSION: &str = "5.2.2";

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Version => {
            println!("supermin {SUPERMIN_COMPAT_VERSION}");
            println!("supermin-rs {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Mkfs(args) => mkfs(&args),
        Command::ListDrivers => {
            // supermin 5's format: the handler, a tab, `detected` or `not-detected`.
            for (name, detected) in supermin_hostfiles::list_drivers() {
                let mark = if detected { "detected" } else { "not-detected" };
                println!("{name}\t{mark}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prepare(args) => prepare(&args),
        Command::Build(args) => build(&args),
        Command::Kernel(args) => kernel(&args),
        Command::UpdateAppliance(args) => update_appliance(&args),
        Command::Run(args) => run::run(&args),
        Command::Doctor(args) => doctor::doctor(&args),
        Command::Cache(args) => cache::cache(&args),
    }
}

/// One line: what failed and why (the `#[source]` chain, once), then a hint if there is one.
pub fn report(err: &anyhow::Error) {
    let mut line = format!("supermin: error: {err}");
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        // Typed errors often repeat their source in their own message; print each cause once.
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    eprintln!("{line}");
    if let Some(hint) = hint_for(err) {
        eprintln!("supermin: hint: {hint}");
    }
}

/// A hint for errors whose way out is not obvious from the message.
pub fn hint_for(err: &anyhow::Error) -> Option<String> {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<appliance::BuildError>() {
            if let Some(h) = e.hint() {
                return Some(h);
            }
        }
        if let Some(e) = cause.downcast_ref::<supermin_kernel_probe::ProbeError>() {
            if let Some(h) = e.hint() {
                return Some(h);
            }
        }
    }
    None
}

fn prepare(args: &PrepareArgs) -> anyhow::Result<ExitCode> {
    // Like supermin, -o DIR is replaced as a whole (a stale list or base image left in it
    // would go into the next build), and atomically.
    let context = || format!("cannot prepare {}", args.output.display());
    if std::fs::symlink_metadata(&args.output).is_ok_and(|m| !m.is_dir()) {
        anyhow::bail!(
            "output {} exists and is not a directory; remove it or choose another -o",
            args.output.display()
        );
    }
    let _ = supermin_cache::clean_debris(&args.output);
    let staging = supermin_cache::Staging::new(&args.output).with_context(context)?;
    let opts = supermin_hostfiles::PrepareOptions {
        packages: args.packages.clone(),
        use_installed: args.use_installed,
        packager_config: args.packager_config.clone(),
        out_dir: staging.path().to_path_buf(),
        source_date_epoch: source_date_epoch()?,
        root: std::path::PathBuf::from("/"),
    };
    supermin_hostfiles::prepare(&opts).with_context(context)?;
    staging
        .commit_without_stamp(Durability::Unsynced)
        .with_context(context)?;
    if args.verbose > 0 {
        println!("supermin: prepared {}", args.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    // The init and daemon embedded in this binary run on its own architecture only.
    if let Some(cpu) = args.host_cpu.as_deref() {
        let same =
            cpu == std::env::consts::ARCH || (cpu == "amd64" && std::env::consts::ARCH == "x86_64");
        if !same {
            anyhow::bail!(
                "--host-cpu {cpu}: this supermin builds appliances for {} only (its embedded init and daemon are {} programs); build on a {cpu} host",
                std::env::consts::ARCH,
                std::env::consts::ARCH
            );
        }
    }
    let source = if args.inputs.is_empty() {
        Source::Default
    } else {
        Source::Inputs {
            paths: args.inputs.clone(),
            max_input_size: max_input_size()?,
        }
    };
    let req = BuildRequest {
        format: args.format,
        source,
        output: args.output.clone(),
        size: args.size,
        host_cpu: args.host_cpu.clone(),
        copy_kernel: args.copy_kernel,
        fixed: args.fixed,
        include_packagelist: args.include_packagelist,
        if_newer: args.if_newer,
        lock: args.lock.clone(),
        vmlinux: false,
        // Only an ext2 appliance has a kernel to turn into a vmlinux.
        vmlinux_cache: if args.format == Format::Ext2 {
            vmlinux_cache()
        } else {
            None
        },
        durability: if args.fixed {
            Durability::Synced
        } else {
            Durability::Unsynced
        },
        verbose: args.verbose,
        time: now_or_epoch()?,
        clamp_times: source_date_epoch()?,
    };
    run_build(&req, &build_options(args.kernel_format, args.complete_deps))
}

/// Where extracted `vmlinux` files are kept between builds: the user's runtime cache, when
/// it is usable (a build never fails for want of it).
pub(crate) fn vmlinux_cache() -> Option<std::path::PathBuf> {
    supermin_cache::runtime_cache_dir()
        .ok()
        .map(|d| d.join("supermin-rs-vmlinux"))
}

fn build_options(kernel_format: supermin::cli::KernelFormat, complete_deps: bool) -> BuildOptions {
    BuildOptions {
        kernel_format,
        deps: if complete_deps {
            supermin_hostfiles::DepRule::Complete
        } else {
            supermin_hostfiles::DepRule::Supermin
        },
    }
}

fn run_build(req: &BuildRequest, opts: &BuildOptions) -> anyhow::Result<ExitCode> {
    appliance::build_with(req, opts)
        .with_context(|| format!("cannot build {}", req.output.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn kernel(args: &KernelArgs) -> anyhow::Result<ExitCode> {
    use supermin_kernel_probe as kp;
    let env = kp::ProbeEnv::from_env(args.host_cpu.as_deref());
    let k = kp::probe(&env)?;
    let set = kp::module_set(&k, &[])?;
    // What `kernel` becomes in an appliance built from inputs (libguestfs's) with the
    // default options: finding out means decompressing the payload once, into a scratch file.
    let scratch = std::env::temp_dir().join(format!(".supermin-kernel-{}", std::process::id()));
    let choice = appliance::choose_kernel(
        &k,
        &scratch,
        &Source::Inputs {
            paths: Vec::new(),
            max_input_size: supermin_hostfiles::DEFAULT_MAX_INPUT_SIZE,
        },
        &BuildOptions::default(),
        args.host_cpu.as_deref(),
        vmlinux_cache().as_deref(),
    );
    let _ = std::fs::remove_file(&scratch);
    let choice = choice.context("cannot tell what the appliance's kernel would be")?;
    if args.json {
        let mut report: serde_json::Value = serde_json::from_str(&kp::report_json_set(&k, &set))
            .context("internal error: the kernel report is not JSON")?;
        let (format, detail) = match &choice {
            appliance::KernelChoice::Pvh { .. } => ("pvh-vmlinux", choice.describe(&k.path)),
            appliance::KernelChoice::BzImage { why } => ("bzimage", why.clone()),
        };
        if let Some(obj) = report.as_object_mut() {
            obj.insert("appliance_kernel_format".into(), format.into());
            obj.insert("appliance_kernel_reason".into(), detail.into());
        }
        println!("{report}");
    } else {
        print!("{}", kp::report_text_set(&k, &set));
        println!(
            "appliance kernel (-f ext2, --kernel-format auto): {}",
            choice.describe(&k.path)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where distributions install libguestfs's prepared appliance.
const SUPERMIN_D_PLACES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/guestfs/supermin.d",
    "/usr/lib/aarch64-linux-gnu/guestfs/supermin.d",
    "/usr/lib64/guestfs/supermin.d",
    "/usr/lib/guestfs/supermin.d",
    "/usr/local/lib/guestfs/supermin.d",
    "/usr/local/lib64/guestfs/supermin.d",
];

fn update_appliance(args: &UpdateArgs) -> anyhow::Result<ExitCode> {
    let supermin_d = match &args.supermin_d {
        Some(d) => d.clone(),
        None => SUPERMIN_D_PLACES
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_dir())
            .with_context(|| {
                format!(
                    "libguestfs's supermin.d is not installed in any of {}; install libguestfs \
                     (Debian: libguestfs0) or name it with --supermin-d DIR",
                    SUPERMIN_D_PLACES.join(", ")
                )
            })?,
    };
    let req = BuildRequest {
        format: Format::Ext2,
        source: Source::Inputs {
            paths: vec![supermin_d],
            max_input_size: max_input_size()?,
        },
        output: args.dir.clone(),
        size: None,
        host_cpu: None,
        copy_kernel: true,
        fixed: true,
        include_packagelist: false,
        if_newer: false,
        lock: None,
        vmlinux: false,
        vmlinux_cache: vmlinux_cache(),
        durability: Durability::Synced,
        verbose: args.verbose,
        time: now_or_epoch()?,
        clamp_times: source_date_epoch()?,
    };
    if let Some(parent) = args.dir.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
    }
    run_build(&req, &build_options(args.kernel_format, args.complete_deps))?;
    let dir = std::path::absolute(&args.dir).unwrap_or_else(|_| args.dir.clone());
    println!("export LIBGUESTFS_PATH={}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `SUPERMIN_MAX_INPUT_SIZE`: how far supermin.d inputs may expand (unset or empty: the
/// default). Read here once and passed down; the library never looks at the environment.
fn max_input_size() -> anyhow::Result<u64> {
    const VAR: &str = "SUPERMIN_MAX_INPUT_SIZE";
    let Some(value) = std::env::var_os(VAR).filter(|v| !v.is_empty()) else {
        return Ok(supermin_hostfiles::DEFAULT_MAX_INPUT_SIZE);
    };
    value
        .to_str()
        .and_then(supermin::cli::parse_byte_count)
        .with_context(|| {
            format!(
                "{VAR}={value:?} is not a size: give bytes, or a number with K, M, G or T \
                 (e.g. {VAR}=16G), or unset it for the default of {}G",
                supermin_hostfiles::DEFAULT_MAX_INPUT_SIZE >> 30
            )
        })
}

pub(crate) fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(None),
    }
}

pub(crate) fn now_or_epoch() -> anyhow::Result<i64> {
    Ok(match source_date_epoch()? {
        Some(t) => t,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    })
}

fn mkfs(args: &MkfsArgs) -> anyhow::Result<ExitCode> {
    use supermin_ext2 as ext2;
    let size = args
        .size
        .as_deref()
        .map(|s| ext2::parse_size(s).context("invalid --size"))
        .transpose()?;
    let uuid = args
        .uuid
        .as_deref()
        .map(|u| ext2::parse_uuid(u).with_context(|| format!("invalid --uuid {u:?}")))
        .transpose()?;
    let meta = std::fs::metadata(&args.source)
        .with_context(|| format!("cannot read source directory {}", args.source.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory", args.source.display());
    }
    let mut tree = ext2::Tree::from_dir(&args.source)
        .with_context(|| format!("cannot read the tree {}", args.source.display()))?;
    if let Some(epoch) = source_date_epoch()? {
        tree.clamp_times(epoch);
    }
    let opts = ext2::Options {
        size,
        uuid,
        label: args.label.clone(),
        creation_time: now_or_epoch()?,
        ..ext2::Options::default()
    };
    let summary = ext2::write_image(&tree, &args.output, &opts)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if args.verbose > 0 {
        eprintln!(
            "supermin: mkfs: {}: {} bytes, {} blocks and {} inodes used, UUID {}",
            args.output.display(),
            summary.size,
            summary.blocks_used,
            summary.inodes_used,
            ext2::format_uuid(&summary.uuid)
        );
    }
    Ok(ExitCode::SUCCESS)
}
