//! `supermin run`: boot an appliance under qemu, run one command in it through
//! the daemon, stream its output back, power the VM off, and return the
//! command's exit status.
//!
//! Shape: [`Session::boot`] resolves the appliance ([`Appliance`]) and the
//! accelerator, starts a `vm::Vm` (qemu with the daemon's channel on a
//! socketpair and a private scratch directory for the root's throwaway
//! overlay) and waits for the daemon's hello; a [`Session`] then runs
//! commands and copies files; [`run`] is boot, one exec, shutdown. Every wait is bounded by a deadline
//! and also ends on a signal (Ctrl-C) or on the VM vanishing; every exit path
//! goes through `Vm`'s `Drop`, which kills qemu and removes the scratch
//! directory.

#![warn(missing_docs)]

mod accel;
mod copy;
pub mod diag;
mod qemu;
mod qmp;
mod signals;
mod snapshot;
mod stop;
mod terminal;
mod virtiofs;
mod vm;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use supermin_protocol::ExecRequest;
pub use supermin_protocol::ExitStatus;
pub use supermin_protocol::ShareFs;
use supermin_protocol::{ProtocolError, Reply, Request, CHUNK};

pub use qemu::{Disk, DiskFormat};
pub use snapshot::{list_saved, remove_saved, SavedInfo};
use vm::{Event, Vm, WaitError};

/// The signal a writer to a closed pipe gets (Linux, every architecture we boot).
const SIGPIPE: i32 = 13;

/// How long a TCG boot may take before we call it hung (without `--timeout`).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a KVM guest may stay silent on its console, without its daemon
/// answering, before it counts as hung. A working KVM boots the appliance in
/// about a second; on hosts where KVM guests hang this is the price of
/// finding out, paid once per host boot and qemu (the verdict is remembered).
const KVM_SILENCE: Duration = Duration::from_secs(5);
/// Replies queued between the thread that reads the guest and the run: a
/// few chunks, so the guest streams while we write, and no more.
const EVENT_QUEUE: usize = 16;
/// Longest text from the guest (an error message) shown to the user.
const MAX_GUEST_TEXT: usize = 1024;

/// After the command: time for the daemon to acknowledge the shutdown and
/// for qemu to exit before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Which accelerator qemu uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when `/dev/kvm` works, TCG otherwise (including when KVM guests hang).
    Auto,
    /// KVM, or fail.
    Kvm,
    /// TCG (emulation), even where KVM works.
    Tcg,
}

/// A name that is not an accelerator, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{value:?} is not an accelerator: use auto, kvm or tcg")]
pub struct UnknownAccel {
    /// `--accel `, `SUPERMIN_ACCEL=` or nothing (a plain parse).
    origin: &'static str,
    /// The name given (lossily decoded when it was not UTF-8).
    pub value: String,
}

impl std::str::FromStr for Accel {
    type Err = UnknownAccel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(UnknownAccel {
                origin: "",
                value: other.to_string(),
            }),
        }
    }
}

impl Accel {
    /// The accelerator a run uses: `--accel` (`flag`) when given, else
    /// `$SUPERMIN_ACCEL` (`env`) when set and not empty, else auto.
    pub fn resolve(flag: Option<&str>, env: Option<&OsStr>) -> Result<Accel, UnknownAccel> {
        let (origin, value) = match (flag, env.filter(|v| !v.is_empty())) {
            (Some(flag), _) => ("--accel ", flag.into()),
            (None, Some(env)) => ("SUPERMIN_ACCEL=", env.to_string_lossy()),
            (None, None) => return Ok(Accel::Auto),
        };
        value
            .parse()
            .map_err(|e: UnknownAccel| UnknownAccel { origin, ..e })
    }
}

/// How `--share` directories reach the guest (`--share-transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareTransport {
    /// virtiofs when a usable virtiofsd is installed, 9p otherwise.
    Auto,
    /// qemu's built-in 9p server.
    NineP,
    /// virtiofsd; an error when there is none.
    Virtiofs,
}

impl std::str::FromStr for ShareTransport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ShareTransport::Auto),
            "9p" => Ok(ShareTransport::NineP),
            "virtiofs" => Ok(ShareTransport::Virtiofs),
            other => Err(format!(
                "unknown share transport {other:?}: use auto, 9p or virtiofs"
            )),
        }
    }
}

/// What the launcher tells its user on the way (the binary prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `--accel auto` found KVM broken and boots with TCG instead.
    KvmFallback {
        /// What failed.
        reason: String,
    },
    /// A disk attached raw (no format named) starts like a qcow2 image.
    RawLooksLikeQcow2 {
        /// The disk.
        path: PathBuf,
    },
    /// `--share-transport virtiofs` where virtiofsd cannot make its
    /// namespace sandbox: it runs without one.
    VirtiofsWithoutSandbox {
        /// Why virtiofsd could not make it.
        reason: String,
    },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::KvmFallback { reason } => write!(
                f,
                "KVM failed ({reason}): using TCG, which is much slower; runs keep using TCG until the host reboots or qemu changes (`supermin run --recheck-kvm` tries KVM again)"
            ),
            Notice::VirtiofsWithoutSandbox { reason } => write!(
                f,
                "warning: virtiofsd cannot make its namespace sandbox here ({reason}): it runs with --sandbox=none, where a hostile guest may reach files outside the share that this user can; --share-transport auto would use 9p instead"
            ),
            Notice::RawLooksLikeQcow2 { path } => write!(
                f,
                "warning: disk {} starts like a qcow2 image but is attached raw, as no format was named; add :format=qcow2 if it is one (formats are never guessed: a guest can write any header into a raw disk)",
                path.display()
            ),
        }
    }
}

/// The process environment a launch depends on, read once (by the binary).
#[derive(Debug, Clone)]
pub struct LaunchEnv {
    /// `$PATH`, where qemu is looked up.
    pub path: Option<OsString>,
    /// `$XDG_RUNTIME_DIR`, where the KVM verdict is kept when it exists.
    pub runtime_dir: Option<PathBuf>,
    /// `$TMPDIR` when absolute, else `/var/tmp`: qemu's scratch directory (the
    /// root's overlay grows with what the guest writes, which a tmpfs `/tmp`
    /// may not hold), and the KVM verdict without `$XDG_RUNTIME_DIR`.
    pub tmp_dir: PathBuf,
    /// `$SUPERMIN_VIRTIOFSD`: the virtiofsd to use, instead of looking for one.
    pub virtiofsd: Option<PathBuf>,
    /// `$HOME`, for `~/.cargo/bin/virtiofsd`.
    pub home: Option<PathBuf>,
}

impl LaunchEnv {
    /// Reads the variables above from this process's environment.
    pub fn from_process() -> LaunchEnv {
        LaunchEnv::from_vars(|name| std::env::var_os(name))
    }

    /// Reads the variables above through `var` (the binary's one snapshot of
    /// the environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> LaunchEnv {
        LaunchEnv {
            path: var("PATH"),
            runtime_dir: var("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            tmp_dir: var("TMPDIR")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| PathBuf::from("/var/tmp")),
            virtiofsd: var("SUPERMIN_VIRTIOFSD")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            home: var("HOME").map(PathBuf::from).filter(|p| p.is_absolute()),
        }
    }
}

/// Everything one `supermin run` needs, resolved by the CLI.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// What the run takes from the environment.
    pub env: LaunchEnv,
    /// Forget a recorded KVM failure and try KVM again (`--accel auto`).
    pub recheck_kvm: bool,
    /// The user qemu runs as once it has opened its files; `None` keeps ours.
    pub qemu_user: Option<String>,
    /// Called with what the user should hear even without `-v`.
    pub on_notice: fn(&Notice),
    /// Where saved machines live (the runtime cache); `None` never saves or
    /// restores one.
    pub saved_machines: Option<PathBuf>,
    /// Boot cold even when a saved machine could be restored (and save none).
    pub cold: bool,
    /// Host directories mounted in the guest.
    pub shares: Vec<Share>,
    /// How they get there.
    pub share_transport: ShareTransport,
    /// Directory with `kernel`, `initrd`, `root` and maybe `vmlinux`.
    pub appliance: PathBuf,
    /// The accelerator.
    pub accel: Accel,
    /// Guest memory in MiB (at least 128 is used).
    pub memory_mib: u32,
    /// Virtual CPUs (at least 1 is used).
    pub cpus: u32,
    /// Extra disks in order (`/dev/vdb`, `/dev/vdc`, ...).
    pub disks: Vec<Disk>,
    /// Kills the VM when the whole run (boot included) takes longer.
    pub timeout: Option<Duration>,
    /// Show the console on stderr as it comes, and what the launcher does.
    pub verbose: bool,
    /// The command; empty with `interactive` means a login shell.
    pub argv: Vec<OsString>,
    /// Pass our stdin to the command (otherwise it reads `/dev/null`).
    pub stdin: bool,
    /// Added to the appliance's environment for the command (`--env`).
    pub command_env: Vec<(OsString, OsString)>,
    /// The command's working directory in the appliance (`--cwd`; `/` without).
    pub cwd: Option<OsString>,
    /// Run the command on a terminal in the appliance connected to ours
    /// (`-i`); stdin must be a terminal.
    pub interactive: Option<Interactive>,
    /// Host paths copied into appliance directories before the command.
    pub copy_in: Vec<CopyIn>,
    /// Appliance paths copied into host directories after the command.
    pub copy_out: Vec<CopyOut>,
    /// Bytes (file data, names, link targets) one copy-out may bring.
    pub copy_out_limit: u64,
}

/// `-i`: what the interactive session needs from our environment.
#[derive(Debug, Clone, Default)]
pub struct Interactive {
    /// Our `$TERM`, passed to the command (the appliance's default is `dumb`).
    pub term: Option<OsString>,
}

/// `--copy-in HOST_PATH:GUEST_DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyIn {
    /// The host file or directory to copy.
    pub host: PathBuf,
    /// The appliance directory to copy it into.
    pub guest_dir: PathBuf,
}

/// `--copy-out GUEST_PATH:HOST_DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOut {
    /// The appliance file or directory to copy.
    pub guest: PathBuf,
    /// The host directory to copy it into.
    pub host_dir: PathBuf,
}

/// Splits `A:B` at its last colon (a host path may hold colons; the guest
/// side of a copy rarely does); both sides must be non-empty.
pub fn parse_copy_spec(spec: &str) -> Result<(PathBuf, PathBuf), String> {
    match spec.rsplit_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.into(), b.into())),
        _ => Err(format!("{spec:?}: expected SOURCE:DIRECTORY")),
    }
}

/// The command `-i` runs without one: a login shell, bash when the
/// appliance has it.
pub fn login_shell() -> Vec<OsString> {
    [
        "/bin/sh",
        "-c",
        "if command -v bash >/dev/null 2>&1; then exec bash -l; fi; exec sh -l",
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// Why a run failed (the command's own failure is not an error: it is the
/// exit status [`run`] returns).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A file the appliance needs is missing or unreadable.
    #[error("appliance {dir} has no usable {file}")]
    ApplianceIncomplete {
        /// The appliance directory.
        dir: PathBuf,
        /// The file missing from it.
        file: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The appliance's root is not an ext2/3/4 image.
    #[error("{path} is not an ext2/3/4 image (no superblock magic), so its UUID cannot be passed as root=: rebuild the appliance")]
    RootNotExt2 {
        /// The root image.
        path: PathBuf,
    },
    /// A disk given with `--add` cannot be opened or checked.
    #[error("disk {path} cannot be used")]
    Disk {
        /// The disk.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A disk given with `--add` is refused (e.g. a qcow2 backing file not allowed).
    #[error("disk {path} refused: {why}")]
    DiskRefused {
        /// The disk.
        path: PathBuf,
        /// Why it is refused.
        why: String,
    },
    /// No command to run, and no `-i`.
    #[error("no command given: usage: supermin run [OPTIONS] -- CMD [ARG...]")]
    NoCommand,
    /// `--accel kvm` on a host where `/dev/kvm` cannot be used.
    #[error("--accel kvm: /dev/kvm is not usable ({reason}); use --accel tcg or auto")]
    KvmUnavailable {
        /// Why, as the host says.
        reason: String,
    },
    /// `--accel kvm` and KVM failed.
    #[error("--accel kvm: KVM failed on this host ({reason}); use --accel tcg, or --accel auto to fall back by itself")]
    KvmFailed {
        /// What qemu said.
        reason: String,
    },
    /// qemu cannot be found or started.
    #[error("cannot start {program}")]
    QemuSpawn {
        /// The qemu program.
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The run's scratch directory cannot be created.
    #[error("cannot create a scratch directory in {dir}")]
    Scratch {
        /// Where it was to be created.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Something the run needs on the host cannot be set up.
    #[error("cannot set up {what}")]
    Setup {
        /// What could not be set up.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The appliance did not reach its daemon.
    #[error("the appliance did not start: {reason}\n{console}")]
    BootFailed {
        /// What went wrong.
        reason: String,
        /// The last lines of the console.
        console: String,
    },
    /// The daemon speaks another protocol version.
    #[error("the appliance's daemon speaks protocol version {daemon}, this launcher speaks {ours}: rebuild the appliance with this supermin")]
    VersionMismatch {
        /// The daemon's version.
        daemon: u32,
        /// This launcher's version.
        ours: u32,
    },
    /// The daemon sent bytes that are not a valid message.
    #[error("the appliance sent a malformed message")]
    Protocol {
        /// The cause.
        #[source]
        source: ProtocolError,
    },
    /// The daemon sent a valid message that does not belong here.
    #[error("the appliance's daemon sent an unexpected {got}")]
    Unexpected {
        /// A description of the message (never its bytes).
        got: String,
    },
    /// The command could not be started in the appliance.
    #[error("{message}")]
    CommandNotStarted {
        /// The daemon's reason.
        message: String,
    },
    /// The daemon reported an error.
    #[error("the appliance reported an error: {message}")]
    Daemon {
        /// The daemon's message.
        message: String,
    },
    /// qemu exited while the command was running.
    #[error("the VM went away while the command was running\n{console}")]
    VmDied {
        /// The last lines of the console.
        console: String,
    },
    /// The run took longer than `--timeout`.
    #[error("timed out after {after:?}: the VM was killed (raise --timeout)")]
    Timeout {
        /// The timeout.
        after: Duration,
    },
    /// A signal (SIGINT, SIGTERM, SIGHUP) ended the run.
    #[error("interrupted by signal {signal}: the VM was killed")]
    Interrupted {
        /// The signal number.
        signal: i32,
    },
    /// A host file of a copy cannot be read or written.
    #[error("local file {path}")]
    LocalFile {
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A downloaded file exceeded its limit.
    #[error("{remote} in the appliance is larger than the {limit}-byte limit of this download; the VM was stopped")]
    DownloadTooLarge {
        /// The guest path.
        remote: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// Reading or writing the channel to the daemon failed.
    #[error("cannot talk to the VM")]
    Channel {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A `--copy-out` brought more bytes than its limit.
    #[error("copying {remote} out of the appliance brought more than its {limit}-byte limit; the VM was stopped (raise --copy-out-limit)")]
    CopyOutTooLarge {
        /// The guest path.
        remote: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// A `--copy-out` listed more entries than allowed.
    #[error("copying {remote} out of the appliance: more than {max} entries; the VM was stopped")]
    CopyOutTooMany {
        /// The guest path.
        remote: PathBuf,
        /// The most entries allowed.
        max: usize,
    },
    /// A `--copy-out` nested deeper than allowed.
    #[error(
        "copying {remote} out of the appliance: deeper than {max} directories; the VM was stopped"
    )]
    CopyOutTooDeep {
        /// The guest path.
        remote: PathBuf,
        /// The deepest nesting allowed.
        max: usize,
    },
    /// The guest sent a file name that could escape the destination.
    #[error("the appliance listed {name:?} in {remote}, which is not a safe file name ({why}); refused, the VM was stopped, nothing was written outside the destination")]
    UnsafeName {
        /// The name as sent.
        name: String,
        /// The guest directory it was listed in.
        remote: PathBuf,
        /// What makes it unsafe.
        why: &'static str,
    },
    /// A `--copy-in` or `--copy-out` failed.
    #[error("{what}")]
    Copy {
        /// Which copy (`--copy-out GUEST:HOST`).
        what: String,
        /// The error that ended the copy.
        #[source]
        source: Box<LaunchError>,
    },
    /// `-i` without a terminal on stdin.
    #[error("-i needs a terminal on stdin (it is a pipe or a file); drop -i to run a command with stdin passed through")]
    NotATerminal,
    /// The user typed the escape sequence `~.`.
    #[error("session ended with the escape sequence (~.); the VM was killed")]
    Escaped,
    /// `--share-transport virtiofs` without a usable virtiofsd.
    #[error("--share-transport virtiofs: {reason}")]
    VirtiofsUnavailable {
        /// Where it was looked for, or what the one found lacks.
        reason: String,
    },
    /// A share's virtiofsd did not start.
    #[error("cannot share {host} over virtiofs: {reason}")]
    Virtiofsd {
        /// The shared directory.
        host: PathBuf,
        /// What went wrong, with virtiofsd's last words.
        reason: String,
    },
    /// virtiofs was asked for where it would be unsafe or cannot run as
    /// qemu's user.
    #[error("cannot share over virtiofs: {reason}")]
    VirtiofsRefused {
        /// Why.
        reason: String,
    },
}

impl LaunchError {
    /// The way out, for the failures whose cause (printed after the message)
    /// leaves the user to guess it; the others say theirs in the message.
    pub fn hint(&self) -> Option<String> {
        match self {
            LaunchError::ApplianceIncomplete { dir, .. } => Some(format!(
                "build one with `supermin --build -f ext2 -o {}`",
                dir.display()
            )),
            LaunchError::QemuSpawn { .. } => {
                Some("install qemu-system-x86 (Debian) / qemu-system-x86-core (Fedora)".into())
            }
            LaunchError::Scratch { .. } => Some("set TMPDIR to a writable directory".into()),
            LaunchError::Copy { source, .. } => source.hint(),
            LaunchError::VirtiofsUnavailable { .. } => Some(
                "install virtiofsd (Debian: apt install virtiofsd, or cargo install virtiofsd) or point SUPERMIN_VIRTIOFSD at one; --share-transport 9p needs none".into(),
            ),
            LaunchError::Virtiofsd { .. } => Some(
                "-v shows virtiofsd's messages; --share-transport 9p needs no virtiofsd".into(),
            ),
            _ => None,
        }
    }
}

/// The files of an appliance directory, checked.
#[derive(Debug, Clone)]
pub struct Appliance {
    /// `vmlinux` when present (booted via PVH, much faster under TCG), else `kernel`.
    pub kernel: PathBuf,
    /// The initrd (cpio with the init and the boot modules).
    pub initrd: PathBuf,
    /// The root filesystem image (ext2).
    pub root: PathBuf,
    /// The root image's ext2 UUID, formatted for `root=UUID=`.
    pub root_uuid: String,
}

impl Appliance {
    /// Checks the appliance directory `dir` and reads its root's UUID.
    pub fn open(dir: &Path) -> Result<Appliance, LaunchError> {
        let need = |file: &'static str| -> Result<PathBuf, LaunchError> {
            let path = dir.join(file);
            match File::open(&path) {
                Ok(_) => Ok(path),
                Err(source) => Err(LaunchError::ApplianceIncomplete {
                    dir: dir.to_path_buf(),
                    file,
                    source,
                }),
            }
        };
        let vmlinux = dir.join("vmlinux");
        let kernel = if File::open(&vmlinux).is_ok() {
            vmlinux
        } else {
            need("kernel")?
        };
        let initrd = need("initrd")?;
        let root = need("root")?;
        let root_uuid = read_ext2_uuid(&root).map_err(|e| match e {
            None => LaunchError::RootNotExt2 { path: root.clone() },
            Some(source) => LaunchError::ApplianceIncomplete {
                dir: dir.to_path_buf(),
                file: "root",
                source,
            },
        })?;
        Ok(Appliance {
            kernel: absolute(&kernel),
            initrd: absolute(&initrd),
            root: absolute(&root),
            root_uuid,
        })
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The UUID in an ext2/3/4 superblock (1024 bytes in; magic 0xEF53 at 0x38,
/// UUID at 0x68). `Err(None)` when the magic is missing.
fn read_ext2_uuid(path: &Path) -> Result<String, Option<io::Error>> {
    let mut f = File::open(path).map_err(Some)?;
    let mut sb = [0u8; 0x78];
    f.seek(SeekFrom::Start(1024)).map_err(Some)?;
    f.read_exact(&mut sb).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => None,
        _ => Some(e),
    })?;
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return Err(None);
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&sb[0x68..0x78]);
    Ok(supermin_ext2::format_uuid(&uuid))
}

/// What booting needs besides the plan.
struct Boot<'a> {
    opts: &'a RunOptions,
    tx: &'a mpsc::SyncSender<Event>,
    rx: &'a mpsc::Receiver<Event>,
    stop: &'a Arc<stop::Stop>,
    start: Instant,
}

impl Boot<'_> {
    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.opts.verbose {
            eprintln!(
                "supermin: run: [{:>6.3}s] {what}",
                self.start.elapsed().as_secs_f64()
            );
        }
    }

    /// `after` from now, or the run's deadline if that comes first.
    fn within(&self, after: Duration) -> Instant {
        let soon = Instant::now() + after;
        self.stop.deadline().map_or(soon, |d| d.min(soon))
    }

    fn start_vm(
        &self,
        plan: &qemu::Plan,
        scratch: PathBuf,
        generation: u64,
    ) -> Result<Vm, LaunchError> {
        Vm::start_in(
            plan,
            scratch,
            generation,
            self.tx.clone(),
            Arc::clone(self.stop),
            self.opts.verbose,
        )
    }
}

/// The store of saved machines and the key of this one, when this run may
/// use one: a store is configured, no `--cold`, no disk whose qcow2 backing
/// chain qemu would open by name (a qemu that dropped root may not reach
/// it), and paths that qemu's JSON options can carry. The key is the
/// machine's without its added disks, which are hot-plugged after the boot
/// or the restore.
fn saved_machines(b: &Boot<'_>, plan: &qemu::Plan) -> Option<(snapshot::Store, snapshot::Key)> {
    let dir = b.opts.saved_machines.as_ref()?;
    if b.opts.cold {
        b.log(format_args!("--cold: booting, not restoring"));
        return None;
    }
    if plan.disks.iter().any(|d| d.allow_backing) {
        b.log(format_args!(
            "a disk with an allowed backing file: booting, not restoring"
        ));
        return None;
    }
    if plan.root.to_str().is_none() || b.opts.env.tmp_dir.to_str().is_none() {
        return None;
    }
    // virtiofs devices are hot-plugged too: one saved machine (with its RAM
    // in a shared memfd) serves every set of virtiofs shares.
    let bare = qemu::Plan {
        disks: Vec::new(),
        virtiofs: Vec::new(),
        ..plan.clone()
    };
    let found = snapshot::Store::open(dir).and_then(|store| Ok((store, snapshot::key(&bare)?)));
    match found {
        Ok(found) => Some(found),
        Err(e) => {
            b.log(format_args!(
                "saved machines unavailable in {}: {e}",
                dir.display()
            ));
            None
        }
    }
}

/// How a restore failed: `Unusable` falls back to a cold boot, `Fatal` ends
/// the run (its deadline passed, a signal came).
enum RestoreError {
    Unusable(String),
    Fatal(LaunchError),
}

impl From<qmp::QmpError> for RestoreError {
    fn from(e: qmp::QmpError) -> RestoreError {
        match e {
            qmp::QmpError::Halted(stop::Halt::Signal(signal)) => {
                RestoreError::Fatal(LaunchError::Interrupted { signal })
            }
            e => RestoreError::Unusable(e.to_string()),
        }
    }
}

/// The first `-add-fd` set of the added disks (1 and 2 are the saved state's);
/// disk `i` is `/dev/fdset/DISK_FDSET+i` on every path (cold, KVM, hot-plug).
const DISK_FDSET: u32 = 10;

/// Boots with TCG: restores the saved machine when there is one (falling
/// back to a cold boot, and replacing it, when it does not restore), else
/// boots cold and saves the machine for the next runs; then hot-plugs the
/// added disks.
fn boot_tcg(
    b: &Boot<'_>,
    plan: qemu::Plan,
    saved: Option<(snapshot::Store, snapshot::Key)>,
    mut generation: u64,
) -> Result<Vm, LaunchError> {
    let Some((store, key)) = saved else {
        let plan = qemu::Plan {
            never_saved: true,
            ..plan
        };
        b.log(format_args!("booting {} with TCG", plan.kernel.display()));
        let mut vm = b.start_vm(&plan, vm::make_scratch(&b.opts.env.tmp_dir)?, generation)?;
        let boot_deadline = earliest(b.stop.deadline(), Some(Instant::now() + BOOT_TIMEOUT));
        if let Err(e) = vm.wait_hello(b.rx, boot_deadline) {
            return Err(boot_error(e, &mut vm, b.stop));
        }
        return Ok(vm);
    };
    let disks = plan.disks.clone();
    let virtiofs = plan.virtiofs.clone();
    // The disks' descriptors are already in the plan's fdsets, for
    // hot-plugging; the virtiofs sockets are passed over the monitor.
    let bare = qemu::Plan {
        disks: Vec::new(),
        qmp: true,
        virtiofs: Vec::new(),
        ..plan
    };

    let mut booted = None;
    if let Some(found) = store.find(&key) {
        let t = Instant::now();
        match restore(b, &bare, &found, generation) {
            Ok(restored) => {
                found.mark_used();
                b.log(format_args!(
                    "restored saved machine {} in {:.3}s",
                    key.as_str(),
                    t.elapsed().as_secs_f64()
                ));
                booted = Some(restored);
            }
            Err(RestoreError::Fatal(e)) => return Err(e),
            // The run's own deadline or a signal is no fault of the saved machine.
            Err(RestoreError::Unusable(why)) => {
                if let Err(halt) = b.stop.check() {
                    return Err(halted(b.stop, halt));
                }
                b.log(format_args!(
                    "saved machine {} does not restore ({why}): booting, and saving anew",
                    key.as_str()
                ));
                store.discard(&key);
                generation += 1;
            }
        }
    } else {
        b.log(format_args!(
            "no saved machine {} yet: booting, then saving it",
            key.as_str()
        ));
    }
    let (mut vm, mut qmp) = match booted {
        Some(restored) => restored,
        None => boot_and_save(b, bare, &store, &key, generation)?,
    };
    hotplug(b, &mut vm, &mut qmp, &disks)?;
    hotplug_virtiofs(b, &mut vm, &mut qmp, &virtiofs)?;
    Ok(vm)
}

/// Hot-plugs a `vhost-user-fs-pci` device per virtiofs share, each on its
/// connected socket passed to qemu over the monitor (`getfd`); the daemon's
/// mount waits for the guest to probe it.
///
/// Why hot-plugged rather than saved with the machine: vhost-user-fs
/// devices cannot be migrated (the daemon's state is outside qemu), and a
/// machine saved without them serves any set of shares. What the saved
/// machine needs is its RAM in a shared memfd, which is in its key.
fn hotplug_virtiofs(
    b: &Boot<'_>,
    vm: &mut Vm,
    qmp: &mut qmp::Qmp,
    fds: &[i32],
) -> Result<(), LaunchError> {
    for (i, fd) in fds.iter().enumerate() {
        let failed = |e: &dyn std::fmt::Display, vm: &Vm| LaunchError::BootFailed {
            reason: format!("adding virtiofs share {i}: {e}"),
            console: vm.console_tail(),
        };
        let step = b.within(Duration::from_secs(30));
        let chardev = format!("vfs{i}");
        // SAFETY: the descriptor belongs to the run's virtiofs set, which
        // outlives this call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
        qmp.pass_fd(&chardev, borrowed, step)
            .map_err(|e| failed(&e, vm))?;
        qmp.execute(
            "chardev-add",
            Some(serde_json::json!({
                "id": chardev,
                "backend": {"type": "socket", "data": {
                    "addr": {"type": "fd", "data": {"str": chardev}},
                    "server": false,
                }},
            })),
            step,
        )
        .map_err(|e| failed(&e, vm))?;
        qmp.execute(
            "device_add",
            Some(serde_json::json!({
                "driver": "vhost-user-fs-pci",
                "id": format!("vfsdev{i}"),
                "chardev": chardev,
                "tag": qemu::share_tag(i),
            })),
            step,
        )
        .map_err(|e| failed(&e, vm))?;
    }
    if !fds.is_empty() {
        b.log(format_args!("{} virtiofs device(s) attached", fds.len()));
    }
    Ok(())
}

/// Which transport this run's shares take: `Some(virtiofsd)` for virtiofs,
/// `None` for 9p (or no shares). Auto says why with `-v`.
fn share_transport(
    opts: &RunOptions,
    log: &dyn Fn(std::fmt::Arguments<'_>),
) -> Result<Option<virtiofs::Virtiofsd>, LaunchError> {
    if opts.shares.is_empty() {
        return Ok(None);
    }
    let found = || {
        virtiofs::find(
            opts.env.virtiofsd.as_deref(),
            opts.env.path.as_deref(),
            opts.env.home.as_deref(),
        )
    };
    // virtiofsd runs as the user qemu runs as. Invoked as root, that is root
    // itself (`--qemu-user root`, or any other name or number for uid 0 or
    // gid 0), or a system user every run shares (`nobody`): a writable share
    // would then let the guest make set-uid programs on the host (chmod u+s
    // on a file that user owns needs no capability) that any local user can
    // run, where 9p keeps the guest's modes in xattrs. So a writable share
    // goes over 9p whenever supermin runs as root.
    let as_root = rustix::process::geteuid().is_root();
    let root_rw = as_root && opts.shares.iter().any(|s| s.writable);
    const ROOT_RW: &str = "invoked as root, a writable share served by virtiofsd (as root, or as a user every run shares) would let the guest make set-uid files on the host that local users can run (9p stores the guest's modes in xattrs instead)";
    // virtiofsd takes its directory as a UTF-8 string.
    let not_utf8 = opts.shares.iter().find(|s| s.host.to_str().is_none());
    let chosen = match opts.share_transport {
        ShareTransport::NineP => Err("--share-transport 9p".to_string()),
        ShareTransport::Auto | ShareTransport::Virtiofs if root_rw => Err(ROOT_RW.to_string()),
        ShareTransport::Auto | ShareTransport::Virtiofs if not_utf8.is_some() => Err(format!(
            "virtiofsd cannot be given {}, whose name is not UTF-8",
            not_utf8
                .map(|s| s.host.display().to_string())
                .unwrap_or_default()
        )),
        ShareTransport::Auto | ShareTransport::Virtiofs => found(),
    };
    match chosen {
        Ok(v) => {
            log(format_args!(
                "shares over virtiofs: {} ({})",
                v.path.display(),
                v.version
            ));
            Ok(Some(v))
        }
        Err(reason) if opts.share_transport == ShareTransport::Virtiofs => Err(if root_rw {
            LaunchError::VirtiofsRefused {
                reason: format!(
                    "{reason}; use --share-transport 9p, or run supermin as a regular user"
                ),
            }
        } else {
            LaunchError::VirtiofsUnavailable { reason }
        }),
        Err(reason) => {
            log(format_args!("shares over 9p: {reason}"));
            Ok(None)
        }
    }
}

/// Why the virtiofsd processes of a run did not start.
enum VirtiofsStart {
    /// virtiofsd could not make its namespace sandbox (see virtiofs.rs).
    NoSandbox(String),
    Failed(LaunchError),
}

impl From<LaunchError> for VirtiofsStart {
    fn from(e: LaunchError) -> VirtiofsStart {
        VirtiofsStart::Failed(e)
    }
}

/// Starts one virtiofsd per share in `sandbox`, as the user qemu runs as
/// (see virtiofs.rs).
fn start_virtiofs(
    opts: &RunOptions,
    bin: &virtiofs::Virtiofsd,
    sandbox: virtiofs::Sandbox,
    stop: &stop::Stop,
    log: &dyn Fn(std::fmt::Arguments<'_>),
) -> Result<virtiofs::Set, VirtiofsStart> {
    let run_as = match &opts.qemu_user {
        Some(user) => {
            Some(
                virtiofs::resolve_user(user).map_err(|e| LaunchError::VirtiofsRefused {
                    reason: format!("cannot run virtiofsd as {user}: {e}"),
                })?,
            )
        }
        None => None,
    };
    let mut set = virtiofs::Set::new(vm::make_scratch(&opts.env.tmp_dir)?);
    for (i, share) in opts.shares.iter().enumerate() {
        let sock = set.socket(i);
        let daemon =
            virtiofs::Daemon::start(bin, share, &sock, run_as, opts.verbose, sandbox, stop)
                .map_err(|e| match e {
                    virtiofs::StartError::Halted(halt) => VirtiofsStart::Failed(halted(stop, halt)),
                    virtiofs::StartError::Exited(why)
                        if sandbox == virtiofs::Sandbox::Namespace =>
                    {
                        VirtiofsStart::NoSandbox(why)
                    }
                    e => VirtiofsStart::Failed(LaunchError::Virtiofsd {
                        host: share.host.clone(),
                        reason: e.into_message(),
                    }),
                })?;
        log(format_args!(
            "virtiofsd for {} started ({}, --sandbox={})",
            share.host.display(),
            match &opts.qemu_user {
                Some(user) => format!("as {user}"),
                None => "as this user".to_string(),
            },
            sandbox.name()
        ));
        set.daemons.push(daemon);
    }
    Ok(set)
}

/// Boots `plan` cold (with a root overlay that can be saved) and saves the
/// booted machine under `key`; a machine that cannot be saved still runs.
fn boot_and_save(
    b: &Boot<'_>,
    mut plan: qemu::Plan,
    store: &snapshot::Store,
    key: &snapshot::Key,
    generation: u64,
) -> Result<(Vm, qmp::Qmp), LaunchError> {
    b.log(format_args!("booting {} with TCG", plan.kernel.display()));
    let scratch = vm::make_scratch(&b.opts.env.tmp_dir)?;
    let overlay = scratch.join("root-overlay.qcow2");
    let ready = std::fs::metadata(&plan.root).and_then(|m| {
        snapshot::create_overlay(
            &plan.qemu.path,
            b.opts.env.path.as_deref(),
            &overlay,
            m.len(),
        )?;
        let p = store.begin()?;
        let state = p.state_file()?;
        Ok((p, state))
    });
    let pending = match ready {
        Ok((p, state)) => {
            plan.root_overlay = Some(overlay);
            plan.fdsets
                .push((std::os::fd::AsRawFd::as_raw_fd(&state), 2));
            Some((p, state))
        }
        Err(e) => {
            b.log(format_args!("the machine will not be saved: {e}"));
            None
        }
    };
    let mut vm = b.start_vm(&plan, scratch, generation)?;
    // qemu has its own descriptor for the state file now.
    let pending = pending.map(|(p, _state)| p);
    let boot_deadline = earliest(b.stop.deadline(), Some(Instant::now() + BOOT_TIMEOUT));
    if let Err(e) = vm.wait_hello(b.rx, boot_deadline) {
        return Err(boot_error(e, &mut vm, b.stop));
    }
    let monitor = |vm: &mut Vm| -> Result<qmp::Qmp, LaunchError> {
        let stream = vm.take_qmp().ok_or_else(|| LaunchError::Setup {
            what: "qemu's monitor",
            source: io::ErrorKind::NotFound.into(),
        })?;
        qmp::Qmp::connect(
            stream,
            b.within(Duration::from_secs(30)),
            Arc::clone(b.stop),
        )
        .map_err(|e| LaunchError::BootFailed {
            reason: format!("qemu's monitor: {e}"),
            console: vm.console_tail(),
        })
    };
    let mut qmp = monitor(&mut vm)?;
    if let Some(pending) = pending {
        let t = Instant::now();
        b.log(format_args!("saving the machine"));
        match save(b, &mut vm, &mut qmp, &pending) {
            Ok(()) => match pending.commit(store, key, vm.daemon_info()) {
                Ok(()) => b.log(format_args!(
                    "saved the machine as {} in {:.3}s",
                    key.as_str(),
                    t.elapsed().as_secs_f64()
                )),
                Err(e) => b.log(format_args!("the machine was not saved: {e}")),
            },
            Err(RestoreError::Fatal(e)) => return Err(e),
            Err(RestoreError::Unusable(why)) => {
                b.log(format_args!("the machine was not saved: {why}"))
            }
        }
    }
    Ok((vm, qmp))
}

/// Saves the booted, idle machine into `pending`: the guest syncs its file
/// systems, qemu stops it and writes its state, the root's overlay is
/// copied while it is stopped, and the machine runs on.
fn save(
    b: &Boot<'_>,
    vm: &mut Vm,
    qmp: &mut qmp::Qmp,
    pending: &snapshot::Pending,
) -> Result<(), RestoreError> {
    vm.send(&Request::Sync).map_err(RestoreError::Fatal)?;
    match vm.next_reply(b.rx, Some(b.within(Duration::from_secs(30)))) {
        Ok(Reply::Done) => {}
        Ok(other) => {
            return Err(RestoreError::Unusable(format!(
                "sync answered with {}",
                describe(&other)
            )))
        }
        Err(WaitError::Deadline) if b.stop.check().is_ok() => {
            vm.stop();
            return Err(RestoreError::Fatal(LaunchError::BootFailed {
                reason: "the daemon did not sync the file systems within 30s (before saving the machine)".into(),
                console: vm.console_tail(),
            }));
        }
        Err(e) => return Err(RestoreError::Fatal(boot_error(e, vm, b.stop))),
    }
    let step = || b.within(Duration::from_secs(60));
    qmp.execute("stop", None, step())?;
    let saved = (|| -> Result<(), RestoreError> {
        qmp.execute(
            "migrate-set-capabilities",
            Some(
                serde_json::json!({"capabilities": [{"capability": "mapped-ram", "state": true}]}),
            ),
            step(),
        )?;
        qmp.execute(
            "migrate",
            Some(serde_json::json!({"uri": "file:/dev/fdset/2"})),
            step(),
        )?;
        if let Err(e) = qmp.wait_migration(step(), b.stop) {
            // A migration still running would pause the machine when it ends.
            let _ = qmp.execute("migrate_cancel", None, step());
            let _ = qmp.wait_migration(step(), b.stop);
            return Err(e.into());
        }
        let overlay = vm.scratch().join("root-overlay.qcow2");
        pending
            .keep_overlay(&overlay)
            .map_err(|e| RestoreError::Unusable(format!("copying the root overlay: {e}")))
    })();
    // Whatever happened, the machine must run on for this run's command.
    qmp.execute("cont", None, step()).map_err(|e| {
        RestoreError::Fatal(LaunchError::BootFailed {
            reason: format!("the machine did not resume after saving it: {e}"),
            console: vm.console_tail(),
        })
    })?;
    saved
}

/// Restores `found` into a new qemu and tells the daemon it was restored
/// (fresh clock and entropy).
fn restore(
    b: &Boot<'_>,
    plan: &qemu::Plan,
    found: &snapshot::Saved,
    generation: u64,
) -> Result<(Vm, qmp::Qmp), RestoreError> {
    let unusable =
        |what: &str, e: &dyn std::fmt::Display| RestoreError::Unusable(format!("{what}: {e}"));
    let scratch = vm::make_scratch(&b.opts.env.tmp_dir).map_err(RestoreError::Fatal)?;
    let overlay = scratch.join("root-overlay.qcow2");
    let opened = found.open().and_then(|(state, mut saved_overlay)| {
        snapshot::copy_private_from(&mut saved_overlay, &overlay)?;
        Ok(state)
    });
    let state = match opened {
        Ok(state) => state,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(unusable("opening it", &e));
        }
    };
    let mut plan = plan.clone();
    plan.root_overlay = Some(overlay);
    plan.incoming = true;
    plan.fdsets
        .push((std::os::fd::AsRawFd::as_raw_fd(&state), 1));
    let mut vm = b
        .start_vm(&plan, scratch, generation)
        .map_err(RestoreError::Fatal)?;
    drop(state);
    let stream = vm
        .take_qmp()
        .ok_or_else(|| RestoreError::Unusable("no monitor".into()))?;
    let step = || b.within(Duration::from_secs(30));
    let mut qmp = qmp::Qmp::connect(stream, step(), Arc::clone(b.stop))?;
    qmp.execute(
        "migrate-set-capabilities",
        Some(serde_json::json!({"capabilities": [{"capability": "mapped-ram", "state": true}]})),
        step(),
    )?;
    qmp.execute(
        "migrate-incoming",
        Some(serde_json::json!({"uri": "file:/dev/fdset/1"})),
        step(),
    )?;
    qmp.wait_migration(step(), b.stop)?;
    qmp.execute("cont", None, step())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let entropy = snapshot::host_entropy().map_err(|e| unusable("reading host entropy", &e))?;
    request_done(
        b,
        &mut vm,
        &Request::Resume {
            secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            nanos: now.subsec_nanos(),
            entropy,
        },
    )?;
    vm.set_daemon_info(found.info());
    Ok((vm, qmp))
}

/// Sends `req` and waits (10 s at most) for its `Done`.
fn request_done(b: &Boot<'_>, vm: &mut Vm, req: &Request) -> Result<(), RestoreError> {
    vm.send(req).map_err(|e| match e {
        e @ (LaunchError::Timeout { .. } | LaunchError::Interrupted { .. }) => {
            RestoreError::Fatal(e)
        }
        e => RestoreError::Unusable(e.to_string()),
    })?;
    match vm.next_reply(b.rx, Some(b.within(Duration::from_secs(10)))) {
        Ok(Reply::Done) => Ok(()),
        Ok(Reply::Error { message }) => Err(RestoreError::Unusable(guest_text(&message))),
        Ok(other) => Err(RestoreError::Unusable(format!(
            "the daemon answered with {}",
            describe(&other)
        ))),
        Err(WaitError::Signal(signal)) => {
            Err(RestoreError::Fatal(LaunchError::Interrupted { signal }))
        }
        Err(WaitError::Deadline) if b.stop.check().is_err() => {
            Err(RestoreError::Fatal(halted(b.stop, stop::Halt::Deadline)))
        }
        Err(e) => Err(RestoreError::Unusable(format!(
            "the daemon did not answer ({e:?})"
        ))),
    }
}

/// Hot-plugs the added disks in order, each through its inherited
/// descriptor, waiting for the guest to see one before adding the next so
/// that they are `/dev/vdb`, `/dev/vdc`, ... as on a cold boot.
fn hotplug(
    b: &Boot<'_>,
    vm: &mut Vm,
    qmp: &mut qmp::Qmp,
    disks: &[Disk],
) -> Result<(), LaunchError> {
    for (i, disk) in disks.iter().enumerate() {
        let set = DISK_FDSET + u32::try_from(i).unwrap_or(u32::MAX - DISK_FDSET);
        let node = format!("disk{i}");
        let file = serde_json::json!({
            "driver": "file",
            "filename": format!("/dev/fdset/{set}"),
            "read-only": disk.readonly,
        });
        let mut blockdev = serde_json::json!({
            "driver": disk.format.name(),
            "node-name": node,
            "read-only": disk.readonly,
            "file": file,
        });
        if disk.format == DiskFormat::Qcow2 {
            blockdev["backing"] = serde_json::Value::Null;
        }
        let failed = |e: &dyn std::fmt::Display, vm: &Vm| LaunchError::BootFailed {
            reason: format!("adding disk {}: {e}", disk.path.display()),
            console: vm.console_tail(),
        };
        let step = b.within(Duration::from_secs(30));
        qmp.execute("blockdev-add", Some(blockdev), step)
            .map_err(|e| failed(&e, vm))?;
        qmp.execute(
            "device_add",
            Some(serde_json::json!({"driver": "virtio-blk-pci", "id": format!("vdisk{i}"), "drive": node})),
            step,
        )
        .map_err(|e| failed(&e, vm))?;
        let count = u32::try_from(i + 2).unwrap_or(u32::MAX);
        match request_done(b, vm, &Request::AwaitDisks { count }) {
            Ok(()) => {}
            Err(RestoreError::Fatal(e)) => return Err(e),
            Err(RestoreError::Unusable(why)) => return Err(failed(&why, vm)),
        }
        b.log(format_args!("disk {} attached", disk.path.display()));
    }
    Ok(())
}

/// A host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The host directory.
    pub host: PathBuf,
    /// Where it is mounted in the guest.
    pub guest: PathBuf,
    /// The guest may write (the one place where it can change host files).
    pub writable: bool,
}

/// Why a user other than the owner (qemu after it dropped root) could not
/// read (or, when `write`, write) `dir`: the first directory on its path
/// that others may not search, or `dir` itself lacking the permission.
pub fn unreachable_by_others(dir: &Path, write: bool) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut at = PathBuf::from("/");
    for part in dir.components().skip(1) {
        let mode = std::fs::metadata(&at).ok()?.permissions().mode();
        if mode & 0o001 == 0 {
            return Some(format!("{} is mode {:04o}", at.display(), mode & 0o7777));
        }
        at.push(part);
    }
    let mode = std::fs::metadata(dir).ok()?.permissions().mode();
    let need = if write { 0o007 } else { 0o005 };
    (mode & need != need).then(|| format!("{} is mode {:04o}", dir.display(), mode & 0o7777))
}

/// Parses `--share HOST[:GUEST][:rw]`: `GUEST` defaults to `HOST`'s path.
pub fn parse_share_spec(spec: &OsStr) -> Result<Share, String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = spec.as_bytes();
    let (mut body, writable) = match bytes.strip_suffix(b":rw") {
        Some(b) => (b, true),
        None => (bytes.strip_suffix(b":ro").unwrap_or(bytes), false),
    };
    let mut guest = None;
    // HOST:GUEST, where GUEST is absolute: split at the last ":/".
    if let Some(i) = body.windows(2).rposition(|w| w == b":/") {
        guest = Some(PathBuf::from(OsStr::from_bytes(&body[i + 1..])));
        body = &body[..i];
    }
    if body.is_empty() {
        return Err(format!("{}: no host directory", spec.to_string_lossy()));
    }
    let host = PathBuf::from(OsStr::from_bytes(body));
    let host = std::fs::canonicalize(&host).map_err(|e| format!("{}: {e}", host.display()))?;
    if !host.is_dir() {
        return Err(format!("{} is not a directory", host.display()));
    }
    let guest = guest.unwrap_or_else(|| host.clone());
    if !guest.is_absolute() || guest == Path::new("/") {
        return Err(format!(
            "{}: the guest directory must be absolute and not /",
            spec.to_string_lossy()
        ));
    }
    Ok(Share {
        host,
        guest,
        writable,
    })
}

/// Parses `--add`'s `PATH[:ro][:format=raw|qcow2][:allow-backing]`: options
/// are peeled off the end while they are ones we know, so a path may itself
/// contain colons.
pub fn parse_disk_spec(spec: &str) -> Result<Disk, String> {
    let mut path = spec;
    let mut readonly = false;
    let mut format = None;
    let mut allow_backing = false;
    while let Some((rest, last)) = path.rsplit_once(':') {
        match last {
            "ro" => readonly = true,
            "allow-backing" => allow_backing = true,
            _ => match last.strip_prefix("format=") {
                Some(name) if format.is_none() => format = Some(name.parse::<DiskFormat>()?),
                Some(_) => return Err(format!("{spec}: format= given twice")),
                None => break,
            },
        }
        path = rest;
    }
    if path.is_empty() {
        return Err(format!("{spec}: no disk path"));
    }
    let format = format.unwrap_or(DiskFormat::Raw);
    if allow_backing && format != DiskFormat::Qcow2 {
        return Err(format!("{spec}: allow-backing goes with format=qcow2"));
    }
    Ok(Disk {
        path: PathBuf::from(path),
        readonly,
        format,
        allow_backing,
    })
}

/// Checks a disk before qemu sees it, on the one descriptor qemu will get
/// (`/dev/fdset/N`): a path checked and then reopened by name could be
/// swapped in between for an image that names another file. A qcow2's
/// header is read for the host files it would make qemu open (refused unless
/// allowed); a raw disk that looks like qcow2 is pointed out.
fn check_disk(disk: &Disk, notice: fn(&Notice)) -> Result<(Disk, File), LaunchError> {
    let io_err = |source| LaunchError::Disk {
        path: disk.path.clone(),
        source,
    };
    let refused = |why: String| LaunchError::DiskRefused {
        path: disk.path.clone(),
        why,
    };
    let path = absolute(&disk.path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!disk.readonly)
        .open(&path)
        .map_err(io_err)?;
    match disk.format {
        DiskFormat::Raw => {
            if qemu::looks_like_qcow2_in(&file).map_err(io_err)? {
                notice(&Notice::RawLooksLikeQcow2 {
                    path: disk.path.clone(),
                });
            }
        }
        DiskFormat::Qcow2 => {
            let refs = qemu::read_qcow2_refs_in(&file)
                .map_err(io_err)?
                .ok_or_else(|| {
                    refused("format=qcow2 was named but it is not a qcow2 image".into())
                })?;
            if refs.external_data_file {
                return Err(refused(
                    "it keeps its data in an external data file, which a disk image could point at any host file; convert it with `qemu-img convert -O qcow2` first".into(),
                ));
            }
            if let (Some(backing), false) = (&refs.backing_file, disk.allow_backing) {
                return Err(refused(format!(
                    "it names the backing file {:?}, which a disk image could point at any host file; add :allow-backing if you trust it",
                    vm::printable(backing)
                )));
            }
        }
    }
    Ok((
        Disk {
            path,
            ..disk.clone()
        },
        file,
    ))
}

/// Boots the appliance, runs `opts.argv` in it, and returns the command's
/// exit status (128+N when a signal killed it).
///
/// With `opts.copy_in`, the copies are made before the command; with
/// `opts.copy_out`, after it, whether it succeeded, failed or could not be
/// started (not after a timeout, a signal or a VM that died).
pub fn run(opts: &RunOptions) -> Result<i32, LaunchError> {
    if opts.argv.is_empty() && opts.interactive.is_none() {
        return Err(LaunchError::NoCommand);
    }
    if opts.interactive.is_some() && !terminal::stdin_is_terminal() {
        return Err(LaunchError::NotATerminal);
    }
    let mut session = Session::boot(opts)?;
    for c in &opts.copy_in {
        session
            .copy_in(&c.host, &c.guest_dir)
            .map_err(|e| LaunchError::Copy {
                what: format!("--copy-in {}:{}", c.host.display(), c.guest_dir.display()),
                source: Box::new(e),
            })?;
    }
    let mut env = opts.command_env.clone();
    let argv = match &opts.interactive {
        Some(i) => {
            if let Some(term) = &i.term {
                env.insert(0, ("TERM".into(), term.clone()));
            }
            if opts.argv.is_empty() {
                login_shell()
            } else {
                opts.argv.clone()
            }
        }
        None => opts.argv.clone(),
    };
    let req = ExecRequest {
        argv,
        env,
        cwd: opts.cwd.clone(),
        stdin: opts.stdin || opts.interactive.is_some(),
        pty: None,
    };
    let result = match &opts.interactive {
        Some(_) => session.interactive(req),
        None => session.exec_request(req),
    };
    match &result {
        Ok(_) | Err(LaunchError::CommandNotStarted { .. }) => {}
        Err(_) => return result.map(ExitStatus::shell_code),
    }
    for c in &opts.copy_out {
        session
            .copy_out(&c.guest, &c.host_dir, opts.copy_out_limit)
            .map_err(|e| LaunchError::Copy {
                what: format!("--copy-out {}:{}", c.guest.display(), c.host_dir.display()),
                source: Box::new(e),
            })?;
    }
    session.shutdown();
    result.map(ExitStatus::shell_code)
}

/// A booted appliance whose daemon has answered: run commands, copy files
/// in and out, then [`Session::shutdown`]. Dropping it instead kills the VM;
/// either way qemu and its scratch directory are gone afterwards. While it
/// lives, SIGINT/SIGTERM/SIGHUP end its waits with
/// [`LaunchError::Interrupted`] instead of killing the process.
pub struct Session {
    // Declared first so that it is dropped (qemu killed) first.
    vm: Vm,
    // Then the virtiofsd processes serving its shares (killed and reaped).
    _virtiofs: Option<virtiofs::Set>,
    share_fs: ShareFs,
    rx: mpsc::Receiver<Event>,
    _signals: signals::Guard,
    stop: Arc<stop::Stop>,
    start: Instant,
    verbose: bool,
}

impl Session {
    /// Boots `opts.appliance` with `opts`' accelerator, memory, CPUs and
    /// disks, and waits for the daemon. `opts.timeout` bounds the whole
    /// session, boot included; `opts.argv` and `opts.stdin` are not used.
    pub fn boot(opts: &RunOptions) -> Result<Session, LaunchError> {
        let start = Instant::now();
        let appliance = Appliance::open(&opts.appliance)?;
        // Each disk reaches qemu as the descriptor it was checked on; the
        // files stay open until every qemu of this boot has started.
        let mut disks = Vec::with_capacity(opts.disks.len());
        let mut disk_files = Vec::with_capacity(opts.disks.len());
        for (i, disk) in opts.disks.iter().enumerate() {
            let (checked, file) = check_disk(disk, opts.on_notice)?;
            let set = DISK_FDSET + u32::try_from(i).unwrap_or(u32::MAX - DISK_FDSET);
            disks.push(Disk {
                path: PathBuf::from(format!("/dev/fdset/{set}")),
                ..checked
            });
            disk_files.push((file, set));
        }
        let deadline = opts.timeout.map(|t| start + t);
        let log = |what: std::fmt::Arguments<'_>| {
            if opts.verbose {
                eprintln!(
                    "supermin: run: [{:>6.3}s] {what}",
                    start.elapsed().as_secs_f64()
                );
            }
        };

        // Bounded: a guest that sends faster than the run consumes is held
        // up (see vm.rs), never buffered without limit.
        let (tx, rx) = mpsc::sync_channel(EVENT_QUEUE);
        let stop = Arc::new(stop::Stop::new(start, opts.timeout));
        let signals = signals::Guard::install(tx.clone(), Arc::clone(&stop)).map_err(|source| {
            LaunchError::Setup {
                what: "signal handlers",
                source,
            }
        })?;

        let qemu = qemu::QemuBinary::find(opts.env.path.as_deref()).map_err(|source| {
            LaunchError::QemuSpawn {
                program: qemu::QEMU.to_string(),
                source,
            }
        })?;
        log(format_args!("{} ({})", qemu.path.display(), qemu.version));
        let mut virtiofsd = share_transport(opts, &log)?;
        let mut sandbox = virtiofs::Sandbox::Namespace;
        let mut virtiofs_set = None;
        if let Some(v) = &virtiofsd {
            match start_virtiofs(opts, v, sandbox, &stop, &log) {
                Ok(set) => virtiofs_set = Some(set),
                Err(VirtiofsStart::Failed(e)) => return Err(e),
                Err(VirtiofsStart::NoSandbox(why))
                    if opts.share_transport == ShareTransport::Auto =>
                {
                    log(format_args!(
                        "shares over 9p: virtiofsd cannot make its namespace sandbox here ({why}), and without one a guest could reach files outside the share"
                    ));
                    virtiofsd = None;
                }
                Err(VirtiofsStart::NoSandbox(why)) => {
                    (opts.on_notice)(&Notice::VirtiofsWithoutSandbox { reason: why });
                    sandbox = virtiofs::Sandbox::None;
                    virtiofs_set = Some(start_virtiofs(opts, v, sandbox, &stop, &log).map_err(
                        |e| match e {
                            VirtiofsStart::Failed(e) => e,
                            VirtiofsStart::NoSandbox(why) => {
                                LaunchError::VirtiofsRefused { reason: why }
                            }
                        },
                    )?);
                }
            }
        }
        let share_fs = match virtiofsd {
            Some(_) => ShareFs::Virtiofs,
            None => ShareFs::NineP,
        };
        // A new set after a failed KVM attempt, in the sandbox the first one got.
        let spawn_virtiofs = || -> Result<Option<virtiofs::Set>, LaunchError> {
            match &virtiofsd {
                Some(v) => start_virtiofs(opts, v, sandbox, &stop, &log)
                    .map(Some)
                    .map_err(|e| match e {
                        VirtiofsStart::Failed(e) => e,
                        VirtiofsStart::NoSandbox(why) => {
                            LaunchError::VirtiofsRefused { reason: why }
                        }
                    }),
                None => Ok(None),
            }
        };
        let plan = |accel: qemu::VmAccel, virtiofs: &Option<virtiofs::Set>| qemu::Plan {
            qemu: qemu.clone(),
            run_as: opts.qemu_user.clone(),
            kernel: appliance.kernel.clone(),
            initrd: appliance.initrd.clone(),
            root: appliance.root.clone(),
            // The kernel command line is part of a saved machine: with saved machines
            // on, -v keeps the quiet one, so that -v runs restore the same machine as
            // the others (`--cold -v` shows the whole boot).
            cmdline: qemu::kernel_cmdline(
                &appliance.root_uuid,
                opts.verbose && (opts.cold || opts.saved_machines.is_none()),
                accel,
                opts.cpus.max(1),
            ),
            disks: disks.clone(),
            accel,
            memory_mib: opts.memory_mib.max(128),
            cpus: opts.cpus.max(1),
            root_overlay: None,
            qmp: false,
            incoming: false,
            never_saved: false,
            fdsets: disk_files
                .iter()
                .map(|(f, set)| (std::os::fd::AsRawFd::as_raw_fd(f), *set))
                .collect(),
            shares: match share_fs {
                ShareFs::NineP => opts
                    .shares
                    .iter()
                    .map(|s| (s.host.clone(), s.writable))
                    .collect(),
                ShareFs::Virtiofs => Vec::new(),
            },
            shared_memory: share_fs == ShareFs::Virtiofs,
            virtiofs: virtiofs
                .as_ref()
                .map(virtiofs::Set::fds)
                .unwrap_or_default(),
        };

        let verdict_file = accel::verdict_file(opts.env.runtime_dir.as_deref(), &opts.env.tmp_dir);
        let verdict_key = supermin_cache::current_boot_id().map(|boot_id| accel::VerdictKey {
            boot_id,
            qemu: qemu.identity.clone(),
        });
        // Best effort: a file we cannot remove is not ours (another user's,
        // in a shared directory), and a verdict not ours is never read.
        let recheck = opts.recheck_kvm;
        if recheck {
            if let Err(e) = accel::forget(&verdict_file) {
                log(format_args!("cannot forget the KVM verdict: {e}"));
            }
        }
        let try_kvm = match opts.accel {
            Accel::Tcg => false,
            Accel::Kvm => {
                accel::kvm_usable().map_err(|reason| LaunchError::KvmUnavailable { reason })?;
                true
            }
            Accel::Auto => match accel::kvm_usable() {
                Err(reason) => {
                    log(format_args!("KVM not usable ({reason}): using TCG"));
                    false
                }
                Ok(()) => match verdict_key
                    .as_ref()
                    .filter(|_| !recheck)
                    .and_then(|k| accel::recorded_failure(&verdict_file, k))
                {
                    Some(reason) => {
                        log(format_args!(
                            "KVM failed earlier in this host boot with this qemu ({reason}): using TCG ({} --recheck-kvm tries again)",
                            "supermin run"
                        ));
                        false
                    }
                    None => true,
                },
            },
        };

        let mut generation = 0u64;
        let mut vm = None;
        if try_kvm {
            log(format_args!(
                "booting {} with KVM",
                appliance.kernel.display()
            ));
            let mut kvm_vm = Vm::start(
                &plan(qemu::VmAccel::Kvm, &virtiofs_set),
                &opts.env.tmp_dir,
                generation,
                tx.clone(),
                Arc::clone(&stop),
                opts.verbose,
            )?;
            let boot_deadline = earliest(deadline, Some(Instant::now() + BOOT_TIMEOUT));
            let probed = probe_kvm(&mut kvm_vm, &rx, boot_deadline, &stop)
                .map_err(|e| unless_stopped(&stop, e))?;
            match probed {
                None => vm = Some(kvm_vm),
                Some(reason) if opts.accel == Accel::Auto => {
                    drop(kvm_vm);
                    // Each virtiofsd served the dead qemu and has ended with it.
                    drop(virtiofs_set.take());
                    virtiofs_set = spawn_virtiofs().map_err(|e| unless_stopped(&stop, e))?;
                    (opts.on_notice)(&Notice::KvmFallback {
                        reason: reason.clone(),
                    });
                    if let Some(key) = &verdict_key {
                        accel::record_failure(&verdict_file, key, &reason);
                    }
                    generation += 1;
                }
                Some(reason) => return Err(LaunchError::KvmFailed { reason }),
            }
        }
        let vm = match vm {
            Some(vm) => vm,
            None => {
                let tcg = plan(qemu::VmAccel::Tcg, &virtiofs_set);
                let b = Boot {
                    opts,
                    tx: &tx,
                    rx: &rx,
                    stop: &stop,
                    start,
                };
                let saved = saved_machines(&b, &tcg);
                // A monitor command cut short by the stop is the stop, not a failed boot.
                boot_tcg(&b, tcg, saved, generation).map_err(|e| unless_stopped(&stop, e))?
            }
        };
        let session = Session {
            vm,
            _virtiofs: virtiofs_set,
            share_fs,
            rx,
            _signals: signals,
            stop,
            start,
            verbose: opts.verbose,
        };
        session.log(format_args!(
            "appliance ready: {}",
            vm::printable(session.vm.daemon_info().as_bytes())
        ));
        let mut session = session;
        for (i, share) in opts.shares.iter().enumerate() {
            session.mount(i, share)?;
        }
        Ok(session)
    }

    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.verbose {
            eprintln!(
                "supermin: run: [{:>6.3}s] {what}",
                self.start.elapsed().as_secs_f64()
            );
        }
    }

    /// Mounts share `i` (the `i`th 9p device) in the guest.
    fn mount(&mut self, i: usize, share: &Share) -> Result<(), LaunchError> {
        self.vm.send(&Request::Mount {
            tag: qemu::share_tag(i),
            target: share.guest.as_os_str().to_os_string(),
            readonly: !share.writable,
            fs: self.share_fs,
        })?;
        match self.next_reply()? {
            Reply::Done => {
                self.log(format_args!(
                    "{} shared at {}{} over {}",
                    share.host.display(),
                    share.guest.display(),
                    if share.writable { " (read-write)" } else { "" },
                    match self.share_fs {
                        ShareFs::NineP => "9p",
                        ShareFs::Virtiofs => "virtiofs",
                    }
                ));
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// The daemon's self-description (its version and the guest kernel's).
    pub fn daemon_info(&self) -> &str {
        self.vm.daemon_info()
    }

    /// The next reply, with every other way a wait can end made an error.
    fn next_reply(&mut self) -> Result<Reply, LaunchError> {
        let result = self.vm.next_reply(&self.rx, self.stop.deadline());
        result.map_err(|e| self.wait_error(e))
    }

    /// Like [`Session::next_reply`], but `Ok(None)` at `tick` (before the
    /// run's deadline), for waits that have something else to look at.
    fn next_reply_by(&mut self, tick: Instant) -> Result<Option<Reply>, LaunchError> {
        let deadline = self.stop.deadline();
        match self.vm.next_reply(&self.rx, earliest(deadline, Some(tick))) {
            Ok(r) => Ok(Some(r)),
            Err(WaitError::Deadline) if deadline.is_none_or(|d| Instant::now() < d) => Ok(None),
            Err(e) => Err(self.wait_error(e)),
        }
    }

    fn wait_error(&mut self, e: WaitError) -> LaunchError {
        match e {
            WaitError::Deadline => halted(&self.stop, stop::Halt::Deadline),
            WaitError::Signal(signal) => halted(&self.stop, stop::Halt::Signal(signal)),
            WaitError::Closed(None) => {
                self.vm.stop();
                // qemu killed with us by a signal to our whole group.
                unless_stopped(
                    &self.stop,
                    LaunchError::VmDied {
                        console: self.vm.console_tail(),
                    },
                )
            }
            WaitError::Closed(Some(source)) => LaunchError::Protocol { source },
            WaitError::Launch(e) => e,
        }
    }

    /// Runs `argv` in the appliance with our stdout and stderr as its own
    /// (and our stdin when `stdin`); returns how it ended.
    pub fn exec(&mut self, argv: &[OsString], stdin: bool) -> Result<ExitStatus, LaunchError> {
        self.exec_request(ExecRequest {
            argv: argv.to_vec(),
            stdin,
            ..ExecRequest::default()
        })
    }

    /// Runs `req` (its environment and working directory; not on a
    /// terminal: see [`Session::interactive`]) like [`Session::exec`].
    pub fn exec_request(&mut self, mut req: ExecRequest) -> Result<ExitStatus, LaunchError> {
        if req.argv.is_empty() {
            return Err(LaunchError::NoCommand);
        }
        req.pty = None;
        self.log(format_args!("exec {:?}", req.argv));
        let stdin = req.stdin;
        self.vm.send(&Request::Exec(req))?;
        let stop_stdin = Arc::new(AtomicBool::new(false));
        if stdin {
            pump_stdin(self.vm.writer(), stop_stdin.clone());
        }
        let result = self.relay();
        stop_stdin.store(true, Ordering::SeqCst);
        if let Ok(status) = &result {
            self.log(format_args!("command ended: {status:?}"));
        }
        result
    }

    fn relay(&mut self) -> Result<ExitStatus, LaunchError> {
        use std::os::fd::AsFd;
        loop {
            let (data, out, name) = match self.next_reply()? {
                Reply::Stdout(data) => (data, io::stdout().as_fd().try_clone_to_owned(), "stdout"),
                Reply::Stderr(data) => (data, io::stderr().as_fd().try_clone_to_owned(), "stderr"),
                Reply::Exit(status) => return Ok(status),
                Reply::ExecFailed { message } => {
                    return Err(LaunchError::CommandNotStarted {
                        message: guest_text(&message),
                    })
                }
                other => return Err(unexpected(other)),
            };
            let out = out.map_err(|source| LaunchError::Setup {
                what: "our standard output",
                source,
            })?;
            // A stalled reader holds the guest up (we stop reading it) but
            // never the run past its deadline or a signal. A reader that went
            // away (`yes | head -1`) ends the command as a local pipeline
            // would: by SIGPIPE (the caller then shuts the VM down).
            match stop::write_all(out.as_fd(), &data, &self.stop) {
                Ok(()) => {}
                Err(stop::WriteError::Halt(halt)) => return Err(halted(&self.stop, halt)),
                Err(stop::WriteError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return Ok(ExitStatus::Signal(SIGPIPE))
                }
                Err(stop::WriteError::Io(source)) => {
                    return Err(LaunchError::LocalFile {
                        path: PathBuf::from(format!("(our {name})")),
                        source,
                    })
                }
            }
        }
    }

    /// Copies the local file `local` to `remote` in the appliance, created
    /// (or truncated) with permission bits `mode`.
    pub fn upload(&mut self, local: &Path, remote: &Path, mode: u32) -> Result<(), LaunchError> {
        let local_err = |source| LaunchError::LocalFile {
            path: local.to_path_buf(),
            source,
        };
        let mut file = File::open(local).map_err(local_err)?;
        self.log(format_args!(
            "upload {} -> {}",
            local.display(),
            remote.display()
        ));
        self.vm.send(&Request::Upload {
            path: remote.as_os_str().to_os_string(),
            mode,
        })?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match file.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // End the upload so the daemon stays in step, then report.
                    self.vm.send(&Request::FileEnd)?;
                    let _ = self.next_reply();
                    return Err(local_err(e));
                }
            };
            if n == 0 {
                break;
            }
            self.vm.send(&Request::FileData(buf[..n].to_vec()))?;
        }
        self.vm.send(&Request::FileEnd)?;
        match self.next_reply()? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Copies `remote` from the appliance to the local file `local`, which
    /// appears whole or not at all: the data goes to a private temporary
    /// file beside it, renamed into place at the end and removed on any
    /// error. More than `max_bytes` from the guest is an error, after which
    /// the VM is stopped (the guest would still be sending).
    pub fn download(
        &mut self,
        remote: &Path,
        local: &Path,
        max_bytes: u64,
    ) -> Result<(), LaunchError> {
        self.log(format_args!(
            "download {} -> {}",
            remote.display(),
            local.display()
        ));
        let partial = Partial::create(local)?;
        self.vm.send(&Request::Download {
            path: remote.as_os_str().to_os_string(),
        })?;
        let mut received = 0u64;
        let mut file = &partial.file;
        loop {
            match self.next_reply()? {
                Reply::FileData(data) => {
                    received = received.saturating_add(data.len() as u64);
                    if received > max_bytes {
                        self.vm.stop();
                        return Err(LaunchError::DownloadTooLarge {
                            remote: remote.to_path_buf(),
                            limit: max_bytes,
                        });
                    }
                    file.write_all(&data)
                        .map_err(|source| LaunchError::LocalFile {
                            path: local.to_path_buf(),
                            source,
                        })?;
                }
                Reply::FileEnd => break,
                other => return Err(unexpected(other)),
            }
        }
        partial.commit(local)
    }

    /// Asks the appliance to sync its disks and power off; waits a bounded
    /// time for qemu to exit, then kills it.
    pub fn shutdown(mut self) {
        self.log(format_args!("shutting down"));
        self.vm
            .shutdown(&self.rx, Instant::now() + SHUTDOWN_TIMEOUT);
        self.log(format_args!("done"));
    }
}

/// A download's temporary file beside its destination; removed unless committed.
struct Partial {
    file: File,
    path: PathBuf,
    committed: bool,
}

impl Partial {
    fn create(local: &Path) -> Result<Partial, LaunchError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| LaunchError::LocalFile {
            path: local.to_path_buf(),
            source,
        };
        let name = local
            .file_name()
            .ok_or_else(|| err(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".partial-{}", std::process::id()));
        let path = local.with_file_name(tmp_name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        Ok(Partial {
            file,
            path,
            committed: false,
        })
    }

    fn commit(mut self, local: &Path) -> Result<(), LaunchError> {
        std::fs::rename(&self.path, local).map_err(|source| LaunchError::LocalFile {
            path: local.to_path_buf(),
            source,
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `e`, unless the run was stopped first (its deadline passed, a signal
/// came): then that is the error, whatever step noticed it (a monitor
/// command cut short, qemu killed with us by a signal to our whole group).
fn unless_stopped(stop: &stop::Stop, e: LaunchError) -> LaunchError {
    match stop.check() {
        Err(halt) => halted(stop, halt),
        Ok(()) => e,
    }
}

/// The error a halted wait ends the run with.
fn halted(stop: &stop::Stop, halt: stop::Halt) -> LaunchError {
    match halt {
        stop::Halt::Deadline => LaunchError::Timeout {
            after: stop.timeout().unwrap_or_default(),
        },
        stop::Halt::Signal(signal) => LaunchError::Interrupted { signal },
    }
}

/// Text from the guest made safe for a terminal: no control sequences, one
/// line, bounded.
fn guest_text(text: &str) -> String {
    let mut out = vm::printable(text.replace(['\n', '\r'], " ").as_bytes());
    if out.len() > MAX_GUEST_TEXT {
        let mut end = MAX_GUEST_TEXT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str(" [...]");
    }
    out
}

/// The error a reply that does not belong where it came ends a request with:
/// the daemon's own error (its text made safe), or an unexpected reply named
/// by kind and size.
fn unexpected(reply: Reply) -> LaunchError {
    match reply {
        Reply::Error { message } => LaunchError::Daemon {
            message: guest_text(&message),
        },
        other => LaunchError::Unexpected {
            got: describe(&other),
        },
    }
}

/// A reply named for an error message: kind and size, never its bytes.
fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Hello(h) => format!("hello (version {})", h.version),
        Reply::Stdout(d) => format!("stdout chunk ({} bytes)", d.len()),
        Reply::Stderr(d) => format!("stderr chunk ({} bytes)", d.len()),
        Reply::Exit(status) => format!("exit status ({status:?})"),
        Reply::ExecFailed { message } => format!("exec failure ({})", guest_text(message)),
        Reply::FileData(d) => format!("file data ({} bytes)", d.len()),
        Reply::FileEnd => "end of file".into(),
        Reply::Done => "done".into(),
        Reply::Error { message } => format!("error ({})", guest_text(message)),
        Reply::Entries(e) => format!("directory entries ({})", e.len()),
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Waits for a KVM guest's hello. `Ok(None)`: it answered. `Ok(Some(why))`:
/// KVM failed before the daemon answered (qemu exited or was killed, qemu
/// reported a KVM error, or the guest printed nothing for
/// [`KVM_SILENCE`]); the caller falls back to TCG or reports `why`. A guest
/// that keeps printing is booting, not hung, and gets until `boot_deadline`.
/// The user's `--timeout`, signals and protocol errors end the run as usual.
fn probe_kvm(
    vm: &mut Vm,
    rx: &mpsc::Receiver<Event>,
    boot_deadline: Option<Instant>,
    stop: &stop::Stop,
) -> Result<Option<String>, LaunchError> {
    let mut printed = vm.guest_console_bytes();
    let mut quiet_since = Instant::now();
    loop {
        let tick = Instant::now() + Duration::from_millis(100);
        match vm.wait_hello(rx, earliest(boot_deadline, Some(tick))) {
            Ok(()) => return Ok(None),
            Err(WaitError::Deadline) => {
                let now = Instant::now();
                if boot_deadline.is_some_and(|d| now >= d) {
                    // The run's own deadline, not only the boot's.
                    if let Err(halt) = stop.check() {
                        return Err(halted(stop, halt));
                    }
                    return Ok(Some(format!(
                        "the guest did not answer within {BOOT_TIMEOUT:?}"
                    )));
                }
                if let Some(line) = vm.kvm_failure() {
                    return Ok(Some(format!("qemu reported: {line}")));
                }
                let now_printed = vm.guest_console_bytes();
                if now_printed != printed {
                    printed = now_printed;
                    quiet_since = now;
                } else if now.duration_since(quiet_since) >= KVM_SILENCE {
                    return Ok(Some(if printed == 0 {
                        format!("the guest printed nothing within {KVM_SILENCE:?} (it hangs)")
                    } else {
                        format!("the guest stopped printing for {KVM_SILENCE:?} before its daemon answered (it hangs)")
                    }));
                }
            }
            Err(WaitError::Closed(None)) => {
                let how = vm.exit_description();
                // qemu killed with us (a signal to our whole group) is no
                // verdict on KVM.
                if let Err(halt) = stop.check() {
                    return Err(halted(stop, halt));
                }
                let said = vm.first_qemu_line().or_else(|| vm.kvm_failure());
                return Ok(Some(match said {
                    Some(line) => format!("{how}: {line}"),
                    None => how,
                }));
            }
            Err(e) => return Err(boot_error(e, vm, stop)),
        }
    }
}

fn boot_error(e: WaitError, vm: &mut Vm, stop: &stop::Stop) -> LaunchError {
    match e {
        // The run's own deadline, not the boot's (BOOT_TIMEOUT may come first).
        WaitError::Deadline => match stop.check() {
            Err(halt) => halted(stop, halt),
            Ok(()) => {
                vm.stop();
                LaunchError::BootFailed {
                    reason: format!("no answer from the daemon within {BOOT_TIMEOUT:?}"),
                    console: vm.console_tail(),
                }
            }
        },
        WaitError::Signal(signal) => LaunchError::Interrupted { signal },
        WaitError::Closed(None) => {
            let reason = vm.exit_description();
            LaunchError::BootFailed {
                reason,
                console: vm.console_tail(),
            }
        }
        WaitError::Closed(Some(source)) => LaunchError::Protocol { source },
        WaitError::Launch(e) => e,
    }
}

/// Copies our stdin to the command from a thread of its own, so that a
/// command which never reads does not stall its output. The thread may stay
/// blocked in `read` after the run; it sends nothing once `stop` is set, and
/// a send the guest does not take is abandoned then (or on the run's
/// deadline or a signal).
fn pump_stdin(writer: vm::Writer, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let msg = match stdin.read(&mut buf) {
                Ok(0) => Request::StdinEof,
                Ok(n) => Request::Stdin(buf[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An unreadable stdin is an empty one for the command.
                Err(_) => Request::StdinEof,
            };
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let last = msg == Request::StdinEof;
            if writer.send(&msg, Some(&stop)).is_err() || last {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("supermin-launcher-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn fake_superblock(uuid: [u8; 16]) -> Vec<u8> {
        let mut img = vec![0u8; 4096];
        img[1024 + 0x38] = 0x53;
        img[1024 + 0x39] = 0xef;
        img[1024 + 0x68..1024 + 0x78].copy_from_slice(&uuid);
        img
    }

    #[test]
    fn root_uuid_is_read_from_the_superblock_in_canonical_form() {
        let d = scratch("uuid");
        let uuid = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        std::fs::write(d.join("root"), fake_superblock(uuid)).unwrap();
        assert_eq!(
            read_ext2_uuid(&d.join("root")).unwrap(),
            "12345678-9abc-def0-0123-456789abcdef"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_image_without_ext2_magic_is_refused() {
        let d = scratch("nomagic");
        std::fs::write(d.join("root"), vec![0u8; 4096]).unwrap();
        std::fs::write(d.join("short"), vec![0u8; 100]).unwrap();
        assert!(matches!(read_ext2_uuid(&d.join("root")), Err(None)));
        assert!(matches!(read_ext2_uuid(&d.join("short")), Err(None)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn appliance_prefers_vmlinux_and_names_what_is_missing() {
        let d = scratch("appliance");
        std::fs::write(d.join("kernel"), b"bz").unwrap();
        std::fs::write(d.join("root"), fake_superblock([7; 16])).unwrap();
        match Appliance::open(&d) {
            Err(LaunchError::ApplianceIncomplete { file: "initrd", .. }) => {}
            other => panic!("{other:?}"),
        }
        std::fs::write(d.join("initrd"), b"cpio").unwrap();
        let a = Appliance::open(&d).unwrap();
        assert!(a.kernel.ends_with("kernel"));
        std::fs::write(d.join("vmlinux"), b"elf").unwrap();
        let a = Appliance::open(&d).unwrap();
        assert!(a.kernel.ends_with("vmlinux"));
        assert_eq!(a.root_uuid, "07070707-0707-0707-0707-070707070707");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn disk_specs_name_path_mode_and_format_and_raw_is_the_default() {
        let d = parse_disk_spec("a.img").unwrap();
        assert_eq!(
            (d.path.to_str(), d.readonly, d.format),
            (Some("a.img"), false, DiskFormat::Raw)
        );
        let d = parse_disk_spec("/x:y/b.qcow2:format=qcow2:ro").unwrap();
        assert_eq!(d.path, PathBuf::from("/x:y/b.qcow2"));
        assert!(d.readonly && d.format == DiskFormat::Qcow2 && !d.allow_backing);
        let d = parse_disk_spec("c.qcow2:ro:format=qcow2:allow-backing").unwrap();
        assert!(d.readonly && d.allow_backing && d.format == DiskFormat::Qcow2);
        assert!(parse_disk_spec("c.img:format=vmdk").is_err());
        assert!(parse_disk_spec("c.img:allow-backing").is_err());
        assert!(parse_disk_spec(":ro").is_err());
        assert!(parse_disk_spec("c:format=raw:format=qcow2").is_err());
    }

    #[test]
    fn copy_specs_split_at_the_last_colon() {
        assert_eq!(
            parse_copy_spec("/a:b/c:/d").unwrap(),
            (PathBuf::from("/a:b/c"), PathBuf::from("/d"))
        );
        assert!(parse_copy_spec("nocolon").is_err());
        assert!(parse_copy_spec(":/d").is_err());
        assert!(parse_copy_spec("/a:").is_err());
    }

    #[test]
    fn accel_names_parse_and_others_are_refused() {
        assert_eq!("auto".parse::<Accel>().unwrap(), Accel::Auto);
        assert_eq!("kvm".parse::<Accel>().unwrap(), Accel::Kvm);
        assert_eq!("tcg".parse::<Accel>().unwrap(), Accel::Tcg);
        assert!("xen".parse::<Accel>().is_err());
    }

    #[test]
    fn accel_comes_from_the_flag_then_the_environment_then_auto() {
        let env = Some(OsStr::new("tcg"));
        assert_eq!(Accel::resolve(Some("kvm"), env), Ok(Accel::Kvm));
        assert_eq!(Accel::resolve(None, env), Ok(Accel::Tcg));
        assert_eq!(Accel::resolve(None, Some(OsStr::new(""))), Ok(Accel::Auto));
        assert_eq!(Accel::resolve(None, None), Ok(Accel::Auto));
        // A bad value says which one it was, in one line.
        let flag = Accel::resolve(Some("xen"), env).unwrap_err().to_string();
        assert_eq!(
            flag,
            "--accel \"xen\" is not an accelerator: use auto, kvm or tcg"
        );
        let from_env = Accel::resolve(None, Some(OsStr::new("KVM")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            from_env,
            "SUPERMIN_ACCEL=\"KVM\" is not an accelerator: use auto, kvm or tcg"
        );
        use std::os::unix::ffi::OsStrExt;
        assert!(Accel::resolve(None, Some(OsStr::from_bytes(b"\xff"))).is_err());
    }

    #[test]
    fn unexpected_replies_are_described_without_their_bytes() {
        let text = describe(&Reply::FileData(vec![0xab; 65536]));
        assert_eq!(text, "file data (65536 bytes)");
    }

    #[test]
    fn missing_command_is_refused_before_anything_boots() {
        let opts = RunOptions {
            env: LaunchEnv::from_process(),
            recheck_kvm: false,
            qemu_user: None,
            on_notice: |_| {},
            saved_machines: None,
            cold: false,
            shares: Vec::new(),
            share_transport: ShareTransport::Auto,
            appliance: "/nonexistent".into(),
            accel: Accel::Tcg,
            memory_mib: 512,
            cpus: 1,
            disks: vec![],
            timeout: None,
            verbose: false,
            argv: vec![],
            stdin: false,
            command_env: vec![],
            cwd: None,
            interactive: None,
            copy_in: vec![],
            copy_out: vec![],
            copy_out_limit: 1 << 30,
        };
        assert!(matches!(run(&opts), Err(LaunchError::NoCommand)));
    }
}
