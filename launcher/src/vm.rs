//! One qemu process and the daemon's channel: starting it, the threads that
//! read from it, waiting on it with deadlines, and tearing it down.
//!
//! Everything the VM says arrives as an [`Event`] on one channel shared with
//! the signal forwarder, so every wait in the launcher is a single
//! `recv_timeout` that ends on a reply, the channel closing (qemu exited), a
//! signal, or the deadline. Events carry the VM's generation so that a VM
//! abandoned for a fallback cannot be mistaken for its successor.
//!
//! Cleanup lives in `Drop`: qemu killed and reaped, scratch directory (which
//! holds qemu's overlay for the root) removed. qemu also gets
//! `PR_SET_PDEATHSIG` so that it dies with us even if we are SIGKILLed.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use supermin_protocol::{
    encode_frame, read_message, Hello, ProtocolError, Reply, Request, PROTOCOL_VERSION,
};

use super::qemu::{self, Plan};
use super::stop::{Halt, Stop, TICK};
use super::{accel, LaunchError};

/// Console lines kept for error reports.
const CONSOLE_LINES: usize = 40;
/// Longest console line kept; the rest of a longer one is dropped.
const MAX_LINE: usize = 1024;
/// How long teardown waits, once qemu is reaped, for the console readers to
/// see the end of qemu's stdout and stderr. A process qemu left behind (a
/// helper it started) may hold those pipes open for ever: then the readers
/// are left to it, and the run ends anyway.
const CONSOLE_DRAIN: Duration = Duration::from_secs(2);

/// Something happened that a wait in the launcher may care about.
#[derive(Debug)]
pub enum Event {
    Reply {
        generation: u64,
        reply: Reply,
    },
    /// The channel ended: qemu exited (`None`) or sent garbage.
    Closed {
        generation: u64,
        error: Option<ProtocolError>,
    },
    Signal(i32),
}

/// Why a wait ended without the reply it wanted.
#[derive(Debug)]
pub enum WaitError {
    Deadline,
    Signal(i32),
    Closed(Option<ProtocolError>),
    Launch(LaunchError),
}

/// The sending half of the channel, shared with the stdin pump. Its socket
/// has a short send timeout, so a guest that stops reading cannot block a
/// send past the run's deadline or a signal.
#[derive(Clone)]
pub struct Writer {
    conn: Arc<Mutex<UnixStream>>,
    stop: Arc<Stop>,
}

/// Why a send did not complete.
#[derive(Debug)]
pub enum SendError {
    Halt(Halt),
    /// The caller's `abandon` flag was raised (the stdin pump after the command ended).
    Abandoned,
    Io(io::Error),
}

impl Writer {
    /// Sends one frame; waits for the guest to take it in ticks, giving up on
    /// the run's deadline, a signal, or `abandon` becoming true.
    pub fn send(&self, req: &Request, abandon: Option<&AtomicBool>) -> Result<(), SendError> {
        let mut buf = Vec::new();
        encode_frame(req, &mut buf);
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut rest = &buf[..];
        while !rest.is_empty() {
            self.stop.check().map_err(SendError::Halt)?;
            // Abandoning mid-frame would leave the daemon reading the next
            // frame as the rest of this one: only a frame not yet begun is given up.
            if rest.len() == buf.len() && abandon.is_some_and(|a| a.load(Ordering::SeqCst)) {
                return Err(SendError::Abandoned);
            }
            match conn.write(rest) {
                Ok(0) => return Err(SendError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => rest = &rest[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(SendError::Io(e)),
            }
        }
        Ok(())
    }
}

/// The last lines of the console and of qemu's own stderr, and what the
/// accelerator probe needs to know of them.
struct Console {
    lines: Mutex<VecDeque<String>>,
    verbose: bool,
    /// Bytes the guest has printed on its console so far: a guest that
    /// prints is booting, not hung.
    guest_bytes: AtomicU64,
    /// qemu's first message on its stderr, and its first one that reads as
    /// KVM itself failing.
    first_qemu_line: Mutex<Option<String>>,
    kvm_failure: Mutex<Option<String>>,
}

impl Console {
    fn new(verbose: bool) -> Console {
        Console {
            lines: Mutex::new(VecDeque::new()),
            verbose,
            guest_bytes: AtomicU64::new(0),
            first_qemu_line: Mutex::new(None),
            kvm_failure: Mutex::new(None),
        }
    }

    fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == CONSOLE_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// One line from the guest's console (`qemu == false`) or qemu's stderr.
    fn take_line(&self, raw: &[u8], qemu: bool) {
        let text = printable(raw);
        let prefix = if qemu { "qemu: " } else { "" };
        if self.verbose {
            eprintln!("{prefix}{text}");
        }
        if text.trim().is_empty() {
            return;
        }
        if qemu {
            let remember = |slot: &Mutex<Option<String>>| {
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| text.clone());
            };
            remember(&self.first_qemu_line);
            if accel::is_kvm_failure_line(&text) {
                remember(&self.kvm_failure);
            }
        }
        self.push(format!("{prefix}{text}"));
    }

    fn spawn_reader(
        self: &Arc<Self>,
        readers: &mut Readers,
        stream: impl Read + Send + 'static,
        qemu: bool,
    ) {
        let console = Arc::clone(self);
        let done = readers.done_tx.clone();
        readers.threads.push(std::thread::spawn(move || {
            let counter = (!qemu).then_some(&console.guest_bytes);
            read_lines(stream, counter, |line| console.take_line(line, qemu));
            let _ = done.send(());
        }));
    }
}

/// The threads that read qemu's stdout and stderr into the [`Console`].
struct Readers {
    threads: Vec<JoinHandle<()>>,
    done_tx: std::sync::mpsc::Sender<()>,
    /// One message from each reader that saw its stream end.
    done: Receiver<()>,
}

impl Readers {
    fn new() -> Readers {
        let (done_tx, done) = std::sync::mpsc::channel();
        Readers {
            threads: Vec::new(),
            done_tx,
            done,
        }
    }

    /// Joins the readers whose streams end within `limit`; the others are
    /// left running (they hold only the console). True when all ended.
    fn join_within(&mut self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        let mut ended = 0;
        while ended < self.threads.len() {
            let left = until.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(()) => ended += 1,
                Err(_) => break,
            }
        }
        let all = ended == self.threads.len();
        for t in self.threads.drain(..) {
            if all || t.is_finished() {
                let _ = t.join();
            }
        }
        all
    }
}

/// Calls `each` with every line of `stream` (without its newline), each cut
/// to [`MAX_LINE`] bytes: a guest that prints without newlines cannot grow a
/// buffer of ours. Counts the bytes read in `counter`.
fn read_lines(mut stream: impl Read, counter: Option<&AtomicU64>, mut each: impl FnMut(&[u8])) {
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    // Past MAX_LINE the rest of the line is dropped, up to its newline.
    let mut dropping = false;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let Some(c) = counter {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                if !dropping {
                    each(&line);
                }
                line.clear();
                dropping = false;
            } else if !dropping {
                line.push(b);
                if line.len() == MAX_LINE {
                    line.extend_from_slice(" [...]".as_bytes());
                    each(&line);
                    line.clear();
                    dropping = true;
                }
            }
        }
    }
    if !line.is_empty() {
        each(&line);
    }
}

/// A console line without terminal control sequences (SeaBIOS clears the
/// screen) and carriage returns.
pub fn printable(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte; other escapes are two characters.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            // Format characters that reorder or hide text (bidi overrides and
            // isolates, zero-width ones) could make a line say something else.
            '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}' => {}
            c => out.push(c),
        }
    }
    out
}

pub struct Vm {
    child: Child,
    /// Our end of qemu's monitor, until [`Vm::take_qmp`].
    qmp: Option<UnixStream>,
    generation: u64,
    writer: Writer,
    stop: Arc<Stop>,
    console: Arc<Console>,
    console_readers: Readers,
    scratch: PathBuf,
    daemon_info: String,
}

impl Vm {
    /// Starts qemu for `plan`; replies and the channel's end go to `events`.
    pub fn start(
        plan: &Plan,
        tmp_dir: &std::path::Path,
        generation: u64,
        events: SyncSender<Event>,
        stop: Arc<Stop>,
        verbose: bool,
    ) -> Result<Vm, LaunchError> {
        let scratch = make_scratch(tmp_dir)?;
        Self::start_in(plan, scratch, generation, events, stop, verbose)
    }

    /// [`Vm::start`] in a scratch directory made (and maybe filled) by the
    /// caller with [`make_scratch`]; it is the VM's from now on, removed with it.
    pub fn start_in(
        plan: &Plan,
        scratch: PathBuf,
        generation: u64,
        events: SyncSender<Event>,
        stop: Arc<Stop>,
        verbose: bool,
    ) -> Result<Vm, LaunchError> {
        match Self::spawn(plan, generation, events, stop, verbose, &scratch) {
            Ok(vm) => Ok(vm),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                Err(e)
            }
        }
    }

    fn spawn(
        plan: &Plan,
        generation: u64,
        events: SyncSender<Event>,
        stop: Arc<Stop>,
        verbose: bool,
        scratch: &std::path::Path,
    ) -> Result<Vm, LaunchError> {
        let setup = |what| move |source| LaunchError::Setup { what, source };
        let (ours, theirs) = UnixStream::pair().map_err(setup("the daemon channel"))?;
        ours.set_write_timeout(Some(TICK))
            .map_err(setup("the daemon channel"))?;
        let theirs_fd = theirs.as_raw_fd();
        let qmp_pair = if plan.qmp {
            Some(UnixStream::pair().map_err(setup("qemu's monitor"))?)
        } else {
            None
        };
        let qmp_fd = qmp_pair.as_ref().map(|(_, theirs)| theirs.as_raw_fd());
        let args = qemu::args(plan, theirs_fd, qmp_fd);
        // Every descriptor qemu inherits: close-on-exec in the parent (so no
        // other child gets them), cleared in qemu's child only.
        let mut inherit: Vec<i32> = vec![theirs_fd];
        inherit.extend(qmp_fd);
        inherit.extend(plan.fdsets.iter().map(|(fd, _)| *fd));
        inherit.extend(&plan.virtiofs);
        if verbose {
            let line: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
            eprintln!(
                "supermin: run: {} {}",
                plan.qemu.path.display(),
                line.join(" ")
            );
        }
        let mut cmd = Command::new(&plan.qemu.path);
        cmd.args(&args)
            // qemu puts the snapshot=on overlay in $TMPDIR.
            .env("TMPDIR", scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Ctrl-C at the terminal reaches us, not qemu: we stop it ourselves.
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and only
        // makes async-signal-safe system calls (close_range, fcntl, prctl) on
        // plain integers, reading a vector allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Descriptors our own caller left open without close-on-exec
                // (a sudo'd root file, say) must not reach a qemu that then
                // runs as another user: mark everything close-on-exec first
                // (Linux >= 5.11; older kernels keep the old behaviour).
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| LaunchError::QemuSpawn {
            program: plan.qemu.path.display().to_string(),
            source,
        })?;
        drop(theirs);
        let qmp = qmp_pair.map(|(ours, _theirs)| ours);

        let console = Arc::new(Console::new(verbose));
        let mut console_readers = Readers::new();
        if let Some(out) = child.stdout.take() {
            console.spawn_reader(&mut console_readers, out, false);
        }
        if let Some(err) = child.stderr.take() {
            console.spawn_reader(&mut console_readers, err, true);
        }

        let mut reader = match ours.try_clone() {
            Ok(r) => r,
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Setup {
                    what: "the daemon channel",
                    source,
                });
            }
        };
        // The event channel is bounded: when the run cannot keep up (a slow
        // reader of our stdout), this thread blocks in `send`, stops reading
        // the socket, and the guest blocks in its writes: back-pressure, not
        // host memory.
        std::thread::spawn(move || loop {
            let event = match read_message::<Reply, _>(&mut reader) {
                Ok(Some(reply)) => Event::Reply { generation, reply },
                Ok(None) => Event::Closed {
                    generation,
                    error: None,
                },
                Err(ProtocolError::Io { .. }) => Event::Closed {
                    generation,
                    error: None,
                },
                Err(e) => Event::Closed {
                    generation,
                    error: Some(e),
                },
            };
            let last = matches!(event, Event::Closed { .. });
            if events.send(event).is_err() || last {
                return;
            }
        });

        Ok(Vm {
            child,
            generation,
            writer: Writer {
                conn: Arc::new(Mutex::new(ours)),
                stop: Arc::clone(&stop),
            },
            stop,
            console,
            console_readers,
            scratch: scratch.to_path_buf(),
            daemon_info: String::new(),
            qmp,
        })
    }

    /// Our end of qemu's monitor socket (once), when the plan asked for one.
    pub fn take_qmp(&mut self) -> Option<UnixStream> {
        self.qmp.take()
    }

    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    pub fn daemon_info(&self) -> &str {
        &self.daemon_info
    }

    /// The daemon's self-description when no hello came (a restored machine).
    pub fn set_daemon_info(&mut self, info: String) {
        self.daemon_info = info;
    }

    /// The scratch directory (qemu's temporary files, the root's overlay).
    pub fn scratch(&self) -> &std::path::Path {
        &self.scratch
    }

    pub fn send(&self, req: &Request) -> Result<(), LaunchError> {
        self.writer.send(req, None).map_err(|e| match e {
            SendError::Halt(halt) => super::halted(&self.stop, halt),
            SendError::Abandoned => LaunchError::Channel {
                source: io::ErrorKind::Interrupted.into(),
            },
            SendError::Io(source) => LaunchError::Channel { source },
        })
    }

    /// The next reply of this VM, skipping events of abandoned ones.
    pub fn next_reply(
        &self,
        rx: &Receiver<Event>,
        deadline: Option<Instant>,
    ) -> Result<Reply, WaitError> {
        loop {
            if let Some(sig) = self.stop.signal() {
                return Err(WaitError::Signal(sig));
            }
            let event = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(e) => e,
                        Err(RecvTimeoutError::Timeout) => return Err(WaitError::Deadline),
                        Err(RecvTimeoutError::Disconnected) => return Err(WaitError::Closed(None)),
                    }
                }
                None => rx.recv().map_err(|_| WaitError::Closed(None))?,
            };
            match event {
                Event::Reply { generation, reply } if generation == self.generation => {
                    return Ok(reply)
                }
                Event::Closed { generation, error } if generation == self.generation => {
                    return Err(WaitError::Closed(error))
                }
                Event::Signal(sig) => return Err(WaitError::Signal(sig)),
                _ => {}
            }
        }
    }

    /// Waits for the daemon's hello and answers it.
    pub fn wait_hello(
        &mut self,
        rx: &Receiver<Event>,
        deadline: Option<Instant>,
    ) -> Result<(), WaitError> {
        match self.next_reply(rx, deadline)? {
            Reply::Hello(Hello { version, info }) => {
                if version != PROTOCOL_VERSION {
                    return Err(WaitError::Launch(LaunchError::VersionMismatch {
                        daemon: version,
                        ours: PROTOCOL_VERSION,
                    }));
                }
                self.daemon_info = info;
                self.send(&Request::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    info: format!("supermin-rs {}", env!("CARGO_PKG_VERSION")),
                }))
                .map_err(WaitError::Launch)
            }
            other => Err(WaitError::Launch(LaunchError::Unexpected {
                got: format!("{} before the hello", super::describe(&other)),
            })),
        }
    }

    /// Asks the daemon to power off and waits (until `deadline`) for qemu
    /// to exit; kills it if it does not.
    pub fn shutdown(&mut self, rx: &Receiver<Event>, deadline: Instant) {
        let asked = self.send(&Request::Shutdown).is_ok();
        if asked {
            // Done first (the guest has synced its disks), then the channel's end.
            while let Ok(reply) = self.next_reply(rx, Some(deadline)) {
                if reply == Reply::Done {
                    break;
                }
            }
            loop {
                match self.next_reply(rx, Some(deadline)) {
                    Ok(_) => continue,
                    Err(WaitError::Closed(_)) => break,
                    Err(_) => break,
                }
            }
        }
        // A qemu never asked to power off (the run's deadline passed, a
        // signal came) is not waited for.
        while asked && Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        self.stop();
    }

    /// Kills qemu if it still runs, reaps it, and collects the console.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        self.console_readers.join_within(CONSOLE_DRAIN);
    }

    /// Bytes the guest has printed on its console so far.
    pub fn guest_console_bytes(&self) -> u64 {
        self.console.guest_bytes.load(Ordering::Relaxed)
    }

    /// qemu's first message that reads as KVM failing, if any.
    pub fn kvm_failure(&self) -> Option<String> {
        let slot = self.console.kvm_failure.lock();
        slot.unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// qemu's first message on its stderr, if any.
    pub fn first_qemu_line(&self) -> Option<String> {
        let slot = self.console.first_qemu_line.lock();
        slot.unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How qemu ended, after the channel closed before the hello.
    pub fn exit_description(&mut self) -> String {
        // qemu closes the channel as it exits; give it a moment to finish.
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.stop();
                    return match status.code() {
                        Some(0) => "the VM powered off before the daemon answered".into(),
                        Some(code) => format!("qemu exited with status {code}"),
                        None => format!("qemu was killed ({status})"),
                    };
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        self.stop();
        "qemu closed the daemon's channel".into()
    }

    /// The last console lines (and qemu's messages), for error reports.
    pub fn console_tail(&self) -> String {
        let lines = self.console.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.is_empty() {
            return "(the console printed nothing; run with -v to see the boot)".into();
        }
        let mut out = String::from("last console lines:");
        for l in lines.iter() {
            out.push_str("\n  ");
            out.push_str(l);
        }
        out
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// A fresh private directory for qemu's temporary files in `base`
/// ([`super::LaunchEnv::tmp_dir`]).
pub fn make_scratch(base: &std::path::Path) -> Result<PathBuf, LaunchError> {
    let base = base.to_path_buf();
    sweep_stale_scratch(&base);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last_err = None;
    for attempt in 0..100u32 {
        let dir = base.join(format!(
            "supermin-run.{}.{:08x}",
            std::process::id(),
            nanos.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(source) => return Err(LaunchError::Scratch { dir: base, source }),
        }
    }
    Err(LaunchError::Scratch {
        dir: base,
        source: last_err.unwrap_or_else(|| io::Error::other("no free name")),
    })
}

/// Removes scratch directories left by launchers that were SIGKILLed (the
/// one exit path without cleanup; their qemu died with them through
/// `PR_SET_PDEATHSIG`). Only directories of ours whose process is gone.
fn sweep_stale_scratch(base: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let uid = rustix::process::getuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("supermin-run."))
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == uid);
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if ours && !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teardown_waits_for_the_console_readers_only_so_long() {
        use std::os::unix::net::UnixStream;
        let console = Arc::new(Console::new(false));
        let mut readers = Readers::new();
        let (ended, mut writer) = UnixStream::pair().unwrap();
        let (held, _held_open) = UnixStream::pair().unwrap();
        console.spawn_reader(&mut readers, ended, false);
        console.spawn_reader(&mut readers, held, true);
        std::io::Write::write_all(&mut writer, b"last line\n").unwrap();
        drop(writer);
        // `_held_open` is the pipe end a process qemu left behind would keep.
        let start = Instant::now();
        assert!(!readers.join_within(Duration::from_millis(300)));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(readers.threads.is_empty());
        // What the reader that ended had read is kept.
        assert!(console
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("last line")));

        let mut readers = Readers::new();
        let (ended, writer) = UnixStream::pair().unwrap();
        console.spawn_reader(&mut readers, ended, false);
        drop(writer);
        assert!(readers.join_within(Duration::from_secs(5)));
    }

    #[test]
    fn console_lines_lose_terminal_escapes_and_carriage_returns() {
        assert_eq!(
            printable(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(printable(b"[    0.1] ok\ttab"), "[    0.1] ok\ttab");
        assert_eq!(
            printable("safe\u{202e}txt.exe\u{200b}".as_bytes()),
            "safetxt.exe"
        );
    }

    #[test]
    fn console_keeps_only_the_last_lines() {
        let c = Console::new(false);
        for i in 0..CONSOLE_LINES + 5 {
            c.push(format!("line {i}"));
        }
        let lines = c.lines.lock().unwrap();
        assert_eq!(lines.len(), CONSOLE_LINES);
        assert_eq!(lines.front().unwrap(), "line 5");
    }

    #[test]
    fn console_lines_are_cut_and_a_newline_free_flood_stays_bounded() {
        // 64 MiB without a newline, then a short line: the reader keeps
        // MAX_LINE bytes of the first and all of the second.
        struct Flood(usize);
        impl Read for Flood {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Ok(0);
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(b'A');
                self.0 -= n;
                Ok(n)
            }
        }
        let stream = Flood(64 << 20).chain(&b"\nnext line\ntail"[..]);
        let counter = AtomicU64::new(0);
        let mut lines = Vec::new();
        read_lines(stream, Some(&counter), |l| lines.push(l.to_vec()));
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), MAX_LINE + " [...]".len());
        assert_eq!(lines[1], b"next line");
        assert_eq!(lines[2], b"tail");
        assert_eq!(counter.load(Ordering::Relaxed), (64 << 20) + 15);
    }

    #[test]
    fn qemu_messages_about_kvm_failing_are_remembered() {
        let c = Console::new(false);
        c.take_line(b"qemu-system-x86_64: error: failed to set MSR 0x10a", true);
        c.take_line(
            b"qemu-system-x86_64: target/i386/kvm/kvm.c:3849: kvm_buf_set_msrs: Assertion failed.",
            true,
        );
        c.take_line(b"KVM guest console line with error", false);
        assert_eq!(
            c.first_qemu_line.lock().unwrap().as_deref(),
            Some("qemu-system-x86_64: error: failed to set MSR 0x10a")
        );
        assert!(c
            .kvm_failure
            .lock()
            .unwrap()
            .as_deref()
            .unwrap()
            .contains("kvm_buf_set_msrs"));
    }

    #[test]
    fn scratch_of_a_dead_launcher_is_swept_and_a_live_ones_kept() {
        let base = std::env::temp_dir().join(format!("supermin-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        // A pid above pid_max (4194304 at most) cannot be alive.
        let dead = base.join("supermin-run.4194305.0000abcd");
        let live = base.join(format!("supermin-run.{}.0000abcd", std::process::id()));
        let other = base.join("unrelated.4194305");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d.join("inner")).unwrap();
        }
        sweep_stale_scratch(&base);
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(other.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn scratch_directories_are_private_and_distinct() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let a = make_scratch(base.path()).unwrap();
        let b = make_scratch(base.path()).unwrap();
        assert_ne!(a, b);
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::remove_dir(&a).unwrap();
        std::fs::remove_dir(&b).unwrap();
    }
}
