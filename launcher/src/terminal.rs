//! `supermin run -i`: our terminal connected to a pseudo-terminal in the
//! appliance, the way virt-rescue and ssh do it.
//!
//! Our terminal goes into raw mode for the session, so every key (Ctrl-C and
//! Ctrl-Z included) is a byte for the guest's terminal, whose line discipline
//! turns it into a signal for the guest's foreground job: our own SIGINT
//! handling never sees it. [`RawMode`] puts the terminal back in `Drop`, so
//! every way out of the session (the command's exit, an error, `--timeout`,
//! a signal, the escape) restores it. A thread reads our terminal in ticks
//! and forwards keys, and window size changes (SIGWINCH sets a flag it looks
//! at); the session's own thread writes what the guest's terminal prints,
//! raw: on this path the guest's output is the point, as in virt-rescue.
//!
//! The escape is ssh's: `~.` at the start of a line ends the session and
//! kills the VM (`~~` sends one `~`).

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::Instant;

use rustix::termios::{self, OptionalActions, Termios};
use supermin_protocol::{ExecRequest, ExitStatus, Reply, Request, WinSize};

use super::stop::{self, TICK};
use super::vm::Writer;
use super::{guest_text, halted, unexpected, unless_stopped, LaunchError, Session};

/// Whether our stdin is a terminal (`-i` needs one).
pub fn stdin_is_terminal() -> bool {
    termios::isatty(io::stdin())
}

/// Our terminal's size; 24x80 when it does not say.
fn window_size() -> WinSize {
    match termios::tcgetwinsize(io::stdin()) {
        Ok(w) if w.ws_row > 0 && w.ws_col > 0 => WinSize {
            rows: w.ws_row,
            cols: w.ws_col,
        },
        _ => WinSize { rows: 24, cols: 80 },
    }
}

/// Our terminal in raw mode until dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), OptionalActions::Now, &self.saved);
    }
}

/// Set by the SIGWINCH handler (signal-hook's, which only stores to it),
/// cleared by the input thread.
static WINCH: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// The SIGWINCH handler while a session lives. Its action is removed on
/// drop; signal-hook keeps its own handler installed, which then does what
/// SIGWINCH's default does (nothing) or calls the handler found before.
struct Winch {
    id: signal_hook::SigId,
}

impl Winch {
    fn install() -> io::Result<Winch> {
        let id = signal_hook::flag::register(signal_hook::consts::SIGWINCH, Arc::clone(&WINCH))?;
        Ok(Winch { id })
    }
}

impl Drop for Winch {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.id);
    }
}

/// ssh's escape: `~.` right after Enter (or at the very start) ends the session.
#[derive(Debug)]
struct Escape {
    at_line_start: bool,
    tilde: bool,
}

impl Escape {
    fn new() -> Escape {
        Escape {
            at_line_start: true,
            tilde: false,
        }
    }

    /// Appends to `out` what of `input` goes to the guest; true when the
    /// escape was typed (what came before it is in `out`, the rest dropped).
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.tilde {
                self.tilde = false;
                match b {
                    b'.' => return true,
                    b'~' => {
                        out.push(b'~');
                        self.at_line_start = false;
                        continue;
                    }
                    _ => out.push(b'~'),
                }
            } else if self.at_line_start && b == b'~' {
                self.tilde = true;
                continue;
            }
            out.push(b);
            self.at_line_start = b == b'\r' || b == b'\n';
        }
        false
    }
}

/// Forwards our terminal's keys and size changes to the command until
/// `done` is set, the escape is typed (`escaped` is set), or the terminal
/// or the channel fails.
fn pump_terminal(
    writer: Writer,
    done: Arc<AtomicBool>,
    escaped: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let stdin = io::stdin();
        let fd = stdin.as_fd();
        let tick = Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(TICK.subsec_nanos()),
        };
        let mut escape = Escape::new();
        let mut buf = [0u8; 4096];
        let mut out = Vec::with_capacity(buf.len());
        loop {
            if done.load(Ordering::SeqCst) {
                return;
            }
            if WINCH.swap(false, Ordering::SeqCst)
                && writer
                    .send(&Request::Resize(window_size()), Some(&*done))
                    .is_err()
            {
                return;
            }
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match poll(&mut fds, Some(&tick)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {}
                Err(_) => return,
            }
            let n = match rustix::io::read(fd, &mut buf) {
                // The terminal hung up; SIGHUP ends the session.
                Ok(0) => return,
                Ok(n) => n,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
                Err(_) => return,
            };
            out.clear();
            let escape_typed = escape.feed(&buf[..n], &mut out);
            if !out.is_empty()
                && writer
                    .send(&Request::Stdin(out.clone()), Some(&*done))
                    .is_err()
            {
                return;
            }
            if escape_typed {
                escaped.store(true, Ordering::SeqCst);
                return;
            }
        }
    })
}

impl Session {
    /// Runs `req` on a pseudo-terminal in the appliance connected to our
    /// terminal (which must be stdin), sized like ours and following its
    /// resizes, until the command exits; our terminal is restored on every
    /// way out. Returns how the command ended; [`LaunchError::Escaped`] when
    /// the user typed the escape.
    pub fn interactive(&mut self, mut req: ExecRequest) -> Result<ExitStatus, LaunchError> {
        if req.argv.is_empty() {
            return Err(LaunchError::NoCommand);
        }
        if !stdin_is_terminal() {
            return Err(LaunchError::NotATerminal);
        }
        let setup = |what| move |source| LaunchError::Setup { what, source };
        let winch = Winch::install().map_err(setup("a SIGWINCH handler"))?;
        WINCH.store(false, Ordering::SeqCst);
        let raw = RawMode::enter().map_err(setup("our terminal (raw mode)"))?;
        req.pty = Some(window_size());
        req.stdin = true;
        self.log(format_args!("exec on a terminal {:?}\r", req.argv));
        self.vm.send(&Request::Exec(req))?;
        let done = Arc::new(AtomicBool::new(false));
        let escaped = Arc::new(AtomicBool::new(false));
        let input = pump_terminal(self.vm.writer(), Arc::clone(&done), Arc::clone(&escaped));
        let result = self.relay_terminal(&escaped);
        done.store(true, Ordering::SeqCst);
        // Within a tick: no key typed after the session may go to the guest.
        let _ = input.join();
        drop(raw);
        drop(winch);
        result
    }

    fn relay_terminal(&mut self, escaped: &AtomicBool) -> Result<ExitStatus, LaunchError> {
        use std::os::fd::AsFd;
        let stdout = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| LaunchError::Setup {
                what: "our standard output",
                source,
            })?;
        loop {
            if escaped.load(Ordering::SeqCst) {
                return Err(LaunchError::Escaped);
            }
            let data = match self.next_reply_by(Instant::now() + TICK)? {
                None => continue,
                Some(Reply::Stdout(data) | Reply::Stderr(data)) => data,
                Some(Reply::Exit(status)) => return Ok(status),
                Some(Reply::ExecFailed { message }) => {
                    return Err(LaunchError::CommandNotStarted {
                        message: guest_text(&message),
                    })
                }
                Some(other) => return Err(unexpected(other)),
            };
            match stop::write_all(stdout.as_fd(), &data, &self.stop) {
                Ok(()) => {}
                Err(stop::WriteError::Halt(halt)) => return Err(halted(&self.stop, halt)),
                // A hang-up can fail the write before its SIGHUP is seen.
                Err(stop::WriteError::Io(source)) => {
                    return Err(unless_stopped(
                        &self.stop,
                        LaunchError::Setup {
                            what: "writing to our terminal",
                            source,
                        },
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(e: &mut Escape, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let hit = e.feed(input, &mut out);
        (out, hit)
    }

    #[test]
    fn tilde_dot_after_enter_or_at_the_start_is_the_escape() {
        assert_eq!(feed(&mut Escape::new(), b"~."), (vec![], true));
        assert_eq!(
            feed(&mut Escape::new(), b"ls\r~.more"),
            (b"ls\r".to_vec(), true)
        );
        // Split across reads.
        let mut e = Escape::new();
        assert_eq!(feed(&mut e, b"x\r~"), (b"x\r".to_vec(), false));
        assert_eq!(feed(&mut e, b"."), (vec![], true));
    }

    #[test]
    fn tildes_elsewhere_and_doubled_go_through() {
        assert_eq!(feed(&mut Escape::new(), b"a~.b"), (b"a~.b".to_vec(), false));
        assert_eq!(feed(&mut Escape::new(), b"~~."), (b"~.".to_vec(), false));
        assert_eq!(feed(&mut Escape::new(), b"~/x"), (b"~/x".to_vec(), false));
    }
}
