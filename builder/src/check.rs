//! The last look at an assembled tree before it is written and published: will the
//! appliance's `/init` run, and can every ELF object in it be loaded there?
//!
//! The libguestfs FAQ's `execl: /init: Permission denied` is a broken appliance found only
//! at boot, with a console full of debug output. Here it is found at build time: an `/init`
//! that is not executable, or whose interpreter (`#!` line, or the ELF `PT_INTERP`) or
//! whose interpreter's libraries are not in the tree, is an error with one line; any other
//! ELF object missing its interpreter or a `DT_NEEDED` library (an `excludefiles` line took
//! it away, a base image replaced its directory) is a warning naming the file and what it
//! lacks. The search rules are `supermin_hostfiles`' (ld.so's, applied inside the tree).
//!
//! A tree without `/init` only warns: `-f chroot` trees are also used as plain chroots, and
//! a supermin.d may bring its init from another input than the one under test.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use supermin_ext2::{FileData, NodeKind, Tree};
use supermin_hostfiles::{self as hostfiles, Missing, TreeView, ViewNode};

/// Why the appliance's `/init` cannot run.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// `/init` has no execute bit.
    #[error(
        "the appliance's /init is not executable (mode {mode:04o}): it would fail at boot with \
         `execl: /init: Permission denied`; make it executable in its input (chmod 0755 before \
         packing init.tar.gz)"
    )]
    NotExecutable {
        /// Its mode bits.
        mode: u32,
    },
    /// `/init` is not a regular file.
    #[error("the appliance's /init is not a regular file (or a symlink to one); replace it")]
    NotAFile,
    /// `/init` is a script whose interpreter is not in the appliance.
    #[error(
        "the appliance's /init is a script for {interp}, which is not in the appliance: add it \
         (a hostfiles line or its package)"
    )]
    ScriptInterpreterMissing {
        /// The interpreter.
        interp: String,
    },
    /// `/init` (an ELF program) lacks its loader or a library.
    #[error(
        "the appliance's /init cannot start: {problem}; add what is missing (a hostfiles line or \
         its package) or drop the excludefiles line that removes it"
    )]
    Unloadable {
        /// What is missing.
        problem: String,
    },
}

impl InitError {
    /// The way out, where the message and its cause do not say it. None so far: each
    /// variant that has one says it in its message; this is where a new one goes.
    pub fn hint(&self) -> Option<String> {
        None
    }
}

/// What the check found that does not stop the build.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// What the user should hear about.
    pub warnings: Vec<String>,
    /// Regular files in the tree, the ELF objects among them, and how long the check took.
    pub files: usize,
    /// ELF objects among the regular files.
    pub elf_objects: usize,
    /// How long the check took.
    pub elapsed: std::time::Duration,
}

impl CheckReport {
    /// One line for `-v`.
    pub fn summary(&self) -> String {
        format!(
            "checked /init and {} ELF objects among {} files in {:.1} ms: {} warning(s)",
            self.elf_objects,
            self.files,
            self.elapsed.as_secs_f64() * 1e3,
            self.warnings.len()
        )
    }
}

/// Checks `tree`: `Err` when `/init` cannot run, warnings for every other object that
/// cannot be loaded in it.
pub fn check_tree(tree: &Tree) -> Result<CheckReport, InitError> {
    let start = std::time::Instant::now();
    let view = ImageView { tree };
    let links = hostfiles::check_links(&view);
    let mut report = CheckReport {
        files: links.files,
        elf_objects: links.elf_objects,
        ..CheckReport::default()
    };

    // The objects /init depends on to start: itself and its interpreter (a script's, and
    // an ELF's PT_INTERP), each followed to its canonical path.
    let mut vital: Vec<PathBuf> = Vec::new();
    match hostfiles::resolve_in(&view, Path::new("/init")) {
        None => report.warnings.push(
            "the appliance has no /init: it can be used as a chroot but will not boot; add one \
             (libguestfs's init.tar.gz, or a base image holding it)"
                .into(),
        ),
        Some((canon, ViewNode::File { mode })) => {
            if mode & 0o111 == 0 {
                return Err(InitError::NotExecutable { mode });
            }
            vital.push(canon.clone());
            if let Some(interp) = script_interpreter(&view, &canon) {
                match hostfiles::resolve_in(&view, Path::new(&interp)) {
                    Some((ic, ViewNode::File { mode })) if mode & 0o111 != 0 => vital.push(ic),
                    Some((_, ViewNode::File { mode })) => {
                        return Err(InitError::Unloadable {
                            problem: format!(
                                "its interpreter {interp} is not executable (mode {mode:04o})"
                            ),
                        })
                    }
                    _ => return Err(InitError::ScriptInterpreterMissing { interp }),
                }
            }
            // The ELF interpreter of /init (or of its script interpreter) is vital too.
            let elf_interps: Vec<PathBuf> = vital
                .iter()
                .filter_map(|p| hostfiles::elf_info_in(&view, p)?.interp)
                .filter_map(|i| hostfiles::resolve_in(&view, Path::new(&i)).map(|(c, _)| c))
                .collect();
            vital.extend(elf_interps);
        }
        Some(_) => return Err(InitError::NotAFile),
    }
    for p in links.problems {
        if vital.contains(&p.object) {
            let what = match &p.missing {
                Missing::Interpreter(i) => format!("{} needs {i}", p.object.display()),
                Missing::Library(l) => format!("{} needs {l}", p.object.display()),
            };
            return Err(InitError::Unloadable { problem: what });
        }
        report.warnings.push(p.to_string());
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// The first `limit` bytes (at most) of the regular file at `path` in `tree`, symlinks
/// followed inside the tree; `None` when there is no such file or it cannot be read.
pub(crate) fn read_tree_file(tree: &Tree, path: &Path, limit: usize) -> Option<Vec<u8>> {
    let view = ImageView { tree };
    let (canon, ViewNode::File { .. }) = hostfiles::resolve_in(&view, path)? else {
        return None;
    };
    let file = view.open(&canon).ok()?;
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while out.len() < limit {
        let want = chunk.len().min(limit - out.len());
        let n = file.read_at(&mut chunk[..want], out.len() as u64).ok()?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Some(out)
}

/// The names in the directory at `path` in `tree` (symlinks followed inside the tree),
/// sorted; empty when there is no such directory.
pub(crate) fn list_tree_dir(tree: &Tree, path: &Path) -> Vec<OsString> {
    let view = ImageView { tree };
    match hostfiles::resolve_in(&view, path) {
        Some((canon, ViewNode::Dir)) => {
            let mut names = view.list(&canon);
            names.sort();
            names
        }
        _ => Vec::new(),
    }
}

/// The interpreter of a `#!` script (its first word), or `None` for anything else.
fn script_interpreter(view: &ImageView<'_>, path: &Path) -> Option<String> {
    let file = view.open(path).ok()?;
    let mut head = [0u8; 256];
    let n = file.read_at(&mut head, 0).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let word = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())?;
    Some(String::from_utf8_lossy(word).into_owned())
}

/// The image tree seen by the ELF check.
struct ImageView<'t> {
    tree: &'t Tree,
}

/// A regular file of the tree, read where its bytes come from.
enum TreeFile {
    Host(File),
    Range {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
    Bytes(Arc<[u8]>),
}

impl FileExt for TreeFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            TreeFile::Host(f) => f.read_at(buf, offset),
            TreeFile::Range {
                file,
                offset: base,
                len,
            } => {
                if offset >= *len {
                    return Ok(0);
                }
                let n = usize::try_from(len - offset).map_or(buf.len(), |l| l.min(buf.len()));
                file.read_at(&mut buf[..n], base + offset)
            }
            TreeFile::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let n = buf.len().min(b.len() - start);
                buf[..n].copy_from_slice(&b[start..start + n]);
                Ok(n)
            }
        }
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the image tree is read-only here",
        ))
    }
}

impl TreeView for ImageView<'_> {
    type File = TreeFile;

    fn node(&self, path: &Path) -> Option<ViewNode> {
        let id = self.tree.lookup(path.as_os_str().as_bytes())?;
        Some(match self.tree.kind(id) {
            NodeKind::Dir => ViewNode::Dir,
            NodeKind::File(_) => ViewNode::File {
                mode: u32::from(self.tree.meta(id).mode & 0o7777),
            },
            NodeKind::Symlink(t) => ViewNode::Symlink(PathBuf::from(OsString::from(
                std::ffi::OsStr::from_bytes(t),
            ))),
            _ => ViewNode::Other,
        })
    }

    fn open(&self, path: &Path) -> io::Result<TreeFile> {
        let id = self
            .tree
            .lookup(path.as_os_str().as_bytes())
            .ok_or(io::ErrorKind::NotFound)?;
        match self.tree.kind(id) {
            NodeKind::File(FileData::Host { path, .. }) => File::open(path).map(TreeFile::Host),
            NodeKind::File(FileData::Range { file, offset, len }) => Ok(TreeFile::Range {
                file: Arc::clone(file),
                offset: *offset,
                len: *len,
            }),
            NodeKind::File(FileData::Bytes(b)) => Ok(TreeFile::Bytes(Arc::clone(b))),
            NodeKind::File(FileData::Empty) => Ok(TreeFile::Bytes(Arc::from(&[][..]))),
            _ => Err(io::ErrorKind::InvalidInput.into()),
        }
    }

    fn list(&self, path: &Path) -> Vec<OsString> {
        match self.tree.lookup(path.as_os_str().as_bytes()) {
            Some(id) => self
                .tree
                .children(id)
                .map(|(name, _)| std::ffi::OsStr::from_bytes(name).to_os_string())
                .collect(),
            None => Vec::new(),
        }
    }

    fn host_path(&self, path: &Path) -> Option<PathBuf> {
        let id = self.tree.lookup(path.as_os_str().as_bytes())?;
        match self.tree.kind(id) {
            NodeKind::File(FileData::Host { path, .. }) => Some(path.clone()),
            _ => None,
        }
    }

    fn files(&self) -> Vec<(PathBuf, u32)> {
        self.tree
            .walk()
            .into_iter()
            .filter_map(|e| match self.tree.kind(e.id) {
                NodeKind::File(_) => Some((
                    PathBuf::from(std::ffi::OsStr::from_bytes(&e.path)),
                    u32::from(self.tree.meta(e.id).mode & 0o7777),
                )),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use supermin_ext2::Meta;

    fn meta(mode: u16) -> Meta {
        Meta {
            mode,
            ..Meta::default()
        }
    }

    fn tree_with_init(script: &[u8], mode: u16) -> Tree {
        let mut t = Tree::new(meta(0o755));
        t.insert(
            b"/init",
            NodeKind::File(FileData::Bytes(Arc::from(script))),
            meta(mode),
        )
        .unwrap();
        t
    }

    fn add_host(t: &mut Tree, path: &str) {
        t.ensure_parents(path.as_bytes(), meta(0o755)).unwrap();
        let len = std::fs::metadata(path).unwrap().len();
        t.insert(
            path.as_bytes(),
            NodeKind::File(FileData::Host {
                path: path.into(),
                len,
            }),
            meta(0o755),
        )
        .unwrap();
    }

    #[test]
    fn an_init_that_is_not_executable_is_an_error() {
        let t = tree_with_init(b"#!/bin/sh\n", 0o644);
        let e = check_tree(&t).unwrap_err();
        assert!(matches!(e, InitError::NotExecutable { mode: 0o644 }), "{e}");
        assert!(e.to_string().contains("Permission denied"));
    }

    #[test]
    fn a_script_init_whose_shell_is_missing_is_an_error() {
        let t = tree_with_init(b"#! /bin/sh -e\necho hi\n", 0o755);
        let e = check_tree(&t).unwrap_err();
        assert!(
            matches!(&e, InitError::ScriptInterpreterMissing { interp } if interp == "/bin/sh"),
            "{e}"
        );
    }

    #[test]
    fn a_script_init_whose_shell_lacks_its_loader_is_an_error() {
        let mut t = tree_with_init(b"#!/usr/bin/dash\n", 0o755);
        add_host(&mut t, "/usr/bin/dash");
        let e = check_tree(&t).unwrap_err();
        assert!(matches!(e, InitError::Unloadable { .. }), "{e}");
        assert!(e.to_string().contains("/usr/bin/dash needs"), "{e}");
    }

    #[test]
    fn no_init_only_warns() {
        let t = Tree::new(meta(0o755));
        let r = check_tree(&t).unwrap();
        assert!(r.warnings[0].contains("no /init"), "{:?}", r.warnings);
    }
}
