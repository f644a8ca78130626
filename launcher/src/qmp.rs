//! A minimal QMP client (qemu's JSON monitor) on a socket qemu inherits: just
//! what saving and restoring a machine needs (stop, cont, migration
//! capabilities, migrate, migrate-incoming, query-migrate).
//!
//! qemu is trusted, but it is the process a hostile guest would escape into,
//! so its answers are read like any other input: each line bounded, every
//! read under a deadline.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::stop::{Halt, Stop};

/// Longest line we accept from qemu's monitor.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("qemu's monitor did not answer in time")]
    Timeout,
    #[error("qemu's monitor closed")]
    Closed,
    #[error("qemu's monitor sent a line of more than {MAX_LINE} bytes")]
    TooLong,
    #[error("qemu's monitor sent something that is not JSON")]
    NotJson,
    #[error("qemu refused {command}: {message}")]
    Refused { command: String, message: String },
    #[error("qemu's monitor failed")]
    Io(#[source] io::Error),
    #[error("interrupted")]
    Halted(Halt),
}

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The run's deadline and signals, looked at between short reads.
    stop: Option<std::sync::Arc<Stop>>,
}

impl Qmp {
    /// Reads qemu's greeting and enters command mode, by `deadline`.
    pub fn connect(
        stream: UnixStream,
        deadline: Instant,
        stop: std::sync::Arc<Stop>,
    ) -> Result<Qmp, QmpError> {
        let writer = stream.try_clone().map_err(QmpError::Io)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            stop: Some(stop),
        };
        qmp.read_value(deadline)?;
        qmp.execute("qmp_capabilities", None, deadline)?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value; events are skipped.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        deadline: Instant,
    ) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(QmpError::Io)?;
        self.answer(command, deadline)
    }

    /// Passes `fd` to qemu under `name` (`getfd`: the descriptor travels as
    /// SCM_RIGHTS with the command), for a later command that names it.
    pub fn pass_fd(
        &mut self,
        name: &str,
        fd: std::os::fd::BorrowedFd<'_>,
        deadline: Instant,
    ) -> Result<(), QmpError> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let mut line = json!({"execute": "getfd", "arguments": {"fdname": name}}).to_string();
        line.push('\n');
        let fds = [fd];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(QmpError::Io(io::ErrorKind::InvalidInput.into()));
        }
        // qemu takes the descriptor with the first byte; the rest follows plainly.
        let sent = rustix::net::sendmsg(
            &self.writer,
            &[io::IoSlice::new(&line.as_bytes()[..1])],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(|e| QmpError::Io(e.into()))?;
        self.writer
            .write_all(&line.as_bytes()[sent..])
            .map_err(QmpError::Io)?;
        self.answer("getfd", deadline).map(|_| ())
    }

    /// The answer to the command just sent; events are skipped.
    fn answer(&mut self, command: &str, deadline: Instant) -> Result<Value, QmpError> {
        loop {
            let mut v = self.read_value(deadline)?;
            if let Some(ret) = v.get_mut("return") {
                return Ok(ret.take());
            }
            if let Some(err) = v.get("error") {
                let message = err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no description")
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(512)
                    .collect();
                return Err(QmpError::Refused {
                    command: command.to_string(),
                    message,
                });
            }
            // An event ({"event": ...}): not the answer.
        }
    }

    /// Polls `query-migrate` until the migration ends; `Ok` when it
    /// completed. Ends early on `stop`'s deadline or a signal.
    pub fn wait_migration(&mut self, deadline: Instant, stop: &Stop) -> Result<(), QmpError> {
        loop {
            stop.check().map_err(QmpError::Halted)?;
            let state = self.execute("query-migrate", None, deadline)?;
            match state.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    return Err(QmpError::Refused {
                        command: "migrate".into(),
                        message: state
                            .get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("failed")
                            .chars()
                            .filter(|c| !c.is_control())
                            .take(512)
                            .collect(),
                    })
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(QmpError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn read_value(&mut self, deadline: Instant) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        loop {
            if let Some(Err(halt)) = self.stop.as_ref().map(|s| s.check()) {
                return Err(QmpError::Halted(halt));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout);
            }
            // In ticks, so that Ctrl-C is heard while qemu is slow to answer.
            self.reader
                .get_ref()
                .set_read_timeout(Some(left.min(super::stop::TICK)))
                .map_err(QmpError::Io)?;
            let buf = match self.reader.fill_buf() {
                Ok([]) => return Err(QmpError::Closed),
                Ok(buf) => buf,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(QmpError::Io(e)),
            };
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            if line.len() > MAX_LINE {
                return Err(QmpError::TooLong);
            }
            if done {
                return serde_json::from_slice(&line).map_err(|_| QmpError::NotJson);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> (Qmp, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let writer = ours.try_clone().unwrap();
        (
            Qmp {
                reader: BufReader::new(ours),
                writer,
                stop: None,
            },
            theirs,
        )
    }

    #[test]
    fn answers_are_found_past_events_and_errors_are_refusals() {
        let (mut qmp, mut qemu) = peer();
        qemu.write_all(b"{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"running\"}}\n")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let v = qmp.execute("query-status", None, deadline).unwrap();
        assert_eq!(v["status"], "running");
        qemu.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\\u001b[2J\"}}\n")
            .unwrap();
        match qmp.execute("cont", None, deadline) {
            Err(QmpError::Refused { command, message }) => {
                assert_eq!(command, "cont");
                assert_eq!(message, "no[2J");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_silent_or_flooding_monitor_is_an_error_not_a_hang() {
        let (mut qmp, mut qemu) = peer();
        let soon = Instant::now() + Duration::from_millis(200);
        assert!(matches!(
            qmp.execute("stop", None, soon),
            Err(QmpError::Timeout)
        ));
        let flood = vec![b'x'; MAX_LINE + 10];
        let t = std::thread::spawn(move || {
            let _ = qemu.write_all(&flood);
            qemu
        });
        let later = Instant::now() + Duration::from_secs(5);
        assert!(matches!(qmp.read_value(later), Err(QmpError::TooLong)));
        drop(t.join().unwrap());
    }

    #[test]
    fn a_signal_ends_a_wait_for_a_silent_monitor() {
        let (mut qmp, _qemu) = peer();
        let stop = std::sync::Arc::new(Stop::new(Instant::now(), None));
        qmp.stop = Some(std::sync::Arc::clone(&stop));
        let raiser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stop.raise(2);
        });
        let long = Instant::now() + Duration::from_secs(60);
        assert!(matches!(
            qmp.execute("stop", None, long),
            Err(QmpError::Halted(Halt::Signal(2)))
        ));
        raiser.join().unwrap();
    }
}
