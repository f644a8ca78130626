//! rpm's database through one `rpm -qa --qf` query (names, requires, provides, files and
//! file flags of every installed package at once), instead of supermin's librpm calls per
//! package. This host is Debian, so the parser is tested on query output made by the tests;
//! the command itself has not been run against a real rpm database here.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Db, Dep, FileSource, Handler, Pkg, PkgFile, ProviderPick};
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

pub(crate) fn load(root: &Path) -> Result<Db> {
    let mut cmd = Command::new("rpm");
    if root != Path::new("/") {
        cmd.arg("--root").arg(root);
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
            "@R" if !rest.starts_with("rpmlib(") => p.deps.push(vec![Dep {
                name: rest.to_string(),
                arch: None,
            }]),
            "@R" => {}
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
    pkgs.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then(weight(&a.arch).cmp(&weight(&b.arch)))
    });
    Ok(Db::new(
        Handler::Rpm,
        pkgs,
        Vec::new(),
        ProviderPick::ShortestName,
    ))
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
}
