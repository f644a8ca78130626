//! Shares over virtiofs: finding `virtiofsd`, starting one per shared
//! directory, and making sure none outlives the run.
//!
//! Why virtiofs: FUSE over a virtqueue, with the guest's page and dentry
//! caches in front, served by a daemon of its own; measured here under TCG,
//! 1.3-2x as fast as qemu's 9p on trees of many small files with about half
//! the CPU (README, "Shares"). It needs that outside daemon and guest RAM the
//! daemon can map, which shapes the rest:
//!
//! - Each share gets its own `virtiofsd`. Its vhost-user socket is created by
//!   us in a private 0700 directory and handed over as a listening descriptor
//!   (`--fd`); we connect to it ourselves and give qemu the connected end
//!   (inherited, `-chardev socket,fd=N`, on a cold boot; passed over the
//!   monitor with `getfd` for a device hot-plugged after a restore). No path
//!   is ever opened by name by another process, and a qemu that dropped root
//!   needs no access to the directory.
//! - `virtiofsd` runs as the user qemu runs as (`nobody` when we are root),
//!   never as root on the guest's behalf: the guest is hostile, and what it
//!   writes in a `:rw` share is owned by that unprivileged user, so it cannot
//!   plant a set-uid-root program. Unprivileged, its `--sandbox namespace`
//!   puts it in a user namespace (guest root is that user, device nodes are
//!   refused by the kernel) chrooted into the share. Where it cannot make that
//!   namespace (unprivileged user namespaces not allowed), virtiofsd without
//!   a sandbox could be led to files outside the share (its own README:
//!   "not recommended"), so `--share-transport auto` takes 9p instead, whose
//!   server stays inside the share; only an explicit `--share-transport
//!   virtiofs` runs it with `--sandbox=none`, with a warning.
//! - A read-only share is `--readonly` (virtiofsd refuses every write
//!   operation) and mounted `ro` in the guest; no extended attributes are
//!   passed through (no `--xattr`).
//! - Every daemon runs in its own process group and gets `PR_SET_PDEATHSIG`;
//!   [`Daemon`]'s `Drop` kills the group and reaps it, so no `virtiofsd`
//!   (nor its sandboxed child) is left after a run however it ends.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::stop::{Halt, Stop};

/// The program name looked up in `PATH`.
pub const VIRTIOFSD: &str = "virtiofsd";

/// Where distributions install it, looked at before `PATH` (it is a helper,
/// usually not in `PATH`): Debian and Fedora, older Debian (qemu's C
/// virtiofsd), and a local install.
pub const KNOWN_PATHS: &[&str] = &[
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
    "/usr/local/libexec/virtiofsd",
];

/// How long a starting virtiofsd may take to say it waits for its client.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of a daemon's stderr kept for error reports.
const LOG_LINES: usize = 10;
/// What virtiofsd logs once its sandbox is set up and it waits for qemu.
const READY_LINE: &str = "Waiting for vhost-user socket connection";

/// A virtiofsd that can serve our shares: the Rust one, with `--fd` and
/// `--readonly` (1.x).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Virtiofsd {
    pub path: PathBuf,
    /// `virtiofsd --version` (first line).
    pub version: String,
}

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// The candidates, in order: `$SUPERMIN_VIRTIOFSD` (alone when set), the
/// known paths, `PATH`, then `$HOME/.cargo/bin` (`cargo install virtiofsd`)
/// unless `as_root`.
pub fn candidates(
    env_override: Option<&Path>,
    path_var: Option<&OsStr>,
    home: Option<&Path>,
    as_root: bool,
) -> Vec<PathBuf> {
    if let Some(p) = env_override {
        return vec![p.to_path_buf()];
    }
    let mut out: Vec<PathBuf> = KNOWN_PATHS.iter().map(PathBuf::from).collect();
    if let Some(path) = path_var {
        out.extend(
            std::env::split_paths(path)
                .filter(|dir| dir.is_absolute())
                .map(|dir| dir.join(VIRTIOFSD)),
        );
    }
    // Not as root: `$HOME` may be another user's (`sudo -E`), and what we find
    // here is run (`--help`) before any privilege is dropped.
    if !as_root {
        if let Some(home) = home.filter(|h| h.is_absolute()) {
            out.push(home.join(".cargo/bin").join(VIRTIOFSD));
        }
    }
    out
}

/// How long one `--help` / `--version` of a candidate may take, and how much
/// of its output is read: a wrapper that hangs or floods cannot hold the run.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_OUTPUT: u64 = 256 << 10;

/// `path arg`'s standard output, bounded in time and size.
fn probe(path: &Path, arg: &str) -> Result<String, String> {
    let mut child = Command::new(path)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = out.take(PROBE_OUTPUT).read_to_end(&mut text);
            let _ = tx.send(text);
        });
    }
    let text = rx.recv_timeout(PROBE_TIMEOUT);
    // Done or not, it has said all we read: end it (and anything it started).
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain system call on our own child's process group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.wait();
    text.map(|t| String::from_utf8_lossy(&t).into_owned())
        .map_err(|_| {
            format!(
                "{} {arg} did not answer within {PROBE_TIMEOUT:?}",
                path.display()
            )
        })
}

/// Finds a usable virtiofsd, or says why there is none.
pub fn find(
    env_override: Option<&Path>,
    path_var: Option<&OsStr>,
    home: Option<&Path>,
) -> Result<Virtiofsd, String> {
    let all = candidates(
        env_override,
        path_var,
        home,
        rustix::process::geteuid().is_root(),
    );
    let Some(path) = all.iter().find(|p| executable(p)) else {
        return Err(match env_override {
            Some(p) => format!(
                "SUPERMIN_VIRTIOFSD={} is not an executable file",
                p.display()
            ),
            None => format!(
                "no virtiofsd in {}, PATH or ~/.cargo/bin",
                KNOWN_PATHS.join(", ")
            ),
        });
    };
    let output = |arg: &str| probe(path, arg);
    let help = output("--help")?;
    let version = output("--version")?
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    for needed in ["--fd", "--readonly", "--sandbox"] {
        if !help.contains(needed) {
            return Err(format!(
                "{} ({version}) has no {needed} option: a newer virtiofsd (1.8 or later) is needed",
                path.display()
            ));
        }
    }
    Ok(Virtiofsd {
        path: path.clone(),
        version,
    })
}

/// The user and group a daemon runs as when we are root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves qemu's `-run-with user=` value (a name, or `UID:GID`).
pub fn resolve_user(user: &str) -> io::Result<Ids> {
    if let Some((u, g)) = user.split_once(':') {
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not UID:GID"))
        };
        return Ok(Ids {
            uid: parse(u)?,
            gid: parse(g)?,
        });
    }
    let name = std::ffi::CString::new(user)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in user name"))?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: `pwd` and `buf` outlive the call; getpwnam_r writes the entry
    // into `pwd` with its strings in `buf` and `result` to `&pwd` or null.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no user {user:?}"),
            ));
        }
        Ok(Ids {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// virtiofsd's `--sandbox` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    Namespace,
    None,
}

impl Sandbox {
    pub fn name(self) -> &'static str {
        match self {
            Sandbox::Namespace => "namespace",
            Sandbox::None => "none",
        }
    }
}

/// The arguments after the program name for one share; `fd` is the listening
/// socket as the daemon inherits it.
pub fn args(dir: &Path, writable: bool, fd: i32, sandbox: Sandbox, as_root: bool) -> Vec<OsString> {
    let mut shared = OsString::from("--shared-dir=");
    shared.push(dir);
    let mut a: Vec<OsString> = vec![
        shared,
        format!("--fd={fd}").into(),
        format!("--sandbox={}", sandbox.name()).into(),
        // A read-only share keeps what the guest read for the run (`always`,
        // like 9p's cache=loose): find + cat over 10k files was about 8%
        // faster than with `auto` (README, "Shares"). A writable one
        // revalidates after a second (`auto`), so host and guest see each
        // other's changes.
        if writable {
            "--cache=auto".into()
        } else {
            "--cache=always".into()
        },
        // File handles need CAP_DAC_READ_SEARCH, which an unprivileged
        // daemon lacks: say so up front instead of a warning per run.
        "--inode-file-handles=never".into(),
        "--log-level=info".into(),
    ];
    if !writable {
        a.push("--readonly".into());
    }
    if as_root {
        // Only with `--qemu-user root`: no device nodes, no file capabilities.
        a.push("--modcaps=-mknod:-setfcap".into());
    }
    a
}

/// Why a daemon did not start: it could not be run at all, or it ran and
/// gave up (in the namespace sandbox: most likely that it may not create
/// one, where unprivileged user namespaces are not allowed).
#[derive(Debug)]
pub enum StartError {
    /// It could not be run (the message says why).
    Spawn(String),
    /// It ran and ended, or never said it was ready; with its last words.
    Exited(String),
    /// The run's deadline passed or a signal came while it started.
    Halted(Halt),
}

impl StartError {
    /// The message, whichever way it failed.
    pub fn into_message(self) -> String {
        match self {
            StartError::Spawn(why) | StartError::Exited(why) => why,
            StartError::Halted(Halt::Deadline) => "the run's --timeout passed".to_string(),
            StartError::Halted(Halt::Signal(sig)) => format!("signal {sig}"),
        }
    }
}

/// One running virtiofsd serving one share.
pub struct Daemon {
    child: Child,
    /// Our connected end of its vhost-user socket; qemu inherits it.
    qemu_end: OwnedFd,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Daemon {
    /// The descriptor qemu inherits as the vhost-user-fs device's chardev.
    pub fn fd(&self) -> i32 {
        self.qemu_end.as_raw_fd()
    }

    /// What the daemon said last (for error reports).
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Starts virtiofsd for `share` with its socket at `sock` (in a private
    /// directory), as `run_as` when given, in `sandbox`; returns once it
    /// waits for qemu, or when `stop` ends the run.
    pub fn start(
        bin: &Virtiofsd,
        share: &crate::Share,
        sock: &Path,
        run_as: Option<Ids>,
        verbose: bool,
        sandbox: Sandbox,
        stop: &Stop,
    ) -> Result<Daemon, StartError> {
        let spawn_err = StartError::Spawn;
        let _ = std::fs::remove_file(sock);
        let listener = UnixListener::bind(sock)
            .map_err(|e| spawn_err(format!("socket {}: {e}", sock.display())))?;
        // Connecting before the daemon accepts is fine: the kernel queues it.
        let ours = UnixStream::connect(sock)
            .map_err(|e| spawn_err(format!("socket {}: {e}", sock.display())))?;
        let _ = std::fs::remove_file(sock);
        let fd = listener.as_raw_fd();
        // Root by any name: uid 0 after the switch, or no switch while we are root.
        let as_root = match run_as {
            Some(ids) => ids.uid == 0,
            None => rustix::process::geteuid().is_root(),
        };
        let mut cmd = Command::new(&bin.path);
        cmd.args(args(&share.host, share.writable, fd, sandbox, as_root))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_clear()
            .process_group(0);
        if let Some(ids) = run_as {
            // std drops the supplementary groups when it changes the uid.
            cmd.uid(ids.uid).gid(ids.gid);
        }
        // SAFETY: runs in the child between fork and exec, after the uid
        // change, making only async-signal-safe calls (close_range, fcntl, prctl) on plain
        // integers.
        unsafe {
            cmd.pre_exec(move || {
                // Nothing our caller left open reaches virtiofsd: every
                // descriptor above stderr is closed at exec but its socket.
                // (Errors ignored: kernels before 5.11 lack the flag, and
                // ours are close-on-exec anyway.)
                let _ = libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            let whom = match run_as {
                Some(ids) => format!(
                    " (it runs as uid {}, which must be able to execute it)",
                    ids.uid
                ),
                None => String::new(),
            };
            spawn_err(format!("cannot start {}{whom}: {e}", bin.path.display()))
        })?;
        drop(listener);
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        if let Some(err) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut ready_tx = Some(ready_tx);
                // Bounded lines: virtiofsd is ours, but its stderr is still a pipe.
                let mut reader = BufReader::new(err);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.by_ref().take(4096).read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    // Its log can quote what the guest sent (names): tamed
                    // like every other guest text before it reaches a terminal.
                    let text = crate::vm::printable(&line).trim_end().to_string();
                    if verbose {
                        eprintln!("virtiofsd: {text}");
                    }
                    if text.contains(READY_LINE) {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == LOG_LINES {
                        log.pop_front();
                    }
                    log.push_back(text);
                }
            });
        }
        let mut daemon = Daemon {
            child,
            qemu_end: ours.into(),
            log,
        };
        let until = Instant::now() + READY_TIMEOUT;
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(20)) {
                Ok(()) => return Ok(daemon),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < until => {
                    stop.check().map_err(StartError::Halted)?;
                    if let Ok(Some(status)) = daemon.child.try_wait() {
                        // Give the reader a moment to collect its last words.
                        std::thread::sleep(Duration::from_millis(20));
                        return Err(StartError::Exited(format!(
                            "virtiofsd exited ({status}): {}",
                            daemon.log_tail()
                        )));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(StartError::Exited(format!(
                        "virtiofsd did not start within {READY_TIMEOUT:?}: {}",
                        daemon.log_tail()
                    )))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Its stderr closed; whether or not it still runs, dropping
                    // the daemon kills its process group and reaps it (no
                    // unbounded wait here).
                    return Err(StartError::Exited(format!(
                        "virtiofsd exited: {}",
                        daemon.log_tail()
                    )));
                }
            }
        }
    }
}

/// How long `Drop` waits for a killed daemon's sandboxed children to die.
const REAP_WAIT: Duration = Duration::from_secs(2);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // The whole group: the sandboxed children virtiofsd forks stay in it.
        let Ok(group) = i32::try_from(self.child.id()) else {
            let _ = self.child.wait();
            return;
        };
        // SAFETY: plain system call on our own child's process group.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
        // Its children were handed to us (we are a subreaper, see
        // `Set::new`): reap them, so that no virtiofsd of this run is left,
        // not even as a zombie.
        let until = Instant::now() + REAP_WAIT;
        loop {
            let mut status = 0;
            // SAFETY: waits only for members of the daemon's own group.
            let pid = unsafe { libc::waitpid(-group, &mut status, libc::WNOHANG) };
            if pid < 0 || Instant::now() >= until {
                break; // ECHILD: none left.
            }
            if pid == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// The daemons of one run and their private socket directory.
pub struct Set {
    dir: PathBuf,
    pub daemons: Vec<Daemon>,
}

impl Set {
    /// An empty set whose sockets go in `dir`, a private (0700) directory
    /// made by `vm::make_scratch`; the set removes it.
    pub fn new(dir: PathBuf) -> Set {
        // virtiofsd forks its sandbox; when we kill it, those children would
        // go to init and linger as zombies for as long as init takes. As a
        // subreaper we get them and reap them in `Daemon`'s `Drop`. Nothing
        // else we start leaves orphans (qemu runs with -sandbox spawn=deny).
        // SAFETY: prctl with integer arguments.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
        }
        Set {
            dir,
            daemons: Vec::new(),
        }
    }

    /// The socket path of share `i`.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("share{i}.sock"))
    }

    /// The descriptors qemu inherits, in share order.
    pub fn fds(&self) -> Vec<i32> {
        self.daemons.iter().map(Daemon::fd).collect()
    }
}

impl Drop for Set {
    fn drop(&mut self) {
        self.daemons.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-virtiofsd");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_probe_that_hangs_or_floods_is_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let hangs = script(dir.path(), "sleep 60 & sleep 60");
        let t = Instant::now();
        let err = probe(&hangs, "--help").unwrap_err();
        assert!(err.contains("did not answer"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        let floods = script(dir.path(), "yes");
        let text = probe(&floods, "--help").unwrap();
        assert!(text.len() as u64 <= PROBE_OUTPUT, "{}", text.len());
        let fine = script(dir.path(), "echo \"virtiofsd 1.14.0 $1\"");
        assert_eq!(
            probe(&fine, "--version").unwrap(),
            "virtiofsd 1.14.0 --version\n"
        );
    }

    #[test]
    fn the_override_alone_then_known_paths_then_path_then_cargo() {
        let only = candidates(
            Some(Path::new("/opt/v")),
            Some(OsStr::new("/usr/bin")),
            None,
            false,
        );
        assert_eq!(only, vec![PathBuf::from("/opt/v")]);
        let all = candidates(
            None,
            Some(OsStr::new("/usr/bin:relative:/bin")),
            Some(Path::new("/home/u")),
            false,
        );
        let names: Vec<_> = all.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "/usr/libexec/virtiofsd",
                "/usr/lib/qemu/virtiofsd",
                "/usr/local/libexec/virtiofsd",
                "/usr/bin/virtiofsd",
                "/bin/virtiofsd",
                "/home/u/.cargo/bin/virtiofsd",
            ]
        );
        // As root, $HOME may be another user's: not searched.
        let root = candidates(
            None,
            Some(OsStr::new("/usr/bin")),
            Some(Path::new("/home/u")),
            true,
        );
        assert!(!root.iter().any(|p| p.starts_with("/home")), "{root:?}");
    }

    #[test]
    fn read_only_shares_are_readonly_and_root_loses_mknod() {
        let text = |a: Vec<OsString>| {
            a.iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let ro = text(args(
            Path::new("/h/a b"),
            false,
            5,
            Sandbox::Namespace,
            false,
        ));
        assert!(
            ro.starts_with("--shared-dir=/h/a b --fd=5 --sandbox=namespace"),
            "{ro}"
        );
        assert!(ro.contains("--readonly"), "{ro}");
        assert!(ro.contains("--cache=always"), "{ro}");
        assert!(!ro.contains("--xattr"), "{ro}");
        assert!(!ro.contains("--modcaps"), "{ro}");
        let rw = text(args(Path::new("/h/w"), true, 5, Sandbox::None, true));
        assert!(!rw.contains("--readonly"), "{rw}");
        assert!(rw.contains("--cache=auto"), "{rw}");
        assert!(rw.contains("--sandbox=none"), "{rw}");
        assert!(rw.contains("--modcaps=-mknod:-setfcap"), "{rw}");
    }

    #[test]
    fn users_resolve_by_name_or_number() {
        assert_eq!(resolve_user("12:34").unwrap(), Ids { uid: 12, gid: 34 });
        assert_eq!(resolve_user("root").unwrap(), Ids { uid: 0, gid: 0 });
        assert!(resolve_user("no-such-user-here").is_err());
        assert!(resolve_user("1:x").is_err());
    }
}
