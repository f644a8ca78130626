//! A stand-in for `qemu-system-x86_64` that plays a hostile appliance, for
//! the hostile-guest tests (`tests/hostile.rs`). It is put first on `PATH`
//! under qemu's name; the launcher starts it as it would start qemu, and it
//! speaks the daemon's protocol on the inherited channel fd, doing what
//! `$HOSTILE_MODE` says:
//!
//! - `flood-stdout`: answers an exec with endless stdout chunks;
//! - `stop-reading`: after the hello, never reads the channel again;
//! - `console-flood`: prints endless bytes without a newline on its console
//!   and never says hello;
//! - `endless-download`: answers a download with endless file data;
//! - `signal-overflow`: answers an exec with `Exit(Signal(i32::MAX))`;
//! - `escape-text`: answers an exec with an exec failure full of terminal
//!   escape sequences;
//! - `bad-name`: for copy-out: the command exits 0, the guest path is a
//!   directory whose listing holds a file named `$HOSTILE_NAME` (`../escape`,
//!   `a/b`, ...);
//! - `symlink-then-dir`: for two copy-outs of one path: the first finds a
//!   symlink to `$HOSTILE_TARGET`, the second a directory holding a file
//!   `pwned`, which must not land where the symlink points;
//! - `endless-copy-out`: for copy-out: the command exits 0, the guest path
//!   is a file that claims 1 byte and whose download never ends.
//!
//! `-help` prints a qemu-like first line and nothing else (no `-sandbox`),
//! as the launcher asks once per run.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

use supermin_protocol::{
    encode_frame, read_message, Entry, EntryKind, ExitStatus, Hello, Message, Reply, Request, Time,
    CHUNK, PROTOCOL_VERSION,
};

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.iter().any(|a| a == "-help") {
        println!("QEMU emulator version 0.0.0 (hostile test double)");
        return;
    }
    let mode = std::env::var("HOSTILE_MODE").unwrap_or_default();
    if mode == "console-flood" {
        let chunk = vec![b'A'; 1 << 16];
        let mut out = std::io::stdout().lock();
        while out.write_all(&chunk).is_ok() {}
        return;
    }
    let Some(fd) = channel_fd(&args) else {
        eprintln!("hostile-qemu: no -chardev socket,...,fd=N in {args:?}");
        std::process::exit(2);
    };
    // SAFETY: the launcher passed this fd to us open (it is qemu's channel),
    // and nothing else in this process owns it.
    let mut chan = unsafe { UnixStream::from_raw_fd(fd) };
    send(
        &mut chan,
        &Reply::Hello(Hello {
            version: PROTOCOL_VERSION,
            info: "hostile".into(),
        }),
    );
    let Ok(Some(Request::Hello(_))) = read_message::<Request, _>(&mut chan) else {
        std::process::exit(3);
    };
    if mode == "stop-reading" {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        return;
    }
    let mut lstats = 0;
    loop {
        let req = match read_message::<Request, _>(&mut chan) {
            Ok(Some(req)) => req,
            _ => return,
        };
        match (mode.as_str(), req) {
            ("flood-stdout", Request::Exec(_)) => loop {
                send(&mut chan, &Reply::Stdout(vec![b'y'; CHUNK]));
            },
            ("endless-download", Request::Download { .. }) => loop {
                send(&mut chan, &Reply::FileData(vec![b'd'; CHUNK]));
            },
            ("signal-overflow", Request::Exec(_)) => {
                send(&mut chan, &Reply::Exit(ExitStatus::Signal(i32::MAX)));
            }
            ("escape-text", Request::Exec(_)) => send(
                &mut chan,
                &Reply::ExecFailed {
                    message: "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\rover\nnext\x1b[0m".into(),
                },
            ),
            ("endless-copy-out", Request::Lstat { .. }) => {
                let mut e = entry("x", EntryKind::File, "");
                e.size = 1;
                send(&mut chan, &Reply::Entries(vec![e]));
                send(&mut chan, &Reply::Done);
            }
            ("endless-copy-out", Request::Download { .. }) => loop {
                send(&mut chan, &Reply::FileData(vec![b'd'; CHUNK]));
            },
            ("bad-name" | "symlink-then-dir" | "endless-copy-out", Request::Exec(_)) => {
                send(&mut chan, &Reply::Exit(ExitStatus::Code(0)));
            }
            ("bad-name", Request::Lstat { .. }) => {
                send(
                    &mut chan,
                    &Reply::Entries(vec![entry("x", EntryKind::Dir, "")]),
                );
                send(&mut chan, &Reply::Done);
            }
            ("bad-name", Request::ListDir { .. }) => {
                let name = std::env::var("HOSTILE_NAME").unwrap_or_default();
                send(
                    &mut chan,
                    &Reply::Entries(vec![entry(&name, EntryKind::File, "")]),
                );
                send(&mut chan, &Reply::Done);
            }
            ("symlink-then-dir", Request::Lstat { .. }) => {
                lstats += 1;
                let top = if lstats == 1 {
                    let target = std::env::var("HOSTILE_TARGET").unwrap_or_default();
                    entry("x", EntryKind::Symlink, &target)
                } else {
                    entry("x", EntryKind::Dir, "")
                };
                send(&mut chan, &Reply::Entries(vec![top]));
                send(&mut chan, &Reply::Done);
            }
            ("symlink-then-dir", Request::ListDir { .. }) => {
                send(
                    &mut chan,
                    &Reply::Entries(vec![entry("pwned", EntryKind::File, "")]),
                );
                send(&mut chan, &Reply::Done);
            }
            ("bad-name" | "symlink-then-dir", Request::Download { .. }) => {
                send(&mut chan, &Reply::FileData(b"from the guest\n".to_vec()));
                send(&mut chan, &Reply::FileEnd);
            }
            (_, Request::Shutdown) => {
                send(&mut chan, &Reply::Done);
                return;
            }
            _ => {}
        }
    }
}

fn entry(name: &str, kind: EntryKind, target: &str) -> Entry {
    Entry {
        name: name.into(),
        kind,
        mode: 0o755,
        size: 15,
        atime: Time::default(),
        mtime: Time::default(),
        target: target.into(),
    }
}

fn send<M: Message>(chan: &mut UnixStream, msg: &M) {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf);
    if chan.write_all(&buf).is_err() {
        std::process::exit(0);
    }
}

/// The fd in `-chardev socket,id=channel,fd=N`.
fn channel_fd(args: &[OsString]) -> Option<i32> {
    args.iter()
        .filter_map(|a| a.to_str())
        .filter(|a| a.starts_with("socket,"))
        .flat_map(|a| a.split(','))
        .find_map(|kv| kv.strip_prefix("fd="))
        .and_then(|n| n.parse().ok())
}
