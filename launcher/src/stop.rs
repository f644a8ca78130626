//! Why a wait must end early: the run's deadline (`--timeout`) and a signal
//! (Ctrl-C). Every place where the launcher can block on something the guest
//! or a slow local reader controls (a reply, a send to the guest, a write to
//! our stdout) waits in short ticks and asks [`Stop::check`] between them, so
//! no guest and no stalled pipe can hold a run past its deadline or make it
//! deaf to Ctrl-C.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long one blocking step may last before the deadline and signals are
/// looked at again.
pub const TICK: Duration = Duration::from_millis(100);

/// Why a wait ended without what it waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    Deadline,
    Signal(i32),
}

/// The run's deadline and the last signal received, shared by every thread
/// of a run.
#[derive(Debug)]
pub struct Stop {
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    signal: AtomicI32,
}

impl Stop {
    /// A run that started at `start` and may last `timeout`.
    pub fn new(start: Instant, timeout: Option<Duration>) -> Stop {
        Stop {
            timeout,
            deadline: timeout.map(|t| start + t),
            signal: AtomicI32::new(0),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Records a signal (from the signal forwarder).
    pub fn raise(&self, signal: i32) {
        self.signal.store(signal, Ordering::SeqCst);
    }

    /// The signal received, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// `Err` once the run must end.
    pub fn check(&self) -> Result<(), Halt> {
        if let Some(sig) = self.signal() {
            return Err(Halt::Signal(sig));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Halt::Deadline);
        }
        Ok(())
    }
}

/// Why [`write_all`] stopped.
#[derive(Debug)]
pub enum WriteError {
    Halt(Halt),
    Io(io::Error),
}

/// Writes all of `data` to `fd` (our stdout or stderr) without ever blocking
/// for long: each piece waits for the descriptor to be writable in ticks,
/// and pieces are at most `PIPE_BUF` bytes, which a pipe that polls writable
/// takes without blocking. A reader that stops reading therefore holds the
/// run only until its deadline or a signal.
pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8], stop: &Stop) -> Result<(), WriteError> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    const PIECE: usize = 4096;
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(TICK.subsec_nanos()),
    };
    while !data.is_empty() {
        stop.check().map_err(WriteError::Halt)?;
        let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
        match poll(&mut fds, Some(&tick)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(WriteError::Io(e.into())),
        }
        let revents = fds[0].revents();
        if revents.intersects(PollFlags::ERR | PollFlags::HUP) && !revents.contains(PollFlags::OUT)
        {
            return Err(WriteError::Io(io::Error::from(io::ErrorKind::BrokenPipe)));
        }
        let piece = &data[..data.len().min(PIECE)];
        match rustix::io::write(fd, piece) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(WriteError::Io(e.into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_signal_or_the_deadline_halts_and_the_signal_wins() {
        let stop = Stop::new(Instant::now(), Some(Duration::ZERO));
        assert_eq!(stop.check(), Err(Halt::Deadline));
        stop.raise(2);
        assert_eq!(stop.check(), Err(Halt::Signal(2)));
        assert_eq!(Stop::new(Instant::now(), None).check(), Ok(()));
    }

    #[test]
    fn a_reader_that_never_reads_cannot_hold_a_write_past_the_deadline() {
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let stop = Stop::new(Instant::now(), Some(Duration::from_millis(300)));
        // Far more than a socket buffer holds.
        let data = vec![b'x'; 4 << 20];
        let r = write_all(writer.as_fd(), &data, &stop);
        assert!(matches!(r, Err(WriteError::Halt(Halt::Deadline))), "{r:?}");
        drop(reader);
    }

    #[test]
    fn a_signal_halts_a_stalled_write() {
        let (_reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let stop = std::sync::Arc::new(Stop::new(Instant::now(), None));
        let raiser = std::sync::Arc::clone(&stop);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            raiser.raise(15);
        });
        let r = write_all(writer.as_fd(), &vec![0u8; 4 << 20], &stop);
        assert!(
            matches!(r, Err(WriteError::Halt(Halt::Signal(15)))),
            "{r:?}"
        );
        t.join().unwrap();
    }

    #[test]
    fn everything_arrives_when_the_reader_keeps_up_and_a_gone_reader_is_an_error() {
        use std::io::Read;
        let (mut reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let t = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        write_all(writer.as_fd(), &data, &Stop::new(Instant::now(), None)).unwrap();
        drop(writer);
        assert_eq!(t.join().unwrap(), expect);

        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(reader);
        assert!(matches!(
            write_all(writer.as_fd(), b"x", &Stop::new(Instant::now(), None)),
            Err(WriteError::Io(_))
        ));
    }
}
