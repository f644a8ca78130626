//! Package handlers behind one shape: each handler (dpkg, rpm, pacman) reads its database
//! into a [`Db`] of installed packages (name, dependencies as alternatives, provides, where
//! its file list is), and the closure, virtual-package and file-list logic is shared.
//!
//! Unlike supermin, which forks the package tools (`dpkg-query` for every step), the dpkg and
//! pacman handlers read their databases directly, and only the file lists of the packages in
//! the closure are read (in parallel).

pub(crate) mod dpkg;
pub(crate) mod pacman;
pub(crate) mod rpm;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{read_err, HostfilesError, Result};
use crate::pattern::join_root;

/// The package managers we know, in supermin's `--list-drivers` naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Debian's dpkg.
    Dpkg,
    /// rpm.
    Rpm,
    /// Arch's pacman.
    Pacman,
}

/// How dependencies become packages of the closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DepRule {
    /// What supermin 5 puts in the appliance, so that it holds what libguestfs was built and
    /// tested with. For dpkg (src/ph_dpkg.ml): version constraints are dropped, only the
    /// first alternative of each clause counts, and a name counts only when a package of
    /// that exact name is installed for the native architecture (or `all`): a virtual name
    /// or an architecture-qualified one (`perl:any`) adds nothing. Other handlers resolve
    /// completely, as supermin's rpm and pacman handlers ask their package manager.
    #[default]
    Supermin,
    /// Every dependency: `:any` and other qualifiers, virtual names (to an installed
    /// provider) and the first installed alternative of each clause.
    Complete,
}

impl Handler {
    /// Its name, as `--list-drivers` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Handler::Dpkg => "debian/dpkg",
            Handler::Rpm => "fedora/rpm",
            Handler::Pacman => "arch/pacman",
        }
    }
}

/// `ID` and `ID_LIKE` words of `<root>/etc/os-release` (or `/usr/lib/os-release`).
pub(crate) fn os_ids(root: &Path) -> Vec<String> {
    let text = fs::read_to_string(join_root(root, Path::new("/etc/os-release")))
        .or_else(|_| fs::read_to_string(join_root(root, Path::new("/usr/lib/os-release"))))
        .unwrap_or_default();
    let mut ids = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim() == "ID" || k.trim() == "ID_LIKE" {
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
            ids.extend(v.split_whitespace().map(str::to_string));
        }
    }
    ids
}

fn exists(root: &Path, p: &str) -> bool {
    fs::symlink_metadata(join_root(root, Path::new(p))).is_ok()
}

fn detect_one(h: Handler, root: &Path, ids: &[String]) -> bool {
    let has = |names: &[&str]| ids.iter().any(|i| names.contains(&i.as_str()));
    match h {
        Handler::Dpkg => {
            exists(root, "/var/lib/dpkg/status")
                && (has(&["debian", "ubuntu"]) || exists(root, "/etc/debian_version"))
        }
        Handler::Pacman => {
            exists(root, "/var/lib/pacman/local")
                && (has(&["arch", "artix"]) || exists(root, "/etc/arch-release"))
        }
        Handler::Rpm => {
            rpm::rpmdb_path(root).is_some()
                && (has(&[
                    "fedora",
                    "rhel",
                    "centos",
                    "openEuler",
                    "anolis",
                    "mageia",
                    "openmandriva",
                    "suse",
                    "opensuse",
                    "sles",
                    "sled",
                ]) || [
                    "/etc/redhat-release",
                    "/etc/fedora-release",
                    "/etc/SuSE-release",
                ]
                .iter()
                .any(|p| exists(root, p)))
        }
    }
}

const ALL: [Handler; 3] = [Handler::Pacman, Handler::Dpkg, Handler::Rpm];

/// Every handler and whether it is detected on `root`, in supermin's order.
pub fn list_drivers_at(root: &Path) -> Vec<(String, bool)> {
    let ids = os_ids(root);
    ALL.iter()
        .map(|&h| (h.name().to_string(), detect_one(h, root, &ids)))
        .collect()
}

/// The handler for `root`, if any.
pub fn detect(root: &Path) -> Option<Handler> {
    let ids = os_ids(root);
    ALL.into_iter().find(|&h| detect_one(h, root, &ids))
}

/// What of a database file's metadata makes up its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watch {
    /// Size, modification and change times, inode, device: any write or replacement.
    Everything,
    /// Size and modification time: for a file that readers touch too. rpm truncates its
    /// empty sqlite write-ahead log on every close, reads included, which moves the
    /// change time but not the modification time.
    Contents,
}

/// A cheap identity of the package database state: the metadata of the files and
/// directories a package install or removal always touches.
pub fn package_db_identity_at(root: &Path) -> Result<Vec<u8>> {
    let h = detect(root).ok_or_else(|| HostfilesError::NoPackageHandler {
        root: root.to_path_buf(),
    })?;
    let paths: Vec<(PathBuf, Watch)> = match h {
        Handler::Dpkg => [
            "/var/lib/dpkg/status",
            "/var/lib/dpkg/info",
            "/var/lib/dpkg/diversions",
        ]
        .iter()
        .map(|p| (join_root(root, Path::new(p)), Watch::Everything))
        .collect(),
        // A package directory per installed version: an install, removal, upgrade or
        // reinstall adds or removes one.
        Handler::Pacman => vec![(
            join_root(root, Path::new("/var/lib/pacman/local")),
            Watch::Everything,
        )],
        Handler::Rpm => rpm::identity_paths(root),
    };
    let mut out = Vec::new();
    out.extend_from_slice(h.name().as_bytes());
    for (p, watch) in paths {
        out.push(0);
        out.extend_from_slice(p.as_os_str().as_encoded_bytes());
        match fs::metadata(&p) {
            Ok(m) => {
                let fields = match watch {
                    Watch::Everything => vec![
                        m.size() as i64,
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ctime(),
                        m.ctime_nsec(),
                        m.ino() as i64,
                        m.dev() as i64,
                    ],
                    Watch::Contents => vec![m.size() as i64, m.mtime(), m.mtime_nsec()],
                };
                for v in fields {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            // An optional file (no diversions) is part of the state by being absent.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(b'-'),
            Err(e) => return Err(read_err(p)(e)),
        }
    }
    Ok(out)
}

/// One dependency alternative: a package or virtual name, with an architecture qualifier
/// (dpkg's `name:any`, `name:amd64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dep {
    pub name: String,
    pub arch: Option<String>,
}

impl Dep {
    pub fn parse(s: &str) -> Option<Dep> {
        let s = s.trim();
        let end = s
            .find(|c: char| c.is_whitespace() || "(<>=[".contains(c))
            .unwrap_or(s.len());
        let word = &s[..end];
        if word.is_empty() {
            return None;
        }
        Some(match word.split_once(':') {
            Some((n, a)) => Dep {
                name: n.to_string(),
                arch: Some(a.to_string()),
            },
            None => Dep {
                name: word.to_string(),
                arch: None,
            },
        })
    }
}

/// Where a package's file list comes from.
#[derive(Debug, Clone)]
pub(crate) enum FileSource {
    /// Candidate dpkg `info/*.list` files (first existing wins) and the conffiles.
    DpkgList(Vec<PathBuf>, Vec<String>),
    /// A pacman `local/<pkg>/files` file.
    PacmanFiles(PathBuf),
    /// Already known (rpm's query output, tests).
    Known(Vec<PkgFile>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PkgFile {
    pub path: String,
    /// The database says it is a configuration file.
    pub config: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Pkg {
    pub name: String,
    pub arch: String,
    /// supermin's `ph_package_to_string`, the `--include-packagelist` line.
    pub display: String,
    /// Each clause: alternatives, first satisfiable wins.
    pub deps: Vec<Vec<Dep>>,
    pub provides: Vec<String>,
    pub files: FileSource,
}

/// How to choose among several installed providers of a virtual name.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ProviderPick {
    /// Lowest name (deterministic; apt would accept any).
    FirstByName,
    /// Shortest name, then lowest (what supermin's rpm handler does, after yum).
    ShortestName,
}

pub(crate) struct Db {
    pub handler: Handler,
    pub pkgs: Vec<Pkg>,
    /// Architectures usable without a qualifier, e.g. ["amd64", "all"]; empty = any.
    pub native: Vec<String>,
    pub pick: ProviderPick,
    /// dpkg diversions: path -> (diverted-to, diverting package or ":" for local).
    pub diversions: HashMap<String, (String, String)>,
    by_name: HashMap<String, Vec<usize>>,
    providers: HashMap<String, Vec<usize>>,
    /// Owners of each file, for rpm's file requirements (`/usr/libexec/helper`).
    owners: HashMap<String, Vec<usize>>,
}

impl Db {
    pub fn new(handler: Handler, pkgs: Vec<Pkg>, native: Vec<String>, pick: ProviderPick) -> Db {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut providers: HashMap<String, Vec<usize>> = HashMap::new();
        let mut owners: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in pkgs.iter().enumerate() {
            by_name.entry(p.name.clone()).or_default().push(i);
            for v in &p.provides {
                providers.entry(v.clone()).or_default().push(i);
            }
            if let FileSource::Known(files) = &p.files {
                for f in files {
                    owners.entry(f.path.clone()).or_default().push(i);
                }
            }
        }
        Db {
            handler,
            pkgs,
            native,
            pick,
            diversions: HashMap::new(),
            by_name,
            providers,
            owners,
        }
    }

    fn arch_ok(&self, pkg: usize, qual: Option<&str>) -> bool {
        let a = &self.pkgs[pkg].arch;
        match qual {
            None | Some("native") => self.native.is_empty() || self.native.contains(a),
            Some("any") => true,
            Some(q) => a == q || a == "all" || a == "noarch" || a == "any",
        }
    }

    /// The installed package a name (or virtual name, or owned file) refers to.
    pub fn lookup(&self, dep: &Dep) -> Option<usize> {
        let q = dep.arch.as_deref();
        if let Some(cands) = self.by_name.get(&dep.name) {
            let ok: Vec<usize> = cands
                .iter()
                .copied()
                .filter(|&c| self.arch_ok(c, q))
                .collect();
            if let Some(c) = ok.iter().find(|&&c| self.arch_ok(c, None)).or(ok.first()) {
                return Some(*c);
            }
        }
        // A file requirement is looked up among the files first (rpm's file index), then
        // among explicit provides (`Provides: /bin/sh`), as supermin's librpm query does.
        let owners = dep
            .name
            .starts_with('/')
            .then(|| self.owners.get(&dep.name))
            .flatten()
            .filter(|o| !o.is_empty());
        let cands = owners.or_else(|| self.providers.get(&dep.name))?;
        self.best_provider(cands, q)
    }

    /// Among several installed providers, the one this handler's package manager picks.
    fn best_provider(&self, cands: &[usize], q: Option<&str>) -> Option<usize> {
        let mut ok: Vec<usize> = cands
            .iter()
            .copied()
            .filter(|c| self.arch_ok(*c, q))
            .collect();
        ok.sort_by(|a, b| {
            let (na, nb) = (&self.pkgs[*a].name, &self.pkgs[*b].name);
            let key = |n: &String| match self.pick {
                ProviderPick::FirstByName => 0,
                ProviderPick::ShortestName => n.len(),
            };
            key(na).cmp(&key(nb)).then(na.cmp(nb)).then(a.cmp(b))
        });
        ok.first().copied()
    }

    /// supermin's dpkg lookup (`dpkg_package_of_string`): an installed package of exactly
    /// this name, for the native architecture or `all`. A qualified name such as `perl:any`
    /// is looked up whole, so it never matches.
    fn lookup_exact(&self, dep: &Dep) -> Option<usize> {
        if dep.arch.is_some() {
            return None;
        }
        self.by_name
            .get(&dep.name)?
            .iter()
            .copied()
            .find(|&c| self.arch_ok(c, None))
    }

    /// The dependency closure of `names`, completely resolved (see [`DepRule::Complete`]).
    pub fn closure(&self, names: &[String]) -> (BTreeSet<usize>, Vec<String>) {
        self.closure_with(names, DepRule::Complete)
    }

    /// The dependency closure of `names` under `rule`: (package indexes, names that are not
    /// installed).
    pub fn closure_with(&self, names: &[String], rule: DepRule) -> (BTreeSet<usize>, Vec<String>) {
        let supermin_dpkg = rule == DepRule::Supermin && self.handler == Handler::Dpkg;
        let lookup = |d: &Dep| {
            if supermin_dpkg {
                self.lookup_exact(d)
            } else {
                self.lookup(d)
            }
        };
        let mut set = BTreeSet::new();
        let mut missing = Vec::new();
        let mut queue = VecDeque::new();
        for n in names {
            let dep = Dep::parse(n).unwrap_or(Dep {
                name: n.clone(),
                arch: None,
            });
            match lookup(&dep) {
                Some(i) => {
                    if set.insert(i) {
                        queue.push_back(i);
                    }
                }
                None => missing.push(n.clone()),
            }
        }
        while let Some(i) = queue.pop_front() {
            for clause in &self.pkgs[i].deps {
                // Alternatives: the first installed one, as apt would have picked; supermin
                // looks at the first one only.
                let picked = if supermin_dpkg {
                    clause.first().and_then(lookup)
                } else {
                    clause.iter().find_map(lookup)
                };
                if let Some(j) = picked {
                    if set.insert(j) {
                        queue.push_back(j);
                    }
                }
            }
        }
        (set, missing)
    }

    /// Names of the installed packages that `names` refer to directly (for `packages`).
    pub fn closure_roots(&self, names: &[String]) -> BTreeSet<String> {
        names
            .iter()
            .filter_map(|n| Dep::parse(n))
            .filter_map(|d| self.lookup(&d))
            .map(|i| self.pkgs[i].name.clone())
            .collect()
    }

    /// The files of `pkgs`, read in parallel, diversions applied.
    pub fn files(&self, pkgs: &BTreeSet<usize>) -> Result<Vec<PkgFile>> {
        let lists: Vec<Result<Vec<PkgFile>>> = pkgs
            .iter()
            .copied()
            .collect::<Vec<_>>()
            .par_iter()
            .map(|&i| self.files_of(i))
            .collect();
        let mut out = Vec::new();
        for l in lists {
            out.extend(l?);
        }
        Ok(out)
    }

    pub fn files_of(&self, i: usize) -> Result<Vec<PkgFile>> {
        let p = &self.pkgs[i];
        let mut files = match &p.files {
            FileSource::Known(f) => f.clone(),
            FileSource::DpkgList(cands, conffiles) => dpkg::read_list(cands, conffiles)?,
            FileSource::PacmanFiles(path) => pacman::read_files(path)?,
        };
        if !self.diversions.is_empty() {
            for f in &mut files {
                if let Some((to, by)) = self.diversions.get(&f.path) {
                    // The diverting package's own file stays; everyone else's copy was
                    // moved aside by dpkg to the diverted-to name.
                    if by != &p.name {
                        f.path = to.clone();
                    }
                }
            }
        }
        Ok(files)
    }
}

/// Load the database of handler `h` at `root`.
pub(crate) fn load(h: Handler, root: &Path) -> Result<Db> {
    match h {
        Handler::Dpkg => dpkg::load(root),
        Handler::Pacman => pacman::load(root),
        Handler::Rpm => rpm::load(root),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn pkg(name: &str, deps: &[&[&str]], provides: &[&str], files: &[&str]) -> Pkg {
        Pkg {
            name: name.to_string(),
            arch: "amd64".to_string(),
            display: format!("{name}_1_amd64"),
            deps: deps
                .iter()
                .map(|alts| alts.iter().filter_map(|d| Dep::parse(d)).collect())
                .collect(),
            provides: provides.iter().map(|s| s.to_string()).collect(),
            files: FileSource::Known(
                files
                    .iter()
                    .map(|f| PkgFile {
                        path: f.to_string(),
                        config: false,
                    })
                    .collect(),
            ),
        }
    }

    fn names(db: &Db, set: &BTreeSet<usize>) -> Vec<String> {
        let mut v: Vec<String> = set.iter().map(|&i| db.pkgs[i].name.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn dependency_closure_reaches_a_fixed_point() {
        let db = Db::new(
            Handler::Dpkg,
            vec![
                pkg("a", &[&["b (>= 1)"]], &[], &[]),
                pkg("b", &[&["c"]], &[], &[]),
                pkg("c", &[&["a"]], &[], &[]),
                pkg("unrelated", &[], &[], &[]),
            ],
            vec![],
            ProviderPick::FirstByName,
        );
        let (set, missing) = db.closure(&["a".to_string()]);
        assert_eq!(names(&db, &set), ["a", "b", "c"]);
        assert!(missing.is_empty());
    }

    #[test]
    fn first_installed_alternative_is_taken() {
        let db = Db::new(
            Handler::Dpkg,
            vec![
                pkg("a", &[&["notinstalled", "second", "third"]], &[], &[]),
                pkg("second", &[], &[], &[]),
                pkg("third", &[], &[], &[]),
            ],
            vec![],
            ProviderPick::FirstByName,
        );
        assert_eq!(names(&db, &db.closure(&["a".into()]).0), ["a", "second"]);
    }

    #[test]
    fn virtual_packages_resolve_to_an_installed_provider() {
        let db = Db::new(
            Handler::Dpkg,
            vec![
                pkg("app", &[&["mail-transport-agent"]], &[], &[]),
                pkg("postfix", &[], &["mail-transport-agent"], &[]),
                pkg("exim", &[], &["mail-transport-agent"], &[]),
            ],
            vec![],
            ProviderPick::FirstByName,
        );
        assert_eq!(names(&db, &db.closure(&["app".into()]).0), ["app", "exim"]);
    }

    #[test]
    fn supermin_rule_drops_qualified_virtual_and_later_alternatives_like_supermin_5() {
        // Debian 12's libguestfs appliance: sleuthkit `Depends: perl:any`, initscripts
        // `Depends: lsb-base` (virtual since sysvinit-utils provides it), init-system-helpers
        // `Depends: usr-is-merged | ...`-style alternatives.
        let db = Db::new(
            Handler::Dpkg,
            vec![
                pkg(
                    "app",
                    &[
                        &["perl:any"],
                        &["lsb-base"],
                        &["notinstalled", "usr-is-merged"],
                        &["libc6 (>= 2.36)"],
                    ],
                    &[],
                    &[],
                ),
                pkg("perl", &[], &[], &[]),
                pkg("sysvinit-utils", &[], &["lsb-base"], &[]),
                pkg("usr-is-merged", &[], &[], &[]),
                pkg("libc6", &[], &[], &[]),
            ],
            vec!["amd64".into(), "all".into()],
            ProviderPick::FirstByName,
        );
        let supermin = db.closure_with(&["app".into()], DepRule::Supermin).0;
        assert_eq!(names(&db, &supermin), ["app", "libc6"]);
        let complete = db.closure_with(&["app".into()], DepRule::Complete).0;
        assert_eq!(
            names(&db, &complete),
            ["app", "libc6", "perl", "sysvinit-utils", "usr-is-merged"]
        );
        // A virtual name in the `packages` list itself is not installed for supermin either.
        let (set, missing) = db.closure_with(&["lsb-base".into()], DepRule::Supermin);
        assert!(set.is_empty());
        assert_eq!(missing, ["lsb-base"]);
    }

    #[test]
    fn supermin_rule_is_complete_for_other_handlers() {
        let db = Db::new(
            Handler::Rpm,
            vec![
                pkg("app", &[&["mail-transport-agent"]], &[], &[]),
                pkg("postfix", &[], &["mail-transport-agent"], &[]),
            ],
            vec![],
            ProviderPick::ShortestName,
        );
        let set = db.closure_with(&["app".into()], DepRule::Supermin).0;
        assert_eq!(names(&db, &set), ["app", "postfix"]);
    }

    #[test]
    fn unknown_names_are_reported() {
        let db = Db::new(
            Handler::Dpkg,
            vec![pkg("a", &[], &[], &[])],
            vec![],
            ProviderPick::FirstByName,
        );
        let (_, missing) = db.closure(&["a".into(), "nope".into()]);
        assert_eq!(missing, ["nope"]);
    }

    #[test]
    fn architecture_qualifiers_select_the_right_package() {
        let mut i386 = pkg("libc6", &[], &[], &[]);
        i386.arch = "i386".into();
        let db = Db::new(
            Handler::Dpkg,
            vec![
                i386,
                pkg("libc6", &[], &[], &[]),
                pkg("python3", &[&["libc6:i386"]], &[], &[]),
            ],
            vec!["amd64".into(), "all".into()],
            ProviderPick::FirstByName,
        );
        let plain = db.lookup(&Dep::parse("libc6").unwrap()).unwrap();
        assert_eq!(db.pkgs[plain].arch, "amd64");
        let q = db.lookup(&Dep::parse("libc6:i386").unwrap()).unwrap();
        assert_eq!(db.pkgs[q].arch, "i386");
        let any = db.lookup(&Dep::parse("libc6:any").unwrap()).unwrap();
        assert_eq!(db.pkgs[any].arch, "amd64");
    }

    #[test]
    fn os_release_id_like_is_read() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/os-release"),
            "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n",
        )
        .unwrap();
        assert_eq!(os_ids(d.path()), ["linuxmint", "ubuntu", "debian"]);
        fs::create_dir_all(d.path().join("var/lib/dpkg")).unwrap();
        fs::write(d.path().join("var/lib/dpkg/status"), "").unwrap();
        assert_eq!(detect(d.path()), Some(Handler::Dpkg));
        let drivers = list_drivers_at(d.path());
        assert!(drivers.contains(&("debian/dpkg".to_string(), true)));
        assert!(drivers.contains(&("arch/pacman".to_string(), false)));
    }

    #[test]
    fn db_identity_changes_when_the_status_file_changes() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("var/lib/dpkg/info")).unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/debian_version"), "12\n").unwrap();
        fs::write(d.path().join("var/lib/dpkg/status"), "a").unwrap();
        let a = package_db_identity_at(d.path()).unwrap();
        assert_eq!(a, package_db_identity_at(d.path()).unwrap());
        fs::write(d.path().join("var/lib/dpkg/status"), "ab").unwrap();
        assert_ne!(a, package_db_identity_at(d.path()).unwrap());
    }
}
