//! rpm's database through one `rpm -qa --qf` query (names, requires, provides, files and
//! file flags of every installed package at once), instead of supermin's librpm calls per
//! package. Asking rpm itself reads every database backend it supports (`rpmdb.sqlite`,
//! Berkeley DB `Packages`, ndb) with no database code of ours; rpm is on every rpm host (supermin
//! needs it too). The database directory is passed with `--dbpath` rather than left to rpm's
//! macros, which differ between builds of rpm (Debian's rpm defaults to `~/.rpmdb`).
//!
//! The parser is unit-tested on query text; `tests/tests/foreign_roots.rs` runs the whole
//! handler against a real rpmdb.sqlite made by rpm 4.18 (`tests/fixtures/make-rpm-root.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Db, Dep, FileSource, Handler, Pkg, PkgFile, ProviderPick, Watch};
use crate::error::{HostfilesError, Result};
use crate::pattern::join_root;

const RPMDB_LOCATIONS: [&str; 3] = [
    "/usr/lib/sysimage/rpm/rpmdb.sqlite",
    "/var/lib/rpm/rpmdb.sqlite",
    "/var/lib/rpm/Packages",
];

/// RPMFILE_CONFIG in rpm's `rpmfileAttrs`.
const RPMFILE_CONFIG: u32 = 1;

/// The query format: one `@@PKG` line per package, then its requires, provides and files.
pub(crate) const QUERY_FORMAT: &str = "@@PKG\t%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\n[@R\t%{REQUIRENAME}\n][@P\t%{PROVIDENAME}\n][@F\t%{FILEFLAGS}\t%{FILENAMES}\n]";

pub(crate) fn rpmdb_path(root: &Path) -> Option<PathBuf> {
    RPMDB_LOCATIONS
        .iter()
        .map(|p| join_root(root, Path::new(p)))
        .find(|p| p.exists())
}

/// The database's directory inside the root (what `rpm --dbpath` wants), e.g.
/// `/usr/lib/sysimage/rpm`.
fn rpmdb_dir_in_root() -> impl Iterator<Item = &'static str> {
    RPMDB_LOCATIONS
        .iter()
        .map(|p| p.rsplit_once('/').map_or("/", |(dir, _)| dir))
}

/// What a package install, removal or upgrade always changes: the database file and, for
/// sqlite, its write-ahead log (rpm keeps the database in WAL mode: a transaction killed
/// before its checkpoint changed only the `-wal` file). Not the directory: a reader that
/// finds no `-wal` file creates one.
pub(crate) fn identity_paths(root: &Path) -> Vec<(PathBuf, Watch)> {
    let Some(db) = rpmdb_path(root) else {
        return Vec::new();
    };
    let mut out = vec![(db.clone(), Watch::Everything)];
    if db.extension().is_some_and(|e| e == "sqlite") {
        let mut wal = db.into_os_string();
        wal.push("-wal");
        out.push((PathBuf::from(wal), Watch::Contents));
    }
    out
}

pub(crate) fn load(root: &Path) -> Result<Db> {
    let mut cmd = Command::new("rpm");
    if root != Path::new("/") {
        cmd.arg("--root").arg(root);
    }
    // Where the database was found, not where this rpm's macros say (see the module docs).
    let dbpath = RPMDB_LOCATIONS
        .iter()
        .zip(rpmdb_dir_in_root())
        .find(|(file, _)| join_root(root, Path::new(file)).exists())
        .map(|(_, dir)| dir);
    if let Some(dir) = dbpath {
        cmd.arg("--dbpath").arg(dir);
    }
    cmd.args(["-qa", "--qf", QUERY_FORMAT]);
    let shown = format!("rpm -qa --qf ... (root {})", root.display());
    let out = cmd.output().map_err(|source| HostfilesError::Spawn {
        command: shown.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(HostfilesError::CommandFailed {
            command: shown,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    parse_query(
        &String::from_utf8_lossy(&out.stdout),
        Path::new("rpm -qa output"),
    )
}

/// Parse the output of `rpm -qa --qf QUERY_FORMAT`.
pub(crate) fn parse_query(text: &str, origin: &Path) -> Result<Db> {
    let native = std::env::consts::ARCH;
    let mut pkgs: Vec<Pkg> = Vec::new();
    // (epoch, version, release) of each package, in the order of `pkgs`.
    let mut versions: Vec<(u64, String, String)> = Vec::new();
    let bad = |n: usize, what: &str| HostfilesError::PackageDb {
        path: origin.to_path_buf(),
        message: format!("line {}: {what}", n + 1),
    };
    for (n, line) in text.lines().enumerate() {
        let mut parts = line.splitn(2, '\t');
        let tag = parts.next().unwrap_or_default();
        let rest = parts.next();
        if tag == "@@PKG" {
            let f: Vec<&str> = rest.unwrap_or_default().split('\t').collect();
            let [name, epoch, version, release, arch] = f[..] else {
                return Err(bad(n, "expected name, epoch, version, release, arch"));
            };
            let evr = match epoch {
                "" | "0" | "(none)" => format!("{version}-{release}"),
                e => format!("{e}:{version}-{release}"),
            };
            let epoch_num: u64 = epoch.parse().unwrap_or(0);
            versions.push((epoch_num, version.to_string(), release.to_string()));
            pkgs.push(Pkg {
                name: name.to_string(),
                arch: arch.to_string(),
                display: format!("{name}-{evr}.{arch}"),
                deps: Vec::new(),
                provides: Vec::new(),
                files: FileSource::Known(Vec::new()),
            });
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (Some(p), Some(rest)) = (pkgs.last_mut(), rest) else {
            return Err(bad(n, "entry before any @@PKG line"));
        };
        match tag {
            "@R" => {
                if let Some(clause) = requirement(rest) {
                    p.deps.push(clause);
                }
            }
            "@P" => p.provides.push(rest.to_string()),
            "@F" => {
                let (flags, path) = rest
                    .split_once('\t')
                    .ok_or_else(|| bad(n, "file line without flags"))?;
                let flags: u32 = flags
                    .parse()
                    .map_err(|_| bad(n, "file flags are not a number"))?;
                if let FileSource::Known(files) = &mut p.files {
                    files.push(PkgFile {
                        path: path.to_string(),
                        config: flags & RPMFILE_CONFIG != 0,
                    });
                }
            }
            _ => return Err(bad(n, "unknown line tag")),
        }
    }
    // supermin prefers noarch, then the native architecture, when a name is installed twice.
    let weight = |a: &str| match a {
        "noarch" => 0,
        a if a == native => 1,
        _ => 2,
    };
    // Then the newest version (a name may be installed twice, like kernels), where supermin's
    // comparison is a no-op (it compares a version with itself).
    let mut order: Vec<usize> = (0..pkgs.len()).collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (&pkgs[a], &pkgs[b]);
        let (va, vb) = (&versions[a], &versions[b]);
        pa.name
            .cmp(&pb.name)
            .then(weight(&pa.arch).cmp(&weight(&pb.arch)))
            .then(vb.0.cmp(&va.0))
            .then(rpmvercmp(&vb.1, &va.1))
            .then(rpmvercmp(&vb.2, &va.2))
    });
    let mut slots: Vec<Option<Pkg>> = pkgs.into_iter().map(Some).collect();
    let pkgs: Vec<Pkg> = order.into_iter().filter_map(|i| slots[i].take()).collect();
    Ok(Db::new(
        Handler::Rpm,
        pkgs,
        Vec::new(),
        ProviderPick::ShortestName,
    ))
}

/// One `Requires:` entry as a dependency clause. `rpmlib(...)` names are satisfied by rpm
/// itself; a rich dependency `(a or b)` is a list of alternatives; other rich forms
/// (`(a if b)`, `(a with b)`, ...) are conditions we do not evaluate, and supermin (whose
/// provides lookup finds no package by such a string) skips them too.
fn requirement(req: &str) -> Option<Vec<Dep>> {
    if req.starts_with("rpmlib(") {
        return None;
    }
    let dep = |name: &str| Dep {
        name: name.to_string(),
        arch: None,
    };
    let Some(inner) = req.strip_prefix('(').and_then(|r| r.strip_suffix(')')) else {
        return Some(vec![dep(req)]);
    };
    let words: Vec<&str> = inner.split_whitespace().collect();
    let mut alts = Vec::new();
    // `name [op version] (or name [op version])*`: the names are the words that follow
    // the start or an `or`.
    let mut expect_name = true;
    for w in &words {
        match *w {
            "or" => expect_name = true,
            "and" | "if" | "unless" | "with" | "without" | "else" => return None,
            w if w.starts_with('(') => return None,
            w if expect_name => {
                alts.push(dep(w));
                expect_name = false;
            }
            _ => {}
        }
    }
    (!alts.is_empty()).then_some(alts)
}

/// rpm's version comparison (`rpmvercmp`): alternating runs of digits (compared as numbers)
/// and letters (compared as strings), other characters separate, `~` sorts before
/// anything and `^` after the end but before anything else.
pub(crate) fn rpmvercmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    if a == b {
        return Equal;
    }
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let sep = |c: &u8| !c.is_ascii_alphanumeric() && *c != b'~' && *c != b'^';
    loop {
        while a.first().is_some_and(sep) {
            a = &a[1..];
        }
        while b.first().is_some_and(sep) {
            b = &b[1..];
        }
        match (a.first(), b.first()) {
            (Some(b'~'), Some(b'~')) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (Some(b'~'), _) => return Less,
            (_, Some(b'~')) => return Greater,
            (Some(b'^'), Some(b'^')) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (Some(b'^'), None) => return Greater,
            (None, Some(b'^')) => return Less,
            (Some(b'^'), _) => return Less,
            (_, Some(b'^')) => return Greater,
            (None, None) => return Equal,
            (None, _) => return Less,
            (_, None) => return Greater,
            _ => {}
        }
        let numeric = a[0].is_ascii_digit();
        let run = |s: &[u8]| {
            s.iter()
                .take_while(|c| {
                    if numeric {
                        c.is_ascii_digit()
                    } else {
                        c.is_ascii_alphabetic()
                    }
                })
                .count()
        };
        let (na, nb) = (run(a), run(b));
        // A number is newer than letters.
        if nb == 0 {
            return if numeric { Greater } else { Less };
        }
        let (sa, sb) = (&a[..na], &b[..nb]);
        let ord = if numeric {
            let trim = |s: &[u8]| {
                let z = s.iter().take_while(|&&c| c == b'0').count();
                s[z..].to_vec()
            };
            let (ta, tb) = (trim(sa), trim(sb));
            ta.len().cmp(&tb.len()).then(ta.cmp(&tb))
        } else {
            sa.cmp(sb)
        };
        if ord != Equal {
            return ord;
        }
        a = &a[na..];
        b = &b[nb..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `rpm -qa --qf QUERY_FORMAT` prints for a tiny Fedora-like system.
    const QUERY: &str = "\
@@PKG\tbash\t0\t5.2.26\t3.fc40\tx86_64
@R\t/bin/sh
@R\tlibc.so.6()(64bit)
@R\tlibtinfo.so.6()(64bit)
@R\trpmlib(BuiltinLuaScripts)
@P\tbash
@P\tbash(x86-64)
@P\t/bin/sh
@F\t0\t/usr/bin/bash
@F\t17\t/etc/skel/.bashrc
@F\t0\t/usr/bin/sh
@@PKG\tglibc\t0\t2.39\t5.fc40\tx86_64
@P\tglibc
@P\tlibc.so.6()(64bit)
@F\t0\t/usr/lib64/libc.so.6
@@PKG\tglibc\t0\t2.39\t5.fc40\ti686
@P\tglibc
@P\tlibc.so.6
@F\t0\t/usr/lib/libc.so.6
@@PKG\tncurses-libs\t0\t6.4\t12.fc40\tx86_64
@R\tncurses-base
@P\tlibtinfo.so.6()(64bit)
@F\t0\t/usr/lib64/libtinfo.so.6
@@PKG\tncurses-compat-libs\t0\t6.4\t12.fc40\tx86_64
@P\tlibtinfo.so.6()(64bit)
@F\t0\t/usr/lib64/libtinfo.so.6.compat
@@PKG\tncurses-base\t0\t6.4\t12.fc40\tnoarch
@F\t0\t/usr/share/terminfo
@@PKG\ttar\t2\t1.35\t3.fc40\tx86_64
@F\t0\t/usr/bin/tar
";

    #[test]
    fn query_output_gives_closure_with_shortest_provider_and_config_flags() {
        let db = parse_query(QUERY, Path::new("fixture")).unwrap();
        let (set, missing) = db.closure(&["bash".into(), "tar".into()]);
        assert!(missing.is_empty());
        let mut shown: Vec<&str> = set.iter().map(|&i| db.pkgs[i].display.as_str()).collect();
        shown.sort();
        // libtinfo has two providers: the shorter name wins, as in supermin; the x86_64
        // glibc is taken over the i686 one; tar's epoch is shown.
        assert_eq!(
            shown,
            [
                "bash-5.2.26-3.fc40.x86_64",
                "glibc-2.39-5.fc40.x86_64",
                "ncurses-base-6.4-12.fc40.noarch",
                "ncurses-libs-6.4-12.fc40.x86_64",
                "tar-2:1.35-3.fc40.x86_64"
            ]
        );
        let files = db.files(&set).unwrap();
        assert!(files
            .iter()
            .any(|f| f.path == "/etc/skel/.bashrc" && f.config));
        assert!(files.iter().any(|f| f.path == "/usr/bin/bash" && !f.config));
    }

    #[test]
    fn file_requirements_resolve_to_the_owner() {
        let q = "@@PKG\ta\t0\t1\t1\tx86_64\n@R\t/usr/bin/b\n@@PKG\tb\t0\t1\t1\tx86_64\n@F\t0\t/usr/bin/b\n";
        let db = parse_query(q, Path::new("fixture")).unwrap();
        assert_eq!(db.closure(&["a".into()]).0.len(), 2);
    }

    #[test]
    fn malformed_query_output_is_an_error_with_the_line() {
        let e = parse_query("@R\tfoo\n", Path::new("fixture"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_query("@@PKG\ta\t0\n", Path::new("fixture"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_query("@@PKG\ta\t0\t1\t1\tx\n@F\tzz\t/a\n", Path::new("fixture"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn rpmvercmp_orders_like_rpm() {
        use std::cmp::Ordering::*;
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0", "1.0.1", Less),
            ("1.10", "1.9", Greater),
            ("1.05", "1.5", Equal),
            ("2.0a", "2.0", Greater),
            ("1.0a", "1.0b", Less),
            ("1a", "1.1", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0^git1", "1.0", Greater),
            ("1.0^git1", "1.0.1", Less),
            ("5.2", "5.2.0", Less),
        ] {
            assert_eq!(rpmvercmp(a, b), want, "{a} vs {b}");
            assert_eq!(rpmvercmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn the_newest_of_a_name_installed_twice_is_taken() {
        let q = "@@PKG\tkernel\t0\t6.1\t9\tx86_64\n@@PKG\tkernel\t0\t6.10\t1\tx86_64\n@@PKG\tkernel\t0\t6.2\t1\tx86_64\n";
        let db = parse_query(q, Path::new("fixture")).unwrap();
        let i = db.lookup(&Dep::parse("kernel").unwrap()).unwrap();
        assert_eq!(db.pkgs[i].display, "kernel-6.10-1.x86_64");
    }

    #[test]
    fn rich_or_dependencies_are_alternatives_and_other_rich_forms_are_skipped() {
        let names =
            |r: &str| requirement(r).map(|c| c.into_iter().map(|d| d.name).collect::<Vec<_>>());
        assert_eq!(
            names("(a or b >= 2 or c)"),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(names("(a if b)"), None);
        assert_eq!(names("((a or b) with c)"), None);
        assert_eq!(names("rpmlib(CompressedFileNames)"), None);
        assert_eq!(
            names("libc.so.6(GLIBC_2.34)(64bit)"),
            Some(vec!["libc.so.6(GLIBC_2.34)(64bit)".into()])
        );
        let q = "@@PKG\ta\t0\t1\t1\tx86_64\n@R\t(nope or b)\n@@PKG\tb\t0\t1\t1\tx86_64\n";
        let db = parse_query(q, Path::new("fixture")).unwrap();
        assert_eq!(db.closure(&["a".into()]).0.len(), 2);
    }

    #[test]
    fn file_requirements_pick_the_shortest_owner_before_explicit_provides() {
        let q = "@@PKG\ta\t0\t1\t1\tx86_64\n@R\t/usr/bin/sh\n\
@@PKG\tbusybox\t0\t1\t1\tx86_64\n@F\t0\t/usr/bin/sh\n\
@@PKG\tdash\t0\t1\t1\tx86_64\n@F\t0\t/usr/bin/sh\n\
@@PKG\tsh\t0\t1\t1\tx86_64\n@P\t/usr/bin/sh\n";
        let db = parse_query(q, Path::new("fixture")).unwrap();
        let i = db.lookup(&Dep::parse("/usr/bin/sh").unwrap()).unwrap();
        assert_eq!(db.pkgs[i].name, "dash");
    }
}
