//! dpkg's database, read directly: `/var/lib/dpkg/status` for installed packages,
//! dependencies, provides and conffiles; `info/<pkg>[:<arch>].list` for file lists (only for
//! packages in the closure); `diversions` for files dpkg moved aside. This is what
//! `dpkg-query` reads too, without a fork per question.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::{Db, Dep, FileSource, Handler, Pkg, PkgFile, ProviderPick};
use crate::error::{read_err, HostfilesError, Result};
use crate::pattern::join_root;

pub(crate) fn load(root: &Path) -> Result<Db> {
    let status_path = join_root(root, Path::new("/var/lib/dpkg/status"));
    let info = join_root(root, Path::new("/var/lib/dpkg/info"));
    let text = fs::read(&status_path).map_err(read_err(&status_path))?;
    let text = String::from_utf8_lossy(&text);
    let pkgs = parse_status(&text, &info);
    // The architecture dpkg itself is built for is dpkg's native one.
    let native = pkgs
        .iter()
        .find(|p| p.name == "dpkg")
        .map(|p| vec![p.arch.clone(), "all".to_string()])
        .unwrap_or_default();
    let mut db = Db::new(Handler::Dpkg, pkgs, native, ProviderPick::FirstByName);
    let div_path = join_root(root, Path::new("/var/lib/dpkg/diversions"));
    match fs::read_to_string(&div_path) {
        Ok(t) => db.diversions = parse_diversions(&t, &div_path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(read_err(div_path)(e)),
    }
    Ok(db)
}

/// Installed packages from a status file (stanzas of `Field: value`, continuation lines
/// start with a space).
pub(crate) fn parse_status(text: &str, info_dir: &Path) -> Vec<Pkg> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut f: HashMap<&str, String> = HashMap::new();
        let mut conffiles = Vec::new();
        let mut cur: Option<&str> = None;
        for line in stanza.lines() {
            if line.starts_with(' ') || line.starts_with('\t') {
                match cur {
                    Some("Conffiles") => {
                        if let Some(p) = line.split_whitespace().next() {
                            conffiles.push(p.to_string());
                        }
                    }
                    Some(k @ ("Depends" | "Pre-Depends" | "Provides")) => {
                        if let Some(v) = f.get_mut(k) {
                            v.push(' ');
                            v.push_str(line.trim());
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                cur = None;
                continue;
            };
            cur = Some(k);
            if matches!(
                k,
                "Package"
                    | "Status"
                    | "Architecture"
                    | "Version"
                    | "Depends"
                    | "Pre-Depends"
                    | "Provides"
            ) {
                f.insert(k, v.trim().to_string());
            }
        }
        let installed = f
            .get("Status")
            .is_some_and(|s| s.split_whitespace().last() == Some("installed"));
        let (Some(name), true) = (f.get("Package"), installed) else {
            continue;
        };
        let arch = f.get("Architecture").cloned().unwrap_or_default();
        let version = f.get("Version").cloned().unwrap_or_default();
        let mut deps = Vec::new();
        for key in ["Pre-Depends", "Depends"] {
            if let Some(v) = f.get(key) {
                deps.extend(parse_depends(v));
            }
        }
        let provides = f
            .get("Provides")
            .map(|v| {
                v.split(',')
                    .filter_map(Dep::parse)
                    .map(|d| d.name)
                    .collect()
            })
            .unwrap_or_default();
        let lists = vec![
            info_dir.join(format!("{name}:{arch}.list")),
            info_dir.join(format!("{name}.list")),
        ];
        out.push(Pkg {
            display: format!("{name}_{version}_{arch}"),
            name: name.clone(),
            arch,
            deps,
            provides,
            files: FileSource::DpkgList(lists, conffiles),
        });
    }
    out
}

/// `a (>= 1), b | c:any, d [amd64]` -> [[a], [b, c:any], [d]].
pub(crate) fn parse_depends(v: &str) -> Vec<Vec<Dep>> {
    v.split(',')
        .map(|clause| clause.split('|').filter_map(Dep::parse).collect::<Vec<_>>())
        .filter(|c| !c.is_empty())
        .collect()
}

/// The diversions file: triples of lines (from, to, diverting package or `:`).
pub(crate) fn parse_diversions(
    text: &str,
    path: &Path,
) -> Result<HashMap<String, (String, String)>> {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() % 3 != 0 {
        return Err(HostfilesError::PackageDb {
            path: path.to_path_buf(),
            message: format!("{} lines, expected triples of lines", lines.len()),
        });
    }
    Ok(lines
        .chunks_exact(3)
        .map(|t| (t[0].to_string(), (t[1].to_string(), t[2].to_string())))
        .collect())
}

/// One package's file list. A package with no list file at all (a metapackage that was
/// never unpacked, or a list dpkg lost) has no files, which is not an error.
pub(crate) fn read_list(candidates: &[PathBuf], conffiles: &[String]) -> Result<Vec<PkgFile>> {
    for c in candidates {
        match fs::read(c) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                return Ok(text
                    .lines()
                    .filter(|l| l.starts_with('/') && *l != "/.")
                    .map(|l| PkgFile {
                        path: l.to_string(),
                        config: conffiles.iter().any(|c| c == l),
                    })
                    .collect());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(c)(e)),
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (name, arch, Depends, Provides, files, conffiles) of one fake installed package.
    pub(crate) type FakeDeb<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
    );

    /// A fake dpkg database under `root` (status, info/*.list, diversions, os-release).
    pub(crate) fn fake_dpkg(root: &Path, pkgs: &[FakeDeb], diversions: &str) {
        let info = root.join("var/lib/dpkg/info");
        fs::create_dir_all(&info).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/os-release"), "ID=debian\n").unwrap();
        let mut status = String::new();
        for (name, arch, deps, provides, files, conf) in pkgs {
            status.push_str(&format!(
                "Package: {name}\nStatus: install ok installed\nArchitecture: {arch}\nVersion: 1.0-1\n"
            ));
            if !deps.is_empty() {
                status.push_str(&format!("Depends: {deps}\n"));
            }
            if !provides.is_empty() {
                status.push_str(&format!("Provides: {provides}\n"));
            }
            if !conf.is_empty() {
                status.push_str("Conffiles:\n");
                for c in *conf {
                    status.push_str(&format!(" {c} 0123456789abcdef\n"));
                }
            }
            status.push_str("Description: test\n multi-line\n\n");
            let list: String = std::iter::once("/.")
                .chain(files.iter().copied())
                .map(|f| format!("{f}\n"))
                .collect();
            let fname = if *name == "multi" {
                format!("{name}:{arch}.list")
            } else {
                format!("{name}.list")
            };
            fs::write(info.join(fname), list).unwrap();
        }
        status.push_str("Package: removed\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n");
        fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
        fs::write(root.join("var/lib/dpkg/diversions"), diversions).unwrap();
    }

    #[test]
    fn status_database_gives_installed_packages_deps_and_files() {
        let d = tempfile::tempdir().unwrap();
        fake_dpkg(
            d.path(),
            &[
                ("dpkg", "amd64", "", "", &[], &[]),
                (
                    "bash",
                    "amd64",
                    "libc6 (>= 2.36), base-files | nothing",
                    "",
                    &["/bin", "/bin/bash"],
                    &["/etc/bash.bashrc"],
                ),
                (
                    "libc6",
                    "amd64",
                    "",
                    "",
                    &["/lib/x86_64-linux-gnu/libc.so.6"],
                    &[],
                ),
                ("base-files", "amd64", "", "", &["/etc/debian_version"], &[]),
                ("multi", "amd64", "", "", &["/usr/lib/multi"], &[]),
            ],
            "",
        );
        let db = load(d.path()).unwrap();
        assert_eq!(db.native, ["amd64", "all"]);
        assert!(db.lookup(&Dep::parse("removed").unwrap()).is_none());
        let (set, _) = db.closure(&["bash".into(), "multi".into()]);
        let mut shown: Vec<&str> = set.iter().map(|&i| db.pkgs[i].display.as_str()).collect();
        shown.sort();
        assert_eq!(
            shown,
            [
                "base-files_1.0-1_amd64",
                "bash_1.0-1_amd64",
                "libc6_1.0-1_amd64",
                "multi_1.0-1_amd64"
            ]
        );
        let files = db.files(&set).unwrap();
        let paths: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert!(paths.contains("/bin/bash"));
        assert!(
            paths.contains("/usr/lib/multi"),
            "Multi-Arch :arch list read"
        );
        assert!(!paths.contains("/."));
    }

    #[test]
    fn conffiles_are_marked_config() {
        let d = tempfile::tempdir().unwrap();
        fake_dpkg(
            d.path(),
            &[(
                "bash",
                "amd64",
                "",
                "",
                &["/etc/bash.bashrc", "/bin/bash"],
                &["/etc/bash.bashrc"],
            )],
            "",
        );
        let db = load(d.path()).unwrap();
        let (set, _) = db.closure(&["bash".into()]);
        let files = db.files(&set).unwrap();
        assert!(files
            .iter()
            .any(|f| f.path == "/etc/bash.bashrc" && f.config));
        assert!(files.iter().any(|f| f.path == "/bin/bash" && !f.config));
    }

    #[test]
    fn diversions_move_other_packages_files_but_not_the_diverters() {
        let d = tempfile::tempdir().unwrap();
        fake_dpkg(
            d.path(),
            &[
                ("dash", "amd64", "", "", &["/bin/sh"], &[]),
                ("other", "amd64", "", "", &["/bin/sh"], &[]),
            ],
            "/bin/sh\n/bin/sh.distrib\ndash\n",
        );
        let db = load(d.path()).unwrap();
        let dash = db.closure(&["dash".into()]).0;
        assert_eq!(db.files(&dash).unwrap()[0].path, "/bin/sh");
        let other = db.closure(&["other".into()]).0;
        assert_eq!(db.files(&other).unwrap()[0].path, "/bin/sh.distrib");
    }

    #[test]
    fn malformed_diversions_file_is_an_error_naming_it() {
        let e = parse_diversions("/a\n/b\n", Path::new("/x/diversions")).unwrap_err();
        assert!(e.to_string().contains("/x/diversions"));
    }

    #[test]
    fn depends_parse_versions_alternatives_and_qualifiers() {
        let d = parse_depends("a (>= 1.0), b:any | c [amd64], d:amd64");
        assert_eq!(d.len(), 3);
        assert_eq!(d[0][0].name, "a");
        assert_eq!(
            d[1][0],
            Dep {
                name: "b".into(),
                arch: Some("any".into())
            }
        );
        assert_eq!(d[1][1].name, "c");
        assert_eq!(d[2][0].arch.as_deref(), Some("amd64"));
    }
}
