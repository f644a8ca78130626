//! The daemon's request loop: one `poll(2)` loop over the host channel and,
//! while a command runs, its pipes and its pidfd.
//!
//! Single-threaded and non-blocking on purpose. A virtio-serial port whose
//! host side has gone away blocks writers forever, so the daemon never does a
//! blocking write to it: everything for the host goes through an output
//! queue flushed on `POLLOUT`, and `POLLHUP`/end-of-file on the port ends the
//! loop with [`Outcome::HostGone`]. Back-pressure is by not polling: the
//! command's pipes are not read while the output queue is full, and the port
//! is not read while stdin for the command is piling up.
//!
//! The same loop serves a socketpair in the tests, which is how it is checked
//! without a VM.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions};

use supermin_protocol::{
    encode_frame, entry_wire_len, Entry, EntryKind, ExecRequest, ExitStatus, FrameDecoder, Hello,
    ProtocolError, Reply, Request, Time, WinSize, CHUNK, PROTOCOL_VERSION,
};

/// Output queued for the host above which the command's pipes and file
/// downloads are no longer read until the host catches up.
const OUT_HIGH: usize = 4 * CHUNK;
/// Stdin bytes waiting for the command above which the port is not read.
const STDIN_HIGH: usize = 4 * CHUNK;
/// How often a PID 1 daemon wakes to reap orphans when nothing else happens,
/// and how often it checks a command whose pidfd could not be opened.
const REAP_TICK_MS: i64 = 2000;
const NO_PIDFD_TICK_MS: i64 = 50;
/// After the command has exited, how long its output may stay quiet before the daemon
/// stops waiting for the pipes to close. A background job that keeps them open
/// (`sh -c 'sleep 100 & echo hi'`) would otherwise hold the run until it ends, though the
/// VM is thrown away after the command; output that keeps flowing is still relayed.
const DRAIN_QUIET_MS: u64 = 500;
/// Bytes of directory entries per `Entries` reply: well within a frame.
const ENTRIES_PER_FRAME: usize = 4 * CHUNK;

/// How the daemon behaves; [`AgentConfig::pid1`] is the appliance setting.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Reap every child (`waitpid(-1)`), not only the command's: PID 1
    /// inherits all orphans. Must be false when other code in the process
    /// waits for its own children (the tests).
    pub reap_orphans: bool,
    /// The environment commands start with; [`ExecRequest::env`] adds to it.
    pub base_env: Vec<(OsString, OsString)>,
    /// Sent to the host in [`Hello::info`].
    pub info: String,
    /// Print each request on stderr (the console in the appliance).
    pub verbose: bool,
    /// Flush every disk's cache before acknowledging a shutdown (the
    /// appliance; not a test on a host).
    pub flush_disks: bool,
}

impl AgentConfig {
    /// The environment of a login-less root shell on a Debian-like system.
    pub fn default_env() -> Vec<(OsString, OsString)> {
        [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("HOME", "/root"),
            ("TERM", "dumb"),
            ("LANG", "C.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
    }

    /// The settings for the appliance's PID 1.
    pub fn pid1(info: String, verbose: bool) -> Self {
        AgentConfig {
            reap_orphans: true,
            base_env: Self::default_env(),
            info,
            verbose,
            flush_disks: true,
        }
    }
}

/// Why [`serve`] returned normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host asked for a shutdown and got its answer.
    Shutdown,
    /// The host closed the channel (the launcher exited or was killed).
    HostGone,
}

/// Failures that end the daemon.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the host sent a malformed message")]
    Protocol {
        #[source]
        source: ProtocolError,
    },
    #[error("the launcher speaks protocol version {host}, this daemon speaks {ours}: rebuild the appliance with the same supermin that runs it")]
    VersionMismatch { host: u32, ours: u32 },
    #[error("the host sent {got} while the daemon was {state}: the launcher is out of step")]
    Unexpected {
        got: &'static str,
        state: &'static str,
    },
    #[error("{op} on the host channel failed")]
    Channel {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn channel_err(op: &'static str) -> impl FnOnce(Errno) -> AgentError {
    move |e| AgentError::Channel {
        op,
        source: e.into(),
    }
}

/// Serves the host on `port` (a virtio-serial port, or a socket in tests)
/// until it asks to shut down or goes away. Sends the daemon's hello first.
pub fn serve(port: OwnedFd, config: &AgentConfig) -> Result<Outcome, AgentError> {
    set_nonblocking(port.as_fd()).map_err(channel_err("setting O_NONBLOCK"))?;
    let mut agent = Agent {
        port,
        config,
        out: Vec::new(),
        out_start: 0,
        decoder: FrameDecoder::new(),
        state: State::AwaitHello,
        shutting_down: false,
    };
    agent.queue(&Reply::Hello(Hello {
        version: PROTOCOL_VERSION,
        info: config.info.clone(),
    }));
    let result = agent.run();
    if let State::Running(run) = &mut agent.state {
        run.kill();
    }
    result
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)
}

enum State {
    AwaitHello,
    Idle,
    Running(Box<Running>),
    /// `Err` holds the first failure; later chunks are dropped until `FileEnd`.
    Uploading(Result<File, String>),
    Downloading(File),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitHello => "waiting for the hello",
            State::Idle => "idle",
            State::Running(_) => "running a command",
            State::Uploading(_) => "receiving a file",
            State::Downloading(_) => "sending a file",
        }
    }
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Hello(_) => "a hello",
        Request::Exec(_) => "an exec request",
        Request::Stdin(_) => "stdin data",
        Request::StdinEof => "stdin end",
        Request::Upload { .. } => "an upload request",
        Request::FileData(_) => "file data",
        Request::FileEnd => "file end",
        Request::Download { .. } => "a download request",
        Request::Shutdown => "a shutdown request",
        Request::Sync => "a sync request",
        Request::Resume { .. } => "a resume request",
        Request::AwaitDisks { .. } => "a disk wait",
        Request::Mount { .. } => "a mount request",
        Request::Resize(_) => "a terminal resize",
        Request::Lstat { .. } => "an lstat request",
        Request::ListDir { .. } => "a directory listing request",
        Request::Mkdir { .. } => "a mkdir request",
        Request::Symlink { .. } => "a symlink request",
        Request::SetTimes { .. } => "a set-times request",
    }
}

/// A command in flight.
struct Running {
    pid: Pid,
    pidfd: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    /// The pseudo-terminal's master side, when the command runs on one.
    pty: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_eof: bool,
    status: Option<ExitStatus>,
    /// When the command exited or its output last moved, whichever is later.
    last_activity: std::time::Instant,
}

impl Running {
    fn kill(&mut self) {
        if self.status.is_none() {
            // The command leads its own process group: take its children too.
            let _ = rustix::process::kill_process_group(self.pid, Signal::KILL);
        }
    }

    fn finished(&self) -> bool {
        self.status.is_some()
            && ((self.stdout.is_none() && self.stderr.is_none()) || self.drain_over())
    }

    /// The command has exited and its output has been quiet for [`DRAIN_QUIET_MS`].
    fn drain_over(&self) -> bool {
        self.status.is_some()
            && self.last_activity.elapsed() >= std::time::Duration::from_millis(DRAIN_QUIET_MS)
    }

    fn record(&mut self, status: rustix::process::WaitStatus) {
        self.last_activity = std::time::Instant::now();
        if let Some(code) = status.exit_status() {
            self.status = Some(ExitStatus::Code(code));
        } else if let Some(sig) = status.terminating_signal() {
            self.status = Some(ExitStatus::Signal(sig));
        }
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Port,
    Stdout,
    Stderr,
    Stdin,
    Pidfd,
}

struct Agent<'c> {
    port: OwnedFd,
    config: &'c AgentConfig,
    out: Vec<u8>,
    out_start: usize,
    decoder: FrameDecoder,
    state: State,
    shutting_down: bool,
}

impl Agent<'_> {
    fn queued(&self) -> usize {
        self.out.len() - self.out_start
    }

    fn queue(&mut self, reply: &Reply) {
        if self.out_start > 0 && self.out_start == self.out.len() {
            self.out.clear();
            self.out_start = 0;
        }
        encode_frame(reply, &mut self.out);
    }

    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.config.verbose {
            eprintln!("supermin-daemon: {what}");
        }
    }

    fn run(&mut self) -> Result<Outcome, AgentError> {
        loop {
            if self.shutting_down && self.queued() == 0 {
                return Ok(Outcome::Shutdown);
            }
            let ready = self.wait()?;
            for (slot, revents) in ready {
                if let Some(outcome) = self.handle(slot, revents)? {
                    return Ok(outcome);
                }
            }
            self.pump_download();
            self.reap();
            self.finish_command();
        }
    }

    /// Polls everything that can make progress; returns what is ready.
    fn wait(&self) -> Result<Vec<(Slot, PollFlags)>, AgentError> {
        let mut slots = Vec::with_capacity(5);
        let mut fds = Vec::with_capacity(5);
        let mut port_events = PollFlags::empty();
        let stdin_backlog = match &self.state {
            State::Running(run) => run.stdin_buf.len(),
            _ => 0,
        };
        if !self.shutting_down && stdin_backlog < STDIN_HIGH {
            port_events |= PollFlags::IN;
        }
        if self.queued() > 0 {
            port_events |= PollFlags::OUT;
        }
        // Always polled: POLLHUP arrives even with no events requested.
        slots.push(Slot::Port);
        fds.push(PollFd::from_borrowed_fd(self.port.as_fd(), port_events));

        let mut timeout_ms: Option<i64> = self.config.reap_orphans.then_some(REAP_TICK_MS);
        let room = self.queued() < OUT_HIGH;
        match &self.state {
            State::Running(run) => {
                for (slot, fd) in [(Slot::Stdout, &run.stdout), (Slot::Stderr, &run.stderr)] {
                    if let (Some(fd), true) = (fd, room) {
                        slots.push(slot);
                        fds.push(PollFd::from_borrowed_fd(fd.as_fd(), PollFlags::IN));
                    }
                }
                if let (Some(fd), false) = (&run.stdin, run.stdin_buf.is_empty()) {
                    slots.push(Slot::Stdin);
                    fds.push(PollFd::from_borrowed_fd(fd.as_fd(), PollFlags::OUT));
                }
                if run.status.is_some() && (run.stdout.is_some() || run.stderr.is_some()) {
                    // Wake up to end the drain even if the pipes stay silent.
                    let left = DRAIN_QUIET_MS.saturating_sub(
                        u64::try_from(run.last_activity.elapsed().as_millis()).unwrap_or(u64::MAX),
                    );
                    timeout_ms = Some(timeout_ms.map_or(left as i64, |t| t.min(left as i64)));
                }
                if run.status.is_none() {
                    match &run.pidfd {
                        Some(fd) => {
                            slots.push(Slot::Pidfd);
                            fds.push(PollFd::from_borrowed_fd(fd.as_fd(), PollFlags::IN));
                        }
                        None => timeout_ms = Some(NO_PIDFD_TICK_MS),
                    }
                }
            }
            State::Downloading(_) if room => timeout_ms = Some(0),
            _ => {}
        }

        let timeout = timeout_ms.map(|ms| rustix::time::Timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        });
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(Errno::INTR) => return Ok(Vec::new()),
            Err(e) => return Err(channel_err("poll")(e)),
        }
        Ok(slots
            .into_iter()
            .zip(fds.iter().map(PollFd::revents))
            .filter(|(_, r)| !r.is_empty())
            .collect())
    }

    fn handle(&mut self, slot: Slot, revents: PollFlags) -> Result<Option<Outcome>, AgentError> {
        match slot {
            Slot::Port => {
                if revents.contains(PollFlags::OUT) {
                    self.flush()?;
                }
                if revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                    return self.read_port();
                }
            }
            Slot::Stdout | Slot::Stderr => self.read_pipe(slot),
            Slot::Stdin => self.write_stdin(),
            Slot::Pidfd => {
                if let State::Running(run) = &mut self.state {
                    if !self.config.reap_orphans {
                        if let Ok(Some((_, status))) =
                            rustix::process::waitpid(Some(run.pid), WaitOptions::NOHANG)
                        {
                            run.record(status);
                        }
                    }
                    // With reap_orphans, reap() below collects it.
                }
            }
        }
        Ok(None)
    }

    fn flush(&mut self) -> Result<(), AgentError> {
        while self.queued() > 0 {
            match rustix::io::write(&self.port, &self.out[self.out_start..]) {
                Ok(n) => self.out_start += n,
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                // The host vanished mid-write; the read side reports it.
                Err(Errno::PIPE) | Err(Errno::CONNRESET) => break,
                Err(e) => return Err(channel_err("writing")(e)),
            }
        }
        Ok(())
    }

    fn read_port(&mut self) -> Result<Option<Outcome>, AgentError> {
        let mut buf = vec![0u8; CHUNK + 64];
        loop {
            match rustix::io::read(&self.port, &mut buf) {
                Ok(0) => {
                    self.log(format_args!("host closed the channel"));
                    return Ok(Some(Outcome::HostGone));
                }
                Ok(n) => {
                    self.decoder.feed(&buf[..n]);
                    break;
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(Errno::CONNRESET) | Err(Errno::PIPE) => return Ok(Some(Outcome::HostGone)),
                Err(e) => return Err(channel_err("reading")(e)),
            }
        }
        while let Some(req) = self
            .decoder
            .next_message::<Request>()
            .map_err(|source| AgentError::Protocol { source })?
        {
            self.dispatch(req)?;
            if self.shutting_down {
                break;
            }
        }
        Ok(None)
    }

    fn dispatch(&mut self, req: Request) -> Result<(), AgentError> {
        let state = std::mem::replace(&mut self.state, State::Idle);
        self.state = match (state, req) {
            (State::AwaitHello, Request::Hello(h)) => {
                if h.version != PROTOCOL_VERSION {
                    return Err(AgentError::VersionMismatch {
                        host: h.version,
                        ours: PROTOCOL_VERSION,
                    });
                }
                self.log(format_args!("host connected: {}", h.info));
                State::Idle
            }
            (State::Idle, Request::Exec(exec)) => self.start(exec),
            (State::Idle, Request::Upload { path, mode }) => {
                self.log(format_args!("upload {}", Path::new(&path).display()));
                let shown = Path::new(&path).display();
                State::Uploading(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(mode & 0o7777)
                        .open(&path)
                        .map_err(|e| format!("cannot create {shown}: {e}"))
                        .and_then(|f| {
                            // The umask must not change what the host asked for.
                            rustix::fs::fchmod(&f, rustix::fs::Mode::from_raw_mode(mode & 0o7777))
                                .map_err(|e| format!("cannot set the mode of {shown}: {e}"))?;
                            Ok(f)
                        }),
                )
            }
            (State::Idle, Request::Download { path }) => {
                self.log(format_args!("download {}", Path::new(&path).display()));
                match File::open(&path) {
                    Ok(f) => State::Downloading(f),
                    Err(e) => {
                        self.queue(&Reply::Error {
                            message: format!("cannot open {}: {e}", Path::new(&path).display()),
                        });
                        State::Idle
                    }
                }
            }
            (State::Idle, Request::Lstat { path }) => {
                match lstat_entry(Path::new(&path), entry_name(&path)) {
                    Ok(entry) => {
                        self.queue(&Reply::Entries(vec![entry]));
                        self.queue(&Reply::Done);
                    }
                    Err(message) => self.queue(&Reply::Error { message }),
                }
                State::Idle
            }
            (State::Idle, Request::ListDir { path }) => {
                self.list_dir(Path::new(&path));
                State::Idle
            }
            (State::Idle, Request::Mkdir { path, mode }) => {
                self.answer(make_dir(Path::new(&path), mode));
                State::Idle
            }
            (State::Idle, Request::Symlink { target, path }) => {
                self.answer(make_symlink(&target, Path::new(&path)));
                State::Idle
            }
            (State::Idle, Request::SetTimes { path, atime, mtime }) => {
                self.answer(set_times(Path::new(&path), atime, mtime));
                State::Idle
            }
            // Stdin or a resize that raced with the command's exit has nowhere to go.
            (State::Idle, Request::Stdin(_) | Request::StdinEof | Request::Resize(_)) => {
                State::Idle
            }
            (State::Running(run), Request::Resize(size)) => {
                if let Some(pty) = &run.pty {
                    let _ = rustix::termios::tcsetwinsize(pty, winsize(size));
                }
                State::Running(run)
            }
            (State::Running(mut run), Request::Stdin(data)) => {
                if run.stdin.is_some() {
                    run.stdin_buf.extend_from_slice(&data);
                }
                State::Running(run)
            }
            (State::Running(mut run), Request::StdinEof) => {
                run.stdin_eof = true;
                if run.stdin_buf.is_empty() {
                    run.stdin = None;
                }
                State::Running(run)
            }
            (State::Uploading(mut file), Request::FileData(data)) => {
                if let Ok(f) = &mut file {
                    if let Err(e) = f.write_all(&data) {
                        file = Err(format!("writing the uploaded file failed: {e}"));
                    }
                }
                State::Uploading(file)
            }
            (State::Uploading(file), Request::FileEnd) => {
                let reply = match file {
                    Ok(_) => Reply::Done,
                    Err(message) => Reply::Error { message },
                };
                self.queue(&reply);
                State::Idle
            }
            (State::Idle, Request::Sync) => {
                rustix::fs::sync();
                self.queue(&Reply::Done);
                State::Idle
            }
            (
                State::Idle,
                Request::Resume {
                    secs,
                    nanos,
                    entropy,
                },
            ) => {
                self.log(format_args!("resumed from a saved state"));
                let reply = match crate::system::resume(secs, nanos, &entropy) {
                    Ok(()) => Reply::Done,
                    Err(message) => Reply::Error { message },
                };
                self.queue(&reply);
                State::Idle
            }
            (State::Idle, Request::AwaitDisks { count }) => {
                let reply =
                    match crate::system::await_disks(count, std::time::Duration::from_secs(10)) {
                        Ok(()) => Reply::Done,
                        Err(message) => Reply::Error { message },
                    };
                self.queue(&reply);
                State::Idle
            }
            (
                State::Idle,
                Request::Mount {
                    tag,
                    target,
                    readonly,
                    fs,
                },
            ) => {
                let reply = match crate::system::mount_share(&tag, Path::new(&target), readonly, fs)
                {
                    Ok(()) => Reply::Done,
                    Err(message) => Reply::Error { message },
                };
                self.queue(&reply);
                State::Idle
            }
            (mut state, Request::Shutdown) if !matches!(state, State::AwaitHello) => {
                if let State::Running(run) = &mut state {
                    run.kill();
                }
                self.log(format_args!("shutdown requested"));
                rustix::fs::sync();
                if self.config.flush_disks {
                    crate::system::flush_block_devices();
                }
                self.queue(&Reply::Done);
                self.shutting_down = true;
                State::Idle
            }
            (state, req) => {
                return Err(AgentError::Unexpected {
                    got: request_name(&req),
                    state: state.name(),
                })
            }
        };
        Ok(())
    }

    fn answer(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => self.queue(&Reply::Done),
            Err(message) => self.queue(&Reply::Error { message }),
        }
    }

    /// Queues the entries of `dir` in frames of at most [`ENTRIES_PER_FRAME`]
    /// bytes, then `Done`; or one `Error`.
    fn list_dir(&mut self, dir: &Path) {
        let read = match std::fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) => {
                return self.queue(&Reply::Error {
                    message: format!("cannot list {}: {e}", dir.display()),
                })
            }
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        for item in read {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    return self.queue(&Reply::Error {
                        message: format!("cannot list {}: {e}", dir.display()),
                    })
                }
            };
            let entry = match lstat_entry(&item.path(), item.file_name()) {
                Ok(e) => e,
                Err(message) => return self.queue(&Reply::Error { message }),
            };
            let len = entry_wire_len(&entry);
            if !batch.is_empty() && bytes + len > ENTRIES_PER_FRAME {
                self.queue(&Reply::Entries(std::mem::take(&mut batch)));
                bytes = 0;
            }
            bytes += len;
            batch.push(entry);
        }
        if !batch.is_empty() {
            self.queue(&Reply::Entries(batch));
        }
        self.queue(&Reply::Done);
    }

    fn start(&mut self, exec: ExecRequest) -> State {
        self.log(format_args!("exec {:?}", exec.argv));
        match spawn(&exec, &self.config.base_env) {
            Ok(run) => State::Running(Box::new(run)),
            Err(message) => {
                self.queue(&Reply::ExecFailed { message });
                State::Idle
            }
        }
    }

    fn read_pipe(&mut self, slot: Slot) {
        let State::Running(run) = &mut self.state else {
            return;
        };
        let pipe = match slot {
            Slot::Stdout => &mut run.stdout,
            _ => &mut run.stderr,
        };
        let Some(fd) = pipe else { return };
        let mut buf = vec![0u8; CHUNK];
        let reply = match rustix::io::read(&*fd, &mut buf) {
            Ok(0) => {
                *pipe = None;
                return;
            }
            Ok(n) => {
                buf.truncate(n);
                run.last_activity = std::time::Instant::now();
                match slot {
                    Slot::Stdout => Reply::Stdout(buf),
                    _ => Reply::Stderr(buf),
                }
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => return,
            Err(_) => {
                *pipe = None;
                return;
            }
        };
        self.queue(&reply);
    }

    fn write_stdin(&mut self) {
        let State::Running(run) = &mut self.state else {
            return;
        };
        let Some(fd) = &run.stdin else { return };
        match rustix::io::write(fd, &run.stdin_buf) {
            Ok(n) => {
                run.stdin_buf.drain(..n);
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => {}
            // The command closed its stdin (EPIPE) or worse: drop what is left.
            Err(_) => {
                run.stdin = None;
                run.stdin_buf = Vec::new();
            }
        }
        if run.stdin_eof && run.stdin_buf.is_empty() {
            run.stdin = None;
        }
    }

    fn pump_download(&mut self) {
        if self.queued() >= OUT_HIGH {
            return;
        }
        let State::Downloading(file) = &mut self.state else {
            return;
        };
        let mut buf = vec![0u8; CHUNK];
        let reply = loop {
            match file.read(&mut buf) {
                Ok(0) => break Reply::FileEnd,
                Ok(n) => {
                    buf.truncate(n);
                    break Reply::FileData(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    break Reply::Error {
                        message: format!("reading the file failed: {e}"),
                    }
                }
            }
        };
        if reply.ends_request() {
            self.state = State::Idle;
        }
        self.queue(&reply);
    }

    fn reap(&mut self) {
        let mut running = match &mut self.state {
            State::Running(run) => Some(run),
            _ => None,
        };
        if self.config.reap_orphans {
            // wait() is waitpid(-1): every child, whatever its process group
            // (the command leads its own).
            while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
                if let Some(run) = running.as_deref_mut() {
                    if run.pid == pid {
                        run.record(status);
                    }
                }
            }
        } else if let Some(run) = running {
            if run.pidfd.is_none() && run.status.is_none() {
                if let Ok(Some((_, status))) =
                    rustix::process::waitpid(Some(run.pid), WaitOptions::NOHANG)
                {
                    run.record(status);
                }
            }
        }
    }

    fn finish_command(&mut self) {
        let status = match &self.state {
            State::Running(run) if run.finished() => run.status,
            _ => None,
        };
        if let Some(status) = status {
            self.log(format_args!("command ended: {status:?}"));
            self.state = State::Idle;
            self.queue(&Reply::Exit(status));
        }
    }
}

fn winsize(size: WinSize) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// The last component of `path`, or the path itself for `/`.
fn entry_name(path: &OsStr) -> OsString {
    Path::new(path)
        .file_name()
        .map(OsStr::to_os_string)
        .unwrap_or_else(|| path.to_os_string())
}

fn lstat_entry(path: &Path, name: OsString) -> Result<Entry, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    let ft = meta.file_type();
    let (kind, target) = if ft.is_symlink() {
        let target = std::fs::read_link(path)
            .map_err(|e| format!("cannot read the symlink {}: {e}", path.display()))?;
        (EntryKind::Symlink, target.into_os_string())
    } else if ft.is_dir() {
        (EntryKind::Dir, OsString::new())
    } else if ft.is_file() {
        (EntryKind::File, OsString::new())
    } else {
        (EntryKind::Other, OsString::new())
    };
    let time = |sec: i64, nsec: i64| Time {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    };
    Ok(Entry {
        name,
        kind,
        mode: meta.mode() & 0o7777,
        size: meta.size(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        target,
    })
}

fn make_dir(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |e: io::Error| format!("cannot create the directory {}: {e}", path.display());
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
            if !is_dir {
                return Err(err(e));
            }
        }
        Err(e) => return Err(err(e)),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777)).map_err(err)
}

fn make_symlink(target: &OsStr, path: &Path) -> Result<(), String> {
    let err = |e: io::Error| format!("cannot create the symlink {}: {e}", path.display());
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.is_dir() {
            return Err(format!(
                "cannot create the symlink {}: a directory is in the way",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    std::os::unix::fs::symlink(target, path).map_err(err)
}

fn set_times(path: &Path, atime: Time, mtime: Time) -> Result<(), String> {
    use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
    let ts = |t: Time| Timespec {
        tv_sec: t.sec,
        tv_nsec: i64::from(t.nsec),
    };
    let times = Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| format!("cannot set the times of {}: {e}", path.display()))
}

/// A new pseudo-terminal of `size`: (master, slave). The master is
/// non-blocking, like the pipes the loop reads.
fn open_pty(size: WinSize) -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::termios::tcsetwinsize(&master, winsize(size))?;
    set_nonblocking(master.as_fd())?;
    Ok((master, slave))
}

/// Starts the command; on failure returns the message for the host.
fn spawn(exec: &ExecRequest, base_env: &[(OsString, OsString)]) -> Result<Running, String> {
    let Some(program) = exec.argv.first() else {
        return Err("empty command line".into());
    };
    let cwd = exec.cwd.as_deref().unwrap_or(OsStr::new("/"));
    if let Err(e) = std::fs::read_dir(cwd) {
        return Err(format!(
            "working directory {} is not usable: {e}",
            Path::new(cwd).display()
        ));
    }
    let mut cmd = Command::new(program);
    cmd.args(&exec.argv[1..])
        .env_clear()
        .envs(base_env.iter().map(|(k, v)| (k, v)))
        .envs(exec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd);
    let mut master = None;
    if let Some(size) = exec.pty {
        let (m, slave) =
            open_pty(size).map_err(|e| format!("cannot allocate a pseudo-terminal: {e}"))?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| format!("cannot allocate a pseudo-terminal: {e}"))
        };
        cmd.stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        // SAFETY: runs in the child between fork and exec and makes only two
        // system calls (setsid, ioctl) on a descriptor the child owns.
        unsafe {
            cmd.pre_exec(|| {
                // A session of its own whose controlling terminal is the pty
                // (stdin by now): job control, and ^C reaches its foreground
                // job. setsid also makes it a process group leader, which
                // `Running::kill` relies on.
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(std::io::stdin())?;
                Ok(())
            });
        }
        master = Some(m);
    } else {
        cmd.stdin(if exec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| spawn_message(program, exec, base_env, &e))?;
    // Our copies of the slave go with `cmd`: the master reads EIO once the
    // command and everything it started have closed the terminal.
    drop(cmd);
    let pid = Pid::from_child(&child);
    let pipes = match &master {
        Some(m) => {
            let dup = |fd: &OwnedFd| fd.try_clone().ok();
            [dup(m), None, if exec.stdin { dup(m) } else { None }]
        }
        None => [
            child.stdout.take().map(OwnedFd::from),
            child.stderr.take().map(OwnedFd::from),
            child.stdin.take().map(OwnedFd::from),
        ],
    };
    for fd in pipes.iter().flatten() {
        // A pipe left blocking could stall the whole loop; better to lose the stream.
        let _ = set_nonblocking(fd.as_fd());
    }
    let [stdout, stderr, stdin] = pipes;
    // pidfds need Linux 5.3; older kernels get a short polling tick instead.
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
    Ok(Running {
        pid,
        pidfd,
        stdout,
        stderr,
        stdin,
        pty: master,
        stdin_buf: Vec::new(),
        stdin_eof: false,
        status: None,
        last_activity: std::time::Instant::now(),
    })
}

fn spawn_message(
    program: &OsStr,
    exec: &ExecRequest,
    base_env: &[(OsString, OsString)],
    err: &io::Error,
) -> String {
    let name = program.to_string_lossy();
    if err.kind() == io::ErrorKind::NotFound && !program.as_bytes().contains(&b'/') {
        let path = exec
            .env
            .iter()
            .chain(base_env)
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{name}: command not found in the appliance (PATH={path})")
    } else {
        format!("{name}: cannot run: {err}")
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::thread::JoinHandle;
    use supermin_protocol::{read_message, write_message};

    struct Host {
        conn: UnixStream,
        daemon: JoinHandle<Result<Outcome, AgentError>>,
    }

    fn config() -> AgentConfig {
        AgentConfig {
            reap_orphans: false,
            base_env: AgentConfig::default_env(),
            info: "test".into(),
            verbose: false,
            flush_disks: false,
        }
    }

    fn connect() -> Host {
        let (host, guest) = UnixStream::pair().unwrap();
        // A daemon that stops answering fails the test instead of hanging it.
        host.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let daemon = std::thread::spawn(move || serve(OwnedFd::from(guest), &config()));
        let mut host = Host { conn: host, daemon };
        match host.recv() {
            Reply::Hello(h) => assert_eq!(h.version, PROTOCOL_VERSION),
            other => panic!("expected hello, got {other:?}"),
        }
        host.send(&Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            info: "host".into(),
        }));
        host
    }

    impl Host {
        fn send(&mut self, r: &Request) {
            write_message(&mut self.conn, r).unwrap();
        }

        fn recv(&mut self) -> Reply {
            read_message(&mut self.conn)
                .unwrap()
                .expect("daemon closed")
        }

        /// Collects stdout, stderr and the final reply of one exec.
        fn exec_collect(
            &mut self,
            argv: &[&str],
            stdin: Option<&[u8]>,
        ) -> (Vec<u8>, Vec<u8>, Reply) {
            self.send(&Request::Exec(ExecRequest {
                argv: argv.iter().map(OsString::from).collect(),
                env: vec![("GREETING".into(), "hi".into())],
                cwd: None,
                stdin: stdin.is_some(),
                pty: None,
            }));
            // Like the launcher, feed stdin from another thread while reading
            // output here: the daemon applies back-pressure both ways.
            let feeder = stdin.map(|data| {
                let data = data.to_vec();
                let mut conn = self.conn.try_clone().unwrap();
                std::thread::spawn(move || {
                    for chunk in data.chunks(CHUNK) {
                        write_message(&mut conn, &Request::Stdin(chunk.to_vec())).unwrap();
                    }
                    write_message(&mut conn, &Request::StdinEof).unwrap();
                })
            });
            let (mut out, mut err) = (Vec::new(), Vec::new());
            loop {
                match self.recv() {
                    Reply::Stdout(d) => out.extend(d),
                    Reply::Stderr(d) => err.extend(d),
                    end => {
                        assert!(end.ends_request(), "{end:?}");
                        if let Some(f) = feeder {
                            f.join().unwrap();
                        }
                        return (out, err, end);
                    }
                }
            }
        }

        fn shutdown(mut self) {
            self.send(&Request::Shutdown);
            assert_eq!(self.recv(), Reply::Done);
            assert_eq!(self.daemon.join().unwrap().unwrap(), Outcome::Shutdown);
        }
    }

    #[test]
    fn exec_streams_stdout_and_stderr_separately_and_reports_the_exit_code() {
        let mut host = connect();
        let (out, err, end) = host.exec_collect(
            &["sh", "-c", "echo out-$GREETING; echo err >&2; exit 3"],
            None,
        );
        assert_eq!(out, b"out-hi\n");
        assert_eq!(err, b"err\n");
        assert_eq!(end, Reply::Exit(ExitStatus::Code(3)));
        host.shutdown();
    }

    #[test]
    fn a_background_job_holding_the_pipes_does_not_hold_the_exit() {
        // Regression: `sh -c 'sleep 100 & echo hi'` kept the run open for the sleep.
        let mut host = connect();
        let start = std::time::Instant::now();
        let (out, _, end) = host.exec_collect(&["sh", "-c", "sleep 30 & echo hi"], None);
        assert_eq!(out, b"hi\n");
        assert_eq!(end, Reply::Exit(ExitStatus::Code(0)));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the exit waited for the background job"
        );
        host.shutdown();
    }

    #[test]
    fn output_that_keeps_flowing_after_the_exit_is_still_relayed() {
        let mut host = connect();
        let (out, _, end) = host.exec_collect(
            &[
                "sh",
                "-c",
                "(for i in 1 2 3 4 5; do echo $i; sleep 0.02; done) & exit 0",
            ],
            None,
        );
        assert_eq!(out, b"1\n2\n3\n4\n5\n");
        assert_eq!(end, Reply::Exit(ExitStatus::Code(0)));
        host.shutdown();
    }

    #[test]
    fn a_command_killed_by_a_signal_reports_the_signal() {
        let mut host = connect();
        let (_, _, end) = host.exec_collect(&["sh", "-c", "kill -TERM $$"], None);
        assert_eq!(end, Reply::Exit(ExitStatus::Signal(15)));
        host.shutdown();
    }

    #[test]
    fn stdin_is_passed_through_and_large_output_arrives_whole() {
        let mut host = connect();
        // Bigger than every buffer on the way, to exercise back-pressure both ways.
        let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (out, _, end) = host.exec_collect(&["cat"], Some(&input));
        assert_eq!(end, Reply::Exit(ExitStatus::Code(0)));
        assert_eq!(out.len(), input.len());
        assert!(out == input);
        host.shutdown();
    }

    #[test]
    fn command_without_stdin_reads_end_of_file() {
        let mut host = connect();
        let (out, _, end) = host.exec_collect(&["sh", "-c", "wc -c"], None);
        assert_eq!(String::from_utf8_lossy(&out).trim(), "0");
        assert_eq!(end, Reply::Exit(ExitStatus::Code(0)));
        host.shutdown();
    }

    #[test]
    fn missing_command_is_reported_as_exec_failed_naming_it() {
        let mut host = connect();
        let (_, _, end) = host.exec_collect(&["no-such-command-xyz"], None);
        match end {
            Reply::ExecFailed { message } => {
                assert!(message.contains("no-such-command-xyz"), "{message}");
                assert!(message.contains("not found"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // The daemon is still usable afterwards.
        let (out, _, _) = host.exec_collect(&["echo", "still here"], None);
        assert_eq!(out, b"still here\n");
        host.shutdown();
    }

    #[test]
    fn upload_then_download_returns_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("supermin-agent-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let mut host = connect();
        host.send(&Request::Upload {
            path: path.clone().into(),
            mode: 0o600,
        });
        for chunk in data.chunks(CHUNK) {
            host.send(&Request::FileData(chunk.to_vec()));
        }
        host.send(&Request::FileEnd);
        assert_eq!(host.recv(), Reply::Done);
        assert_eq!(std::fs::read(&path).unwrap(), data);

        host.send(&Request::Download {
            path: path.clone().into(),
        });
        let mut back = Vec::new();
        loop {
            match host.recv() {
                Reply::FileData(d) => back.extend(d),
                Reply::FileEnd => break,
                other => panic!("{other:?}"),
            }
        }
        assert!(back == data);
        host.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn download_of_a_missing_file_is_an_error_naming_it() {
        let mut host = connect();
        host.send(&Request::Download {
            path: "/nonexistent/supermin-test".into(),
        });
        match host.recv() {
            Reply::Error { message } => assert!(message.contains("/nonexistent/supermin-test")),
            other => panic!("{other:?}"),
        }
        host.shutdown();
    }

    #[test]
    fn upload_to_an_unwritable_place_is_an_error_after_the_data() {
        let mut host = connect();
        host.send(&Request::Upload {
            path: "/nonexistent/dir/f".into(),
            mode: 0o644,
        });
        host.send(&Request::FileData(b"x".to_vec()));
        host.send(&Request::FileEnd);
        assert!(matches!(host.recv(), Reply::Error { .. }));
        host.shutdown();
    }

    #[test]
    fn host_disappearing_mid_command_ends_the_loop_and_kills_the_command() {
        let mut host = connect();
        let marker =
            std::env::temp_dir().join(format!("supermin-agent-gone-{}", std::process::id()));
        let script = format!("echo started; sleep 3; touch {}", marker.display());
        host.send(&Request::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }));
        assert_eq!(host.recv(), Reply::Stdout(b"started\n".to_vec()));
        let Host { conn, daemon } = host;
        drop(conn);
        assert_eq!(daemon.join().unwrap().unwrap(), Outcome::HostGone);
        std::thread::sleep(std::time::Duration::from_millis(3500));
        assert!(!marker.exists(), "the command outlived the host");
    }

    #[test]
    fn host_disappearing_before_the_handshake_is_host_gone() {
        let (host, guest) = UnixStream::pair().unwrap();
        drop(host);
        assert_eq!(
            serve(OwnedFd::from(guest), &config()).unwrap(),
            Outcome::HostGone
        );
    }

    #[test]
    fn wrong_protocol_version_is_refused() {
        let (mut host, guest) = UnixStream::pair().unwrap();
        let daemon = std::thread::spawn(move || serve(OwnedFd::from(guest), &config()));
        let _hello: Reply = read_message(&mut host).unwrap().unwrap();
        write_message(
            &mut host,
            &Request::Hello(Hello {
                version: PROTOCOL_VERSION + 1,
                info: String::new(),
            }),
        )
        .unwrap();
        let err = daemon.join().unwrap().unwrap_err();
        assert!(matches!(err, AgentError::VersionMismatch { .. }), "{err}");
    }

    #[test]
    fn garbage_from_the_host_is_a_protocol_error_not_a_hang() {
        let (mut host, guest) = UnixStream::pair().unwrap();
        let daemon = std::thread::spawn(move || serve(OwnedFd::from(guest), &config()));
        let _hello: Reply = read_message(&mut host).unwrap().unwrap();
        host.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let err = daemon.join().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                AgentError::Protocol {
                    source: ProtocolError::Oversized { .. }
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn exec_before_the_handshake_is_refused() {
        let (mut host, guest) = UnixStream::pair().unwrap();
        let daemon = std::thread::spawn(move || serve(OwnedFd::from(guest), &config()));
        let _hello: Reply = read_message(&mut host).unwrap().unwrap();
        write_message(&mut host, &Request::Exec(ExecRequest::default())).unwrap();
        let err = daemon.join().unwrap().unwrap_err();
        assert!(matches!(err, AgentError::Unexpected { .. }), "{err}");
    }

    /// Regression: PID 1 mode reaped with waitpid(0), which only sees the
    /// daemon's own process group, so a command (which leads its own group)
    /// was never seen to exit. `waitpid(-1)` would steal other tests'
    /// children, so this runs in a child copy of the test binary.
    #[test]
    fn pid1_mode_sees_the_command_exit_and_reaps_orphans() {
        const VAR: &str = "SUPERMIN_AGENT_TEST_PID1_MODE";
        if std::env::var_os(VAR).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "agent::tests::pid1_mode_sees_the_command_exit_and_reaps_orphans",
                    "--exact",
                    "--test-threads=1",
                ])
                .env(VAR, "1")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let (host, guest) = UnixStream::pair().unwrap();
        host.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let daemon = std::thread::spawn(move || {
            let config = AgentConfig {
                reap_orphans: true,
                ..config()
            };
            serve(OwnedFd::from(guest), &config)
        });
        let mut host = Host { conn: host, daemon };
        assert!(matches!(host.recv(), Reply::Hello(_)));
        host.send(&Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            info: String::new(),
        }));
        // As a subreaper this process inherits orphans the way PID 1 does.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
        // The background sleeper outlives the shell and becomes our orphan.
        let (out, _, end) = host.exec_collect(
            &["sh", "-c", "sleep 0.5 >/dev/null 2>&1 & echo $!; exit 4"],
            None,
        );
        assert_eq!(end, Reply::Exit(ExitStatus::Code(4)));
        let orphan = String::from_utf8(out).unwrap().trim().to_string();
        let (_, _, end) = host.exec_collect(&["true"], None);
        assert_eq!(end, Reply::Exit(ExitStatus::Code(0)));
        // Reaped, not left a zombie: its /proc entry goes away.
        let proc_entry = std::path::PathBuf::from(format!("/proc/{orphan}"));
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while proc_entry.exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(!proc_entry.exists(), "orphan {orphan} was not reaped");
        host.shutdown();
    }

    #[test]
    fn shutdown_during_a_command_kills_it_and_is_acknowledged() {
        let mut host = connect();
        let marker =
            std::env::temp_dir().join(format!("supermin-agent-shutdown-{}", std::process::id()));
        let script = format!("echo started; sleep 3; touch {}", marker.display());
        host.send(&Request::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }));
        assert_eq!(host.recv(), Reply::Stdout(b"started\n".to_vec()));
        host.shutdown();
        std::thread::sleep(std::time::Duration::from_millis(3500));
        assert!(!marker.exists(), "the command outlived the shutdown");
    }

    #[test]
    fn stdin_arriving_after_the_command_ended_is_dropped_quietly() {
        let mut host = connect();
        let (_, _, end) = host.exec_collect(&["true"], None);
        assert_eq!(end, Reply::Exit(ExitStatus::Code(0)));
        // A late stdin pump: no reply, no error, and the next command is unaffected.
        host.send(&Request::Stdin(b"late".to_vec()));
        host.send(&Request::StdinEof);
        let (out, _, end) = host.exec_collect(&["echo", "next"], None);
        assert_eq!(out, b"next\n");
        assert_eq!(end, Reply::Exit(ExitStatus::Code(0)));
        host.shutdown();
    }

    fn expect_done(host: &mut Host) {
        match host.recv() {
            Reply::Done => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_command_on_a_pty_has_it_as_controlling_terminal_of_the_asked_size() {
        let mut host = connect();
        host.send(&Request::Exec(ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                // The first line proves the pty and its size; the read waits
                // for the resize and for input typed on the terminal.
                "stty size; read line; stty size; echo got-$line; exit 3".into(),
            ],
            stdin: true,
            pty: Some(WinSize {
                rows: 30,
                cols: 100,
            }),
            ..Default::default()
        }));
        let mut out = Vec::new();
        let mut sent = false;
        let end = loop {
            match host.recv() {
                Reply::Stdout(d) => out.extend(d),
                end => break end,
            }
            if !sent && String::from_utf8_lossy(&out).contains("30 100") {
                host.send(&Request::Resize(WinSize {
                    rows: 40,
                    cols: 120,
                }));
                host.send(&Request::Stdin(b"typed\r".to_vec()));
                sent = true;
            }
        };
        let text = String::from_utf8_lossy(&out).replace('\r', "");
        assert_eq!(end, Reply::Exit(ExitStatus::Code(3)), "{text}");
        // The terminal echoes what was typed; its size followed the resize.
        assert!(
            text.contains("30 100\ntyped\n40 120\ngot-typed\n"),
            "{text:?}"
        );
        host.shutdown();
    }

    #[test]
    fn ctrl_c_on_a_pty_interrupts_the_foreground_job_only() {
        let mut host = connect();
        host.send(&Request::Exec(ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "trap 'echo trapped' INT; echo ready; sleep 30; echo after; exit 5".into(),
            ],
            stdin: true,
            pty: Some(WinSize { rows: 24, cols: 80 }),
            ..Default::default()
        }));
        let mut out = Vec::new();
        let mut sent = false;
        let start = std::time::Instant::now();
        let end = loop {
            match host.recv() {
                Reply::Stdout(d) => out.extend(d),
                end => break end,
            }
            if !sent && String::from_utf8_lossy(&out).contains("ready") {
                std::thread::sleep(std::time::Duration::from_millis(200));
                host.send(&Request::Stdin(vec![0x03]));
                sent = true;
            }
        };
        let text = String::from_utf8_lossy(&out).into_owned();
        assert_eq!(end, Reply::Exit(ExitStatus::Code(5)), "{text}");
        assert!(text.contains("after"), "{text:?}");
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
        host.shutdown();
    }

    #[test]
    fn files_directories_symlinks_and_times_are_made_and_listed() {
        let dir = std::env::temp_dir().join(format!("supermin-agent-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut host = connect();
        let d = dir.join("d");
        host.send(&Request::Mkdir {
            path: d.clone().into(),
            mode: 0o751,
        });
        expect_done(&mut host);
        // An existing directory is kept and gets the asked mode.
        host.send(&Request::Mkdir {
            path: d.clone().into(),
            mode: 0o755,
        });
        expect_done(&mut host);
        host.send(&Request::Upload {
            path: d.join("f").into(),
            mode: 0o777,
        });
        host.send(&Request::FileData(b"data".to_vec()));
        host.send(&Request::FileEnd);
        expect_done(&mut host);
        host.send(&Request::Symlink {
            target: "f".into(),
            path: d.join("l").into(),
        });
        expect_done(&mut host);
        let t = Time {
            sec: 1_000_000_000,
            nsec: 5,
        };
        for name in ["f", "l"] {
            host.send(&Request::SetTimes {
                path: d.join(name).into(),
                atime: t,
                mtime: t,
            });
            expect_done(&mut host);
        }
        host.send(&Request::ListDir {
            path: d.clone().into(),
        });
        let mut entries = Vec::new();
        loop {
            match host.recv() {
                Reply::Entries(e) => entries.extend(e),
                Reply::Done => break,
                other => panic!("{other:?}"),
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(entries.len(), 2);
        let (f, l) = (&entries[0], &entries[1]);
        // The umask (022 in the appliance, whatever here) does not apply.
        assert_eq!((f.kind, f.mode, f.size), (EntryKind::File, 0o777, 4));
        assert_eq!(f.mtime, t);
        assert_eq!(
            (l.kind, l.target.as_os_str()),
            (EntryKind::Symlink, OsStr::new("f"))
        );
        assert_eq!(l.mtime, t);
        host.send(&Request::Lstat { path: d.into() });
        match host.recv() {
            Reply::Entries(e) => {
                assert_eq!(e.len(), 1);
                assert_eq!((e[0].kind, e[0].mode), (EntryKind::Dir, 0o755));
                assert_eq!(e[0].name, "d");
            }
            other => panic!("{other:?}"),
        }
        expect_done(&mut host);
        host.send(&Request::Lstat {
            path: dir.join("missing").into(),
        });
        match host.recv() {
            Reply::Error { message } => assert!(message.contains("missing"), "{message}"),
            other => panic!("{other:?}"),
        }
        host.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_working_directory_is_reported() {
        let mut host = connect();
        host.send(&Request::Exec(ExecRequest {
            argv: vec!["true".into()],
            cwd: Some("/nonexistent-cwd".into()),
            ..Default::default()
        }));
        match host.recv() {
            Reply::ExecFailed { message } => assert!(message.contains("/nonexistent-cwd")),
            other => panic!("{other:?}"),
        }
        host.shutdown();
    }
}
