//! `resolve`: inputs -> the ordered file set, following supermin 5's build steps (package
//! closure, package files minus config files minus excludes, plus hostfiles, minus what does
//! not exist, plus parents) and then the ELF closure, which supermin does not have.

use std::fs;
use std::path::{Path, PathBuf};

use crate::elf::Closure;
use crate::error::{HostfilesError, Result};
use crate::inputs::{BaseImage, Inputs};
use crate::packages::{self, Handler};
use crate::pattern::{fnmatch, glob, join_root};
use crate::tree::{FileKind, HostFile, Tree};

/// How to resolve.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// The system whose files and package database are used; `/` normally.
    pub root: PathBuf,
    /// `--host-cpu` (kept for the builder's fingerprint; package selection uses the
    /// package manager's own native architecture).
    pub host_cpu: String,
    /// Add the ELF closure (PT_INTERP + DT_NEEDED) of every ELF file in the set.
    pub elf_closure: bool,
    /// Use this package handler instead of detecting one.
    pub handler: Option<Handler>,
}

impl Default for ResolveOptions {
    fn default() -> Self {
        ResolveOptions {
            root: PathBuf::from("/"),
            host_cpu: std::env::consts::ARCH.to_string(),
            elf_closure: true,
            handler: None,
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
        let (set, missing) = db.closure(&inputs.packages);
        for m in missing {
            warnings.push(format!(
                "package {m} is not installed on this system; ignored"
            ));
        }
        packages = set.iter().map(|&i| db.pkgs[i].display.clone()).collect();
        packages.sort();
        let files = db.files(&set)?;
        for f in files {
            if is_config(root, &f.path, f.config) {
                continue;
            }
            let listed = Path::new(&f.path);
            if inputs.excludes.iter().any(|p| fnmatch(p, &f.path)) {
                continue;
            }
            // An exclude written for the merged-/usr name (`/usr/lib/modules/*`) also
            // covers a package that still lists the old one (`/lib/modules/...`).
            if !inputs.excludes.is_empty() {
                if let Some(phys) = tree.physical(listed) {
                    if phys != listed {
                        let s = phys.to_string_lossy();
                        if inputs.excludes.iter().any(|p| fnmatch(p, &s)) {
                            continue;
                        }
                    }
                }
            }
            tree.add(listed);
        }
    }

    for pattern in &inputs.hostfiles {
        for p in glob(pattern, root) {
            tree.add_following(&p);
        }
    }

    if opts.elf_closure {
        let objects: Vec<PathBuf> = tree
            .entries()
            .filter(|f| could_be_elf_object(f))
            .map(|f| f.path.clone())
            .collect();
        let mut c = Closure::new(&mut tree);
        c.run(&objects, false)?;
        warnings.append(&mut c.warnings);
    }

    Ok(FileSet {
        root: root.to_path_buf(),
        files: tree.into_files(),
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
