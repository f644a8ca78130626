//! End-to-end: resolve real host inputs, copy the file set into a directory with a tiny
//! test-only copier (the real chroot writer is the builder's), and run programs there with
//! chroot(8). Needs root for chroot (CI runs as root) and gcc; fails saying so otherwise.

use std::fs;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use supermin_hostfiles::{
    open_base_image, prepare, read_base_image, read_inputs, resolve, BaseEntryKind, FileKind,
    FileSet, HostfilesError, InputBudget, PrepareOptions, ResolveOptions,
};

/// Panics, saying why, unless chroot(8) works here.
fn require_chroot() {
    let out = Command::new("chroot")
        .args(["/", "/bin/true"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run chroot(8): {e}"));
    assert!(
        out.status.success(),
        "chroot(8) is not permitted here ({}); these tests need root:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Materialize a file set (and its base images) under `dir`.
fn materialize(set: &FileSet, dir: &Path) {
    for f in &set.files {
        let dest = dir.join(f.path.strip_prefix("/").unwrap());
        match f.kind {
            FileKind::Dir => {
                fs::create_dir_all(&dest).unwrap();
                fs::set_permissions(&dest, fs::Permissions::from_mode(f.mode & 0o7777)).unwrap();
            }
            FileKind::Regular => {
                let src = set.root.join(f.path.strip_prefix("/").unwrap());
                // Unreadable host files become empty files, as the builder does.
                if fs::copy(&src, &dest).is_err() {
                    fs::write(&dest, b"").unwrap();
                }
            }
            FileKind::Symlink => symlink(f.link_target.as_ref().unwrap(), &dest).unwrap(),
            _ => {}
        }
    }
    // Base images on top, walked as the builder walks them (the scratch copies of
    // compressed ones are unlinked files in `dir`).
    let budget = InputBudget::default();
    for img in &set.base_images {
        let view = open_base_image(img, dir, &budget).unwrap();
        read_base_image(img, view, dir, &budget, |e| {
            let dest = dir.join(&e.path);
            match e.kind {
                BaseEntryKind::Dir => fs::create_dir_all(&dest).unwrap(),
                BaseEntryKind::File { file, offset, len } => {
                    fs::create_dir_all(dest.parent().unwrap()).unwrap();
                    let mut data = vec![0; usize::try_from(len).unwrap()];
                    file.read_exact_at(&mut data, offset).unwrap();
                    let _ = fs::remove_file(&dest);
                    fs::write(&dest, data).unwrap();
                }
                _ => {}
            }
            Ok::<(), HostfilesError>(())
        })
        .unwrap();
    }
}

fn run_in(dir: &Path, cmd: &[&str]) -> String {
    run_in_env(dir, cmd, &[])
}

fn run_in_env(dir: &Path, cmd: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new("chroot")
        .arg(dir)
        .args(cmd)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed in chroot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn prepared_bash_and_coreutils_run_in_a_chroot() {
    require_chroot();
    let sd = tempfile::tempdir().unwrap();
    prepare(&PrepareOptions {
        packages: vec!["bash".into(), "coreutils".into()],
        use_installed: true,
        packager_config: None,
        out_dir: sd.path().to_path_buf(),
        source_date_epoch: Some(0),
        root: PathBuf::from("/"),
    })
    .unwrap();
    assert_eq!(
        fs::read_to_string(sd.path().join("packages")).unwrap(),
        "bash\ncoreutils\n"
    );
    let inputs = read_inputs(&[sd.path().to_path_buf()], &InputBudget::default()).unwrap();
    let set = resolve(&inputs, &ResolveOptions::default()).unwrap();
    assert!(
        set.packages.iter().any(|p| p.starts_with("libc6_")),
        "{:?}",
        set.packages
    );
    let dir = tempfile::tempdir().unwrap();
    materialize(&set, dir.path());
    let out = run_in(
        dir.path(),
        &["/bin/bash", "-c", "ls /usr/bin/ls && sync && echo ok"],
    );
    assert!(out.ends_with("ok\n"), "{out}");
    // The base image came from the prepared config files.
    assert!(dir.path().join("etc/bash.bashrc").exists());
}

#[test]
fn hostfiles_only_binaries_and_an_origin_runpath_program_run_in_a_chroot() {
    require_chroot();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    fs::create_dir_all(w.join("app/bin")).unwrap();
    fs::create_dir_all(w.join("app/lib")).unwrap();
    fs::write(w.join("foo.c"), "int foo(void){return 42;}").unwrap();
    fs::write(w.join("main.c"), "#include <stdio.h>\nint foo(void);\nint main(void){printf(\"foo=%d\\n\", foo());return 0;}").unwrap();
    let gcc = |args: &[&str]| {
        let out = Command::new("gcc")
            .current_dir(w)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run gcc: {e}; install gcc"));
        assert!(
            out.status.success(),
            "gcc {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    gcc(&[
        "-shared",
        "-fPIC",
        "-Wl,-soname,libfoo.so.1",
        "-o",
        "app/lib/libfoo.so.1",
        "foo.c",
    ]);
    gcc(&[
        "-o",
        "app/bin/prog",
        "main.c",
        "-Lapp/lib",
        "-l:libfoo.so.1",
        "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib",
    ]);

    // Host binaries with many shared libraries, each run with an argument that needs no
    // data files.
    let candidates: &[(&str, &[&str])] = &[
        ("/usr/bin/bash", &["-c", "echo bash-ok"]),
        ("/usr/bin/ls", &["/"]),
        ("/usr/bin/sync", &[]),
        ("/usr/bin/curl", &["--version"]),
        ("/usr/bin/qemu-img", &["--version"]),
        ("/usr/bin/xz", &["--version"]),
        ("/usr/sbin/mke2fs", &["-V"]),
        ("/usr/bin/guestfish", &["--version"]),
    ];
    let present: Vec<&(&str, &[&str])> = candidates
        .iter()
        .filter(|(p, _)| Path::new(p).exists())
        .collect();
    assert!(present.len() >= 3, "too few host binaries to test with");
    let mut list: String = present.iter().map(|(p, _)| format!("{p}\n")).collect();
    list.push_str(&format!("{}/app/bin/prog\n", w.display()));
    let sd = w.join("supermin.d");
    fs::create_dir_all(&sd).unwrap();
    fs::write(sd.join("hostfiles"), list).unwrap();

    let inputs = read_inputs(&[sd], &InputBudget::default()).unwrap();
    assert!(inputs.packages.is_empty());
    let set = resolve(&inputs, &ResolveOptions::default()).unwrap();
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let dir = tempfile::tempdir().unwrap();
    materialize(&set, dir.path());
    for (p, args) in &present {
        let mut cmd = vec![*p];
        cmd.extend_from_slice(args);
        run_in(dir.path(), &cmd);
    }
    let prog = format!("{}/app/bin/prog", fs::canonicalize(w).unwrap().display());
    // ld.so learns $ORIGIN of the program from /proc/self/exe, and this bare chroot has no
    // /proc (the appliance's init mounts it); LD_ORIGIN_PATH is glibc's fallback for that.
    let origin = format!("{}/app/bin", fs::canonicalize(w).unwrap().display());
    assert_eq!(
        run_in_env(dir.path(), &[&prog], &[("LD_ORIGIN_PATH", &origin)]),
        "foo=42\n"
    );
}
