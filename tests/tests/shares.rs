//! `supermin run --share` and `--cwd-share` through the real binary and a
//! real guest (TCG): host directories mounted in the default appliance over
//! 9p and over virtiofs, read-only unless asked, a hostile guest's attempts
//! to plant devices and set-uid files through a writable share, no virtiofsd
//! left behind however a run ends, and the cargo test runner recipe of the
//! README run end to end.
//!
//! The virtiofs tests need virtiofsd (`bash .ci/setup` installs it): they
//! fail without it, they never skip.
//!
//! Each test has its own runtime cache (the default appliance and saved
//! machines) and `$TMPDIR` under its scratch directory. Scratch directories
//! live under the system temporary directory, which qemu (running as
//! `nobody` when the tests run as root) can reach.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use supermin_tests::{supermin_bin, TempDir};

fn scratch(tag: &str) -> TempDir {
    let dir = TempDir::new(&format!("shares-{tag}"));
    for d in ["tmp", "cache"] {
        std::fs::create_dir(dir.join(d)).unwrap();
    }
    // Reachable by the unprivileged user qemu runs as.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn supermin(dir: &TempDir, cwd: &Path, args: &[&OsStr]) -> Command {
    let mut cmd = Command::new(supermin_bin());
    cmd.args(args)
        .current_dir(cwd)
        .env("TMPDIR", dir.join("tmp"))
        .env("LIBGUESTFS_CACHEDIR", dir.join("cache"))
        .env("SUPERMIN_ACCEL", "tcg")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("SUPERMIN_QEMU_USER")
        .stdin(Stdio::null());
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The read-only share (a path with a space, holding a name that is not
/// UTF-8, mounted at /mnt/ro) and the writable one (mode 0777, at its own
/// path) of the read-only/read-write tests, with their `--share` specs.
fn modes_fixture(dir: &TempDir) -> (PathBuf, PathBuf, OsString, OsString) {
    let ro = dir.join("read only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("hello.txt"), b"from the host\n").unwrap();
    std::fs::write(ro.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name\n").unwrap();
    let rw = dir.join("rw");
    std::fs::create_dir(&rw).unwrap();
    std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut ro_spec = ro.clone().into_os_string();
    ro_spec.push(":/mnt/ro");
    let mut rw_spec = rw.clone().into_os_string();
    rw_spec.push(":rw");
    (ro, rw, ro_spec, rw_spec)
}

#[test]
fn shares_are_read_only_unless_rw_and_keep_odd_names() {
    let dir = scratch("modes");
    let (ro, rw, ro_spec, rw_spec) = modes_fixture(&dir);
    let script = "cat /mnt/ro/hello.txt; ls /mnt/ro | od -An -c | tr -s ' '; \
        echo nope >/mnt/ro/new 2>/dev/null || echo ro-refused; \
        echo from-the-guest >\"$1/out\" && echo rw-written";
    let out = supermin(
        &dir,
        dir.path(),
        &[
            "run".as_ref(),
            "-v".as_ref(),
            "--share-transport=9p".as_ref(),
            "--share".as_ref(),
            &ro_spec,
            "--share".as_ref(),
            &rw_spec,
            "--".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            script.as_ref(),
            "sh".as_ref(),
            rw.as_os_str(),
        ],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/mnt/ro over 9p"),
        "{}",
        text(&out)
    );
    assert!(stdout.starts_with("from the host\n"), "{}", text(&out));
    // od shows the raw byte 351 (0xe9) of the Latin-1 name.
    assert!(stdout.contains("c a f 351"), "{}", text(&out));
    assert!(stdout.contains("ro-refused"), "{}", text(&out));
    assert!(stdout.contains("rw-written"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "from-the-guest\n"
    );
    assert!(!ro.join("new").exists());
}

#[test]
fn a_share_qemu_cannot_reach_is_refused_in_one_line() {
    let dir = scratch("private");
    let private = dir.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let is_root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    assert!(
        is_root.unwrap(),
        "this test runs as root, as CI does: qemu then runs as nobody"
    );
    let out = supermin(
        &dir,
        dir.path(),
        &[
            "run".as_ref(),
            "--share".as_ref(),
            private.as_os_str(),
            "--".as_ref(),
            "true".as_ref(),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(stderr.lines().count(), 1, "{}", text(&out));
    assert!(stderr.contains("--qemu-user root"), "{}", text(&out));
}

/// A cargo project whose tests run through `supermin run --cwd-share --`.
fn cargo_project(dir: &TempDir) -> PathBuf {
    let proj = dir.join("proj");
    std::fs::create_dir_all(proj.join("src")).unwrap();
    std::fs::create_dir_all(proj.join(".cargo")).unwrap();
    std::fs::write(
        proj.join("Cargo.toml"),
        "[package]\nname = \"vmtests\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(
        proj.join("src/lib.rs"),
        r#"#[cfg(test)]
mod tests {
    #[test]
    fn runs_as_a_child_of_the_appliances_pid_1() {
        // The daemon is PID 1 of the appliance (exec'd as /init) and the test
        // binary its child; on the host cargo would be the parent.
        assert_eq!(std::os::unix::process::parent_id(), 1);
        let comm = std::fs::read_to_string("/proc/1/comm").unwrap();
        assert_eq!(comm.trim(), "init");
        println!("IN-THE-APPLIANCE");
    }

    #[test]
    fn meant_to_fail() {
        panic!("this test fails on purpose");
    }
}
"#,
    )
    .unwrap();
    let runner = format!(
        "[target.x86_64-unknown-linux-gnu]\nrunner = [{:?}, \"run\", \"--cwd-share\", \"--\"]\n",
        supermin_bin().display().to_string()
    );
    std::fs::write(proj.join(".cargo/config.toml"), runner).unwrap();
    proj
}

fn cargo_test(dir: &TempDir, proj: &Path, filter: &str) -> Output {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["test", "--offline", "--lib", "--", "--nocapture", filter])
        .current_dir(proj)
        .env("TMPDIR", dir.join("tmp"))
        .env("LIBGUESTFS_CACHEDIR", dir.join("cache"))
        .env("SUPERMIN_ACCEL", "tcg")
        .env("CARGO_TARGET_DIR", proj.join("target"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("SUPERMIN_QEMU_USER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stdin(Stdio::null())
        .output()
        .expect("cargo")
}

#[test]
fn cargo_test_runs_each_test_binary_in_an_appliance_through_the_runner() {
    let dir = scratch("cargo");
    let proj = cargo_project(&dir);
    let pass = cargo_test(&dir, &proj, "runs_as_a_child");
    let pass_out = String::from_utf8_lossy(&pass.stdout);
    assert!(pass.status.success(), "{}", text(&pass));
    assert!(pass_out.contains("IN-THE-APPLIANCE"), "{}", text(&pass));
    assert!(pass_out.contains("1 passed"), "{}", text(&pass));

    let fail = cargo_test(&dir, &proj, "meant_to_fail");
    let fail_out = String::from_utf8_lossy(&fail.stdout);
    // libtest exits 101 on a failed test; the runner hands it back unchanged.
    assert_eq!(fail.status.code(), Some(101), "{}", text(&fail));
    assert!(fail_out.contains("1 failed"), "{}", text(&fail));
    assert!(
        String::from_utf8_lossy(&fail.stderr).contains("this test fails on purpose")
            || fail_out.contains("this test fails on purpose"),
        "{}",
        text(&fail)
    );
}

/// Fails (never skips) when there is no virtiofsd where `supermin run` looks.
fn need_virtiofsd() {
    let found = [
        "/usr/libexec/virtiofsd",
        "/usr/lib/qemu/virtiofsd",
        "/usr/local/libexec/virtiofsd",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
        || std::env::var_os("SUPERMIN_VIRTIOFSD").is_some()
        || std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join("virtiofsd").exists());
    assert!(
        found,
        "virtiofsd is not installed: `bash .ci/setup` installs it (these tests never skip)"
    );
}

/// The live processes (zombies have no command line) whose command line
/// mentions `needle`: a test's own virtiofsd, by its unique shared directory.
fn processes_mentioning(needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

/// Waits (a few seconds) until no virtiofsd serving `dir` is alive.
fn assert_no_virtiofsd_for(dir: &Path, what: &str) {
    let needle = format!("--shared-dir={}", dir.display());
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = processes_mentioning(needle.as_bytes());
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "{what}: virtiofsd left running: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The read-only and read-write checks of 9p, over virtiofs, on the saved
/// machine's two paths: the first run boots, saves and hot-plugs the
/// devices; the second restores and hot-plugs them.
#[test]
fn virtiofs_shares_are_read_only_unless_rw_and_keep_odd_names() {
    need_virtiofsd();
    let dir = scratch("vfs-modes");
    let (ro, rw, ro_spec, rw_spec) = modes_fixture(&dir);
    // Invoked as root, a writable share never goes over virtiofs (see
    // virtiofs_will_not_serve_a_writable_share_as_root): run as a user.
    give_to_nobody(&[dir.join("tmp"), dir.join("cache")]);
    for (round, how) in ["saves the machine", "restores it"].iter().enumerate() {
        // The guest is root: it remounts the read-only share read-write
        // first, so that only virtiofsd's --readonly stands in the way.
        let script = format!(
            "cat /mnt/ro/hello.txt; ls /mnt/ro | od -An -c | tr -s ' '; \
             mount -o remount,rw /mnt/ro && echo remounted; \
             echo nope >/mnt/ro/new 2>/dev/null || echo ro-refused; \
             touch /mnt/ro/hello.txt 2>/dev/null || echo ro-touch-refused; \
             echo from-the-guest-{round} >\"$1/out{round}\" && echo rw-written"
        );
        let inner = supermin(
            &dir,
            dir.path(),
            &[
                "run".as_ref(),
                "-v".as_ref(),
                "--share-transport".as_ref(),
                "virtiofs".as_ref(),
                "--share".as_ref(),
                &ro_spec,
                "--share".as_ref(),
                &rw_spec,
                "--".as_ref(),
                "sh".as_ref(),
                "-c".as_ref(),
                script.as_ref(),
                "sh".as_ref(),
                rw.as_os_str(),
            ],
        );
        let out = as_nobody(&dir, &inner)
            .output()
            .expect("setpriv (util-linux)");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{how}: {}", text(&out));
        assert!(
            stderr.contains("/mnt/ro over virtiofs"),
            "{how}: {}",
            text(&out)
        );
        let path = if round == 0 {
            "saved the machine"
        } else {
            "restored saved machine"
        };
        assert!(stderr.contains(path), "{how}: {}", text(&out));
        assert!(
            stdout.starts_with("from the host\n"),
            "{how}: {}",
            text(&out)
        );
        assert!(stdout.contains("c a f 351"), "{how}: {}", text(&out));
        assert!(stdout.contains("remounted"), "{how}: {}", text(&out));
        assert!(stdout.contains("ro-refused"), "{how}: {}", text(&out));
        assert!(stdout.contains("ro-touch-refused"), "{how}: {}", text(&out));
        assert!(stdout.contains("rw-written"), "{how}: {}", text(&out));
        assert_eq!(
            std::fs::read_to_string(rw.join(format!("out{round}"))).unwrap(),
            format!("from-the-guest-{round}\n")
        );
        assert!(!ro.join("new").exists());
        assert_no_virtiofsd_for(&ro, how);
        assert_no_virtiofsd_for(&rw, how);
    }
}

/// A hostile guest with a writable share tries to leave a device node and a
/// set-uid-root program on the host. virtiofsd runs as the invoking user
/// (`nobody` here: as root, a writable share never goes over virtiofs), in
/// its namespace sandbox: the kernel refuses device nodes and everything the
/// guest makes belongs to that user. Booted cold: the devices are on qemu's
/// command line.
#[test]
fn a_hostile_guest_cannot_plant_devices_or_set_uid_root_files_through_virtiofs() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    need_virtiofsd();
    let dir = scratch("vfs-hostile");
    let rw = dir.join("rw");
    std::fs::create_dir(&rw).unwrap();
    std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut rw_spec = rw.clone().into_os_string();
    rw_spec.push(":/mnt/rw:rw");
    give_to_nobody(&[dir.join("tmp"), dir.join("cache")]);
    let script = "cd /mnt/rw || exit 9; \
        mknod blk b 8 0 && echo BLOCK-DEVICE-MADE; \
        mknod chr c 1 3 && echo CHAR-DEVICE-MADE; \
        cp /bin/sh suid-sh; chmod 6755 suid-sh; chown 0:0 suid-sh; \
        echo x >plain; chown 0:0 plain; chmod u+s plain; \
        mkdir d; chmod 2777 d; ls -ln; true";
    let inner = supermin(
        &dir,
        dir.path(),
        &[
            "run".as_ref(),
            "-v".as_ref(),
            "--cold".as_ref(),
            "--share-transport=virtiofs".as_ref(),
            "--share".as_ref(),
            &rw_spec,
            "--".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            script.as_ref(),
        ],
    );
    let out = as_nobody(&dir, &inner)
        .output()
        .expect("setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/mnt/rw (read-write) over virtiofs"),
        "{}",
        text(&out)
    );
    assert!(!stdout.contains("DEVICE-MADE"), "{}", text(&out));
    let mut seen = 0;
    for entry in std::fs::read_dir(&rw).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let name = entry.file_name();
        let kind = meta.file_type();
        assert!(
            !kind.is_block_device() && !kind.is_char_device(),
            "{name:?} is a device node on the host: {}",
            text(&out)
        );
        assert_ne!(meta.uid(), 0, "{name:?} is owned by root: {}", text(&out));
        let special = meta.mode() & 0o6000;
        assert!(
            special == 0 || meta.uid() != 0,
            "{name:?} is set-uid/gid root: {}",
            text(&out)
        );
        seen += 1;
    }
    assert!(seen >= 3, "the guest wrote nothing: {}", text(&out));
    assert_no_virtiofsd_for(&rw, "after the run");
}

/// Invoked as root, a writable share is never served by virtiofsd: as root
/// (`--qemu-user root`, or `0:0`, any spelling of uid 0) the guest could make
/// set-uid-root files, and as `nobody` (the default) set-uid files that every
/// local user can run. Asking for virtiofs is refused before anything boots;
/// `auto` takes 9p and says why.
#[test]
fn virtiofs_will_not_serve_a_writable_share_when_invoked_as_root() {
    need_virtiofsd();
    let dir = scratch("vfs-root");
    let rw = dir.join("rw");
    std::fs::create_dir(&rw).unwrap();
    std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut rw_spec = rw.clone().into_os_string();
    rw_spec.push(":rw");
    for user in ["--qemu-user=root", "--qemu-user=0:0", "--qemu-user=nobody"] {
        let out = supermin(
            &dir,
            dir.path(),
            &[
                "run".as_ref(),
                user.as_ref(),
                "--share-transport=virtiofs".as_ref(),
                "--share".as_ref(),
                &rw_spec,
                "--".as_ref(),
                "true".as_ref(),
            ],
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{user}: {}", text(&out));
        assert!(stderr.contains("set-uid files"), "{user}: {}", text(&out));
        assert!(
            stderr.contains("--share-transport 9p"),
            "{user}: {}",
            text(&out)
        );
        assert_eq!(stderr.lines().count(), 1, "{user}: {}", text(&out));
    }
    let out = supermin(
        &dir,
        dir.path(),
        &[
            "run".as_ref(),
            "-v".as_ref(),
            "--share".as_ref(),
            &rw_spec,
            "--".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            "echo w >\"$1/w\"".as_ref(),
            "sh".as_ref(),
            rw.as_os_str(),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr.contains("shares over 9p: invoked as root"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(rw.join("w")).unwrap(), "w\n");
}

/// However a run ends (its --timeout, SIGTERM, SIGKILL of supermin itself)
/// no virtiofsd of it is left.
#[test]
fn no_virtiofsd_is_left_after_a_timeout_a_signal_or_a_killed_run() {
    use std::io::BufRead;
    need_virtiofsd();
    let dir = scratch("vfs-ends");
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    let run = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec![
            "run".as_ref(),
            "--share-transport=virtiofs".as_ref(),
            "--share".as_ref(),
            share.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        args.extend(["--", "sh", "-c", "echo started; sleep 60"].map(OsStr::new));
        let mut cmd = supermin(&dir, dir.path(), &args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    };

    let out = run(&["--timeout", "10"]).output().unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    assert_no_virtiofsd_for(&share, "--timeout");

    for signal in ["TERM", "KILL"] {
        let mut child = run(&[]).spawn().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "started\n", "signal {signal}");
        assert!(
            !processes_mentioning(format!("--shared-dir={}", share.display()).as_bytes())
                .is_empty(),
            "no virtiofsd while the command runs"
        );
        supermin_tests::send_signal(child.id(), signal);
        let status = child.wait().unwrap();
        assert!(!status.success(), "signal {signal}: {status}");
        assert_no_virtiofsd_for(&share, &format!("SIG{signal}"));
    }
}

/// The uid of `nobody`, after giving it `paths` (chown), so that a run as
/// `nobody` can use the test's scratch directories.
fn give_to_nobody(paths: &[PathBuf]) -> u32 {
    let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    let uid: u32 = String::from_utf8_lossy(&nobody.stdout)
        .trim()
        .parse()
        .unwrap();
    for p in paths {
        let ok = Command::new("chown")
            .args([format!("{uid}"), p.display().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    uid
}

/// `inner` (a `supermin(..)` command) run as `nobody` through setpriv, with
/// the same environment and `HOME` in the scratch directory.
fn as_nobody(dir: &TempDir, inner: &Command) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--reset-env",
        "env",
    ]);
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            let mut kv = k.to_os_string();
            kv.push("=");
            kv.push(v);
            cmd.arg(kv);
        }
    }
    cmd.arg(format!("HOME={}", dir.join("tmp").display()))
        .arg(inner.get_program())
        .args(inner.get_args())
        .current_dir(dir.path())
        .stdin(Stdio::null());
    cmd
}

/// Without root: supermin runs as `nobody` (through setpriv), so do qemu and
/// virtiofsd, whose namespace sandbox is a user namespace; the guest's
/// writes belong to that user and it cannot make device nodes.
#[test]
fn an_unprivileged_user_shares_over_virtiofs() {
    use std::os::unix::fs::MetadataExt;
    need_virtiofsd();
    let dir = scratch("vfs-user");
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("in.txt"), b"read by nobody\n").unwrap();
    let uid = give_to_nobody(&[dir.join("tmp"), dir.join("cache"), share.clone()]);
    let mut spec = share.clone().into_os_string();
    spec.push(":/mnt/s:rw");
    let script = "cat /mnt/s/in.txt; echo out >/mnt/s/out.txt && echo written; \
        mknod /mnt/s/blk b 8 0 && echo BLOCK-DEVICE-MADE; true";
    let inner = supermin(
        &dir,
        dir.path(),
        &[
            "run".as_ref(),
            "-v".as_ref(),
            "--share-transport=virtiofs".as_ref(),
            "--share".as_ref(),
            &spec,
            "--".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            script.as_ref(),
        ],
    );
    let mut cmd = as_nobody(&dir, &inner);
    let out = cmd.output().expect("setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stderr.contains("over virtiofs"), "{}", text(&out));
    assert!(stderr.contains("as this user"), "{}", text(&out));
    assert!(
        stdout.starts_with("read by nobody\nwritten\n"),
        "{}",
        text(&out)
    );
    assert!(!stdout.contains("DEVICE-MADE"), "{}", text(&out));
    assert_eq!(std::fs::metadata(share.join("out.txt")).unwrap().uid(), uid);
    assert!(!share.join("blk").exists());
    assert_no_virtiofsd_for(&share, "after the run");
}

/// Where virtiofsd may not make its namespace sandbox (unprivileged user
/// namespaces disabled), it would run unsandboxed, where a hostile guest may
/// reach files outside the share: `auto` shares over 9p instead (said with
/// -v); an explicit `--share-transport virtiofs` runs it with
/// `--sandbox=none` and warns. Played by a virtiofsd wrapper that fails the
/// namespace sandbox the way virtiofsd does.
#[test]
fn virtiofsd_without_a_namespace_sandbox_means_9p_unless_virtiofs_is_asked_for() {
    need_virtiofsd();
    let real = ["/usr/libexec/virtiofsd", "/usr/local/libexec/virtiofsd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("virtiofsd in /usr/libexec or /usr/local/libexec (bash .ci/setup)");
    let dir = scratch("vfs-nosandbox");
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("f"), b"served\n").unwrap();
    let wrapper = dir.join("virtiofsd");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor a; do case \"$a\" in --sandbox=namespace)\n\
             echo '[ERROR virtiofsd] Error entering sandbox: Unshare(Os {{ code: 1 }})' >&2\n\
             exit 1;; esac; done\nexec {real} \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |transport: &str| {
        let out = supermin(
            &dir,
            dir.path(),
            &[
                "run".as_ref(),
                "-v".as_ref(),
                format!("--share-transport={transport}").as_ref(),
                "--share".as_ref(),
                share.as_os_str(),
                "--".as_ref(),
                "cat".as_ref(),
                share.join("f").as_os_str(),
            ],
        )
        .env("SUPERMIN_VIRTIOFSD", &wrapper)
        .output()
        .unwrap();
        assert!(out.status.success(), "{transport}: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "served\n",
            "{transport}: {}",
            text(&out)
        );
        assert_no_virtiofsd_for(&share, transport);
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            text(&out),
        )
    };
    let (stderr, all) = run("auto");
    assert!(
        stderr.contains("shares over 9p: virtiofsd cannot make its namespace sandbox here"),
        "{all}"
    );
    assert!(stderr.contains(" over 9p\n"), "{all}");
    let (stderr, all) = run("virtiofs");
    assert!(
        stderr.contains("supermin: warning: virtiofsd cannot make its namespace sandbox here")
            && stderr.contains("--sandbox=none"),
        "{all}"
    );
    assert!(stderr.contains(" over virtiofs\n"), "{all}");
}

/// virtiofsd takes its directory as UTF-8 text: a directory whose name is
/// not is shared over 9p by `auto` (which the 9p test covers) and refused,
/// in one line, by `--share-transport virtiofs`.
#[test]
fn virtiofs_refuses_a_directory_whose_name_is_not_utf8() {
    need_virtiofsd();
    let dir = scratch("vfs-utf8");
    let odd = dir.path().join(OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir(&odd).unwrap();
    let out = supermin(
        &dir,
        dir.path(),
        &[
            "run".as_ref(),
            "--share-transport=virtiofs".as_ref(),
            "--share".as_ref(),
            odd.as_os_str(),
            "--".as_ref(),
            "true".as_ref(),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr.contains("not UTF-8"), "{}", text(&out));
    assert!(
        stderr
            .lines()
            .next()
            .unwrap_or("")
            .starts_with("supermin: error: "),
        "{}",
        text(&out)
    );
}
