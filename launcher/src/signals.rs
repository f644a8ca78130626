//! Turning SIGINT, SIGTERM and SIGHUP into events while a run is in progress,
//! so that Ctrl-C ends in the same cleanup as every other exit path (qemu
//! killed, scratch directory removed) instead of killing us mid-way.
//!
//! The handler only writes the signal number to a pipe (the one thing a
//! handler may safely do); a thread reads the pipe, records the number in
//! each run's [`Stop`] (which every wait checks) and wakes a wait on the event
//! channel with an [`Event::Signal`] when the channel has room: a full
//! channel means the run is busy with a reply and will look at its `Stop`
//! next. The previous dispositions come back when the
//! [`Guard`] is dropped. Guards nest: only the first installs the handlers,
//! and every live guard gets each signal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard};

use super::stop::Stop;
use super::vm::Event;

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The write end of the pipe, read by the handler.
static PIPE_WR: AtomicI32 = AtomicI32::new(-1);

struct Shared {
    users: Vec<(u64, SyncSender<Event>, Arc<Stop>)>,
    next_id: u64,
    write_end: Option<OwnedFd>,
    old: Vec<(libc::c_int, libc::sigaction)>,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    users: Vec::new(),
    next_id: 0,
    write_end: None,
    old: Vec::new(),
});

fn shared() -> MutexGuard<'static, Shared> {
    SHARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WR.load(Ordering::Relaxed);
    if fd >= 0 {
        // Signal numbers are 1..=SIGRTMAX (64); anything else is not ours.
        let Ok(byte) = u8::try_from(sig) else {
            return;
        };
        // SAFETY: write(2) is async-signal-safe; `byte` outlives the call. A
        // full pipe drops the byte, which only loses a repeated signal.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// Signal delivery to one run; dropping it stops that.
pub struct Guard {
    id: u64,
}

impl Guard {
    pub fn install(tx: SyncSender<Event>, stop: Arc<Stop>) -> io::Result<Guard> {
        let mut s = shared();
        if s.write_end.is_none() {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: `fds` has room for the two descriptors pipe2 writes.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both fds are open and ours alone.
            let (read_end, write_end) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // The reader blocks; only the handler's end must never block.
            // SAFETY: plain fcntl on an fd we own.
            unsafe {
                libc::fcntl(read_end.as_raw_fd(), libc::F_SETFL, 0);
            }
            PIPE_WR.store(write_end.as_raw_fd(), Ordering::SeqCst);
            let mut old = Vec::new();
            for sig in SIGNALS {
                // SAFETY: a zeroed sigaction is a valid value to fill in; the
                // handler only calls write(2).
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                    action.sa_flags = libc::SA_RESTART;
                    libc::sigemptyset(&mut action.sa_mask);
                    let mut previous: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(sig, &action, &mut previous) == 0 {
                        old.push((sig, previous));
                    }
                }
            }
            s.old = old;
            s.write_end = Some(write_end);
            std::thread::spawn(move || forward(read_end));
        }
        let id = s.next_id;
        s.next_id += 1;
        s.users.push((id, tx, stop));
        Ok(Guard { id })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut s = shared();
        s.users.retain(|(id, _, _)| *id != self.id);
        if !s.users.is_empty() {
            return;
        }
        for (sig, previous) in s.old.drain(..) {
            // SAFETY: restores a disposition sigaction gave us earlier.
            unsafe {
                libc::sigaction(sig, &previous, std::ptr::null_mut());
            }
        }
        PIPE_WR.store(-1, Ordering::SeqCst);
        // Closing the write end ends the forwarding thread.
        s.write_end = None;
    }
}

fn forward(read_end: OwnedFd) {
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into `byte`, which lives across the call.
        let n = unsafe { libc::read(read_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        match n {
            1 => {
                for (_, tx, stop) in &shared().users {
                    stop.raise(i32::from(byte));
                    let _ = tx.try_send(Event::Signal(i32::from(byte)));
                }
            }
            0 => return,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_signal_becomes_an_event_and_the_old_disposition_returns() {
        let (tx, rx) = mpsc::sync_channel(4);
        let stop = Arc::new(Stop::new(std::time::Instant::now(), None));
        let guard = Guard::install(tx, Arc::clone(&stop)).unwrap();
        // SAFETY: raising a signal whose handler we just installed.
        unsafe {
            libc::raise(libc::SIGHUP);
        }
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::Signal(s)) => assert_eq!(s, libc::SIGHUP),
            other => panic!("{other:?}"),
        }
        assert_eq!(stop.signal(), Some(libc::SIGHUP));
        drop(guard);
        // SAFETY: reading the current disposition only.
        let current = unsafe {
            let mut cur: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut cur);
            cur.sa_sigaction
        };
        assert_ne!(current, on_signal as *const () as libc::sighandler_t);
    }
}
