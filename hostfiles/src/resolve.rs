//! `resolve`: inputs -> the ordered file set, following supermin 5's build steps (package
//! closure, package files minus config files minus excludes, plus hostfiles, minus what does
//! not exist, plus parents) and then the ELF closure, which supermin does not have.

use std::fs;
use std::path::{Path, PathBuf};

use crate::base_image::BaseImage;
use crate::elf::Closure;
use crate::error::{HostfilesError, Result};
use crate::inputs::Inputs;
use crate::packages::{self, DepRule, Handler};
use crate::pattern::{fnmatch, glob, join_root};
use crate::tree::{FileKind, HostFile, Tree};

/// How to resolve.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// The system whose files and package database are used; `/` normally.
    pub root: PathBuf,
    /// Add the ELF closure (PT_INTERP + DT_NEEDED) of every ELF file in the set.
    pub elf_closure: bool,
    /// Use this package handler instead of detecting one.
    pub handler: Option<Handler>,
    /// How package dependencies are followed: like supermin 5 (the default) or completely.
    pub deps: DepRule,
}

impl Default for ResolveOptions {
    fn default() -> Self {
        ResolveOptions {
            root: PathBuf::from("/"),
            elf_closure: true,
            handler: None,
            deps: DepRule::default(),
        }
    }
}

/// The resolved appliance contents.
#[derive(Debug, Clone)]
pub struct FileSet {
    /// The root the files were resolved against; read file `f` at `root + f.path`.
    pub root: PathBuf,
    /// Absolute in-root paths, sorted component-wise (parents before children), no
    /// duplicates, no entry below a symlink. `/` itself is not listed.
    pub files: Vec<HostFile>,
    /// Full package closure as supermin prints it (`name_version_arch` for dpkg), sorted:
    /// the contents of `/packagelist` for `--include-packagelist`.
    pub packages: Vec<String>,
    /// Base images to overlay, in input order.
    pub base_images: Vec<BaseImage>,
    /// The package handler used, e.g. `debian/dpkg` (None if no package was asked for).
    pub handler: Option<&'static str>,
    /// Things the user may want to know (packages not installed, libraries not found).
    pub warnings: Vec<String>,
}

fn is_config(root: &Path, path: &str, declared: bool) -> bool {
    // supermin's rule for dpkg and pacman: any regular file under /etc is configuration
    // and comes from the base image; rpm and conffiles add the database's own marks.
    declared
        || (path.starts_with("/etc/")
            && fs::symlink_metadata(join_root(root, Path::new(path))).is_ok_and(|m| m.is_file()))
}

fn could_be_elf_object(f: &HostFile) -> bool {
    f.kind == FileKind::Regular
        && (f.mode & 0o111 != 0
            || f.path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".so")))
}

/// Resolve inputs into the file set.
pub fn resolve(inputs: &Inputs, opts: &ResolveOptions) -> Result<FileSet> {
    let root = opts.root.as_path();
    let mut tree = Tree::new(root);
    let mut warnings = Vec::new();
    let mut packages = Vec::new();
    let mut handler_name = None;

    if !inputs.packages.is_empty() {
        let h = match opts.handler {
            Some(h) => h,
            None => packages::detect(root).ok_or_else(|| HostfilesError::NoPackageHandler {
                root: root.to_path_buf(),
            })?,
        };
        handler_name = Some(h.name());
        let db = packages::load(h, root)?;
        let (set, missing) = db.closure_with(&inputs.packages, opts.deps);
        for m in missing {
            warnings.push(format!(
                "package {m} is not installed on this system; ignored"
            ));
        }
        packages = set.iter().map(|&i| db.pkgs[i].display.clone()).collect();
        packages.sort();
        let files = db.files(&set)?;
        // Most excludes are `/literal/prefix/*`: checking the literal part first skips the
        // wildcard matcher for nearly every path (it was the top user-space cost).
        let excludes: Vec<(&str, &str)> = inputs
            .excludes
            .iter()
            .map(|p| {
                let lit = p.find(['*', '?', '[']).unwrap_or(p.len());
                (&p[..lit], p.as_str())
            })
            .collect();
        let excluded = |path: &str| {
            excludes
                .iter()
                .any(|(lit, pat)| path.starts_with(lit) && fnmatch(pat, path))
        };
        for f in files {
            if is_config(root, &f.path, f.config) {
                continue;
            }
            let listed = Path::new(&f.path);
            if excluded(&f.path) {
                continue;
            }
            // An exclude written for the merged-/usr name (`/usr/lib/modules/*`) also
            // covers a package that still lists the old one (`/lib/modules/...`).
            if !inputs.excludes.is_empty() {
                if let Some(phys) = tree.physical(listed) {
                    if phys != listed {
                        let s = phys.to_string_lossy();
                        if excluded(&s) {
                            continue;
                        }
                    }
                }
            }
            tree.add(listed);
        }
    }

    // supermin puts the target of a packaged symlink to a directory in the appliance too
    // (`/var/lock -> ../run/lock` brings `/run/lock`), so the link is not left dangling.
    let dir_links: Vec<PathBuf> = tree
        .entries()
        .filter(|f| f.kind == FileKind::Symlink)
        .map(|f| f.path.clone())
        .collect();
    for l in dir_links {
        if let Some((phys, hf)) = tree.canonical(&l) {
            if hf.kind == FileKind::Dir {
                tree.add(&phys);
            }
        }
    }

    // Hostfiles are always checked for ELF: the user named them, whatever their mode.
    let mut named = Vec::new();
    for pattern in &inputs.hostfiles {
        for p in glob(pattern, root) {
            if tree.add_following(&p).is_some() {
                named.push(p);
            }
        }
    }

    let mut before_closure: Option<std::collections::HashSet<PathBuf>> = None;
    if opts.elf_closure {
        let mut objects: Vec<PathBuf> = tree
            .entries()
            .filter(|f| could_be_elf_object(f))
            .map(|f| f.path.clone())
            .collect();
        if !inputs.excludes.is_empty() {
            before_closure = Some(tree.entries().map(|f| f.path.clone()).collect());
        }
        objects.extend(named);
        let mut c = Closure::new(&mut tree);
        c.run(&objects, false)?;
        warnings.append(&mut c.warnings);
    }
    let mut files = tree.into_files();
    // An excludefiles line is the user's word, also against the ELF closure: a library it
    // names stays out (the builder's check of the assembled tree then warns about every
    // object that needs it). Files named by hostfiles are kept, as excludes never apply
    // to them.
    if let Some(before) = before_closure {
        files.retain(|f| {
            before.contains(&f.path)
                || !inputs
                    .excludes
                    .iter()
                    .any(|pat| fnmatch(pat, &f.path.to_string_lossy()))
        });
    }

    Ok(FileSet {
        root: root.to_path_buf(),
        files,
        packages,
        base_images: inputs.base_images.clone(),
        handler: handler_name,
        warnings,
    })
}

/// The result of [`elf_closure`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfClosure {
    /// Every path needed (inputs, interpreters, libraries, symlinks and their targets, and
    /// the directories and merged-/usr links leading to them), parents before children.
    pub files: Vec<PathBuf>,
    /// Libraries or interpreters that could not be found.
    pub warnings: Vec<String>,
}

/// The ELF closure of `paths` (absolute in-root paths) on its own, without packages.
/// A path that is not ELF is kept without dependencies; a malformed ELF is an error.
pub fn elf_closure(paths: &[PathBuf], root: &Path) -> Result<ElfClosure> {
    let mut tree = Tree::new(root);
    let mut c = Closure::new(&mut tree);
    c.run(paths, true)?;
    let warnings = std::mem::take(&mut c.warnings);
    Ok(ElfClosure {
        files: tree.into_files().into_iter().map(|f| f.path).collect(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::dpkg::tests::fake_dpkg;
    use crate::testutil::{craft_elf, link, write};
    use goblin::elf::header::EM_X86_64;

    fn paths(set: &FileSet) -> Vec<String> {
        set.files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect()
    }

    /// A merged-/usr Debian-like root with a few packages.
    fn debian_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fake_dpkg(
            r,
            &[
                ("dpkg", "amd64", "", "", &[], &[]),
                (
                    "bash",
                    "amd64",
                    "libc6 (>= 2.36), base-files",
                    "",
                    &[
                        "/bin",
                        "/bin/bash",
                        "/etc",
                        "/etc/bash.bashrc",
                        "/usr/share/doc/bash",
                        "/usr/share/doc/bash/copyright",
                        "/usr/bin/gone",
                    ],
                    &["/etc/bash.bashrc"],
                ),
                (
                    "libc6",
                    "amd64",
                    "",
                    "",
                    &[
                        "/lib",
                        "/lib/x86_64-linux-gnu",
                        "/lib/x86_64-linux-gnu/libc.so.6",
                        "/lib/modules/6.1/x.ko",
                        "/etc/ld.so.conf.d/x.conf",
                    ],
                    &[],
                ),
                ("base-files", "all", "", "", &["/var/lock"], &[]),
                ("unwanted", "amd64", "", "", &["/usr/bin/unwanted"], &[]),
            ],
            "",
        );
        for dir in [
            "usr/bin",
            "usr/lib/x86_64-linux-gnu",
            "usr/lib/modules/6.1",
            "usr/share/doc/bash",
            "etc/ld.so.conf.d",
            "run/lock",
            "var",
        ] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        link(r, "/bin", "usr/bin");
        link(r, "/lib", "usr/lib");
        link(r, "/var/lock", "../run/lock");
        write(r, "/usr/bin/bash", b"bash");
        write(r, "/usr/bin/unwanted", b"x");
        write(r, "/etc/bash.bashrc", b"rc");
        write(r, "/etc/ld.so.conf.d/x.conf", b"/x");
        write(r, "/usr/lib/x86_64-linux-gnu/libc.so.6", b"libc");
        write(r, "/usr/lib/modules/6.1/x.ko", b"ko");
        write(r, "/usr/share/doc/bash/copyright", b"c");
        write(r, "/usr/lib/lsb/init-functions", b"f");
        write(r, "/usr/lib/lsb/.hidden", b"h");
        d
    }

    fn inputs(packages: &[&str], hostfiles: &[&str], excludes: &[&str]) -> Inputs {
        Inputs {
            packages: packages.iter().map(|s| s.to_string()).collect(),
            hostfiles: hostfiles.iter().map(|s| s.to_string()).collect(),
            excludes: excludes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn opts(root: &Path) -> ResolveOptions {
        ResolveOptions {
            root: root.to_path_buf(),
            elf_closure: false,
            ..Default::default()
        }
    }

    #[test]
    fn package_files_minus_config_minus_excludes_plus_hostfiles_plus_parents() {
        let d = debian_root();
        let i = inputs(
            &["bash", "not-installed"],
            &["/lib/lsb/*", "/nothing/*"],
            &["/usr/share/doc/*", "/usr/lib/modules/*"],
        );
        let set = resolve(&i, &opts(d.path())).unwrap();
        assert_eq!(
            paths(&set),
            [
                "/bin",
                "/etc",
                "/lib",
                "/run",
                "/run/lock",
                "/usr",
                "/usr/bin",
                "/usr/bin/bash",
                "/usr/lib",
                "/usr/lib/lsb",
                "/usr/lib/lsb/init-functions",
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/var",
                "/var/lock",
            ]
        );
        assert_eq!(
            set.packages,
            [
                "base-files_1.0-1_all",
                "bash_1.0-1_amd64",
                "libc6_1.0-1_amd64"
            ]
        );
        assert_eq!(set.handler, Some("debian/dpkg"));
        assert_eq!(set.warnings.len(), 1);
        assert!(set.warnings[0].contains("not-installed"));
        let lib = set
            .files
            .iter()
            .find(|f| f.path == Path::new("/lib"))
            .unwrap();
        assert_eq!(lib.kind, FileKind::Symlink);
        assert_eq!(lib.link_target.as_deref(), Some(Path::new("usr/lib")));
        let bash = set
            .files
            .iter()
            .find(|f| f.path == Path::new("/usr/bin/bash"))
            .unwrap();
        assert_eq!((bash.kind, bash.size), (FileKind::Regular, 4));
    }

    #[test]
    fn merged_usr_aliases_are_kept_even_when_no_package_lists_them() {
        // Regression: a bookworm->trixie upgrade left /lib64 unowned; supermin then built
        // appliances without it and every dynamic binary failed to start.
        let d = debian_root();
        link(d.path(), "/lib64", "usr/lib64");
        write(d.path(), "/usr/lib64/ld-linux-x86-64.so.2", b"ld");
        let set = resolve(
            &inputs(&[], &["/lib64/ld-linux-x86-64.so.2"], &[]),
            &opts(d.path()),
        )
        .unwrap();
        assert_eq!(
            paths(&set),
            [
                "/lib64",
                "/usr",
                "/usr/lib64",
                "/usr/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn excludes_do_not_apply_to_hostfiles() {
        let d = debian_root();
        let set = resolve(
            &inputs(
                &[],
                &["/usr/share/doc/bash/copyright"],
                &["/usr/share/doc/*"],
            ),
            &opts(d.path()),
        )
        .unwrap();
        assert!(paths(&set).contains(&"/usr/share/doc/bash/copyright".to_string()));
    }

    #[test]
    fn no_package_manager_is_an_error_only_when_packages_are_asked_for() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "/usr/bin/x", b"x");
        assert!(resolve(&inputs(&[], &["/usr/bin/x"], &[]), &opts(d.path())).is_ok());
        let e = resolve(&inputs(&["bash"], &[], &[]), &opts(d.path())).unwrap_err();
        assert!(matches!(e, HostfilesError::NoPackageHandler { .. }));
    }

    #[test]
    fn hostfiles_only_elf_input_brings_interpreter_and_libraries() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let lib = |needed: &[&str]| craft_elf(true, EM_X86_64, None, needed, None, None);
        write(
            r,
            "/usr/bin/tool",
            &craft_elf(
                true,
                EM_X86_64,
                Some("/lib64/ld-linux-x86-64.so.2"),
                &["libz.so.1"],
                None,
                None,
            ),
        );
        write(
            r,
            "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
            &lib(&["libc.so.6"]),
        );
        link(r, "/usr/lib/x86_64-linux-gnu/libz.so.1", "libz.so.1.2.13");
        write(r, "/usr/lib/x86_64-linux-gnu/libc.so.6", &lib(&[]));
        write(
            r,
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            &lib(&[]),
        );
        link(
            r,
            "/usr/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        );
        link(r, "/lib64", "usr/lib64");
        link(r, "/lib", "usr/lib");
        link(r, "/bin", "usr/bin");
        let mut o = opts(r);
        o.elf_closure = true;
        let set = resolve(&inputs(&[], &["/bin/tool"], &[]), &o).unwrap();
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        assert_eq!(
            paths(&set),
            [
                "/bin",
                "/lib",
                "/lib64",
                "/usr",
                "/usr/bin",
                "/usr/bin/tool",
                "/usr/lib",
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/libz.so.1",
                "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
                "/usr/lib64",
                "/usr/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }
}
