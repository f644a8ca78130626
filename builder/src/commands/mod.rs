//! What each command does, given its parsed arguments. This is the only place that uses
//! `anyhow`: library crates return typed errors, and here they get their context for the
//! one line the user reads.

use std::process::ExitCode;

use anyhow::Context;

mod cache;
mod doctor;
mod env;
mod run;

pub use env::Env;
use supermin::appliance::{self, BuildOptions, BuildPlan, Event, Source};
use supermin::cli::{BuildArgs, Command, Format, KernelArgs, MkfsArgs, PrepareArgs, UpdateArgs};
use supermin_cache::Durability;

/// The first line of `--version`: libguestfs and packagers parse `supermin 5.x`.
pub const SUPERMIN_COMPAT_VERSION: &str = "5.2.2";

/// Runs `command`, with the environment `main` captured once.
pub fn run(command: Command, env: &Env) -> anyhow::Result<ExitCode> {
    match command {
        Command::Version => {
            println!("supermin {SUPERMIN_COMPAT_VERSION}");
            println!("supermin-rs {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Mkfs(args) => mkfs(&args, env),
        Command::ListDrivers => {
            // supermin 5's format: the handler, a tab, `detected` or `not-detected`.
            for (name, detected) in supermin_hostfiles::list_drivers() {
                let mark = if detected { "detected" } else { "not-detected" };
                println!("{name}\t{mark}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prepare(args) => prepare(&args, env),
        Command::Build(args) => build(&args, env),
        Command::Kernel(args) => kernel(&args, env),
        Command::UpdateAppliance(args) => update_appliance(&args, env),
        Command::Run(args) => run::run(&args, env),
        Command::Doctor(args) => doctor::doctor(&args, env),
        Command::Cache(args) => cache::cache(&args, env),
    }
}

/// One line: what failed and why (the message, then each `#[source]` in the chain, once:
/// no message repeats its own cause), then at most one hint.
pub fn report(err: &anyhow::Error) {
    eprintln!("supermin: error: {err:#}");
    if let Some(hint) = hint_for(err) {
        eprintln!("supermin: hint: {hint}");
    }
}

/// An error and its causes as one line, `message: cause: cause` (what `{:#}` prints for an
/// `anyhow::Error`), for a library error the binary shows without failing.
pub(crate) fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

/// The way out of an error, when one of the errors in its chain knows one: the first that
/// does, asked from the outermost in.
pub fn hint_for(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(hint_of)
}

/// What one error in a chain knows about the way out. Every library error type has a
/// `hint()`; a new one is asked here.
fn hint_of(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    use supermin::{assemble, check, chroot, initrd};
    if let Some(e) = err.downcast_ref::<appliance::BuildError>() {
        e.hint()
    } else if let Some(e) = err.downcast_ref::<supermin_kernel_probe::ProbeError>() {
        e.hint()
    } else if let Some(e) = err.downcast_ref::<supermin_launcher::LaunchError>() {
        e.hint()
    } else if let Some(e) = err.downcast_ref::<supermin_cache::CacheError>() {
        e.hint()
    } else if let Some(e) = err.downcast_ref::<supermin_hostfiles::HostfilesError>() {
        e.hint()
    } else if let Some(e) = err.downcast_ref::<supermin_ext2::Ext2Error>() {
        e.hint()
    } else if let Some(e) = err.downcast_ref::<assemble::AssembleError>() {
        e.hint()
    } else if let Some(e) = err.downcast_ref::<initrd::InitrdError>() {
        e.hint()
    } else if let Some(e) = err.downcast_ref::<chroot::ChrootError>() {
        e.hint()
    } else if let Some(e) = err.downcast_ref::<check::InitError>() {
        e.hint()
    } else {
        None
    }
}

/// The exit status for a failed run, the one place it is decided: what kept `supermin run`'s
/// command from finishing, in the shell's codes like `timeout(1)` (127 not started, 124
/// timed out, 128+N interrupted by signal N, 255 for `~.` like ssh), 1 for every other
/// failure.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain()
        .filter_map(|e| e.downcast_ref::<supermin_launcher::LaunchError>())
        .find_map(launch_exit_code)
        .unwrap_or(1)
}

fn launch_exit_code(err: &supermin_launcher::LaunchError) -> Option<u8> {
    use supermin_launcher::LaunchError;
    match err {
        LaunchError::CommandNotStarted { .. } => Some(127),
        LaunchError::Timeout { .. } => Some(124),
        LaunchError::Interrupted { signal } => {
            Some(u8::try_from(128i32.saturating_add(*signal)).unwrap_or(u8::MAX))
        }
        LaunchError::Escaped => Some(255),
        // A boxed source is not downcast through the chain: look inside here.
        LaunchError::Copy { source, .. } => launch_exit_code(source),
        _ => None,
    }
}

fn prepare(args: &PrepareArgs, env: &Env) -> anyhow::Result<ExitCode> {
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
        source_date_epoch: env.source_date_epoch()?,
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

fn build(args: &BuildArgs, env: &Env) -> anyhow::Result<ExitCode> {
    if let Some(cpu) = args.host_cpu.as_deref() {
        check_host_cpu(cpu, std::env::consts::ARCH)?;
    }
    let source = if args.inputs.is_empty() {
        Source::Default
    } else {
        Source::Inputs {
            paths: args.inputs.clone(),
            max_input_size: env.max_input_size()?,
        }
    };
    let plan = BuildPlan {
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
            env.vmlinux_cache()
        } else {
            None
        },
        durability: if args.fixed {
            Durability::Synced
        } else {
            Durability::Unsynced
        },
        verbose: args.verbose,
        time: env.now_or_epoch()?,
        clamp_times: env.source_date_epoch()?,
        options: build_options(args.kernel_format, args.complete_deps),
        env: env.build(),
    };
    run_build(&plan)
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

fn run_build(plan: &BuildPlan) -> anyhow::Result<ExitCode> {
    appliance::build(plan, &print_event)
        .with_context(|| format!("cannot build {}", plan.output.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// How a build's [`Event`]s look on the terminal: progress and packages on stdout,
/// warnings on stderr.
pub(crate) fn print_event(event: Event<'_>) {
    match event {
        Event::Progress(line) => println!("supermin: {line}"),
        Event::Package(name) => println!("  - {name}"),
        Event::Warning(w) => eprintln!("supermin: warning: {w}"),
    }
}

fn kernel(args: &KernelArgs, env: &Env) -> anyhow::Result<ExitCode> {
    use supermin_kernel_probe as kp;
    let k = kp::probe(&env.build().probe_env(args.host_cpu.as_deref()))?;
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
        env.vmlinux_cache().as_deref(),
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

/// `--host-cpu`: the init and daemon embedded in this binary run on its own architecture
/// (`ours`) only, so any other is refused, in one line, until another architecture is really
/// supported (it used to get an init that could not run there). `amd64` is Debian's name
/// for x86_64.
fn check_host_cpu(cpu: &str, ours: &str) -> anyhow::Result<()> {
    if cpu == ours || (cpu == "amd64" && ours == "x86_64") {
        return Ok(());
    }
    anyhow::bail!(
        "--host-cpu {cpu}: this supermin builds appliances for {ours} only (its embedded init and daemon are {ours} programs); build on a {cpu} host"
    )
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

fn update_appliance(args: &UpdateArgs, env: &Env) -> anyhow::Result<ExitCode> {
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
    let plan = BuildPlan {
        format: Format::Ext2,
        source: Source::Inputs {
            paths: vec![supermin_d],
            max_input_size: env.max_input_size()?,
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
        vmlinux_cache: env.vmlinux_cache(),
        durability: Durability::Synced,
        verbose: args.verbose,
        time: env.now_or_epoch()?,
        clamp_times: env.source_date_epoch()?,
        options: build_options(args.kernel_format, args.complete_deps),
        env: env.build(),
    };
    if let Some(parent) = args.dir.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
    }
    run_build(&plan)?;
    let dir = std::path::absolute(&args.dir).unwrap_or_else(|_| args.dir.clone());
    println!("export LIBGUESTFS_PATH={}", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn mkfs(args: &MkfsArgs, env: &Env) -> anyhow::Result<ExitCode> {
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
    if let Some(epoch) = env.source_date_epoch()? {
        tree.clamp_times(epoch);
    }
    let opts = ext2::Options {
        size,
        uuid,
        label: args.label.clone(),
        creation_time: env.now_or_epoch()?,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::Context;
    use supermin_launcher::LaunchError;

    use super::{exit_code, hint_for, one_line};

    fn launch(e: LaunchError) -> anyhow::Error {
        anyhow::Error::new(e)
    }

    #[test]
    fn host_cpu_is_ours_or_a_one_line_error() {
        use super::check_host_cpu;
        check_host_cpu("x86_64", "x86_64").unwrap();
        check_host_cpu("amd64", "x86_64").unwrap();
        check_host_cpu("aarch64", "aarch64").unwrap();
        for (cpu, ours) in [("aarch64", "x86_64"), ("amd64", "aarch64"), ("", "x86_64")] {
            let line = format!("{:#}", check_host_cpu(cpu, ours).unwrap_err());
            assert!(!line.contains('\n'), "{line}");
            assert!(
                line.starts_with(&format!(
                    "--host-cpu {cpu}: this supermin builds appliances for {ours} only"
                )),
                "{line}"
            );
        }
    }

    #[test]
    fn exit_codes_follow_shell_conventions() {
        let not_started = LaunchError::CommandNotStarted {
            message: String::new(),
        };
        assert_eq!(exit_code(&launch(not_started)), 127);
        assert_eq!(
            exit_code(&launch(LaunchError::Interrupted { signal: 2 })),
            130
        );
        let timeout = LaunchError::Timeout {
            after: Duration::from_secs(1),
        };
        assert_eq!(exit_code(&launch(timeout)), 124);
        assert_eq!(exit_code(&launch(LaunchError::Escaped)), 255);
        assert_eq!(exit_code(&launch(LaunchError::NoCommand)), 1);
        assert_eq!(exit_code(&anyhow::anyhow!("any other failure")), 1);
    }

    #[test]
    fn exit_code_looks_through_context_and_copies() {
        let copy = LaunchError::Copy {
            what: "--copy-out /a:/b".into(),
            source: Box::new(LaunchError::Interrupted { signal: 15 }),
        };
        let err = Err::<(), _>(copy).context("while running").unwrap_err();
        assert_eq!(exit_code(&err), 143);
    }

    #[test]
    fn a_cause_is_printed_once_and_its_hint_found_through_transparent_wrappers() {
        let cache = supermin_cache::CacheError::OpenLock {
            path: "/nowhere/lock".into(),
            source: std::io::Error::from_raw_os_error(2),
        };
        let build = supermin::appliance::BuildError::from(cache);
        let err = Err::<(), _>(build)
            .context("cannot build /out")
            .unwrap_err();
        let line = format!("{err:#}");
        assert_eq!(line.matches("os error 2").count(), 1, "{line}");
        assert!(
            line.starts_with("cannot build /out: cannot open lock file /nowhere/lock: "),
            "{line}"
        );
        assert!(hint_for(&err).unwrap().contains("writable"));
    }

    #[test]
    fn one_line_walks_the_whole_chain() {
        let e = LaunchError::QemuSpawn {
            program: "qemu-system-x86_64".into(),
            source: std::io::Error::from_raw_os_error(2),
        };
        let line = one_line(&e);
        assert!(
            line.starts_with("cannot start qemu-system-x86_64: No such file"),
            "{line}"
        );
        assert!(hint_for(&anyhow::Error::new(e))
            .unwrap()
            .contains("install qemu"));
    }
}
