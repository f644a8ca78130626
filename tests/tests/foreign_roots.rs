//! The rpm and pacman handlers against real package databases: roots made on this Debian
//! machine by `tests/fixtures/make-rpm-root.sh` (rpmbuild, `rpm -i` into an rpmdb.sqlite
//! under /usr/lib/sysimage/rpm, `ID=fedora`) and `make-pacman-root.sh` (makepkg,
//! `pacman -U` into /var/lib/pacman/local, `ID=arch`), cached under
//! `target/tmp/fixtures/` keyed by a hash of the scripts.
//!
//! The `supermin` binary under test is copied into a copy of the root with its libraries
//! and run there (`unshare --mount-proc --root`: a chroot with its own /proc), so the
//! handlers see nothing of the Debian host: `--prepare --use-installed` then
//! `--build -f chroot`. The appliance tree is checked against the package tools' own file
//! lists (`rpm -ql`, `pacman -Ql`), config files must come from the root (edited there
//! after the install), and the packaged binary must run in the tree.
//!
//! Needs root (chroot, mknod) and the tools `.ci/setup` installs; a missing tool fails the
//! test, it does not skip it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use supermin_tests::{supermin_bin, TempDir};

#[derive(Clone, Copy)]
struct Flavor {
    script: &'static str,
    /// The packages `hello` pulls in, by name.
    closure: &'static [&'static str],
    /// Installed, but no dependency of hello's: must stay out of the tree.
    absent: &'static [&'static str],
    /// What the packaged binary prints first.
    greeting: &'static str,
}

const RPM: Flavor = Flavor {
    script: "make-rpm-root.sh",
    closure: &["filesystem", "glibc", "hello", "hello-data", "hello-helper"],
    // hello-data-extra also provides `greeting`: the shorter name wins.
    absent: &["/usr/share/hello-data-extra", "/usr/share/unrelated"],
    greeting: "hello from rpm",
};

const PACMAN: Flavor = Flavor {
    script: "make-pacman-root.sh",
    closure: &["filesystem", "glibc", "hello", "hello-data", "hello-helper"],
    absent: &["/usr/share/hello-data-extra", "/usr/share/unrelated"],
    greeting: "hello from pacman",
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e} (run .ci/setup)"));
    ok(out, what)
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
fn fnv(data: &[u8], mut h: u64) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The fixture made by `script`, built once per version of the scripts.
fn fixture(script: &str) -> PathBuf {
    let mut h = 0xcbf2_9ce4_8422_2325;
    for f in [script, "copy-with-libs.sh"] {
        let p = fixtures_dir().join(f);
        h = fnv(&fs::read(&p).expect("fixture script"), h);
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fixtures")
        .join(format!("{}-{h:016x}", script.trim_end_matches(".sh")));
    if !out.is_dir() {
        fs::create_dir_all(out.parent().expect("parent")).expect("fixtures dir");
        run(
            Command::new("bash")
                .arg(fixtures_dir().join(script))
                .arg(&out),
            script,
        );
    }
    out
}

/// A private copy of the fixture's root with the supermin binary under test in it.
struct Host {
    _dir: TempDir,
    fixture: PathBuf,
    root: PathBuf,
}

impl Host {
    fn new(flavor: Flavor, tag: &str) -> Host {
        let fixture = fixture(flavor.script);
        let dir = TempDir::new(tag);
        let root = dir.join("root");
        run(
            Command::new("cp")
                .arg("-a")
                .arg(fixture.join("root"))
                .arg(&root),
            "cp -a",
        );
        fs::create_dir_all(root.join("proc")).expect("mkdir proc");
        let bin = format!("{}:/usr/bin/supermin", supermin_bin().display());
        run(
            Command::new("bash")
                .arg(fixtures_dir().join("copy-with-libs.sh"))
                .arg(&root)
                .arg(bin),
            "copy-with-libs.sh",
        );
        Host {
            _dir: dir,
            fixture,
            root,
        }
    }

    /// `supermin ARGS` inside the root, with its own /proc.
    fn supermin(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("unshare");
        cmd.arg("--mount-proc=/proc")
            .arg(format!("--root={}", self.root.display()))
            .arg("/usr/bin/supermin")
            .args(args);
        run(&mut cmd, &format!("supermin {}", args.join(" ")))
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// Every path the package tool lists for `pkgs`.
    fn package_files(&self, flavor: Flavor, pkgs: &[&str]) -> Vec<String> {
        let out = if flavor.script == RPM.script {
            run(
                Command::new("rpm")
                    .arg("--root")
                    .arg(&self.root)
                    .args(["--dbpath", "/usr/lib/sysimage/rpm", "-ql"])
                    .args(pkgs),
                "rpm -ql",
            )
        } else {
            run(
                Command::new("pacman")
                    .arg("--root")
                    .arg(&self.root)
                    .arg("--dbpath")
                    .arg(self.root.join("var/lib/pacman"))
                    .arg("-Ql")
                    .args(pkgs),
                "pacman -Ql",
            )
            .lines()
            // `pacman -Ql` prints each path with the --root in front.
            .filter_map(|l| l.split_once(' ').map(|(_, p)| p.to_string()))
            .map(|p| {
                let root = self.root.to_string_lossy();
                p.strip_prefix(root.as_ref()).unwrap_or(&p).to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
        };
        out.lines()
            .map(|l| l.trim_end_matches('/').to_string())
            .filter(|l| l.starts_with('/'))
            .collect()
    }

    fn install_extra(&self, flavor: Flavor) {
        if flavor.script == RPM.script {
            run(
                Command::new("rpm")
                    .arg("--root")
                    .arg(&self.root)
                    .args(["--dbpath", "/usr/lib/sysimage/rpm", "-i", "--nosignature"])
                    .arg(self.fixture.join("extra.rpm")),
                "rpm -i extra.rpm",
            );
        } else {
            run(
                Command::new("pacman")
                    .arg("--config")
                    .arg(self.fixture.join("pacman.conf"))
                    .arg("--root")
                    .arg(&self.root)
                    .arg("--dbpath")
                    .arg(self.root.join("var/lib/pacman"))
                    .arg("--cachedir")
                    .arg(self.root.join("var/cache/pacman/pkg"))
                    .arg("--logfile")
                    .arg(self.root.join("var/log/pacman.log"))
                    .args(["--noconfirm", "--noprogressbar", "-U"])
                    .arg(self.fixture.join("extra.pkg.tar.zst")),
                "pacman -U extra",
            );
        }
    }
}

/// (name, contents) of each entry of a base image, read by GNU tar.
fn base_tar_entries(tgz: &Path) -> Vec<(String, String)> {
    let list = run(Command::new("tar").arg("-tzf").arg(tgz), "tar -t");
    list.lines()
        .map(|name| {
            let data = run(
                Command::new("tar").arg("-xzOf").arg(tgz).arg(name),
                "tar -xO",
            );
            (name.to_string(), data)
        })
        .collect()
}

fn prepare_then_build_holds_the_closure(flavor: Flavor, tag: &str) {
    let host = Host::new(flavor, tag);
    host.supermin(&["--prepare", "--use-installed", "hello", "-o", "/sd"]);
    assert_eq!(
        fs::read_to_string(host.path("/sd/packages")).expect("packages"),
        "hello\n"
    );
    // Config files of the whole closure (hello's, glibc's), from the root, not the package.
    let base = base_tar_entries(&host.path("/sd/base.tar.gz"));
    let names: Vec<&str> = base.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["etc/hello.conf", "etc/ld.so.conf"]);
    assert_eq!(base[0].1, "edited in the root\n");

    let out = host.supermin(&["--build", "-vv", "-f", "chroot", "/sd", "-o", "/out"]);
    for p in flavor.closure {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("  - {p}-"))),
            "{p} missing from the closure:\n{out}"
        );
    }
    assert!(out.contains("hello-2:1.0-1."), "epoch shown: {out}");
    let tree = host.path("/out");
    for f in host.package_files(flavor, flavor.closure) {
        let p = tree.join(f.trim_start_matches('/'));
        assert!(fs::symlink_metadata(&p).is_ok(), "{f} not in the tree");
    }
    for f in flavor.absent {
        assert!(
            !tree.join(&f[1..]).exists(),
            "{f} should not be in the tree"
        );
    }
    assert_eq!(
        fs::read_to_string(tree.join("etc/hello.conf")).expect("hello.conf"),
        "edited in the root\n"
    );
    let said = run(
        Command::new("chroot").arg(&tree).arg("/usr/bin/hello"),
        "hello in the tree",
    );
    assert_eq!(
        said,
        format!("{}; config: edited in the root\n", flavor.greeting)
    );
}

fn if_newer_rebuilds_after_one_more_package(flavor: Flavor, tag: &str) {
    let host = Host::new(flavor, tag);
    host.supermin(&["--prepare", "--use-installed", "hello", "-o", "/sd"]);
    let build = [
        "--build",
        "--if-newer",
        "-v",
        "-f",
        "chroot",
        "/sd",
        "-o",
        "/out",
    ];
    const SKIP: &str = "output does not need rebuilding";
    assert!(!host.supermin(&build).contains(SKIP));
    assert!(host.supermin(&build).contains(SKIP), "nothing changed");
    host.install_extra(flavor);
    assert!(
        !host.supermin(&build).contains(SKIP),
        "a package was installed"
    );
    assert!(
        host.supermin(&build).contains(SKIP),
        "nothing changed since"
    );
}

#[test]
fn rpm_root_prepare_use_installed_then_build_holds_the_closure() {
    prepare_then_build_holds_the_closure(RPM, "rpm-closure");
}

#[test]
fn rpm_root_if_newer_rebuilds_after_rpm_i() {
    if_newer_rebuilds_after_one_more_package(RPM, "rpm-if-newer");
}

#[test]
fn pacman_root_prepare_use_installed_then_build_holds_the_closure() {
    prepare_then_build_holds_the_closure(PACMAN, "pacman-closure");
}

#[test]
fn pacman_root_if_newer_rebuilds_after_pacman_u() {
    if_newer_rebuilds_after_one_more_package(PACMAN, "pacman-if-newer");
}
