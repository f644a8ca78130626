//! What one `--build` will produce: a [`BuildPlan`], resolved once from the command line and
//! one snapshot of the environment ([`BuildEnv`]), and [`BuildPlan::fingerprint`], the cache
//! key `--if-newer` compares. Making a plan is cheap and reads nothing; building it is
//! [`crate::appliance::build`]'s job.
//!
//! Nothing in this library reads the process environment: the binary captures the
//! variables a build depends on, once, and passes them down in the plan. So the fingerprint
//! is a function of the plan and of the files it names, which a test can call with any
//! environment.
//!
//! The fingerprint is computed from things that cost milliseconds (input bytes or
//! identities, the package database's identity, the chosen kernel's identity, options,
//! environment, this tool's sources), so an up-to-date `--if-newer` never resolves packages.
//! What it leaves out, on purpose: the host files that packages and hostfiles globs name are
//! not hashed one by one (that would cost a resolution). Package files are covered by the
//! package database's identity, which every install, upgrade or removal changes; a file
//! edited behind the package manager's back is not noticed, as in supermin.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use supermin_cache::{Durability, Fingerprint, FingerprintBuilder, HashMode};
use supermin_hostfiles as hostfiles;
use supermin_kernel_probe as kprobe;

use crate::appliance::BuildError;

/// Output format of `--build`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `kernel`, `initrd` and an ext2 `root` image.
    Ext2,
    /// A directory tree (supermin's `-f chroot`).
    Chroot,
}

/// What `kernel` is in an `-f ext2` appliance built from inputs (`--kernel-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelFormat {
    /// The PVH-bootable ELF `vmlinux` when the kernel carries the PVH note and the host is
    /// x86_64 (qemu boots it without firmware and the emulated decompressor), else the bzImage
    #[default]
    Auto,
    /// The distribution's bzImage, always (supermin 5's behaviour)
    Bzimage,
}

/// Where the appliance's contents come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// supermin.d inputs (files or directories).
    Inputs {
        /// The inputs, in command-line order.
        paths: Vec<PathBuf>,
        /// How many bytes their compressed files may decompress to, together, and any one
        /// file in their base images may declare (`SUPERMIN_MAX_INPUT_SIZE`, or
        /// [`hostfiles::DEFAULT_MAX_INPUT_SIZE`]).
        max_input_size: u64,
    },
    /// The definition embedded in this binary (for `supermin run`).
    Default,
}

/// The choices beyond supermin 5's options that shape an appliance built from inputs. The
/// embedded default appliance takes the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// What `kernel` is (`--kernel-format`).
    pub kernel_format: KernelFormat,
    /// How package dependencies are followed (`--complete-deps`).
    pub deps: hostfiles::DepRule,
}

/// The environment variables a build depends on, as the binary captured them once. Kept
/// raw, so that the fingerprint tells unset from empty; [`BuildEnv::probe_env`] gives the
/// kernel probe its view (where empty means unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildEnv {
    /// `SUPERMIN_KERNEL`: the kernel to use instead of the newest installed one.
    pub kernel: Option<OsString>,
    /// `SUPERMIN_KERNEL_VERSION`: that kernel's version, overriding its header.
    pub kernel_version: Option<OsString>,
    /// `SUPERMIN_MODULES`: the modules directory, whichever kernel is chosen.
    pub modules: Option<OsString>,
}

impl BuildEnv {
    /// The variables, looked up by `var` (in the binary, the process environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> BuildEnv {
        BuildEnv {
            kernel: var("SUPERMIN_KERNEL"),
            kernel_version: var("SUPERMIN_KERNEL_VERSION"),
            modules: var("SUPERMIN_MODULES"),
        }
    }

    /// Each variable by name, in a fixed order (`None` = unset).
    pub fn vars(&self) -> [(&'static str, Option<&OsStr>); 3] {
        [
            ("SUPERMIN_KERNEL", self.kernel.as_deref()),
            ("SUPERMIN_KERNEL_VERSION", self.kernel_version.as_deref()),
            ("SUPERMIN_MODULES", self.modules.as_deref()),
        ]
    }

    /// What the kernel probe needs: these variables and the host CPU (`--host-cpu`, or
    /// this program's architecture).
    pub fn probe_env(&self, host_cpu: Option<&str>) -> kprobe::ProbeEnv {
        let vars = self.vars();
        kprobe::ProbeEnv::from_vars(
            |name| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .and_then(|(_, v)| v.map(OsStr::to_os_string))
            },
            host_cpu,
        )
    }
}

/// What one `--build` will produce, resolved from the command line and the environment
/// snapshot. [`BuildPlan::fingerprint`] covers every field that shapes the output.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// `-f`.
    pub format: Format,
    /// The inputs, or the embedded default appliance.
    pub source: Source,
    /// `-o DIR`, replaced atomically.
    pub output: PathBuf,
    /// `--size` of the ext2 root (`None`: [`crate::appliance::DEFAULT_SIZE`]).
    pub size: Option<u64>,
    /// `--host-cpu` (`None`: this program's architecture).
    pub host_cpu: Option<String>,
    /// `--copy-kernel`: copy the bzImage instead of symlinking it.
    pub copy_kernel: bool,
    /// `--fixed`: a kernel copy and `README.fixed`, for `LIBGUESTFS_PATH`.
    pub fixed: bool,
    /// `--include-packagelist`: `/packagelist` in the root.
    pub include_packagelist: bool,
    /// `--if-newer`: skip the build when the output's fingerprint matches.
    pub if_newer: bool,
    /// `--lock FILE`, held for the whole build.
    pub lock: Option<PathBuf>,
    /// Also write `vmlinux` (the kernel's payload as a PVH-bootable ELF) for the launcher.
    pub vmlinux: bool,
    /// Where extracted `vmlinux` files are kept between builds (in the runtime cache);
    /// `None` extracts every time. It does not change the output, so it is not in the
    /// fingerprint.
    pub vmlinux_cache: Option<PathBuf>,
    /// fsync the output before publishing it (fixed appliances are meant to last).
    pub durability: Durability,
    /// `-v` count: how much progress the build reports.
    pub verbose: u8,
    /// `SOURCE_DATE_EPOCH`, or the build time.
    pub time: i64,
    /// `SOURCE_DATE_EPOCH` when set: the root's times are clamped to it, so that the same
    /// inputs give a bit-identical image.
    pub clamp_times: Option<i64>,
    /// `--kernel-format` and `--complete-deps`.
    pub options: BuildOptions,
    /// The environment variables that choose the kernel.
    pub env: BuildEnv,
}

impl BuildPlan {
    /// Everything that determines the output, cheaply (see the module docs for what is
    /// left out on purpose): this plan, the inputs' contents or identities, the package
    /// database's identity and `kernel`'s (the one [`BuildEnv::probe_env`] chose).
    pub fn fingerprint(&self, kernel: Option<&kprobe::Kernel>) -> Result<Fingerprint, BuildError> {
        let mut fb = FingerprintBuilder::new(env!("CARGO_PKG_VERSION"));
        // This tool's code (the init, the daemon, the default appliance's definition and
        // the writers), identified by a hash of its sources made at compile time: two
        // builds of the same sources share a cached appliance, any change to them rebuilds
        // it.
        fb.str("source", env!("SUPERMIN_SOURCE_ID"));
        fb.str("format", &format!("{:?}", self.format));
        fb.str("size", &format!("{:?}", self.size));
        fb.str(
            "host-cpu",
            self.host_cpu.as_deref().unwrap_or(std::env::consts::ARCH),
        );
        fb.str(
            "flags",
            &format!(
                "copy_kernel={} fixed={} packagelist={} vmlinux={}",
                self.copy_kernel, self.fixed, self.include_packagelist, self.vmlinux
            ),
        );
        fb.str(
            "kernel-format",
            &format!("{:?}", self.options.kernel_format),
        );
        fb.str("deps", &format!("{:?}", self.options.deps));
        for (name, value) in self.env.vars() {
            fb.env_value(name, value);
        }
        // SOURCE_DATE_EPOCH, as the times it clamps the root to.
        fb.str("clamp-times", &format!("{:?}", self.clamp_times));
        match &self.source {
            // max_input_size is left out: it decides whether a build succeeds, never what
            // it writes, and a failed build publishes nothing to be found fresh.
            Source::Inputs { paths, .. } => {
                for p in paths {
                    fb.str("input", &p.to_string_lossy());
                    // Small files (lists, base images of a few MB) by contents: an edit
                    // that keeps size and mtime is still seen. Larger ones by identity
                    // (ctime moves on every write).
                    fb.tree(p, HashMode::ContentsUpTo(8 << 20))?;
                }
            }
            Source::Default => fb.str("input", "embedded default appliance"),
        }
        match hostfiles::package_db_identity(Path::new("/")) {
            Ok(id) => fb.bytes("package-db", &id),
            Err(_) => fb.str("package-db", "none"),
        }
        if let Some(k) = kernel {
            fb.str("kernel", &k.path.to_string_lossy());
            fb.str("kernel-version", &k.version);
            fb.str("modules", &k.modules_dir.to_string_lossy());
            for id in k.identity()? {
                fb.str("identity", &format!("{id:?}"));
            }
        }
        Ok(fb.finish())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A supermin.d with one hostfiles list, in its own temporary directory.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("supermin.d")).unwrap();
            fs::write(dir.path().join("supermin.d/hostfiles"), "/etc/hostname\n").unwrap();
            Fixture { dir }
        }

        fn input(&self) -> PathBuf {
            self.dir.path().join("supermin.d")
        }

        fn plan(&self) -> BuildPlan {
            BuildPlan {
                format: Format::Ext2,
                source: Source::Inputs {
                    paths: vec![self.input()],
                    max_input_size: hostfiles::DEFAULT_MAX_INPUT_SIZE,
                },
                output: self.dir.path().join("out"),
                size: None,
                host_cpu: None,
                copy_kernel: false,
                fixed: false,
                include_packagelist: false,
                if_newer: true,
                lock: None,
                vmlinux: false,
                vmlinux_cache: None,
                durability: Durability::Unsynced,
                verbose: 0,
                time: 0,
                clamp_times: None,
                options: BuildOptions::default(),
                env: BuildEnv::default(),
            }
        }

        /// A kernel file and a modules directory with a `modules.dep`, as the probe would
        /// return them.
        fn kernel(&self) -> kprobe::Kernel {
            let path = self.dir.path().join("vmlinuz-6.1.0-test");
            let modules_dir = self.dir.path().join("modules/6.1.0-test");
            if !path.exists() {
                fs::write(&path, b"not really a kernel").unwrap();
                fs::create_dir_all(&modules_dir).unwrap();
                fs::write(modules_dir.join("modules.dep"), b"").unwrap();
            }
            kprobe::Kernel {
                path,
                version: "6.1.0-test".into(),
                version_source: kprobe::VersionSource::FileName,
                modules_dir,
                source: kprobe::KernelSource::Boot,
                config: None,
                candidates: Vec::new(),
            }
        }
    }

    fn fp(plan: &BuildPlan) -> Fingerprint {
        plan.fingerprint(None).unwrap()
    }

    #[test]
    fn the_same_plan_gives_the_same_fingerprint() {
        let f = Fixture::new();
        assert_eq!(fp(&f.plan()), fp(&f.plan()));
        let k = f.kernel();
        assert_eq!(
            f.plan().fingerprint(Some(&k)).unwrap(),
            f.plan().fingerprint(Some(&k)).unwrap()
        );
    }

    // --if-newer is only as good as this: what does not shape the output must not move the
    // fingerprint, or every run would rebuild.
    #[test]
    fn what_does_not_shape_the_output_leaves_the_fingerprint_alone() {
        let f = Fixture::new();
        let base = fp(&f.plan());
        let same = BuildPlan {
            verbose: 3,
            lock: Some(f.dir.path().join("lock")),
            vmlinux_cache: Some(f.dir.path().join("cache")),
            durability: Durability::Synced,
            output: f.dir.path().join("elsewhere"),
            if_newer: false,
            // Without SOURCE_DATE_EPOCH the build time only stamps the image.
            time: 1_700_000_000,
            source: Source::Inputs {
                paths: vec![f.input()],
                max_input_size: 1 << 20,
            },
            ..f.plan()
        };
        assert_eq!(base, fp(&same));
    }

    #[test]
    fn each_option_that_shapes_the_output_changes_the_fingerprint() {
        let f = Fixture::new();
        let base = fp(&f.plan());
        let set = |name: &str| Some(OsString::from(name));
        let changed: Vec<(&str, BuildPlan)> = vec![
            (
                "format",
                BuildPlan {
                    format: Format::Chroot,
                    ..f.plan()
                },
            ),
            (
                "size",
                BuildPlan {
                    size: Some(1 << 30),
                    ..f.plan()
                },
            ),
            (
                "host cpu",
                BuildPlan {
                    host_cpu: Some("amd64".into()),
                    ..f.plan()
                },
            ),
            (
                "copy kernel",
                BuildPlan {
                    copy_kernel: true,
                    ..f.plan()
                },
            ),
            (
                "fixed",
                BuildPlan {
                    fixed: true,
                    ..f.plan()
                },
            ),
            (
                "packagelist",
                BuildPlan {
                    include_packagelist: true,
                    ..f.plan()
                },
            ),
            (
                "vmlinux",
                BuildPlan {
                    vmlinux: true,
                    ..f.plan()
                },
            ),
            (
                "SOURCE_DATE_EPOCH",
                BuildPlan {
                    clamp_times: Some(0),
                    ..f.plan()
                },
            ),
            (
                "kernel format",
                BuildPlan {
                    options: BuildOptions {
                        kernel_format: KernelFormat::Bzimage,
                        ..BuildOptions::default()
                    },
                    ..f.plan()
                },
            ),
            (
                "deps",
                BuildPlan {
                    options: BuildOptions {
                        deps: hostfiles::DepRule::Complete,
                        ..BuildOptions::default()
                    },
                    ..f.plan()
                },
            ),
            (
                "SUPERMIN_KERNEL",
                BuildPlan {
                    env: BuildEnv {
                        kernel: set("/boot/vmlinuz"),
                        ..BuildEnv::default()
                    },
                    ..f.plan()
                },
            ),
            (
                "SUPERMIN_KERNEL_VERSION",
                BuildPlan {
                    env: BuildEnv {
                        kernel_version: set("6.1.0"),
                        ..BuildEnv::default()
                    },
                    ..f.plan()
                },
            ),
            (
                "SUPERMIN_MODULES",
                BuildPlan {
                    env: BuildEnv {
                        modules: set("/lib/modules/6.1.0"),
                        ..BuildEnv::default()
                    },
                    ..f.plan()
                },
            ),
            (
                "the default appliance",
                BuildPlan {
                    source: Source::Default,
                    ..f.plan()
                },
            ),
        ];
        let mut seen = vec![("base", base)];
        for (what, plan) in changed {
            let value = fp(&plan);
            if let Some((other, _)) = seen.iter().find(|(_, v)| *v == value) {
                panic!("{what} gives the fingerprint of {other}");
            }
            seen.push((what, value));
        }
    }

    #[test]
    fn an_unset_variable_and_an_empty_one_differ() {
        let f = Fixture::new();
        let with = |env: BuildEnv| fp(&BuildPlan { env, ..f.plan() });
        let empty = Some(OsString::new());
        let unset = with(BuildEnv::default());
        for env in [
            BuildEnv {
                kernel: empty.clone(),
                ..BuildEnv::default()
            },
            BuildEnv {
                kernel_version: empty.clone(),
                ..BuildEnv::default()
            },
            BuildEnv {
                modules: empty.clone(),
                ..BuildEnv::default()
            },
        ] {
            assert_ne!(unset, with(env.clone()), "{env:?}");
        }
        // Each variable is recorded under its own name: the same value in another one
        // is another environment.
        let a = with(BuildEnv {
            kernel: Some("x".into()),
            ..BuildEnv::default()
        });
        let b = with(BuildEnv {
            modules: Some("x".into()),
            ..BuildEnv::default()
        });
        assert_ne!(a, b);
    }

    #[test]
    fn an_edit_inside_an_input_that_keeps_size_and_mtime_changes_the_fingerprint() {
        let f = Fixture::new();
        let list = f.input().join("hostfiles");
        let base = fp(&f.plan());
        let before = fs::metadata(&list).unwrap();
        fs::write(&list, "/etc/hostnamf\n").unwrap();
        let file = fs::File::options().write(true).open(&list).unwrap();
        file.set_modified(before.modified().unwrap()).unwrap();
        assert_eq!(fs::metadata(&list).unwrap().size(), before.size());
        assert_ne!(
            base,
            fp(&f.plan()),
            "an edit with size and mtime kept went unseen"
        );
    }

    #[test]
    fn the_list_of_input_paths_is_part_of_the_fingerprint() {
        let f = Fixture::new();
        let other = f.dir.path().join("more.d");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("packages"), "bash\n").unwrap();
        let with = |paths: Vec<PathBuf>| {
            fp(&BuildPlan {
                source: Source::Inputs {
                    paths,
                    max_input_size: hostfiles::DEFAULT_MAX_INPUT_SIZE,
                },
                ..f.plan()
            })
        };
        let one = with(vec![f.input()]);
        let two = with(vec![f.input(), other.clone()]);
        let swapped = with(vec![other.clone(), f.input()]);
        let none = with(Vec::new());
        assert_ne!(one, two);
        // Inputs are read in order, and a later one can override an earlier one.
        assert_ne!(two, swapped);
        assert_ne!(one, none);
        // A new file in an input directory is seen.
        fs::write(f.input().join("excludefiles"), "-/usr/share/doc/*\n").unwrap();
        assert_ne!(one, with(vec![f.input()]));
    }

    #[test]
    fn the_chosen_kernel_is_part_of_the_fingerprint() {
        let f = Fixture::new();
        let k = f.kernel();
        let with = |k: &kprobe::Kernel| f.plan().fingerprint(Some(k)).unwrap();
        let base = with(&k);
        assert_ne!(base, fp(&f.plan()));
        let newer = kprobe::Kernel {
            version: "6.1.0-test2".into(),
            ..k.clone()
        };
        assert_ne!(base, with(&newer));
        // A kernel replaced in place (a package upgrade rewrites the same name).
        fs::remove_file(&k.path).unwrap();
        fs::write(&k.path, b"another, longer kernel").unwrap();
        assert_ne!(base, with(&k));
    }

    #[test]
    fn the_kernel_probe_sees_the_snapshot_with_empty_as_unset() {
        let env = BuildEnv {
            kernel: Some("/k".into()),
            kernel_version: Some(OsString::new()),
            modules: None,
        };
        let probe = env.probe_env(Some("x86_64"));
        assert_eq!(probe.kernel.as_deref(), Some(Path::new("/k")));
        assert_eq!(probe.kernel_version, None);
        assert_eq!(probe.modules, None);
        assert_eq!(probe.host_cpu, "x86_64");
    }
}
