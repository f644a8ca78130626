//! Turning SIGINT, SIGTERM and SIGHUP into events while a run is in progress,
//! so that Ctrl-C ends in the same cleanup as every other exit path (qemu
//! killed, scratch directory removed) instead of killing us mid-way.
//!
//! `signal-hook` owns the handler and its self-pipe; a thread reads its
//! iterator, records the number in each run's [`Stop`] (which every wait
//! checks) and wakes a wait on the event channel with an [`Event::Signal`]
//! when the channel has room: a full channel means the run is busy with a
//! reply and will look at its `Stop` next. Guards nest: the first starts the
//! forwarder, the last closes it, and every live guard gets each signal.
//!
//! signal-hook never hands the kernel back the old disposition (its handler
//! stays installed once it has been), so "the previous disposition returns"
//! is done its way: a signal that was at its default action gets it again
//! (`register_conditional_default`) whenever no run is live, and one that
//! was ignored when we first looked (`nohup`, a background job) is never
//! caught at all, so a hang-up still cannot end a `nohup supermin run`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use super::stop::Stop;
use super::vm::Event;

const SIGNALS: [libc::c_int; 3] = [SIGINT, SIGTERM, SIGHUP];

/// What the process's dispositions were before the first run, looked at once.
struct Setup {
    /// The signals a run catches: [`SIGNALS`] less the ignored ones.
    caught: Vec<libc::c_int>,
    /// True while no run is live; then a signal that had its default action
    /// gets it again.
    idle: Arc<AtomicBool>,
}

struct Forwarder {
    handle: Handle,
    thread: JoinHandle<()>,
}

struct Shared {
    users: Vec<(u64, SyncSender<Event>, Arc<Stop>)>,
    next_id: u64,
    setup: Option<Setup>,
    forwarder: Option<Forwarder>,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    users: Vec::new(),
    next_id: 0,
    setup: None,
    forwarder: None,
});

fn shared() -> MutexGuard<'static, Shared> {
    SHARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a signal did before anything here touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    Default,
    Ignored,
    Handler,
}

fn disposition(sig: libc::c_int) -> io::Result<Disposition> {
    // SAFETY: a zeroed sigaction is a valid value for the kernel to fill in,
    // and a null new action makes sigaction(2) only read the current one.
    let (rc, current) = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        let rc = libc::sigaction(sig, std::ptr::null(), &mut current);
        (rc, current)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(match current.sa_sigaction {
        libc::SIG_DFL => Disposition::Default,
        libc::SIG_IGN => Disposition::Ignored,
        _ => Disposition::Handler,
    })
}

/// The signals a run catches ([`SIGNALS`] less the ignored ones) and those
/// of them that had their default action.
fn dispositions() -> io::Result<(Vec<libc::c_int>, Vec<libc::c_int>)> {
    let mut caught = Vec::new();
    let mut defaults = Vec::new();
    for sig in SIGNALS {
        match disposition(sig)? {
            Disposition::Ignored => continue,
            Disposition::Default => defaults.push(sig),
            // signal-hook calls a previous handler itself, before ours.
            Disposition::Handler => {}
        }
        caught.push(sig);
    }
    Ok((caught, defaults))
}

fn start_forwarder(caught: &[libc::c_int]) -> io::Result<Forwarder> {
    let mut signals = Signals::new(caught)?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("supermin-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                for (_, tx, stop) in &shared().users {
                    stop.raise(sig);
                    let _ = tx.try_send(Event::Signal(sig));
                }
            }
        })?;
    Ok(Forwarder { handle, thread })
}

/// The first run of the process: looks at the dispositions before
/// signal-hook replaces them, then registers the default actions after the
/// forwarder, so that a signal in between is forwarded, not lost.
fn first_start() -> io::Result<(Setup, Forwarder)> {
    let (caught, defaults) = dispositions()?;
    let forwarder = start_forwarder(&caught)?;
    let idle = Arc::new(AtomicBool::new(false));
    for sig in defaults {
        if let Err(e) = signal_hook::flag::register_conditional_default(sig, Arc::clone(&idle)) {
            forwarder.handle.close();
            return Err(e);
        }
    }
    Ok((Setup { caught, idle }, forwarder))
}

/// Signal delivery to one run; dropping it stops that.
pub struct Guard {
    id: u64,
}

impl Guard {
    /// Delivers SIGINT, SIGTERM and SIGHUP (those not ignored) to `stop`
    /// and `tx` until the guard is dropped.
    pub fn install(tx: SyncSender<Event>, stop: Arc<Stop>) -> io::Result<Guard> {
        let mut s = shared();
        let s = &mut *s;
        if s.forwarder.is_none() {
            match &s.setup {
                Some(setup) => s.forwarder = Some(start_forwarder(&setup.caught)?),
                None => {
                    let (setup, forwarder) = first_start()?;
                    s.setup = Some(setup);
                    s.forwarder = Some(forwarder);
                }
            }
            if let Some(setup) = &s.setup {
                setup.idle.store(false, Ordering::SeqCst);
            }
        }
        let id = s.next_id;
        s.next_id += 1;
        s.users.push((id, tx, stop));
        Ok(Guard { id })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let forwarder = {
            let mut s = shared();
            s.users.retain(|(id, _, _)| *id != self.id);
            if !s.users.is_empty() {
                return;
            }
            if let Some(setup) = &s.setup {
                setup.idle.store(true, Ordering::SeqCst);
            }
            s.forwarder.take()
        };
        // Joined outside the lock: the forwarder takes it for each signal.
        if let Some(forwarder) = forwarder {
            forwarder.handle.close();
            let _ = forwarder.thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signal_hook::low_level::raise;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, ExitStatus, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Set in a child this test binary starts for a test that must end the
    /// process (or run with SIGHUP ignored).
    const CHILD: &str = "SUPERMIN_SIGNALS_TEST_CHILD";

    fn guard() -> (Guard, mpsc::Receiver<Event>, Arc<Stop>) {
        let (tx, rx) = mpsc::sync_channel(4);
        let stop = Arc::new(Stop::new(Instant::now(), None));
        let guard = Guard::install(tx, Arc::clone(&stop)).unwrap();
        (guard, rx, stop)
    }

    fn expect_signal(rx: &mpsc::Receiver<Event>, want: libc::c_int) {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::Signal(s)) => assert_eq!(s, want),
            other => panic!("{other:?}"),
        }
    }

    /// Runs the test `name` of this binary in a child with [`CHILD`] set,
    /// under `nohup` when asked; returns its status and its stdout.
    fn rerun(name: &str, nohup: bool) -> (ExitStatus, String) {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = if nohup {
            let mut c = Command::new("nohup");
            c.arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let out = cmd
            .args([name, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn a_signal_becomes_an_event_and_guards_nest() {
        let (outer, outer_rx, outer_stop) = guard();
        let (inner, inner_rx, inner_stop) = guard();
        raise(SIGHUP).unwrap();
        expect_signal(&outer_rx, SIGHUP);
        expect_signal(&inner_rx, SIGHUP);
        assert_eq!(inner_stop.signal(), Some(SIGHUP));
        drop(inner);
        raise(SIGINT).unwrap();
        expect_signal(&outer_rx, SIGINT);
        assert_eq!(outer_stop.signal(), Some(SIGINT));
        assert_eq!(inner_stop.signal(), Some(SIGHUP));
        drop(outer);
        // A later run catches again.
        let (_again, rx, _) = guard();
        raise(SIGTERM).unwrap();
        expect_signal(&rx, SIGTERM);
    }

    #[test]
    fn the_default_action_returns_when_the_last_guard_is_dropped() {
        let (status, stdout) = rerun(
            "signals::tests::child_is_killed_by_sigterm_after_its_run",
            false,
        );
        assert_eq!(status.signal(), Some(SIGTERM), "{status}\n{stdout}");
    }

    #[test]
    fn child_is_killed_by_sigterm_after_its_run() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let (guard, rx, _) = guard();
        raise(SIGTERM).unwrap();
        expect_signal(&rx, SIGTERM);
        drop(guard);
        raise(SIGTERM).unwrap();
        std::thread::sleep(Duration::from_secs(5));
        // Still alive: the parent sees a clean exit and fails.
    }

    #[test]
    fn an_ignored_sighup_stays_ignored_under_nohup() {
        let (status, stdout) = rerun("signals::tests::child_under_nohup_ignores_sighup", true);
        // The child ran the test (a wrong name would pass with none run).
        assert!(
            status.success() && stdout.contains(" 1 passed"),
            "{status}\n{stdout}"
        );
    }

    #[test]
    fn child_under_nohup_ignores_sighup() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let (guard, rx, stop) = guard();
        raise(SIGHUP).unwrap();
        raise(SIGINT).unwrap();
        // SIGINT still ends the run, and it is the only thing that came.
        expect_signal(&rx, SIGINT);
        assert_eq!(stop.signal(), Some(SIGINT));
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(guard);
        // With no run live a hang-up is still ignored.
        raise(SIGHUP).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
}
