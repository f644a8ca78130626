//! pacman's local database, read directly: `/var/lib/pacman/local/<name>-<ver>/desc` (name,
//! version, arch, depends, provides) and `.../files` (`%FILES%`, with `%BACKUP%` naming the
//! configuration files). supermin forks `pacman -Qi`/`pactree` per package instead.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Db, Dep, FileSource, Handler, Pkg, PkgFile, ProviderPick};
use crate::error::{read_err, HostfilesError, Result};
use crate::pattern::join_root;

/// `%SECTION%` blocks of a pacman db file.
fn sections(text: &str) -> HashMap<&str, Vec<&str>> {
    let mut out: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut cur: Option<&str> = None;
    for line in text.lines() {
        if line.len() > 2 && line.starts_with('%') && line.ends_with('%') {
            cur = Some(&line[1..line.len() - 1]);
            out.entry(&line[1..line.len() - 1]).or_default();
        } else if line.is_empty() {
            cur = None;
        } else if let Some(c) = cur {
            out.entry(c).or_default().push(line);
        }
    }
    out
}

/// pacman dependency strings carry versions as `name>=1.0`, `name=2`.
fn dep_name(s: &str) -> Option<Dep> {
    let end = s.find(['<', '>', '=', ':']).unwrap_or(s.len());
    let n = s[..end].trim();
    (!n.is_empty()).then(|| Dep {
        name: n.to_string(),
        arch: None,
    })
}

pub(crate) fn load(root: &Path) -> Result<Db> {
    let local = join_root(root, Path::new("/var/lib/pacman/local"));
    let mut dirs: Vec<PathBuf> = fs::read_dir(&local)
        .map_err(read_err(&local))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("desc").is_file())
        .collect();
    dirs.sort();
    let pkgs: Vec<Result<Pkg>> = dirs.par_iter().map(|d| load_one(d)).collect();
    let pkgs = pkgs.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(Db::new(
        Handler::Pacman,
        pkgs,
        Vec::new(),
        ProviderPick::FirstByName,
    ))
}

fn load_one(dir: &Path) -> Result<Pkg> {
    let desc = dir.join("desc");
    let text = fs::read_to_string(&desc).map_err(read_err(&desc))?;
    let s = sections(&text);
    let one = |k: &str| s.get(k).and_then(|v| v.first()).map(|v| v.to_string());
    let name = one("NAME").ok_or_else(|| HostfilesError::PackageDb {
        path: desc.clone(),
        message: "no %NAME% section".to_string(),
    })?;
    let version = one("VERSION").unwrap_or_default();
    let arch = one("ARCH").unwrap_or_default();
    let list = |k: &str| s.get(k).cloned().unwrap_or_default();
    Ok(Pkg {
        display: format!("{name}-{version}.{arch}"),
        deps: list("DEPENDS")
            .iter()
            .filter_map(|d| dep_name(d))
            .map(|d| vec![d])
            .collect(),
        provides: list("PROVIDES")
            .iter()
            .filter_map(|d| dep_name(d))
            .map(|d| d.name)
            .collect(),
        files: FileSource::PacmanFiles(dir.join("files")),
        name,
        arch,
    })
}

/// `%FILES%` lists paths relative to `/`, directories with a trailing `/`.
pub(crate) fn read_files(path: &Path) -> Result<Vec<PkgFile>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(path)(e)),
    };
    let s = sections(&text);
    let backup: Vec<String> = s
        .get("BACKUP")
        .map(|v| {
            v.iter()
                .filter_map(|l| l.split('\t').next())
                .map(|p| format!("/{p}"))
                .collect()
        })
        .unwrap_or_default();
    Ok(s.get("FILES")
        .map(|v| {
            v.iter()
                .map(|l| {
                    let p = format!("/{}", l.trim_end_matches('/'));
                    PkgFile {
                        config: backup.contains(&p),
                        path: p,
                    }
                })
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, version, depends, provides, files, backup) of one fake installed package.
    type FakePkg<'a> = (
        &'a str,
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
    );

    fn fake_pacman(root: &Path, pkgs: &[FakePkg]) {
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/os-release"),
            "NAME=\"Arch Linux\"\nID=arch\n",
        )
        .unwrap();
        for (name, ver, deps, provides, files, backup) in pkgs {
            let dir = root.join(format!("var/lib/pacman/local/{name}-{ver}"));
            fs::create_dir_all(&dir).unwrap();
            let mut desc = format!("%NAME%\n{name}\n\n%VERSION%\n{ver}\n\n%ARCH%\nx86_64\n\n");
            if !deps.is_empty() {
                desc.push_str(&format!("%DEPENDS%\n{}\n\n", deps.join("\n")));
            }
            if !provides.is_empty() {
                desc.push_str(&format!("%PROVIDES%\n{}\n\n", provides.join("\n")));
            }
            fs::write(dir.join("desc"), desc).unwrap();
            let mut f = format!("%FILES%\n{}\n\n", files.join("\n"));
            if !backup.is_empty() {
                let b: Vec<String> = backup
                    .iter()
                    .map(|b| format!("{b}\td41d8cd98f00b204e9800998ecf8427e"))
                    .collect();
                f.push_str(&format!("%BACKUP%\n{}\n\n", b.join("\n")));
            }
            fs::write(dir.join("files"), f).unwrap();
        }
    }

    #[test]
    fn local_database_gives_closure_files_and_backup_configs() {
        let d = tempfile::tempdir().unwrap();
        fake_pacman(
            d.path(),
            &[
                (
                    "bash",
                    "5.2.026-2",
                    &["readline>=7.0", "glibc", "ncurses"],
                    &["sh"],
                    &["usr/", "usr/bin/", "usr/bin/bash", "etc/bash.bashrc"],
                    &["etc/bash.bashrc"],
                ),
                (
                    "readline",
                    "8.2.010-1",
                    &["glibc"],
                    &["libreadline.so=8-64"],
                    &["usr/lib/libreadline.so.8"],
                    &[],
                ),
                ("glibc", "2.39-1", &[], &[], &["usr/lib/libc.so.6"], &[]),
                (
                    "ncurses-compat",
                    "6.4-1",
                    &[],
                    &["ncurses"],
                    &["usr/lib/libncursesw.so.6"],
                    &[],
                ),
                ("other", "1-1", &[], &[], &["usr/bin/other"], &[]),
            ],
        );
        assert_eq!(super::super::detect(d.path()), Some(Handler::Pacman));
        let db = load(d.path()).unwrap();
        let (set, missing) = db.closure(&["bash".into()]);
        assert!(missing.is_empty());
        let mut shown: Vec<&str> = set.iter().map(|&i| db.pkgs[i].display.as_str()).collect();
        shown.sort();
        assert_eq!(
            shown,
            [
                "bash-5.2.026-2.x86_64",
                "glibc-2.39-1.x86_64",
                "ncurses-compat-6.4-1.x86_64",
                "readline-8.2.010-1.x86_64"
            ]
        );
        let files = db.files(&set).unwrap();
        assert!(files.iter().any(|f| f.path == "/usr/bin" && !f.config));
        assert!(files
            .iter()
            .any(|f| f.path == "/etc/bash.bashrc" && f.config));
        assert!(files.iter().any(|f| f.path == "/usr/lib/libncursesw.so.6"));
    }

    #[test]
    fn desc_without_name_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("var/lib/pacman/local/broken-1");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("desc"), "%VERSION%\n1\n").unwrap();
        let e = load(d.path()).err().unwrap().to_string();
        assert!(e.contains("broken-1/desc"), "{e}");
    }
}
