//! `--prepare` without `--use-installed` on rpm and pacman systems: the packages are
//! downloaded (`dnf download`, `pacman -Syw`) and the config files come from them, not
//! from the installed system. There is no network to Fedora or Arch mirrors here, so the
//! repositories are local ones made by `createrepo_c` and `repo-add` from the packages of
//! the test roots (`tests/fixtures/make-{rpm,pacman}-root.sh`, cached under
//! `target/tmp/fixtures/`, shared with `tests/tests/foreign_roots.rs`), named through
//! `--packager-config` as a user would. The handlers read the root's database from this
//! host (`rpm --root`, pacman's files), which the library allows and the binary does not
//! expose.
//!
//! Needs root (makepkg runs as nobody, pacman -Sw wants root) and the tools `.ci/setup`
//! installs; a missing tool fails the test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use supermin_hostfiles::{prepare, PrepareOptions};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// FNV-1a over the scripts: the same key `tests/tests/foreign_roots.rs` computes.
fn fixture(script: &str) -> PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in [script, "copy-with-libs.sh"] {
        for b in fs::read(fixtures_dir().join(f)).expect("fixture script") {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fixtures")
        .join(format!("{}-{h:016x}", script.trim_end_matches(".sh")));
    if !out.is_dir() {
        fs::create_dir_all(out.parent().expect("parent")).expect("fixtures dir");
        let res = Command::new("bash")
            .arg(fixtures_dir().join(script))
            .arg(&out)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            res.status.success(),
            "{script} failed: {}",
            String::from_utf8_lossy(&res.stderr)
        );
    }
    out
}

/// (name, contents) of each entry of a base image.
fn entries(tgz: &Path) -> Vec<(String, String)> {
    let f = fs::File::open(tgz).unwrap_or_else(|e| panic!("{}: {e}", tgz.display()));
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    ar.entries()
        .expect("tar")
        .map(|e| {
            let mut e = e.expect("entry");
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).expect("data");
            (e.path().expect("path").display().to_string(), s)
        })
        .collect()
}

fn prepare_downloading(root: &Path, config: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().expect("tempdir");
    prepare(&PrepareOptions {
        packages: vec!["hello".to_string()],
        use_installed: false,
        packager_config: Some(config.to_path_buf()),
        out_dir: out.path().to_path_buf(),
        source_date_epoch: Some(1_700_000_000),
        root: root.to_path_buf(),
    })
    .unwrap_or_else(|e| panic!("prepare: {e}"));
    out
}

#[track_caller]
fn config_files_come_from_the_packages(out: &Path) {
    assert_eq!(
        fs::read_to_string(out.join("packages")).expect("packages"),
        "hello\n"
    );
    let e = entries(&out.join("base.tar.gz"));
    let names: Vec<&str> = e.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["etc/hello.conf", "etc/ld.so.conf"]);
    // The root's copy says "edited in the root": this one is the package's.
    assert_eq!(e[0].1, "from the package\n");
    assert_eq!(e[1].1, "include /etc/ld.so.conf.d/*.conf\n");
    // The download scratch directory is gone.
    let left: Vec<_> = fs::read_dir(out)
        .expect("out")
        .map(|d| d.expect("entry").file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn rpm_prepare_without_use_installed_downloads_with_dnf_from_a_local_repository() {
    let fx = fixture("make-rpm-root.sh");
    let scratch = tempfile::tempdir().expect("tempdir");
    let conf = scratch.path().join("dnf.conf");
    fs::write(
        &conf,
        format!(
            "[main]\ncachedir={cache}\nreposdir={cache}/no-repos.d\ngpgcheck=0\n\n\
             [testrepo]\nname=testrepo\nbaseurl=file://{repo}\ngpgcheck=0\n",
            cache = scratch.path().join("cache").display(),
            repo = fx.join("repo").display()
        ),
    )
    .expect("dnf.conf");
    let out = prepare_downloading(&fx.join("root"), &conf);
    config_files_come_from_the_packages(out.path());
}

#[test]
fn pacman_prepare_without_use_installed_downloads_with_pacman_sw_from_a_local_repository() {
    let fx = fixture("make-pacman-root.sh");
    let out = prepare_downloading(&fx.join("root"), &fx.join("pacman.conf"));
    config_files_come_from_the_packages(out.path());
}
