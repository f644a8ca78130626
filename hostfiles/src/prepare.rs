//! `supermin --prepare`: write `packages` (the named packages, sorted) and `base.tar.gz`
//! (the configuration files of the whole package closure, owned by root, reproducible).
//! With `--use-installed` the config files are taken from the installed system; otherwise
//! from the packages themselves, so a locally edited config file does not leak into a
//! distributed appliance. The packages are downloaded with the distribution's own tool, as
//! supermin does (`apt-get download`, `dnf download`, `pacman -Sw`), and only the wanted
//! config files are pulled out of each, streaming (`dpkg-deb --fsys-tarfile`, `rpm2cpio`
//! read by our newc reader, pacman's tar read in process).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use supermin_kernel_probe::compression::{decoder, Members};

use crate::base_image::safe_tar_path;
use crate::error::{read_err, write_err, HostfilesError, Result};
use crate::inputs::Compression;
use crate::packages::{self, Handler};
use crate::pattern::join_root;

mod cpio;

/// What one `--prepare` does.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// The packages to prepare, by name.
    pub packages: Vec<String>,
    /// `--use-installed`: take files from the installed packages instead of downloading them.
    pub use_installed: bool,
    /// `--packager-config`: passed to `apt-get -c`, `dnf download --config=` or
    /// `pacman --config` (instead of the host's configuration minus its CacheDir).
    pub packager_config: Option<PathBuf>,
    /// Where supermin.d is written.
    pub out_dir: PathBuf,
    /// `SOURCE_DATE_EPOCH`: every tar entry gets this mtime.
    pub source_date_epoch: Option<i64>,
    /// The system whose package database is used; `/` normally.
    pub root: PathBuf,
}

/// Writes a supermin.d for `opts` (supermin's `--prepare`).
pub fn prepare(opts: &PrepareOptions) -> Result<()> {
    if opts.packages.is_empty() {
        return Err(HostfilesError::NoPackages);
    }
    let root = opts.root.as_path();
    let h = packages::detect(root).ok_or_else(|| HostfilesError::NoPackageHandler {
        root: root.to_path_buf(),
    })?;
    let db = packages::load(h, root)?;
    let (set, missing) = db.closure(&opts.packages);
    if !missing.is_empty() {
        return Err(HostfilesError::UnknownPackages { names: missing });
    }
    let named: BTreeSet<String> = db.closure_roots(&opts.packages);
    fs::create_dir_all(&opts.out_dir).map_err(write_err(&opts.out_dir))?;
    let list: String = named.iter().map(|n| format!("{n}\n")).collect();
    write_atomic(&opts.out_dir.join("packages"), list.as_bytes())?;

    // Config files per package; only packages that have some need downloading.
    let mut config: BTreeSet<String> = BTreeSet::new();
    // (name, arch) of the packages that hold any: only those need downloading.
    let mut with_config: BTreeSet<(String, String)> = BTreeSet::new();
    for &i in &set {
        let files = db.files_of(i)?;
        for f in files {
            let on_host = fs::symlink_metadata(join_root(root, Path::new(&f.path)));
            let is_cfg = f.config
                || (f.path.starts_with("/etc/") && on_host.as_ref().is_ok_and(|m| m.is_file()));
            if is_cfg {
                config.insert(f.path);
                with_config.insert((db.pkgs[i].name.clone(), db.pkgs[i].arch.clone()));
            }
        }
    }

    let base = opts.out_dir.join("base.tar.gz");
    let scratch;
    let source_root: PathBuf = if opts.use_installed {
        root.to_path_buf()
    } else {
        // Beside the output, and named uniquely: two prepares into one
        // directory, from one process or two, never share it.
        scratch = tempfile::Builder::new()
            .prefix(".prepare-")
            .tempdir_in(&opts.out_dir)
            .map_err(write_err(&opts.out_dir))?;
        let cfg = opts.packager_config.as_deref();
        match h {
            Handler::Dpkg => download_dpkg(&with_config, cfg, scratch.path(), &config)?,
            Handler::Rpm => download_rpm(&with_config, cfg, scratch.path(), &config)?,
            Handler::Pacman => download_pacman(&with_config, cfg, scratch.path(), &config)?,
        }
    };
    // Only config files that exist in the source (a package may not ship them all, and the
    // installed system may have removed some) go into the image, as with supermin.
    let present: Vec<String> = config
        .into_iter()
        .filter(|p| {
            fs::symlink_metadata(join_root(&source_root, Path::new(p))).is_ok_and(|m| m.is_file())
        })
        .collect();
    if present.is_empty() {
        // supermin writes no base.tar.gz then; remove a stale one from an earlier run.
        match fs::remove_file(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(&base)(e)),
        }
        return Ok(());
    }
    write_base_tar(&base, &source_root, &present, opts.source_date_epoch)
}

fn write_base_tar(out: &Path, src: &Path, files: &[String], epoch: Option<i64>) -> Result<()> {
    let tmp = out.with_extension("gz.tmp");
    let res = (|| -> Result<()> {
        let f = File::create(&tmp).map_err(write_err(&tmp))?;
        // Header mtime 0 and no file name: the gzip wrapper is reproducible too.
        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(BufWriter::new(f), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        for p in files {
            let host = join_root(src, Path::new(p));
            let meta = fs::metadata(&host).map_err(read_err(&host))?;
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            h.set_mode(meta.mode() & 0o7777);
            h.set_uid(0);
            h.set_gid(0);
            h.set_username("root").map_err(write_err(&tmp))?;
            h.set_groupname("root").map_err(write_err(&tmp))?;
            h.set_mtime(epoch.map_or(meta.mtime(), |e| e).max(0) as u64);
            let rel = p.trim_start_matches('/');
            let file = File::open(&host).map_err(read_err(&host))?;
            tar.append_data(&mut h, rel, file)
                .map_err(write_err(&tmp))?;
        }
        let gz = tar.into_inner().map_err(write_err(&tmp))?;
        let mut w = gz.finish().map_err(write_err(&tmp))?;
        w.flush().map_err(write_err(&tmp))?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, out).map_err(write_err(out))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).map_err(write_err(&tmp))?;
    fs::rename(&tmp, path).map_err(write_err(path))
}

/// Download the packages with `apt-get download` and pull the wanted config files out of
/// each with `dpkg-deb --fsys-tarfile`, streaming (no full unpack). Returns the directory
/// holding them, laid out as a root.
fn download_dpkg(
    pkgs: &BTreeSet<(String, String)>,
    packager_config: Option<&Path>,
    dir: &Path,
    wanted: &BTreeSet<String>,
) -> Result<PathBuf> {
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).map_err(write_err(&tree))?;
    if pkgs.is_empty() {
        return Ok(tree);
    }
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).map_err(write_err(&debs))?;
    let mut cmd = Command::new("apt-get");
    if let Some(c) = packager_config {
        cmd.arg("-c").arg(c);
    }
    cmd.args(["--quiet", "--quiet", "download"])
        .args(pkgs.iter().map(|(n, _)| n))
        .current_dir(&debs);
    run(cmd, "apt-get download")?;
    for deb in files_ending(&debs, &[".deb"])? {
        let mut cmd = Command::new("dpkg-deb");
        cmd.arg("--fsys-tarfile").arg(&deb);
        stream_from(cmd, "dpkg-deb --fsys-tarfile", |out| {
            extract_wanted(out, &tree, wanted, &deb)
        })?;
    }
    Ok(tree)
}

/// `dnf download`'s command line, as supermin runs it: `name.arch` so that any version of
/// the right architecture is fetched; excludes disabled (dnf 5 spells that differently).
pub(crate) fn dnf_download_command(
    pkgs: &BTreeSet<(String, String)>,
    packager_config: Option<&Path>,
    dest: &Path,
    dnf5: bool,
) -> Command {
    let mut cmd = Command::new("dnf");
    cmd.args(["download", "-q"]);
    if let Some(c) = packager_config {
        let mut arg = std::ffi::OsString::from("--config=");
        arg.push(c);
        cmd.arg(arg);
    }
    cmd.arg(if dnf5 {
        "--setopt=disable_excludes=*"
    } else {
        "--disableexcludes=all"
    });
    let mut destdir = std::ffi::OsString::from("--destdir=");
    destdir.push(dest);
    cmd.arg(destdir);
    cmd.args(pkgs.iter().map(|(n, a)| format!("{n}.{a}")));
    cmd
}

/// Download the packages with `dnf download` and pull the wanted config files out of each
/// (`rpm2cpio`, read by our newc reader).
fn download_rpm(
    pkgs: &BTreeSet<(String, String)>,
    packager_config: Option<&Path>,
    dir: &Path,
    wanted: &BTreeSet<String>,
) -> Result<PathBuf> {
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).map_err(write_err(&tree))?;
    if pkgs.is_empty() {
        return Ok(tree);
    }
    let rpms = dir.join("rpms");
    fs::create_dir_all(&rpms).map_err(write_err(&rpms))?;
    let version = Command::new("dnf")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HostfilesError::Spawn {
            command: "dnf --version".to_string(),
            source,
        })?;
    let dnf5 = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .is_some_and(|l| l.contains("version 5"));
    run(
        dnf_download_command(pkgs, packager_config, &rpms, dnf5),
        "dnf download",
    )?;
    for rpm in files_ending(&rpms, &[".rpm"])? {
        let mut cmd = Command::new("rpm2cpio");
        cmd.arg(&rpm);
        stream_from(cmd, "rpm2cpio", |out| {
            cpio::extract_wanted(out, &tree, wanted, &rpm)
        })?;
    }
    Ok(tree)
}

/// `pacman -Sw`'s command line: like supermin's, with a private database, cache and root
/// in `scratch`, so the host's sync databases and package cache are left alone; `fakeroot`
/// in front when not run as root (pacman refuses -S otherwise).
pub(crate) fn pacman_download_command(
    pkgs: &BTreeSet<(String, String)>,
    config: &Path,
    scratch: &Path,
    as_root: bool,
) -> Command {
    let mut cmd = if as_root {
        Command::new("pacman")
    } else {
        let mut c = Command::new("fakeroot");
        c.arg("pacman");
        c
    };
    cmd.arg("--config")
        .arg(config)
        .arg("--dbpath")
        .arg(scratch.join("var/lib/pacman"))
        .arg("--cachedir")
        .arg(scratch)
        .arg("--root")
        .arg(scratch)
        .args(["-Syw", "--noconfirm", "--noprogressbar"])
        .args(pkgs.iter().map(|(n, _)| n));
    cmd
}

/// Download the packages with `pacman -Syw` and pull the wanted config files out of each
/// `.pkg.tar.*` (xz and gzip in process, zstd through the `zstd` tool that pacman's
/// libarchive brings on every Arch system).
fn download_pacman(
    pkgs: &BTreeSet<(String, String)>,
    packager_config: Option<&Path>,
    dir: &Path,
    wanted: &BTreeSet<String>,
) -> Result<PathBuf> {
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).map_err(write_err(&tree))?;
    if pkgs.is_empty() {
        return Ok(tree);
    }
    let scratch = dir.join("pacman");
    let dbpath = scratch.join("var/lib/pacman");
    fs::create_dir_all(&dbpath).map_err(write_err(&dbpath))?;
    let config = match packager_config {
        Some(c) => c.to_path_buf(),
        None => {
            // The host's configuration without its CacheDir lines: pacman would take a
            // package from its cache instead of downloading it into ours.
            let out = Command::new("pacman-conf")
                .stdin(Stdio::null())
                .output()
                .map_err(|source| HostfilesError::Spawn {
                    command: "pacman-conf".to_string(),
                    source,
                })?;
            if !out.status.success() {
                return Err(HostfilesError::CommandFailed {
                    command: "pacman-conf".to_string(),
                    status: out.status,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            let text: String = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim_start().starts_with("CacheDir"))
                .map(|l| format!("{l}\n"))
                .collect();
            let conf = scratch.join("pacman.conf");
            fs::write(&conf, text).map_err(write_err(&conf))?;
            conf
        }
    };
    // Who owns /proc/self is who we are, without a libc call.
    let as_root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    run(
        pacman_download_command(pkgs, &config, &scratch, as_root),
        "pacman -Syw",
    )?;
    for pkg in files_ending(&scratch, &[".pkg.tar.zst", ".pkg.tar.xz", ".pkg.tar.gz"])? {
        let name = pkg.to_string_lossy();
        if name.ends_with(".zst") {
            let mut cmd = Command::new("zstd");
            cmd.arg("-dcq").arg(&pkg);
            stream_from(cmd, "zstd -dc", |out| {
                extract_wanted(out, &tree, wanted, &pkg)
            })?;
            continue;
        }
        let f = BufReader::new(File::open(&pkg).map_err(read_err(&pkg))?);
        let compression = if name.ends_with(".xz") {
            Compression::Xz
        } else {
            Compression::Gzip
        };
        let stream =
            decoder(compression, f, Members::One).map_err(|source| HostfilesError::Decompress {
                path: pkg.clone(),
                source,
            })?;
        extract_wanted(stream, &tree, wanted, &pkg)?;
    }
    Ok(tree)
}

/// The files directly in `dir` whose names end with one of `suffixes`, sorted.
fn files_ending(dir: &Path, suffixes: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(read_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.to_string_lossy();
            suffixes.iter().any(|s| n.ends_with(s))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Run `cmd`, hand its stdout to `consume`, read what it left, then check the exit status
/// (a failed command is reported before a consumer error it may have caused).
fn stream_from(
    mut cmd: Command,
    what: &str,
    consume: impl FnOnce(&mut std::process::ChildStdout) -> Result<()>,
) -> Result<()> {
    let spawn_err = |source| HostfilesError::Spawn {
        command: what.to_string(),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| spawn_err(io::Error::other("no stdout pipe")))?;
    let consumed = consume(&mut stdout);
    // A tar reader stops at the end-of-archive blocks; the producer may still be writing
    // padding and must not die of SIGPIPE for it. The error that matters is `consumed`.
    let _ = io::copy(&mut stdout, &mut io::sink());
    drop(stdout);
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(HostfilesError::CommandFailed {
            command: what.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    consumed
}

/// Pull the regular files named in `wanted` out of a tar stream into `tree`.
fn extract_wanted(r: impl Read, tree: &Path, wanted: &BTreeSet<String>, deb: &Path) -> Result<()> {
    let decompress = |source| HostfilesError::Decompress {
        path: deb.to_path_buf(),
        source,
    };
    let mut ar = tar::Archive::new(r);
    for e in ar.entries().map_err(decompress)? {
        let mut e = e.map_err(decompress)?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let raw = e.path().map_err(decompress)?.into_owned();
        let rel = safe_tar_path(&raw)?;
        let abs = format!("/{}", rel.display());
        if !wanted.contains(&abs) {
            continue;
        }
        let dest = tree.join(&rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(write_err(parent))?;
        }
        let mode = e.header().mode().unwrap_or(0o644);
        let mut out = File::create(&dest).map_err(write_err(&dest))?;
        io::copy(&mut e, &mut out).map_err(write_err(&dest))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(write_err(&dest))?;
    }
    Ok(())
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|source| HostfilesError::Spawn {
        command: what.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(HostfilesError::CommandFailed {
            command: what.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::dpkg::tests::fake_dpkg;
    use crate::testutil::write;

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fake_dpkg(
            d.path(),
            &[
                ("dpkg", "amd64", "", "", &[], &[]),
                (
                    "bash",
                    "amd64",
                    "libc6",
                    "",
                    &[
                        "/etc/bash.bashrc",
                        "/etc/skel/.bashrc",
                        "/usr/bin/bash",
                        "/etc/gone",
                    ],
                    &[],
                ),
                (
                    "libc6",
                    "amd64",
                    "",
                    "",
                    &["/etc/ld.so.conf.d/libc.conf", "/usr/lib/libc.so.6"],
                    &[],
                ),
                ("coreutils", "amd64", "", "", &["/usr/bin/ls"], &[]),
            ],
            "",
        );
        write(d.path(), "/etc/bash.bashrc", b"bashrc\n");
        write(d.path(), "/etc/skel/.bashrc", b"skel\n");
        write(d.path(), "/etc/ld.so.conf.d/libc.conf", b"/usr/local/lib\n");
        write(d.path(), "/usr/bin/bash", b"bash");
        d
    }

    fn opts(root: &Path, out: &Path, pkgs: &[&str]) -> PrepareOptions {
        PrepareOptions {
            packages: pkgs.iter().map(|s| s.to_string()).collect(),
            use_installed: true,
            packager_config: None,
            out_dir: out.to_path_buf(),
            source_date_epoch: Some(1_700_000_000),
            root: root.to_path_buf(),
        }
    }

    fn entries(tgz: &Path) -> Vec<(String, u64, u64, u64, String)> {
        let f = File::open(tgz).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mtime().unwrap(),
                    s,
                )
            })
            .collect()
    }

    #[test]
    fn use_installed_writes_sorted_packages_and_the_closure_config_files() {
        let r = root();
        let out = tempfile::tempdir().unwrap();
        prepare(&opts(r.path(), out.path(), &["bash", "coreutils", "bash"])).unwrap();
        assert_eq!(
            fs::read_to_string(out.path().join("packages")).unwrap(),
            "bash\ncoreutils\n"
        );
        let e = entries(&out.path().join("base.tar.gz"));
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        // libc6 comes in through bash's dependency; /etc/gone does not exist.
        assert_eq!(
            names,
            [
                "etc/bash.bashrc",
                "etc/ld.so.conf.d/libc.conf",
                "etc/skel/.bashrc"
            ]
        );
        for (name, uid, gid, mtime, _) in &e {
            assert_eq!((*uid, *gid, *mtime), (0, 0, 1_700_000_000), "{name}");
        }
        assert_eq!(e[0].4, "bashrc\n");
    }

    #[test]
    fn same_inputs_and_epoch_give_identical_bytes() {
        let r = root();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        prepare(&opts(r.path(), a.path(), &["bash"])).unwrap();
        prepare(&opts(r.path(), b.path(), &["bash"])).unwrap();
        assert_eq!(
            fs::read(a.path().join("base.tar.gz")).unwrap(),
            fs::read(b.path().join("base.tar.gz")).unwrap()
        );
    }

    #[test]
    fn unknown_package_names_are_an_error_naming_them() {
        let r = root();
        let out = tempfile::tempdir().unwrap();
        let e = prepare(&opts(
            r.path(),
            out.path(),
            &["bash", "nosuch", "other-missing"],
        ))
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("nosuch") && msg.contains("other-missing"),
            "{msg}"
        );
        assert!(!out.path().join("packages").exists());
    }

    #[test]
    fn packages_without_config_files_give_no_base_image() {
        let r = root();
        let out = tempfile::tempdir().unwrap();
        prepare(&opts(r.path(), out.path(), &["coreutils"])).unwrap();
        assert!(out.path().join("packages").exists());
        assert!(!out.path().join("base.tar.gz").exists());
    }

    fn args(cmd: &Command) -> Vec<String> {
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn set(pkgs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        pkgs.iter()
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect()
    }

    #[test]
    fn dnf_download_asks_for_name_dot_arch_like_supermin() {
        let pkgs = set(&[("hello", "x86_64"), ("glibc", "x86_64"), ("data", "noarch")]);
        let cmd = dnf_download_command(
            &pkgs,
            Some(Path::new("/c/dnf.conf")),
            Path::new("/d"),
            false,
        );
        assert_eq!(
            args(&cmd),
            [
                "dnf",
                "download",
                "-q",
                "--config=/c/dnf.conf",
                "--disableexcludes=all",
                "--destdir=/d",
                "data.noarch",
                "glibc.x86_64",
                "hello.x86_64"
            ]
        );
        let dnf5 = dnf_download_command(&pkgs, None, Path::new("/d"), true);
        assert!(args(&dnf5).contains(&"--setopt=disable_excludes=*".to_string()));
        assert!(!args(&dnf5).iter().any(|a| a.starts_with("--config")));
    }

    #[test]
    fn pacman_download_uses_a_private_db_cache_and_root_and_fakeroot_when_not_root() {
        let pkgs = set(&[("hello", "x86_64"), ("glibc", "x86_64")]);
        let cmd = pacman_download_command(&pkgs, Path::new("/c.conf"), Path::new("/s"), true);
        assert_eq!(
            args(&cmd),
            [
                "pacman",
                "--config",
                "/c.conf",
                "--dbpath",
                "/s/var/lib/pacman",
                "--cachedir",
                "/s",
                "--root",
                "/s",
                "-Syw",
                "--noconfirm",
                "--noprogressbar",
                "glibc",
                "hello"
            ]
        );
        let user = pacman_download_command(&pkgs, Path::new("/c.conf"), Path::new("/s"), false);
        assert_eq!(args(&user)[..2], ["fakeroot", "pacman"]);
    }
}
