//! Checking an assembled tree (before it is written) the way the appliance's ld.so will see
//! it: every ELF object's `PT_INTERP` and `DT_NEEDED` libraries must be found *inside the
//! tree*, with ld.so's search rules (`DT_RPATH` unless there is a `DT_RUNPATH`, `$ORIGIN`,
//! the tree's own `/etc/ld.so.cache` and `ld.so.conf`, then the default directories).
//!
//! The resolution in [`crate::resolve`] asks the same question of the host, where the answer
//! is nearly always yes; here an `excludefiles` line, a base image that replaces a directory,
//! or a `hostfiles` pattern that matched nothing can still take a library away. This is the
//! libguestfs FAQ's `execl: /init: Permission denied` found at build time instead of boot.
//!
//! The tree is seen through [`TreeView`], so this crate stays ignorant of the image writer's
//! types; the ELF reader and the search rules are those of [`crate::elf`].

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use crate::elf::{expand_dst, parse_ld_so_cache, read_elf_from, Abi, ElfInfo};
use crate::pattern::fnmatch;

/// One node of a tree, without following a final symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewNode {
    /// A directory.
    Dir,
    /// A symlink to this target.
    Symlink(PathBuf),
    /// A regular file.
    File {
        /// Its mode bits.
        mode: u32,
    },
    /// Anything else.
    Other,
}

/// A file system tree that is not on disk yet (or not here): what the check reads.
pub trait TreeView: Sync {
    /// How file contents are read.
    type File: FileExt;
    /// The node at absolute in-tree `path`, not following a final symlink.
    fn node(&self, path: &Path) -> Option<ViewNode>;
    /// Opens the regular file at canonical in-tree `path` for positioned reads.
    fn open(&self, path: &Path) -> std::io::Result<Self::File>;
    /// The names in directory `path`.
    fn list(&self, path: &Path) -> Vec<OsString>;
    /// Every regular file: canonical path and mode.
    fn files(&self) -> Vec<(PathBuf, u32)>;
    /// The host file whose bytes the regular file at `path` has, when there is one: its ELF
    /// facts may be known already from the resolution.
    fn host_path(&self, _path: &Path) -> Option<PathBuf> {
        None
    }
}

/// Follows symlinks inside the tree (at most 40, like the kernel): the canonical path of
/// `path` and its node, or `None` when something on the way is missing.
pub fn resolve_in<V: TreeView + ?Sized>(view: &V, path: &Path) -> Option<(PathBuf, ViewNode)> {
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, path);
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        match view.node(&next)? {
            ViewNode::Symlink(target) => {
                links += 1;
                if links > 40 {
                    return None;
                }
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                push_components(&mut todo, &target);
            }
            ViewNode::Dir => cur = next,
            node if todo.is_empty() => return Some((next, node)),
            _ => return None,
        }
    }
    Some((cur, ViewNode::Dir))
}

/// Pushes `path`'s components so that popping yields them in order.
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let mut parts: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_os_string()),
            Component::ParentDir => parts.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    todo.extend(parts.into_iter().rev());
}

/// What one object lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// The program interpreter (`PT_INTERP`).
    Interpreter(String),
    /// A `DT_NEEDED` library.
    Library(String),
}

/// An ELF object that cannot be loaded in the tree, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkProblem {
    /// The ELF object that needs it.
    pub object: PathBuf,
    /// What it needs and the tree lacks.
    pub missing: Missing,
}

impl std::fmt::Display for LinkProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.missing {
            Missing::Interpreter(i) => write!(
                f,
                "{}: its ELF interpreter {i} is not in the appliance",
                self.object.display()
            ),
            Missing::Library(l) => write!(
                f,
                "{}: needed library {l} is not in the appliance (ld.so's search inside the tree)",
                self.object.display()
            ),
        }
    }
}

/// Reads the ELF facts of canonical in-tree `path`: `None` when it is not ELF or malformed
/// (the resolution already warned about malformed objects from the host).
pub fn elf_info_in<V: TreeView + ?Sized>(view: &V, path: &Path) -> Option<ElfInfo> {
    let file = view.open(path).ok()?;
    read_elf_from(&file, path).ok().flatten()
}

/// What [`check_links`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkReport {
    /// Every unmet need.
    pub problems: Vec<LinkProblem>,
    /// Regular files in the tree, and the ELF objects among them.
    pub files: usize,
    /// How many ELF objects were checked.
    pub elf_objects: usize,
}

/// Checks every ELF object of the tree; problems in tree order.
pub fn check_links<V: TreeView>(view: &V) -> LinkReport {
    let files = view.files();
    let nfiles = files.len();
    // Only what can be an ELF object is opened, as in the resolution: executables and
    // anything named like a shared object.
    let mut candidates: Vec<PathBuf> = files
        .into_iter()
        .filter(|(p, mode)| {
            mode & 0o111 != 0
                || p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains(".so"))
        })
        .map(|(p, _)| p)
        .collect();
    candidates.sort();
    let infos: HashMap<PathBuf, ElfInfo> = candidates
        .par_iter()
        .filter_map(|p| {
            let known = view
                .host_path(p)
                .and_then(|h| crate::elf::parsed_host_elf(&h));
            let info = match known {
                Some(known) => known.map(|i| (*i).clone()),
                None => elf_info_in(view, p),
            };
            info.map(|i| (p.clone(), i))
        })
        .collect();
    let ld = TreeLdConfig::load(view);
    let mut problems = Vec::new();
    let mut found_names: HashSet<String> = HashSet::new();
    let mut unresolved: Vec<(PathBuf, String)> = Vec::new();
    // Most objects have no RPATH/RUNPATH: their search depends on the name and ABI only.
    let mut plain: HashMap<(String, Abi), bool> = HashMap::new();
    for path in &candidates {
        let Some(info) = infos.get(path) else {
            continue;
        };
        if let Some(interp) = &info.interp {
            if !matches!(
                resolve_in(view, Path::new(interp)),
                Some((_, ViewNode::File { .. }))
            ) {
                problems.push(LinkProblem {
                    object: path.clone(),
                    missing: Missing::Interpreter(interp.clone()),
                });
            }
        }
        let abi = info.abi();
        let origin = path.parent().unwrap_or(Path::new("/"));
        let mut dirs: Vec<PathBuf> = Vec::new();
        if info.runpath.is_empty() {
            dirs.extend(info.rpath.iter().flat_map(|e| expand_dst(e, origin, abi)));
        }
        dirs.extend(info.runpath.iter().flat_map(|e| expand_dst(e, origin, abi)));
        for name in &info.needed {
            let found = if dirs.is_empty() {
                *plain
                    .entry((name.clone(), abi))
                    .or_insert_with(|| find_library(view, &infos, &ld, name, &dirs, abi))
            } else {
                find_library(view, &infos, &ld, name, &dirs, abi)
            };
            if found {
                found_names.insert(name.clone());
            } else {
                unresolved.push((path.clone(), name.clone()));
            }
        }
    }
    // As in the resolution: a library can be satisfied by one already loaded under that
    // soname (found through its program's RUNPATH or RPATH), so only names found for no
    // object at all are reported.
    for (object, name) in unresolved {
        if !found_names.contains(&name) {
            problems.push(LinkProblem {
                object,
                missing: Missing::Library(name),
            });
        }
    }
    LinkReport {
        problems,
        files: nfiles,
        elf_objects: infos.len(),
    }
}

/// The tree's own linker configuration.
struct TreeLdConfig {
    cache: HashMap<String, Vec<PathBuf>>,
    conf_dirs: Vec<PathBuf>,
}

impl TreeLdConfig {
    fn load<V: TreeView + ?Sized>(view: &V) -> TreeLdConfig {
        let cache = read_small(view, Path::new("/etc/ld.so.cache"))
            .map(|b| parse_ld_so_cache(&b))
            .unwrap_or_default();
        let mut conf_dirs = Vec::new();
        let mut seen = HashSet::new();
        read_conf(
            view,
            Path::new("/etc/ld.so.conf"),
            &mut conf_dirs,
            &mut seen,
        );
        TreeLdConfig { cache, conf_dirs }
    }
}

/// A whole small file of the tree (at most 16 MiB).
fn read_small<V: TreeView + ?Sized>(view: &V, path: &Path) -> Option<Vec<u8>> {
    let (canon, node) = resolve_in(view, path)?;
    if !matches!(node, ViewNode::File { .. }) {
        return None;
    }
    let file = view.open(&canon).ok()?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read_at(&mut buf, out.len() as u64).ok()?;
        if n == 0 || out.len() + n > 16 << 20 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Some(out)
}

fn read_conf<V: TreeView + ?Sized>(
    view: &V,
    file: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut HashSet<PathBuf>,
) {
    if seen.len() > 64 || !seen.insert(file.to_path_buf()) {
        return;
    }
    let Some(bytes) = read_small(view, file) else {
        return;
    };
    let text = String::from_utf8_lossy(&bytes);
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with("hwcap ") {
            continue;
        }
        if let Some(pats) = line.strip_prefix("include") {
            for pat in pats.split_whitespace() {
                let abs = if pat.starts_with('/') {
                    PathBuf::from(pat)
                } else {
                    file.parent().unwrap_or(Path::new("/")).join(pat)
                };
                // Only the last component is a pattern in practice (ld.so.conf.d/*.conf).
                let (Some(dir), Some(name)) = (abs.parent(), abs.file_name()) else {
                    continue;
                };
                let name = name.to_string_lossy();
                let mut matched: Vec<PathBuf> = view
                    .list(dir)
                    .into_iter()
                    .filter(|n| fnmatch(&name, &n.to_string_lossy()))
                    .map(|n| dir.join(n))
                    .collect();
                matched.sort();
                for inc in matched {
                    read_conf(view, &inc, out, seen);
                }
            }
        } else {
            out.extend(
                line.split([':', ',', ' ', '\t'])
                    .filter(|d| d.starts_with('/'))
                    .map(PathBuf::from),
            );
        }
    }
}

fn find_library<V: TreeView + ?Sized>(
    view: &V,
    infos: &HashMap<PathBuf, ElfInfo>,
    ld: &TreeLdConfig,
    name: &str,
    dirs: &[PathBuf],
    abi: Abi,
) -> bool {
    let usable = |p: &Path| -> bool {
        match resolve_in(view, p) {
            Some((canon, ViewNode::File { .. })) => match infos.get(&canon) {
                Some(i) => i.abi() == abi,
                None => elf_info_in(view, &canon).is_some_and(|i| i.abi() == abi),
            },
            _ => false,
        }
    };
    if name.contains('/') {
        return Path::new(name).is_absolute() && usable(Path::new(name));
    }
    dirs.iter().any(|d| usable(&d.join(name)))
        || ld
            .cache
            .get(name)
            .is_some_and(|paths| paths.iter().any(|p| usable(p)))
        || ld
            .conf_dirs
            .iter()
            .chain(abi.default_dirs().iter())
            .any(|d| usable(&d.join(name)))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A tree in memory: path -> node, file contents copied from the host or given.
    #[derive(Default)]
    struct MemTree {
        nodes: BTreeMap<PathBuf, (ViewNode, Vec<u8>)>,
    }

    struct MemFile(Vec<u8>);

    impl FileExt for MemFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            let start = (offset as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - start);
            buf[..n].copy_from_slice(&self.0[start..start + n]);
            Ok(n)
        }
        fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
    }

    impl MemTree {
        fn dirs_for(&mut self, path: &Path) {
            for a in path.ancestors().skip(1) {
                self.nodes
                    .entry(a.to_path_buf())
                    .or_insert((ViewNode::Dir, Vec::new()));
            }
        }
        fn host(&mut self, path: &str) {
            let p = PathBuf::from(path);
            self.dirs_for(&p);
            let data = std::fs::read(&p).unwrap();
            self.nodes.insert(p, (ViewNode::File { mode: 0o755 }, data));
        }
        fn link(&mut self, path: &str, target: &str) {
            let p = PathBuf::from(path);
            self.dirs_for(&p);
            self.nodes
                .insert(p, (ViewNode::Symlink(target.into()), Vec::new()));
        }
    }

    impl TreeView for MemTree {
        type File = MemFile;
        fn node(&self, path: &Path) -> Option<ViewNode> {
            self.nodes.get(path).map(|(n, _)| n.clone())
        }
        fn open(&self, path: &Path) -> std::io::Result<MemFile> {
            self.nodes
                .get(path)
                .map(|(_, d)| MemFile(d.clone()))
                .ok_or_else(|| std::io::ErrorKind::NotFound.into())
        }
        fn list(&self, path: &Path) -> Vec<OsString> {
            self.nodes
                .keys()
                .filter(|p| p.parent() == Some(path))
                .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
                .collect()
        }
        fn files(&self) -> Vec<(PathBuf, u32)> {
            self.nodes
                .iter()
                .filter_map(|(p, (n, _))| match n {
                    ViewNode::File { mode } => Some((p.clone(), *mode)),
                    _ => None,
                })
                .collect()
        }
    }

    fn host_lib(name: &str) -> String {
        let p = format!("/usr/lib/x86_64-linux-gnu/{name}");
        assert!(Path::new(&p).exists(), "{p} (this test reads the host's)");
        p
    }

    #[test]
    fn symlinks_resolve_inside_the_tree_relative_and_absolute() {
        let mut t = MemTree::default();
        t.link("/lib", "usr/lib");
        t.link("/usr/lib/a", "/usr/lib/b");
        t.link("/usr/lib/b", "../lib/c");
        t.nodes.insert(
            "/usr/lib/c".into(),
            (ViewNode::File { mode: 0o644 }, Vec::new()),
        );
        let (canon, node) = resolve_in(&t, Path::new("/lib/a")).unwrap();
        assert_eq!(canon, PathBuf::from("/usr/lib/c"));
        assert_eq!(node, ViewNode::File { mode: 0o644 });
        t.link("/loop", "/loop");
        assert!(resolve_in(&t, Path::new("/loop")).is_none());
        assert!(resolve_in(&t, Path::new("/usr/lib/missing")).is_none());
    }

    #[test]
    fn a_program_whose_library_is_missing_from_the_tree_is_named() {
        let mut t = MemTree::default();
        t.host("/usr/bin/ls");
        t.link("/lib64", "usr/lib64");
        t.host("/usr/lib64/ld-linux-x86-64.so.2");
        t.host(&host_lib("libc.so.6"));
        t.host(&host_lib("libpcre2-8.so.0"));
        let problems = check_links(&t).problems;
        // ls needs libselinux.so.1, which this tree lacks; libc and the interpreter are there.
        assert_eq!(
            problems,
            vec![LinkProblem {
                object: "/usr/bin/ls".into(),
                missing: Missing::Library("libselinux.so.1".into()),
            }],
            "{problems:?}"
        );
        t.host(&host_lib("libselinux.so.1"));
        assert_eq!(check_links(&t).problems, vec![]);
    }

    #[test]
    fn a_missing_elf_interpreter_is_named() {
        let mut t = MemTree::default();
        t.host("/usr/bin/true");
        t.host(&host_lib("libc.so.6"));
        let problems = check_links(&t).problems;
        assert!(
            problems
                .iter()
                .any(|p| p.object == Path::new("/usr/bin/true")
                    && matches!(&p.missing, Missing::Interpreter(i) if i.contains("ld-linux"))),
            "{problems:?}"
        );
    }
}
