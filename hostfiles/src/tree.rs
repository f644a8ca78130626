//! The file set under construction. Every path is placed at its *physical* location: parent
//! directories are resolved on the host (inside `root`), and each symlink crossed on the way
//! (`/lib -> usr/lib`, `/lib64 -> usr/lib64`) becomes an entry of its own. So the merged-/usr
//! aliases are kept exactly as the host has them even when no package owns them, no entry's
//! parent is a symlink (writers never have to write through a link), and a file listed as
//! both `/lib/x` and `/usr/lib/x` appears once.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::pattern::join_root;

/// What kind of file a [`HostFile`] is (from `lstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A regular file.
    Regular,
    /// A symlink.
    Symlink,
    /// A character device.
    CharDev,
    /// A block device.
    BlockDev,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

/// One entry of the appliance root: an absolute in-root path and the `lstat` of the host file
/// at `root + path`. Read its contents from there (the builder handles unreadable files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    /// Its absolute path in the appliance (and under the root on the host).
    pub path: PathBuf,
    /// What it is.
    pub kind: FileKind,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, u32),
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, u32),
    /// Change time (seconds, nanoseconds).
    pub ctime: (i64, u32),
    /// Device it lives on (with `ino`, tells hard links apart).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Device number, for device files.
    pub rdev: u64,
    /// Hard link count.
    pub nlink: u64,
    /// The link text, for symlinks.
    pub link_target: Option<PathBuf>,
}

impl HostFile {
    /// The entry for `path` from its `lstat` (`link_target` is the link text of a symlink,
    /// if the caller read it).
    pub fn from_meta(path: PathBuf, meta: &fs::Metadata, link_target: Option<PathBuf>) -> Self {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_char_device() {
            FileKind::CharDev
        } else if ft.is_block_device() {
            FileKind::BlockDev
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_socket() {
            FileKind::Socket
        } else {
            FileKind::Regular
        };
        // Nanoseconds are in 0..1e9 by POSIX; clamp rather than trust a strange filesystem.
        let ns = |v: i64| v.clamp(0, 999_999_999) as u32;
        HostFile {
            path,
            kind,
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            mtime: (meta.mtime(), ns(meta.mtime_nsec())),
            atime: (meta.atime(), ns(meta.atime_nsec())),
            ctime: (meta.ctime(), ns(meta.ctime_nsec())),
            dev: meta.dev(),
            ino: meta.ino(),
            rdev: meta.rdev(),
            nlink: meta.nlink(),
            link_target,
        }
    }
}

/// ld.so and the kernel both give up after 40 links; so do we.
const MAX_LINKS: usize = 40;

pub(crate) struct Tree {
    root: PathBuf,
    // Keyed by the path's bytes: hashing an OsString is a byte hash, while Path hashes and
    // compares component by component, which dominated the profile.
    entries: HashMap<OsString, HostFile>,
    /// lstat results by physical in-root path (None: missing).
    stat: HashMap<OsString, Option<HostFile>>,
    /// Directory as written -> its physical path and the symlinks crossed to get there.
    dirs: HashMap<OsString, Option<Resolved>>,
}

#[derive(Clone)]
struct Resolved {
    phys: PathBuf,
    links: Vec<PathBuf>,
}

impl Tree {
    pub fn new(root: &Path) -> Self {
        Tree {
            root: root.to_path_buf(),
            entries: HashMap::new(),
            stat: HashMap::new(),
            dirs: HashMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    #[cfg(test)]
    pub fn get(&self, path: &Path) -> Option<&HostFile> {
        self.entries.get(path.as_os_str())
    }

    pub fn entries(&self) -> impl Iterator<Item = &HostFile> {
        self.entries.values()
    }

    pub fn into_files(self) -> Vec<HostFile> {
        let mut v: Vec<HostFile> = self.entries.into_values().collect();
        v.sort_unstable_by(|a, b| path_order(&a.path, &b.path));
        v
    }

    /// Add `path` (absolute, in-root) with all its parents. Returns the physical path of the
    /// entry, or None if it does not exist on the host (vanished files are simply left out).
    pub fn add(&mut self, path: &Path) -> Option<PathBuf> {
        let (phys, links) = self.locate(path)?;
        self.lstat(&phys)?;
        for l in links {
            self.insert_with_ancestors(&l);
        }
        self.insert_with_ancestors(&phys);
        Some(phys)
    }

    /// Add `path` and, if it is a symlink, what it points to (recursively): for hostfiles and
    /// libraries, where the link alone would leave a dangling name in the appliance.
    pub fn add_following(&mut self, path: &Path) -> Option<PathBuf> {
        let mut cur = path.to_path_buf();
        let mut first = None;
        for _ in 0..MAX_LINKS {
            let phys = self.add(&cur)?;
            if first.is_none() {
                first = Some(phys.clone());
            }
            let entry = self.entries.get(phys.as_os_str())?;
            match (&entry.kind, &entry.link_target) {
                (FileKind::Symlink, Some(t)) => {
                    cur = absolutize(phys.parent().unwrap_or(Path::new("/")), t);
                }
                _ => return first,
            }
        }
        first
    }

    /// Physical location and lstat of what `path` names, following every symlink including
    /// the last component, without adding anything to the set.
    pub fn canonical(&mut self, path: &Path) -> Option<(PathBuf, HostFile)> {
        let mut cur = path.to_path_buf();
        for _ in 0..MAX_LINKS {
            let (phys, _) = self.locate(&cur)?;
            let hf = self.lstat(&phys)?;
            match (&hf.kind, &hf.link_target) {
                (FileKind::Symlink, Some(t)) => {
                    cur = absolutize(phys.parent().unwrap_or(Path::new("/")), t);
                }
                _ => return Some((phys, hf)),
            }
        }
        None
    }

    /// Where `path` lands physically (parents resolved, last component not followed),
    /// without adding anything to the set.
    pub fn physical(&mut self, path: &Path) -> Option<PathBuf> {
        self.locate(path).map(|(p, _)| p)
    }

    /// Physical path of `path` with its parent resolved (the last component is not followed).
    fn locate(&mut self, path: &Path) -> Option<(PathBuf, Vec<PathBuf>)> {
        let name = path.file_name();
        match name {
            Some(n) if n != OsStr::new("..") && n != OsStr::new(".") => {
                let parent = self.resolve_dir(path.parent()?, 0)?;
                Some((parent.phys.join(n), parent.links))
            }
            _ => {
                let r = self.resolve_dir(path, 0)?;
                Some((r.phys, r.links))
            }
        }
    }

    fn lstat(&mut self, phys: &Path) -> Option<HostFile> {
        if phys == Path::new("/") {
            return None;
        }
        if let Some(r) = self.stat.get(phys.as_os_str()) {
            return r.clone();
        }
        let host = join_root(&self.root, phys);
        let hf = fs::symlink_metadata(&host).ok().and_then(|meta| {
            let target = if meta.file_type().is_symlink() {
                Some(fs::read_link(&host).ok()?)
            } else {
                None
            };
            Some(HostFile::from_meta(phys.to_path_buf(), &meta, target))
        });
        self.stat.insert(phys.as_os_str().to_owned(), hf.clone());
        hf
    }

    fn insert_with_ancestors(&mut self, phys: &Path) {
        let mut missing: Vec<PathBuf> = Vec::new();
        for a in phys.ancestors() {
            if a == Path::new("/")
                || a.as_os_str().is_empty()
                || self.entries.contains_key(a.as_os_str())
            {
                break;
            }
            missing.push(a.to_path_buf());
        }
        for a in missing.into_iter().rev() {
            if let Some(hf) = self.lstat(&a) {
                self.entries.insert(a.into_os_string(), hf);
            }
        }
    }

    /// Resolve a directory path physically, remembering the symlinks crossed.
    fn resolve_dir(&mut self, dir: &Path, depth: usize) -> Option<Resolved> {
        if let Some(r) = self.dirs.get(dir.as_os_str()) {
            return r.clone();
        }
        if depth > MAX_LINKS {
            return None;
        }
        let r = self.resolve_dir_uncached(dir, depth);
        self.dirs.insert(dir.as_os_str().to_owned(), r.clone());
        r
    }

    fn resolve_dir_uncached(&mut self, dir: &Path, depth: usize) -> Option<Resolved> {
        let root = || Resolved {
            phys: PathBuf::from("/"),
            links: Vec::new(),
        };
        let mut comps = dir.components();
        let last = comps.next_back();
        let parent = match last {
            None | Some(Component::RootDir) => return Some(root()),
            Some(Component::Prefix(_)) => return None,
            Some(_) => {
                let p = comps.as_path();
                if p.as_os_str().is_empty() {
                    root()
                } else {
                    self.resolve_dir(p, depth)?
                }
            }
        };
        let name = match last {
            Some(Component::Normal(n)) => n,
            Some(Component::CurDir) => return Some(parent),
            Some(Component::ParentDir) => {
                let up = parent.phys.parent().map(Path::to_path_buf);
                return Some(Resolved {
                    phys: up.unwrap_or(parent.phys),
                    links: parent.links,
                });
            }
            _ => return None,
        };
        let phys = parent.phys.join(name);
        let hf = self.lstat(&phys)?;
        match hf.kind {
            FileKind::Dir => Some(Resolved {
                phys,
                links: parent.links,
            }),
            FileKind::Symlink => {
                let target = hf.link_target?;
                let abs = absolutize(&parent.phys, &target);
                let mut r = self.resolve_dir(&abs, depth + 1)?;
                let mut links = parent.links;
                links.push(phys);
                links.extend(r.links);
                r.links = links;
                Some(r)
            }
            _ => None,
        }
    }
}

/// Component-wise path order (what `Path`'s `Ord` gives for normalized paths), computed on
/// bytes: `/` sorts before every other byte, so `/a/b` < `/a.b` and parents come first.
pub(crate) fn path_order(a: &Path, b: &Path) -> Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    let (a, b) = (
        a.as_os_str().as_encoded_bytes(),
        b.as_os_str().as_encoded_bytes(),
    );
    a.iter().map(|&c| key(c)).cmp(b.iter().map(|&c| key(c)))
}

/// A symlink's target as an absolute in-root path (relative targets are relative to `dir`).
pub(crate) fn absolutize(dir: &Path, target: &Path) -> PathBuf {
    if target.is_absolute() {
        target.to_path_buf()
    } else {
        dir.join(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn merged_usr_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/lib/x86_64-linux-gnu")).unwrap();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        fs::write(r.join("usr/lib/x86_64-linux-gnu/libc.so.6"), "libc").unwrap();
        symlink("libc.so.6", r.join("usr/lib/x86_64-linux-gnu/libc.so")).unwrap();
        fs::write(r.join("usr/bin/ls"), "ls").unwrap();
        d
    }

    fn paths(t: Tree) -> Vec<String> {
        t.into_files()
            .into_iter()
            .map(|f| f.path.display().to_string())
            .collect()
    }

    #[test]
    fn files_under_a_merged_usr_alias_land_at_their_physical_path_with_the_alias_kept() {
        let d = merged_usr_root();
        let mut t = Tree::new(d.path());
        let p = t.add(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        assert_eq!(p, PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(t.get(Path::new("/lib")).unwrap().kind, FileKind::Symlink);
        assert_eq!(
            t.get(Path::new("/lib")).unwrap().link_target.as_deref(),
            Some(Path::new("usr/lib"))
        );
        t.add(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"))
            .unwrap();
        assert_eq!(
            paths(t),
            [
                "/lib",
                "/usr",
                "/usr/lib",
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu/libc.so.6"
            ]
        );
    }

    #[test]
    fn vanished_files_are_left_out() {
        let d = merged_usr_root();
        let mut t = Tree::new(d.path());
        assert!(t.add(Path::new("/usr/bin/gone")).is_none());
        assert!(t.add(Path::new("/nodir/gone")).is_none());
        // The existing parents of a missing file may be recorded; the file itself never is.
        assert!(t.get(Path::new("/usr/bin/gone")).is_none());
    }

    #[test]
    fn following_a_symlink_keeps_both_link_and_target() {
        let d = merged_usr_root();
        let mut t = Tree::new(d.path());
        t.add_following(Path::new("/lib/x86_64-linux-gnu/libc.so"))
            .unwrap();
        let got = paths(t);
        assert!(got.contains(&"/usr/lib/x86_64-linux-gnu/libc.so".to_string()));
        assert!(got.contains(&"/usr/lib/x86_64-linux-gnu/libc.so.6".to_string()));
    }

    #[test]
    fn parents_come_before_children_in_output_order() {
        let d = merged_usr_root();
        let mut t = Tree::new(d.path());
        t.add(Path::new("/usr/bin/ls"));
        t.add(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        t.add(Path::new("/bin"));
        let files = t.into_files();
        for (i, f) in files.iter().enumerate() {
            for a in f.path.ancestors().skip(1) {
                if a != Path::new("/") {
                    let pos = files.iter().position(|g| g.path == a).unwrap();
                    assert!(pos < i, "{} before {}", a.display(), f.path.display());
                }
            }
        }
    }

    #[test]
    fn byte_path_order_matches_component_order() {
        let mut v: Vec<PathBuf> = ["/a.b", "/a/b", "/a", "/a-c/d", "/a/b/c", "/ab", "/a/.x"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let mut by_path = v.clone();
        by_path.sort();
        v.sort_by(|a, b| path_order(a, b));
        assert_eq!(v, by_path);
    }

    #[test]
    fn canonical_and_physical_add_nothing_to_the_set() {
        let d = merged_usr_root();
        let mut t = Tree::new(d.path());
        assert!(t
            .canonical(Path::new("/lib/x86_64-linux-gnu/libc.so"))
            .is_some());
        assert_eq!(
            t.physical(Path::new("/lib/x86_64-linux-gnu/libc.so")),
            Some(PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so"))
        );
        assert!(t.into_files().is_empty());
    }

    #[test]
    fn symlink_loops_terminate() {
        let d = tempfile::tempdir().unwrap();
        symlink("b", d.path().join("a")).unwrap();
        symlink("a", d.path().join("b")).unwrap();
        let mut t = Tree::new(d.path());
        assert!(t.add(Path::new("/a/x")).is_none());
        assert!(t.canonical(Path::new("/a")).is_none());
        t.add_following(Path::new("/a"));
    }

    #[test]
    fn dotdot_is_resolved_physically_after_a_symlink() {
        let d = merged_usr_root();
        let mut t = Tree::new(d.path());
        // /lib/../bin is /usr/bin physically (lib -> usr/lib).
        let p = t.add(Path::new("/lib/../bin/ls")).unwrap();
        assert_eq!(p, PathBuf::from("/usr/bin/ls"));
    }
}
