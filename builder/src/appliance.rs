//! The `--build` pipeline: take a [`BuildPlan`], decide freshness from its fingerprint,
//! build into a staging sibling, publish atomically.
//!
//! The order matters for speed and correctness. The fingerprint ([`BuildPlan::fingerprint`])
//! costs milliseconds, so an up-to-date `--if-newer` never resolves packages. Only then is
//! the file set resolved and the output written: the ext2 image, the initrd and the kernel
//! for `-f ext2`, a directory for `-f chroot`. What the user should hear on the way
//! (progress at `-v`, warnings) is handed to the caller as [`Event`]s; nothing here prints.

use std::io;
use std::path::{Path, PathBuf};

use supermin_cache as cache;
use supermin_ext2 as ext2;
use supermin_hostfiles as hostfiles;
use supermin_kernel_probe as kprobe;

use crate::assemble::{AssembleError, Assembler};
use crate::chroot::{self, ChrootError};
use crate::default_appliance;
use crate::initrd::{self, InitrdError, InitrdModule, LoadWhen};
pub use crate::plan::{BuildEnv, BuildOptions, BuildPlan, Format, KernelFormat, Source};
use crate::preload::{self, Preloads};

/// supermin 5's default ext2 size: sparse, so it costs only what is written.
pub const DEFAULT_SIZE: u64 = 4 << 30;

/// Why an appliance's `kernel` is what it is, for `-v` and `supermin kernel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelChoice {
    /// The PVH-bootable ELF extracted from the bzImage.
    Pvh {
        /// How the payload was compressed.
        compression: &'static str,
        /// The PVH entry point.
        entry: u64,
        /// The vmlinux's size in bytes.
        size: u64,
    },
    /// The bzImage, and why.
    BzImage {
        /// Why not the PVH vmlinux.
        why: String,
    },
}

impl KernelChoice {
    /// One line: what `kernel` is and why.
    pub fn describe(&self, bzimage: &Path) -> String {
        match self {
            KernelChoice::Pvh {
                compression,
                entry,
                size,
            } => format!(
                "PVH vmlinux (ELF, {} MiB, PVH entry {entry:#x}) decompressed from the {compression} payload of {}: qemu boots it without firmware or the emulated decompressor (--kernel-format bzimage keeps the bzImage)",
                size >> 20,
                bzimage.display()
            ),
            KernelChoice::BzImage { why } => format!("bzImage {}: {why}", bzimage.display()),
        }
    }
}

/// Whether an appliance gets the PVH `vmlinux` as `kernel`, before looking at the kernel
/// itself: `Err(why not)` when it keeps the bzImage whatever the kernel carries.
pub fn pvh_wanted(
    source: &Source,
    opts: &BuildOptions,
    host_cpu: Option<&str>,
) -> Result<(), String> {
    if matches!(source, Source::Default) {
        return Err("the default appliance keeps the bzImage; its vmlinux sits beside it".into());
    }
    if opts.kernel_format == KernelFormat::Bzimage {
        return Err("--kernel-format bzimage".into());
    }
    let cpu = host_cpu.unwrap_or(std::env::consts::ARCH);
    if std::env::consts::ARCH != "x86_64" || !matches!(cpu, "x86_64" | "amd64") {
        return Err(format!("PVH boot is for x86_64 hosts (host CPU {cpu})"));
    }
    Ok(())
}

/// What [`build`] did.
#[derive(Debug)]
pub enum Outcome {
    /// `--if-newer` found the output fresh.
    UpToDate,
    /// It built and published the output.
    Built {
        /// What the user was warned about (also sent as [`Event::Warning`]).
        warnings: Vec<String>,
    },
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No kernel or module could be used.
    #[error(transparent)]
    Probe(#[from] kprobe::ProbeError),
    /// The cache (fingerprint, lock, publish) failed.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// Inputs could not be read or resolved.
    #[error(transparent)]
    Hostfiles(#[from] hostfiles::HostfilesError),
    /// The tree could not be assembled.
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    /// The root image could not be written.
    #[error(transparent)]
    Ext2(#[from] ext2::Ext2Error),
    /// The initrd could not be written.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// The chroot could not be written.
    #[error(transparent)]
    Chroot(#[from] ChrootError),
    /// The appliance's `/init` cannot run.
    #[error(transparent)]
    Init(#[from] crate::check::InitError),
    /// A file operation on the output failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// To what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An input does not exist.
    #[error("input {0} does not exist")]
    MissingInput(PathBuf),
    /// The output exists and is not a directory.
    #[error("output {0} exists and is not a directory; remove it or choose another -o")]
    OutputNotDir(PathBuf),
    /// The output and an input contain one another.
    #[error(
        "output {output} is inside input {input} (or the other way round): the next build would \
         read its own output; choose an -o outside the inputs"
    )]
    OutputInsideInput {
        /// The output.
        output: PathBuf,
        /// The input.
        input: PathBuf,
    },
    /// `--size` cannot hold the appliance.
    #[error(
        "the appliance needs {needed} bytes but --size gives {size}; give a larger --size \
         (the default is 4G)"
    )]
    SizeTooSmall {
        /// The size given.
        size: u64,
        /// The least size that holds it.
        needed: u64,
    },
}

impl BuildError {
    /// What the user can do, where the message alone does not say. The wrapped errors are
    /// `transparent` (they are not in the `source` chain themselves), so ask them here.
    pub fn hint(&self) -> Option<String> {
        match self {
            BuildError::Probe(e) => e.hint(),
            BuildError::Cache(e) => e.hint(),
            BuildError::Hostfiles(e) => e.hint(),
            BuildError::Assemble(e) => e.hint(),
            BuildError::Ext2(e) => e.hint(),
            BuildError::Initrd(e) => e.hint(),
            BuildError::Chroot(e) => e.hint(),
            BuildError::Init(e) => e.hint(),
            BuildError::Io { .. }
            | BuildError::MissingInput(_)
            | BuildError::OutputNotDir(_)
            | BuildError::OutputInsideInput { .. }
            | BuildError::SizeTooSmall { .. } => None,
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What a build has to say on the way, handed to the caller of [`build`] (the binary
/// prints it; other callers may collect or drop it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A step or a finding, at `-v` (a few at `-vv`).
    Progress(&'a str),
    /// One package of the resolved set, at `-vv`.
    Package(&'a str),
    /// Something the user should know; the build goes on. Also in [`Outcome::Built`].
    Warning(&'a str),
}

/// Hands [`Event`]s at or below the plan's verbosity to the caller.
struct Log<'a> {
    verbose: u8,
    say: &'a (dyn Fn(Event<'_>) + Sync),
}

impl Log<'_> {
    fn at(&self, level: u8, msg: impl FnOnce() -> String) {
        if self.verbose >= level {
            (self.say)(Event::Progress(&msg()));
        }
    }
}

/// Runs one build (or finds it unnecessary), telling `say` what happens.
pub fn build(plan: &BuildPlan, say: &(dyn Fn(Event<'_>) + Sync)) -> Result<Outcome, BuildError> {
    let opts = &plan.options;
    let log = Log {
        verbose: plan.verbose,
        say,
    };
    log.at(1, || {
        format!("version: supermin-rs {}", env!("CARGO_PKG_VERSION"))
    });
    check_output(plan)?;
    let kernel = match plan.format {
        Format::Ext2 => {
            let env = plan.env.probe_env(plan.host_cpu.as_deref());
            let k = kprobe::probe(&env)?;
            log.at(1, || {
                format!(
                    "kernel: {} (version {}, modules {})",
                    k.path.display(),
                    k.version,
                    k.modules_dir.display()
                )
            });
            Some(k)
        }
        Format::Chroot => None,
    };
    let fp = plan.fingerprint(kernel.as_ref())?;
    log.at(2, || format!("fingerprint: {fp}"));

    let _lock = match &plan.lock {
        Some(path) => {
            log.at(1, || format!("acquiring lock on {}", path.display()));
            Some(cache::lock(path)?)
        }
        None => None,
    };
    let required: &[&str] = match plan.format {
        Format::Ext2 => &cache::APPLIANCE_FILES,
        Format::Chroot => &[],
    };
    if plan.if_newer {
        match cache::is_fresh(&plan.output, &fp, required)? {
            cache::Freshness::Fresh => {
                log.at(1, || "if-newer: output does not need rebuilding".into());
                return Ok(Outcome::UpToDate);
            }
            cache::Freshness::Stale(why) => log.at(1, || format!("if-newer: rebuilding: {why}")),
        }
    }
    if let Ok(n) = cache::clean_debris(&plan.output) {
        if n > 0 {
            log.at(1, || format!("removed {n} leftovers of interrupted builds"));
        }
    }

    let staging = cache::Staging::new(&plan.output)?;
    let dir = staging.path().to_path_buf();
    let mut warnings = Vec::new();

    // The initrd and the kernel file need only the kernel and what the root loads at boot
    // (known once the tree is assembled): write them on the other core while the root is
    // resolved and written (module decompression and the vmlinux extraction are CPU work,
    // the image mostly copying).
    let log_ref = &log;
    let dir_ref = &dir;
    let (preload_tx, preload_rx) = std::sync::mpsc::sync_channel::<Preloads>(1);
    std::thread::scope(|scope| -> Result<(), BuildError> {
        let initrd_job = match (&plan.format, &kernel) {
            (Format::Ext2, Some(k)) => Some(scope.spawn(move || {
                let mtime = initrd::initrd_mtime(plan.clamp_times)?;
                let choice = write_kernel(k, dir_ref, plan, opts)?;
                log_ref.at(1, || format!("kernel format: {}", choice.describe(&k.path)));
                if plan.fixed {
                    write_readme_fixed(dir_ref, k, plan, &choice)?;
                }
                // No message means the root failed before its tree was assembled: the build
                // fails with that error, and no initrd is needed.
                let Ok(preloads) = preload_rx.recv() else {
                    return Ok(());
                };
                write_initrd(
                    k,
                    &dir_ref.join("initrd"),
                    &plan.source,
                    &preloads,
                    mtime,
                    log_ref,
                )?;
                Ok::<(), BuildError>(())
            })),
            _ => None,
        };
        let root = write_root(
            plan,
            opts,
            &dir,
            kernel.as_ref(),
            &log,
            &mut warnings,
            preload_tx,
        );
        if let Some(job) = initrd_job {
            match job.join() {
                Ok(result) => result?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        root
    })?;
    for w in &warnings {
        say(Event::Warning(w));
    }
    log.at(1, || format!("publishing {}", plan.output.display()));
    staging.commit(&fp, env!("CARGO_PKG_VERSION"), plan.durability)?;
    log.at(1, || "done".into());
    Ok(Outcome::Built { warnings })
}

/// The inputs exist, and the output can be replaced without harm: it is a directory (or
/// nothing yet) and it neither holds nor lies inside an input.
fn check_output(plan: &BuildPlan) -> Result<(), BuildError> {
    match std::fs::symlink_metadata(&plan.output) {
        Ok(m) if !m.is_dir() => return Err(BuildError::OutputNotDir(plan.output.clone())),
        _ => {}
    }
    let Source::Inputs { paths: inputs, .. } = &plan.source else {
        return Ok(());
    };
    // The output may not exist yet: compare through its (existing) parent.
    let output = match (plan.output.parent(), plan.output.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::canonicalize(parent)
                .map(|p| p.join(name))
                .unwrap_or_else(|_| plan.output.clone())
        }
        _ => plan.output.clone(),
    };
    for input in inputs {
        let canonical =
            std::fs::canonicalize(input).map_err(|_| BuildError::MissingInput(input.clone()))?;
        if output.starts_with(&canonical) || canonical.starts_with(&output) {
            return Err(BuildError::OutputInsideInput {
                output: plan.output.clone(),
                input: input.clone(),
            });
        }
    }
    Ok(())
}

/// Resolves the inputs, assembles the tree and writes the root image (or the chroot) and, for
/// the launcher, the `vmlinux` beside `kernel` into `dir` (the kernel file and README.fixed
/// are written beside the initrd).
fn write_root(
    plan: &BuildPlan,
    bopts: &BuildOptions,
    dir: &Path,
    kernel: Option<&kprobe::Kernel>,
    log: &Log<'_>,
    warnings: &mut Vec<String>,
    preloads: std::sync::mpsc::SyncSender<Preloads>,
) -> Result<(), BuildError> {
    // What goes into the root.
    let (inputs, elf_only, budget) = match &plan.source {
        Source::Inputs {
            paths,
            max_input_size,
        } => {
            let budget = hostfiles::InputBudget::new(*max_input_size);
            (hostfiles::read_inputs(paths, &budget)?, false, budget)
        }
        // Host files only: nothing to decompress.
        Source::Default => (
            default_appliance::inputs(),
            true,
            hostfiles::InputBudget::default(),
        ),
    };
    log.at(1, || {
        format!(
            "inputs: {} packages, {} hostfiles patterns, {} excludes, {} base images",
            inputs.packages.len(),
            inputs.hostfiles.len(),
            inputs.excludes.len(),
            inputs.base_images.len()
        )
    });
    let opts = hostfiles::ResolveOptions {
        deps: bopts.deps,
        ..hostfiles::ResolveOptions::default()
    };
    // Decompressing the base images needs nothing from the resolution: do both at once.
    let (set, images) = std::thread::scope(|scope| {
        let images = scope.spawn(|| {
            inputs
                .base_images
                .iter()
                .map(|img| hostfiles::open_base_image(img, dir, &budget))
                .collect::<Result<Vec<_>, _>>()
        });
        let set = hostfiles::resolve(&inputs, &opts);
        let images = match images.join() {
            Ok(images) => images,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (set, images)
    });
    let (set, images) = (set?, images?);
    log.at(1, || {
        format!(
            "resolved {} files from {} packages{}",
            set.files.len(),
            set.packages.len(),
            set.handler.map(|h| format!(" ({h})")).unwrap_or_default()
        )
    });
    if plan.verbose >= 2 {
        for p in &set.packages {
            (log.say)(Event::Package(p));
        }
    }
    warnings.extend(set.warnings.iter().cloned());

    let mut asm = Assembler::new(plan.time);
    for (img, file) in inputs.base_images.iter().zip(images) {
        let n = asm.add_base_image(img, file, dir, &budget)?;
        log.at(1, || {
            format!("base image {}: {n} entries", img.path.display())
        });
    }
    asm.add_file_set(&set)?;
    if plan.include_packagelist {
        asm.add_packagelist(&set.packages)?;
    }
    if elf_only {
        default_appliance::add_generated(&mut asm)?;
    }
    if let Some(k) = kernel {
        let n = asm.add_modules(&k.modules_dir, &k.version)?;
        log.at(1, || format!("kernel modules: {n} entries"));
    }
    warnings.append(&mut asm.warnings);
    let mut tree = asm.finish();
    if let Some(epoch) = plan.clamp_times {
        tree.clamp_times(epoch);
    }
    log.at(1, || "tree assembled".into());
    let checked = crate::check::check_tree(&tree)?;
    log.at(1, || checked.summary());
    warnings.extend(checked.warnings);
    // The initrd is written meanwhile; a dropped receiver (no initrd) is not an error here.
    let _ = preloads.send(preload::find(&tree));

    match (&plan.format, kernel) {
        (Format::Ext2, Some(k)) => {
            let root = dir.join("root");
            let opts = ext2::Options {
                size: Some(plan.size.unwrap_or(DEFAULT_SIZE)),
                creation_time: plan.time,
                ..ext2::Options::default()
            };
            let summary = ext2::write_image(&tree, &root, &opts).map_err(|e| match e {
                // The writer's advice ("or none") is for `mkfs`; here no --size means 4G.
                ext2::Ext2Error::ImageTooSmall { size, needed } => {
                    BuildError::SizeTooSmall { size, needed }
                }
                e => BuildError::Ext2(e),
            })?;
            log.at(1, || {
                format!(
                    "ext2: {} blocks, {} inodes, UUID {}",
                    summary.blocks_used,
                    summary.inodes_used,
                    ext2::format_uuid(&summary.uuid)
                )
            });
            if summary.private && plan.fixed {
                warnings.push(
                    "the root holds files that only their owners may read, so root is mode 0600 and only this user can boot it; exclude them (an excludefiles input) to share the appliance".into(),
                );
            }
            if plan.vmlinux {
                write_vmlinux(k, dir, plan.vmlinux_cache.as_deref(), log, warnings);
            }
        }
        _ => {
            let report = chroot::write_chroot(&tree, dir)?;
            warnings.extend(report.warnings);
        }
    }
    Ok(())
}

fn write_initrd(
    k: &kprobe::Kernel,
    out: &Path,
    source: &Source,
    preloads: &Preloads,
    mtime: u32,
    log: &Log<'_>,
) -> Result<(), BuildError> {
    // libguestfs attaches the root as virtio-scsi or virtio-blk; our launcher always uses
    // virtio-blk, so the default appliance skips the SCSI modules (a tenth of a second of
    // TCG boot).
    let boot = match source {
        Source::Default => kprobe::VIRTIO_BLK_BOOT_MODULES,
        Source::Inputs { .. } => kprobe::BOOT_MODULES,
    };
    // Modules the root loads at boot anyway (libguestfs: dm_mod, and sg for SCSI disks)
    // cost less from the initrd: see `preload.rs`. A SCSI-only one is wanted only where
    // the initrd drives SCSI disks, and is marked so: every module it adds to the set (the
    // module, an alias's modules, their dependencies) loads only with a SCSI device.
    let scsi = boot.contains(&"virtio_scsi");
    let names = |list: &[(String, String)]| -> Vec<String> {
        list.iter().map(|(name, _)| name.clone()).collect()
    };
    let always = names(&preloads.always);
    let scsi_only = if scsi {
        names(&preloads.scsi_device)
    } else {
        Vec::new()
    };
    // The boot set, with the every-boot preloads, with the SCSI-only ones too.
    let mut layers = kprobe::module_set_layers(k, boot, &[&always, &scsi_only])?.into_iter();
    let boot_only = layers.next().unwrap_or_default();
    let base = layers.next().unwrap_or_default();
    let set = layers.next().unwrap_or_default();
    let modules = &set.modules;
    log.at(1, || {
        format!(
            "initrd: {} modules: {}",
            modules.len(),
            modules
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        )
    });
    let in_set = |name: &str| modules.iter().any(|m| m.name == name);
    let in_boot = |name: &str| boot_only.modules.iter().any(|m| m.name == name);
    for (name, why) in &preloads.always {
        log.at(1, || match () {
            _ if in_set(name) => format!("initrd: {name}, loaded by the init: {why}"),
            _ if set.not_loaded.iter().any(|n| n.name == *name && n.builtin) => {
                format!("initrd: not {name} ({why}): built into this kernel")
            }
            _ => format!("initrd: not {name} ({why}): not a module of this kernel"),
        });
    }
    for (name, why) in &preloads.scsi_device {
        log.at(1, || match () {
            _ if !scsi => {
                format!("initrd: not {name} ({why}): this appliance's disks are not SCSI")
            }
            _ if set.not_loaded.iter().any(|n| n.name == *name && n.builtin) => {
                format!("initrd: not {name} ({why}): built into this kernel")
            }
            _ if set.not_loaded.iter().any(|n| n.name == *name) => {
                format!("initrd: not {name} ({why}): not a module of this kernel")
            }
            _ => format!("initrd: {name}, loaded by the init when the VM has a SCSI device: {why}"),
        });
    }
    for (name, why) in &preloads.left_to_root {
        log.at(1, || format!("initrd: not {name}, left to the root: {why}"));
    }
    let mut loaded = Vec::with_capacity(modules.len());
    for m in modules {
        let when = if in_boot(&m.name) {
            LoadWhen::Always
        } else if base.modules.iter().any(|b| b.name == m.name) {
            LoadWhen::Preload
        } else {
            LoadWhen::PreloadScsiDevice
        };
        loaded.push(InitrdModule {
            name: m.name.clone(),
            data: kprobe::read_module(&m.path)?,
            when,
        });
    }
    initrd::write_initrd(out, crate::embedded::init_binary(), &loaded, mtime)?;
    Ok(())
}

/// Writes `kernel`: the PVH vmlinux where [`pvh_wanted`] allows it and the kernel has the
/// note (always a file), else the bzImage, copied with `--copy-kernel`/`--fixed` or
/// symlinked as supermin does.
fn write_kernel(
    k: &kprobe::Kernel,
    dir: &Path,
    plan: &BuildPlan,
    opts: &BuildOptions,
) -> Result<KernelChoice, BuildError> {
    let dest = dir.join("kernel");
    let choice = choose_kernel(
        k,
        &dest,
        &plan.source,
        opts,
        plan.host_cpu.as_deref(),
        plan.vmlinux_cache.as_deref(),
    )?;
    if let KernelChoice::BzImage { .. } = choice {
        write_bzimage(k, &dest, plan.copy_kernel)?;
    }
    Ok(choice)
}

/// Decides what `kernel` is and, for the PVH vmlinux, writes it to `dest` (left absent
/// otherwise).
pub fn choose_kernel(
    k: &kprobe::Kernel,
    dest: &Path,
    source: &Source,
    opts: &BuildOptions,
    host_cpu: Option<&str>,
    cache: Option<&Path>,
) -> Result<KernelChoice, BuildError> {
    let why = match pvh_wanted(source, opts, host_cpu) {
        Err(why) => why,
        Ok(()) => match crate::vmlinux_cache::extract(&k.path, dest, cache) {
            Ok(info) => match info.pvh_entry {
                Some(entry) => {
                    return Ok(KernelChoice::Pvh {
                        compression: info.compression.as_str(),
                        entry,
                        size: info.size,
                    })
                }
                None => {
                    std::fs::remove_file(dest).map_err(io_err("remove", dest))?;
                    "the kernel has no PVH entry note (CONFIG_PVH is off)".to_string()
                }
            },
            // The bzImage still boots: a payload we cannot decompress is no reason to fail.
            Err(e) => format!("its payload could not be turned into a vmlinux ({e})"),
        },
    };
    Ok(KernelChoice::BzImage { why })
}

fn write_bzimage(k: &kprobe::Kernel, dest: &Path, copy: bool) -> Result<(), BuildError> {
    let dest = dest.to_path_buf();
    if copy {
        std::fs::copy(&k.path, &dest).map_err(io_err("copy the kernel to", &dest))?;
    } else {
        // A relative SUPERMIN_KERNEL is relative to where we run, not to the output.
        let target = std::path::absolute(&k.path).map_err(io_err("resolve", &k.path))?;
        std::os::unix::fs::symlink(&target, &dest).map_err(io_err("symlink", &dest))?;
    }
    Ok(())
}

/// The launcher boots `vmlinux` through PVH when it exists: under TCG that skips the
/// emulated decompressor (DESIGN.md, "Where boot time goes"). Best effort: without it
/// the launcher boots `kernel`.
fn write_vmlinux(
    k: &kprobe::Kernel,
    dir: &Path,
    cache: Option<&Path>,
    log: &Log<'_>,
    warnings: &mut Vec<String>,
) {
    let dest = dir.join("vmlinux");
    match crate::vmlinux_cache::extract(&k.path, &dest, cache) {
        Ok(info) if info.pvh() => log.at(1, || "vmlinux: PVH entry found".into()),
        Ok(_) => {
            let _ = std::fs::remove_file(&dest);
            log.at(1, || {
                "vmlinux: no PVH entry; the launcher boots the bzImage".into()
            });
        }
        Err(e) => {
            let _ = std::fs::remove_file(&dest);
            warnings.push(format!("cannot extract vmlinux: {e}"));
        }
    }
}

fn write_readme_fixed(
    dir: &Path,
    k: &kprobe::Kernel,
    plan: &BuildPlan,
    choice: &KernelChoice,
) -> Result<(), BuildError> {
    let dest = dir.join("README.fixed");
    let inputs = match &plan.source {
        Source::Inputs { paths: p, .. } => p
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
        Source::Default => "the embedded default appliance".into(),
    };
    let text = format!(
        "This is a fixed appliance for libguestfs, built by supermin-rs {version}.\n\
         \n\
         It contains:\n\
         \x20 kernel  {kernel_what} {kernel} (version {kversion})\n\
         \x20 initrd  the modules needed to boot and a small init\n\
         \x20 root    the ext2 root filesystem\n\
         \n\
         It was built from: {inputs}\n\
         \n\
         To use it, point libguestfs at this directory:\n\
         \n\
         \x20 export LIBGUESTFS_PATH={dir}\n\
         \n\
         It does not change when the host is updated: rebuild it with\n\
         `supermin update-appliance {dir}` after updating the kernel or libguestfs.\n",
        version = env!("CARGO_PKG_VERSION"),
        kernel_what = match choice {
            KernelChoice::Pvh { .. } => "the PVH-bootable vmlinux decompressed from",
            KernelChoice::BzImage { .. } => "a copy of",
        },
        kernel = k.path.display(),
        kversion = k.version,
        dir = std::path::absolute(&plan.output)
            .unwrap_or_else(|_| plan.output.clone())
            .display(),
    );
    std::fs::write(&dest, text).map_err(io_err("write", &dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_is_wanted_only_for_inputs_on_x86_64_with_the_auto_format() {
        let inputs = Source::Inputs {
            paths: vec![PathBuf::from("supermin.d")],
            max_input_size: hostfiles::DEFAULT_MAX_INPUT_SIZE,
        };
        let auto = BuildOptions::default();
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(pvh_wanted(&inputs, &auto, None), Ok(()));
            assert_eq!(pvh_wanted(&inputs, &auto, Some("x86_64")), Ok(()));
        }
        let bz = BuildOptions {
            kernel_format: KernelFormat::Bzimage,
            ..auto
        };
        assert!(pvh_wanted(&inputs, &bz, None)
            .unwrap_err()
            .contains("--kernel-format bzimage"));
        assert!(pvh_wanted(&inputs, &auto, Some("aarch64"))
            .unwrap_err()
            .contains("aarch64"));
        assert!(pvh_wanted(&Source::Default, &auto, None).is_err());
    }
}
