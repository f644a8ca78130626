//! The wire protocol between the launcher (host) and the daemon (guest).
//!
//! Both ends live in this crate so that they cannot drift apart: the launcher
//! links this library, the daemon binary is built from it.
//!
//! A frame is a 4-byte big-endian length, then that many bytes: one kind byte
//! and the message body. Lengths are checked against [`MAX_FRAME`] before any
//! body is buffered, so a corrupt or hostile peer cannot make either side
//! allocate without bound. Bodies are built from big-endian integers and
//! length-prefixed byte strings; paths and arguments travel as raw bytes
//! because Unix paths need not be UTF-8.
//!
//! The conversation: the daemon sends [`Hello`] as soon as it has opened its
//! port, the host answers with its own [`Hello`]; both carry [`MAGIC`] and
//! [`PROTOCOL_VERSION`] and either side refuses a mismatch. After that the host
//! sends one [`Request`] at a time and reads [`Reply`] frames until the one
//! that ends it (see [`Reply::ends_request`]). Host and daemon kinds use
//! disjoint numbers, so a frame sent the wrong way is rejected, not misread.

#![warn(missing_docs)]

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;

/// Bumped on any incompatible change to frames or messages.
pub const PROTOCOL_VERSION: u32 = 4;

/// Opens every [`Hello`], so that garbage on the channel (a console
/// misrouted to it, a different agent) is recognised at once.
pub const MAGIC: [u8; 8] = *b"SUPERMIN";

/// The virtio-serial port name the daemon looks for in
/// `/sys/class/virtio-ports/*/name` and the launcher gives its channel.
pub const PORT_NAME: &str = "org.supermin.daemon.0";

/// Largest frame (kind byte + body) either side accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// Most host entropy one [`Request::Resume`] carries.
pub const MAX_ENTROPY: usize = 512;

/// Size of the data chunks (stdout, stderr, stdin, file contents) senders
/// cut their streams into: well under [`MAX_FRAME`] with room for the header.
pub const CHUNK: usize = 64 * 1024;

const LEN_BYTES: usize = 4;

/// What can be wrong with bytes received from the other side.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A frame's length prefix exceeds what this side accepts.
    #[error("frame of {len} bytes is larger than the {max}-byte limit: the peer is not a supermin-rs daemon/launcher of this version, or the channel is corrupt")]
    Oversized {
        /// The length the prefix announced.
        len: usize,
        /// The largest frame accepted.
        max: usize,
    },
    /// A frame with no bytes at all, not even the kind.
    #[error("empty frame (no message kind)")]
    Empty,
    /// A kind byte this version does not know.
    #[error("unknown message kind {kind:#04x}: the peer speaks another protocol version")]
    UnknownKind {
        /// The kind byte received.
        kind: u8,
    },
    /// A body that ends before one of its fields.
    #[error("message {kind:#04x} is truncated: {what} needs {need} bytes, {have} left")]
    Truncated {
        /// The message's kind byte.
        kind: u8,
        /// The field being read.
        what: &'static str,
        /// The bytes the field needs.
        need: usize,
        /// The bytes left in the body.
        have: usize,
    },
    /// A body with bytes left over after its last field.
    #[error("message {kind:#04x} has {extra} unexpected trailing bytes")]
    Trailing {
        /// The message's kind byte.
        kind: u8,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A text field that is not UTF-8.
    #[error("message {kind:#04x}: {what} is not valid UTF-8")]
    NotUtf8 {
        /// The message's kind byte.
        kind: u8,
        /// The field concerned.
        what: &'static str,
    },
    /// A field whose value is out of its range (an unknown tag, a bad bool).
    #[error("message {kind:#04x}: invalid value {value} for {what}")]
    BadValue {
        /// The message's kind byte.
        kind: u8,
        /// The field concerned.
        what: &'static str,
        /// The value received.
        value: u64,
    },
    /// The handshake did not start with [`MAGIC`].
    #[error("handshake does not start with the supermin magic bytes (got {got:02x?}): something else is talking on the channel")]
    BadMagic {
        /// The bytes received instead.
        got: Vec<u8>,
    },
    /// The channel ended inside a frame.
    #[error("channel closed in the middle of a frame ({have} of {need} bytes received)")]
    UnexpectedEof {
        /// The bytes of the frame received.
        have: usize,
        /// The bytes the frame needed.
        need: usize,
    },
    /// Reading or writing the channel failed.
    #[error("channel I/O failed")]
    Io {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// A message that can travel in a frame.
pub trait Message: Sized {
    /// Appends the kind byte and the body to `out`.
    fn encode_body(&self, out: &mut Vec<u8>);
    /// Parses a kind byte and body; the body must be consumed exactly.
    fn decode_body(kind: u8, body: &[u8]) -> Result<Self, ProtocolError>;
}

/// The first message each side sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// Free text for logs: the daemon sends its kernel release, the host its
    /// program name and version.
    pub info: String,
}

/// How a command ended, as the daemon saw it in `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(sig) => 128 + sig,
        }
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WinSize {
    /// Height in rows.
    pub rows: u16,
    /// Width in columns.
    pub cols: u16,
}

/// A point in time as `stat(2)` gives it: seconds since the epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

/// What a directory entry is; everything that is not a regular file, a
/// directory or a symlink (devices, fifos, sockets) is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// One directory entry as `lstat(2)` saw it. Sent by the daemon, so on the
/// host every field is untrusted: the name in particular is checked before
/// it is used as a host path (see the launcher's copy-out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name in its directory (for [`Request::Lstat`], the last
    /// component of the path).
    pub name: OsString,
    /// What the entry is.
    pub kind: EntryKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes (`st_size`).
    pub size: u64,
    /// Last access time.
    pub atime: Time,
    /// Last modification time.
    pub mtime: Time,
    /// A symlink's target; empty otherwise.
    pub target: OsString,
}

/// A command to run in the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    /// `argv[0]` is looked up in `PATH` when it has no slash.
    pub argv: Vec<OsString>,
    /// Added to (and overriding) the daemon's base environment.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory; `/` when absent.
    pub cwd: Option<OsString>,
    /// When true the host follows with [`Request::Stdin`] chunks and one
    /// [`Request::StdinEof`]; otherwise the command's stdin is `/dev/null`.
    pub stdin: bool,
    /// Run the command on a new pseudo-terminal of this size, as its
    /// controlling terminal (a session leader): its output comes back as
    /// `Stdout` (the terminal merges stdout and stderr), stdin goes to the
    /// terminal and [`Request::Resize`] changes its size. Needs `stdin`.
    pub pty: Option<WinSize>,
}

/// How a shared host directory reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareFs {
    /// qemu's own 9p server (`virtio-9p-pci`).
    NineP,
    /// virtiofsd behind a `vhost-user-fs-pci` device.
    Virtiofs,
}

impl ShareFs {
    fn code(self) -> u8 {
        match self {
            ShareFs::NineP => 0,
            ShareFs::Virtiofs => 1,
        }
    }

    fn from_code(code: u8) -> Option<ShareFs> {
        match code {
            0 => Some(ShareFs::NineP),
            1 => Some(ShareFs::Virtiofs),
            _ => None,
        }
    }
}

/// Host to daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The host's answer to the daemon's [`Hello`].
    Hello(Hello),
    /// Answered by `Stdout`/`Stderr` chunks and then `Exit` or `ExecFailed`.
    Exec(ExecRequest),
    /// A chunk of the command's stdin (at most [`CHUNK`] bytes).
    Stdin(Vec<u8>),
    /// The command's stdin ends.
    StdinEof,
    /// Followed by `FileData` chunks and `FileEnd`; answered by `Done` or `Error`.
    Upload {
        /// Where to write the file in the guest.
        path: OsString,
        /// Permission bits of the new file.
        mode: u32,
    },
    /// A chunk of the uploaded file (at most [`CHUNK`] bytes).
    FileData(Vec<u8>),
    /// The uploaded file ends.
    FileEnd,
    /// Answered by `FileData` chunks and `FileEnd`, or by `Error`.
    Download {
        /// The guest file to send back.
        path: OsString,
    },
    /// Answered by `Done`; then the appliance powers off.
    Shutdown,
    /// Flush the guest's filesystems (before its state is saved); answered by `Done`.
    Sync,
    /// The machine was restored from a saved state: set the clock to the
    /// host's and mix in fresh host entropy (at most [`MAX_ENTROPY`] bytes),
    /// then reseed; answered by `Done` (or `Error`).
    Resume {
        /// Seconds and nanoseconds since the Unix epoch.
        secs: i64,
        /// Nanoseconds within the second.
        nanos: u32,
        /// Host entropy for the guest's RNG.
        entropy: Vec<u8>,
    },
    /// Wait (a few seconds at most) until `count` virtio disks (`/dev/vd*`)
    /// exist: the host hot-plugs disks one at a time after a restore, so
    /// that they get their names in order; answered by `Done` or `Error`.
    AwaitDisks {
        /// How many disks to wait for.
        count: u32,
    },
    /// Mount the host directory shared under `tag` (a 9p mount tag or a
    /// virtiofs tag, as `fs` says) on `target` (created if missing);
    /// answered by `Done` or `Error`.
    Mount {
        /// The tag the share's device carries (9p mount tag or virtiofs tag).
        tag: String,
        /// Where to mount it in the guest.
        target: OsString,
        /// Mount it read-only.
        readonly: bool,
        /// Which file system the device serves.
        fs: ShareFs,
    },
    /// The terminal of the running command (see [`ExecRequest::pty`]) changed
    /// size. No answer.
    Resize(WinSize),
    /// Answered by one `Entries` holding the path's own entry (not followed
    /// if it is a symlink) and `Done`, or by `Error`.
    Lstat {
        /// The guest path to look at.
        path: OsString,
    },
    /// Answered by `Entries` chunks (any number, each within a frame) and
    /// `Done`, or by `Error`. `.` and `..` are not listed.
    ListDir {
        /// The guest directory to list.
        path: OsString,
    },
    /// Creates a directory (an existing directory is kept) with exactly
    /// these permission bits; answered by `Done` or `Error`.
    Mkdir {
        /// The directory to create.
        path: OsString,
        /// Its permission bits.
        mode: u32,
    },
    /// Creates `path` as a symlink to `target`, replacing a non-directory
    /// already there; answered by `Done` or `Error`.
    Symlink {
        /// What the symlink points to.
        target: OsString,
        /// Where to create it.
        path: OsString,
    },
    /// Sets the access and modification times of `path`, not following a
    /// symlink; answered by `Done` or `Error`.
    SetTimes {
        /// The guest path to change.
        path: OsString,
        /// New access time.
        atime: Time,
        /// New modification time.
        mtime: Time,
    },
}

/// Daemon to host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The daemon's greeting, sent first.
    Hello(Hello),
    /// A chunk of the command's stdout.
    Stdout(Vec<u8>),
    /// A chunk of the command's stderr.
    Stderr(Vec<u8>),
    /// The command ended; the last reply to an `Exec`.
    Exit(ExitStatus),
    /// The command could not be started (not found, not executable, bad cwd).
    ExecFailed {
        /// Why, for the user.
        message: String,
    },
    /// A chunk of a downloaded file.
    FileData(Vec<u8>),
    /// The downloaded file ends.
    FileEnd,
    /// The request succeeded.
    Done,
    /// The request failed.
    Error {
        /// Why, for the user.
        message: String,
    },
    /// Part of the answer to `Lstat` or `ListDir`.
    Entries(Vec<Entry>),
}

impl Reply {
    /// Whether this reply is the last one for the request in flight.
    pub fn ends_request(&self) -> bool {
        matches!(
            self,
            Reply::Exit(_)
                | Reply::ExecFailed { .. }
                | Reply::FileEnd
                | Reply::Done
                | Reply::Error { .. }
        )
    }
}

mod kind {
    pub const H_HELLO: u8 = 0x01;
    pub const H_EXEC: u8 = 0x02;
    pub const H_STDIN: u8 = 0x03;
    pub const H_STDIN_EOF: u8 = 0x04;
    pub const H_UPLOAD: u8 = 0x05;
    pub const H_FILE_DATA: u8 = 0x06;
    pub const H_FILE_END: u8 = 0x07;
    pub const H_DOWNLOAD: u8 = 0x08;
    pub const H_SHUTDOWN: u8 = 0x09;
    pub const H_SYNC: u8 = 0x10;
    pub const H_RESUME: u8 = 0x11;
    pub const H_AWAIT_DISKS: u8 = 0x12;
    pub const H_MOUNT: u8 = 0x13;
    pub const H_RESIZE: u8 = 0x0a;
    pub const H_LSTAT: u8 = 0x0b;
    pub const H_LIST_DIR: u8 = 0x0c;
    pub const H_MKDIR: u8 = 0x0d;
    pub const H_SYMLINK: u8 = 0x0e;
    pub const H_SET_TIMES: u8 = 0x0f;

    pub const D_HELLO: u8 = 0x81;
    pub const D_STDOUT: u8 = 0x82;
    pub const D_STDERR: u8 = 0x83;
    pub const D_EXIT: u8 = 0x84;
    pub const D_EXEC_FAILED: u8 = 0x85;
    pub const D_FILE_DATA: u8 = 0x86;
    pub const D_FILE_END: u8 = 0x87;
    pub const D_DONE: u8 = 0x88;
    pub const D_ERROR: u8 = 0x89;
    pub const D_ENTRIES: u8 = 0x8a;
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_time(out: &mut Vec<u8>, t: Time) {
    put_u64(out, t.sec as u64);
    put_u32(out, t.nsec);
}

fn put_winsize(out: &mut Vec<u8>, w: WinSize) {
    out.extend_from_slice(&w.rows.to_be_bytes());
    out.extend_from_slice(&w.cols.to_be_bytes());
}

/// Bytes an entry takes on the wire, for senders that fill frames with them.
pub fn entry_wire_len(e: &Entry) -> usize {
    4 + e.name.len() + 1 + 4 + 8 + 2 * 12 + 4 + e.target.len()
}

fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    put_bytes(out, e.name.as_bytes());
    out.push(match e.kind {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
        EntryKind::Other => 3,
    });
    put_u32(out, e.mode);
    put_u64(out, e.size);
    put_time(out, e.atime);
    put_time(out, e.mtime);
    put_bytes(out, e.target.as_bytes());
}

/// A length or count as the wire's u32. One that does not fit belongs to a
/// frame far over [`MAX_FRAME`], which the receiver refuses: `u32::MAX` keeps
/// it over the limit where a wrapped value could look small and plausible.
fn wire_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Callers keep every field far below MAX_FRAME, so the length fits.
    put_u32(out, wire_len(b.len()));
    out.extend_from_slice(b);
}

fn put_hello(out: &mut Vec<u8>, h: &Hello) {
    out.extend_from_slice(&MAGIC);
    put_u32(out, h.version);
    put_bytes(out, h.info.as_bytes());
}

/// A cursor over a body that turns every short read into a typed error.
struct Body<'a> {
    kind: u8,
    rest: &'a [u8],
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < n {
            return Err(ProtocolError::Truncated {
                kind: self.kind,
                what,
                need: n,
                have: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn time(&mut self, what: &'static str) -> Result<Time, ProtocolError> {
        let sec = self.u64(what)? as i64;
        let nsec = self.u32(what)?;
        if nsec >= 1_000_000_000 {
            return Err(ProtocolError::BadValue {
                kind: self.kind,
                what,
                value: nsec.into(),
            });
        }
        Ok(Time { sec, nsec })
    }

    fn winsize(&mut self) -> Result<WinSize, ProtocolError> {
        let rows = self.u16("rows")?;
        let cols = self.u16("columns")?;
        Ok(WinSize { rows, cols })
    }

    fn entry(&mut self) -> Result<Entry, ProtocolError> {
        let name = self.os("entry name")?;
        let kind = match self.u8("entry kind")? {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            3 => EntryKind::Other,
            v => {
                return Err(ProtocolError::BadValue {
                    kind: self.kind,
                    what: "entry kind",
                    value: v.into(),
                })
            }
        };
        let mode = self.u32("entry mode")?;
        if mode & !0o7777 != 0 {
            return Err(ProtocolError::BadValue {
                kind: self.kind,
                what: "entry mode",
                value: mode.into(),
            });
        }
        let size = self.u64("entry size")?;
        let atime = self.time("entry atime")?;
        let mtime = self.time("entry mtime")?;
        let target = self.os("symlink target")?;
        Ok(Entry {
            name,
            kind,
            mode,
            size,
            atime,
            mtime,
            target,
        })
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        Ok(self.u32(what)? as i32)
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, ProtocolError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(ProtocolError::BadValue {
                kind: self.kind,
                what,
                value: v.into(),
            }),
        }
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    fn os(&mut self, what: &'static str) -> Result<OsString, ProtocolError> {
        Ok(OsStr::from_bytes(self.bytes(what)?).to_os_string())
    }

    fn string(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let kind = self.kind;
        String::from_utf8(self.bytes(what)?.to_vec())
            .map_err(|_| ProtocolError::NotUtf8 { kind, what })
    }

    /// A count of items that each take at least `min_item` bytes; bounding it
    /// by what is left stops a forged count from reserving huge vectors.
    fn count(&mut self, what: &'static str, min_item: usize) -> Result<usize, ProtocolError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item) > self.rest.len() {
            return Err(ProtocolError::Truncated {
                kind: self.kind,
                what,
                need: n.saturating_mul(min_item),
                have: self.rest.len(),
            });
        }
        Ok(n)
    }

    fn hello(&mut self) -> Result<Hello, ProtocolError> {
        let magic = self.take(MAGIC.len(), "magic")?;
        if magic != MAGIC {
            return Err(ProtocolError::BadMagic {
                got: magic.to_vec(),
            });
        }
        let version = self.u32("version")?;
        let info = self.string("info")?;
        Ok(Hello { version, info })
    }

    fn finish<T>(self, value: T) -> Result<T, ProtocolError> {
        if self.rest.is_empty() {
            Ok(value)
        } else {
            Err(ProtocolError::Trailing {
                kind: self.kind,
                extra: self.rest.len(),
            })
        }
    }
}

impl Message for Request {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Request::Hello(h) => {
                out.push(kind::H_HELLO);
                put_hello(out, h);
            }
            Request::Exec(e) => {
                out.push(kind::H_EXEC);
                put_u32(out, wire_len(e.argv.len()));
                for a in &e.argv {
                    put_bytes(out, a.as_bytes());
                }
                put_u32(out, wire_len(e.env.len()));
                for (k, v) in &e.env {
                    put_bytes(out, k.as_bytes());
                    put_bytes(out, v.as_bytes());
                }
                match &e.cwd {
                    Some(cwd) => {
                        out.push(1);
                        put_bytes(out, cwd.as_bytes());
                    }
                    None => out.push(0),
                }
                out.push(u8::from(e.stdin));
                match e.pty {
                    Some(w) => {
                        out.push(1);
                        put_winsize(out, w);
                    }
                    None => out.push(0),
                }
            }
            Request::Stdin(data) => {
                out.push(kind::H_STDIN);
                out.extend_from_slice(data);
            }
            Request::StdinEof => out.push(kind::H_STDIN_EOF),
            Request::Upload { path, mode } => {
                out.push(kind::H_UPLOAD);
                put_bytes(out, path.as_bytes());
                put_u32(out, *mode);
            }
            Request::FileData(data) => {
                out.push(kind::H_FILE_DATA);
                out.extend_from_slice(data);
            }
            Request::FileEnd => out.push(kind::H_FILE_END),
            Request::Download { path } => {
                out.push(kind::H_DOWNLOAD);
                put_bytes(out, path.as_bytes());
            }
            Request::Shutdown => out.push(kind::H_SHUTDOWN),
            Request::Sync => out.push(kind::H_SYNC),
            Request::Resume {
                secs,
                nanos,
                entropy,
            } => {
                out.push(kind::H_RESUME);
                out.extend_from_slice(&secs.to_be_bytes());
                put_u32(out, *nanos);
                put_bytes(out, entropy);
            }
            Request::AwaitDisks { count } => {
                out.push(kind::H_AWAIT_DISKS);
                put_u32(out, *count);
            }
            Request::Mount {
                tag,
                target,
                readonly,
                fs,
            } => {
                out.push(kind::H_MOUNT);
                put_bytes(out, tag.as_bytes());
                put_bytes(out, target.as_bytes());
                out.push(u8::from(*readonly));
                out.push(fs.code());
            }
            Request::Resize(w) => {
                out.push(kind::H_RESIZE);
                put_winsize(out, *w);
            }
            Request::Lstat { path } => {
                out.push(kind::H_LSTAT);
                put_bytes(out, path.as_bytes());
            }
            Request::ListDir { path } => {
                out.push(kind::H_LIST_DIR);
                put_bytes(out, path.as_bytes());
            }
            Request::Mkdir { path, mode } => {
                out.push(kind::H_MKDIR);
                put_bytes(out, path.as_bytes());
                put_u32(out, *mode);
            }
            Request::Symlink { target, path } => {
                out.push(kind::H_SYMLINK);
                put_bytes(out, target.as_bytes());
                put_bytes(out, path.as_bytes());
            }
            Request::SetTimes { path, atime, mtime } => {
                out.push(kind::H_SET_TIMES);
                put_bytes(out, path.as_bytes());
                put_time(out, *atime);
                put_time(out, *mtime);
            }
        }
    }

    fn decode_body(k: u8, body: &[u8]) -> Result<Self, ProtocolError> {
        let mut b = Body {
            kind: k,
            rest: body,
        };
        let msg = match k {
            kind::H_HELLO => Request::Hello(b.hello()?),
            kind::H_EXEC => {
                let argc = b.count("argv count", 4)?;
                let mut argv = Vec::with_capacity(argc);
                for _ in 0..argc {
                    argv.push(b.os("argv")?);
                }
                let envc = b.count("env count", 8)?;
                let mut env = Vec::with_capacity(envc);
                for _ in 0..envc {
                    let key = b.os("env name")?;
                    let value = b.os("env value")?;
                    env.push((key, value));
                }
                let cwd = if b.bool("cwd flag")? {
                    Some(b.os("cwd")?)
                } else {
                    None
                };
                let stdin = b.bool("stdin flag")?;
                let pty = if b.bool("pty flag")? {
                    Some(b.winsize()?)
                } else {
                    None
                };
                Request::Exec(ExecRequest {
                    argv,
                    env,
                    cwd,
                    stdin,
                    pty,
                })
            }
            kind::H_STDIN => Request::Stdin(std::mem::take(&mut b.rest).to_vec()),
            kind::H_STDIN_EOF => Request::StdinEof,
            kind::H_UPLOAD => {
                let path = b.os("path")?;
                let mode = b.u32("mode")?;
                Request::Upload { path, mode }
            }
            kind::H_FILE_DATA => Request::FileData(std::mem::take(&mut b.rest).to_vec()),
            kind::H_FILE_END => Request::FileEnd,
            kind::H_DOWNLOAD => Request::Download {
                path: b.os("path")?,
            },
            kind::H_SHUTDOWN => Request::Shutdown,
            kind::H_SYNC => Request::Sync,
            kind::H_AWAIT_DISKS => Request::AwaitDisks {
                count: b.u32("disk count")?,
            },
            kind::H_MOUNT => Request::Mount {
                tag: b.string("tag")?,
                target: b.os("target")?,
                readonly: b.bool("read-only flag")?,
                fs: {
                    let code = b.u8("share file system")?;
                    ShareFs::from_code(code).ok_or(ProtocolError::BadValue {
                        kind: k,
                        what: "share file system",
                        value: code.into(),
                    })?
                },
            },
            kind::H_RESUME => {
                let hi = b.u32("seconds")?;
                let lo = b.u32("seconds")?;
                let secs = ((u64::from(hi) << 32) | u64::from(lo)) as i64;
                let nanos = b.u32("nanoseconds")?;
                if nanos >= 1_000_000_000 {
                    return Err(ProtocolError::BadValue {
                        kind: k,
                        what: "nanoseconds",
                        value: nanos.into(),
                    });
                }
                let entropy = b.bytes("entropy")?.to_vec();
                if entropy.len() > MAX_ENTROPY {
                    return Err(ProtocolError::BadValue {
                        kind: k,
                        what: "entropy length",
                        value: entropy.len() as u64,
                    });
                }
                Request::Resume {
                    secs,
                    nanos,
                    entropy,
                }
            }
            kind::H_RESIZE => Request::Resize(b.winsize()?),
            kind::H_LSTAT => Request::Lstat {
                path: b.os("path")?,
            },
            kind::H_LIST_DIR => Request::ListDir {
                path: b.os("path")?,
            },
            kind::H_MKDIR => {
                let path = b.os("path")?;
                let mode = b.u32("mode")?;
                Request::Mkdir { path, mode }
            }
            kind::H_SYMLINK => {
                let target = b.os("target")?;
                let path = b.os("path")?;
                Request::Symlink { target, path }
            }
            kind::H_SET_TIMES => {
                let path = b.os("path")?;
                let atime = b.time("atime")?;
                let mtime = b.time("mtime")?;
                Request::SetTimes { path, atime, mtime }
            }
            other => return Err(ProtocolError::UnknownKind { kind: other }),
        };
        b.finish(msg)
    }
}

impl Message for Reply {
    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Hello(h) => {
                out.push(kind::D_HELLO);
                put_hello(out, h);
            }
            Reply::Stdout(data) => {
                out.push(kind::D_STDOUT);
                out.extend_from_slice(data);
            }
            Reply::Stderr(data) => {
                out.push(kind::D_STDERR);
                out.extend_from_slice(data);
            }
            Reply::Exit(status) => {
                out.push(kind::D_EXIT);
                let (tag, value) = match status {
                    ExitStatus::Code(c) => (0u8, *c),
                    ExitStatus::Signal(s) => (1u8, *s),
                };
                out.push(tag);
                put_u32(out, value as u32);
            }
            Reply::ExecFailed { message } => {
                out.push(kind::D_EXEC_FAILED);
                put_bytes(out, message.as_bytes());
            }
            Reply::FileData(data) => {
                out.push(kind::D_FILE_DATA);
                out.extend_from_slice(data);
            }
            Reply::FileEnd => out.push(kind::D_FILE_END),
            Reply::Done => out.push(kind::D_DONE),
            Reply::Error { message } => {
                out.push(kind::D_ERROR);
                put_bytes(out, message.as_bytes());
            }
            Reply::Entries(entries) => {
                out.push(kind::D_ENTRIES);
                put_u32(out, wire_len(entries.len()));
                for e in entries {
                    put_entry(out, e);
                }
            }
        }
    }

    fn decode_body(k: u8, body: &[u8]) -> Result<Self, ProtocolError> {
        let mut b = Body {
            kind: k,
            rest: body,
        };
        let msg = match k {
            kind::D_HELLO => Reply::Hello(b.hello()?),
            kind::D_STDOUT => Reply::Stdout(std::mem::take(&mut b.rest).to_vec()),
            kind::D_STDERR => Reply::Stderr(std::mem::take(&mut b.rest).to_vec()),
            kind::D_EXIT => {
                let tag = b.u8("exit tag")?;
                let value = b.i32("exit value")?;
                // A shell's ranges: a code is 0..=255, a signal 1..=64 (Linux);
                // anything else would overflow `shell_code` or fake a status.
                match tag {
                    0 | 1 if !(if tag == 0 { 0..=255 } else { 1..=64 }).contains(&value) => {
                        return Err(ProtocolError::BadValue {
                            kind: k,
                            what: if tag == 0 {
                                "exit code"
                            } else {
                                "signal number"
                            },
                            value: u64::from(value as u32),
                        })
                    }
                    0 => Reply::Exit(ExitStatus::Code(value)),
                    1 => Reply::Exit(ExitStatus::Signal(value)),
                    t => {
                        return Err(ProtocolError::BadValue {
                            kind: k,
                            what: "exit tag",
                            value: t.into(),
                        })
                    }
                }
            }
            kind::D_EXEC_FAILED => Reply::ExecFailed {
                message: b.string("message")?,
            },
            kind::D_FILE_DATA => Reply::FileData(std::mem::take(&mut b.rest).to_vec()),
            kind::D_FILE_END => Reply::FileEnd,
            kind::D_DONE => Reply::Done,
            kind::D_ERROR => Reply::Error {
                message: b.string("message")?,
            },
            kind::D_ENTRIES => {
                // An entry is at least its fixed fields and two empty strings.
                let n = b.count("entry count", 45)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(b.entry()?);
                }
                Reply::Entries(entries)
            }
            other => return Err(ProtocolError::UnknownKind { kind: other }),
        };
        b.finish(msg)
    }
}

/// Appends one whole frame (length, kind, body) for `msg` to `out`.
pub fn encode_frame<M: Message>(msg: &M, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_BYTES]);
    msg.encode_body(out);
    let len = wire_len(out.len() - start - LEN_BYTES);
    out[start..start + LEN_BYTES].copy_from_slice(&len.to_be_bytes());
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces
/// (non-blocking reads on the daemon side).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `None` when more bytes are needed. An
    /// oversized length is rejected as soon as its 4 bytes are in, before
    /// the body is waited for.
    pub fn next_message<M: Message>(&mut self) -> Result<Option<M>, ProtocolError> {
        let Some(len) = self.frame_len()? else {
            return Ok(None);
        };
        if self.buf.len() < LEN_BYTES + len {
            return Ok(None);
        }
        let msg = decode_frame_body(&self.buf[LEN_BYTES..LEN_BYTES + len]);
        self.buf.drain(..LEN_BYTES + len);
        msg.map(Some)
    }

    /// At end of stream: fine at a frame boundary, an error in mid-frame.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = match self.frame_len() {
            Ok(Some(len)) => LEN_BYTES + len,
            _ => LEN_BYTES,
        };
        Err(ProtocolError::UnexpectedEof {
            have: self.buf.len(),
            need,
        })
    }

    fn frame_len(&self) -> Result<Option<usize>, ProtocolError> {
        if self.buf.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        check_len(len).map(Some)
    }
}

fn check_len(len: usize) -> Result<usize, ProtocolError> {
    if len == 0 {
        Err(ProtocolError::Empty)
    } else if len > MAX_FRAME {
        Err(ProtocolError::Oversized {
            len,
            max: MAX_FRAME,
        })
    } else {
        Ok(len)
    }
}

fn decode_frame_body<M: Message>(frame: &[u8]) -> Result<M, ProtocolError> {
    match frame.split_first() {
        Some((&k, body)) => M::decode_body(k, body),
        None => Err(ProtocolError::Empty),
    }
}

/// Reads one message from a blocking stream. `Ok(None)` means the stream
/// ended cleanly between frames.
pub fn read_message<M: Message, R: Read>(r: &mut R) -> Result<Option<M>, ProtocolError> {
    let mut len_buf = [0u8; LEN_BYTES];
    let got = read_full(r, &mut len_buf)?;
    if got == 0 {
        return Ok(None);
    }
    if got < LEN_BYTES {
        return Err(ProtocolError::UnexpectedEof {
            have: got,
            need: LEN_BYTES,
        });
    }
    let len = check_len(u32::from_be_bytes(len_buf) as usize)?;
    let mut frame = vec![0u8; len];
    let got = read_full(r, &mut frame)?;
    if got < len {
        return Err(ProtocolError::UnexpectedEof {
            have: LEN_BYTES + got,
            need: LEN_BYTES + len,
        });
    }
    decode_frame_body(&frame).map(Some)
}

/// Writes one message to a blocking stream.
pub fn write_message<M: Message, W: Write>(w: &mut W, msg: &M) -> Result<(), ProtocolError> {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf);
    w.write_all(&buf)
        .and_then(|()| w.flush())
        .map_err(|source| ProtocolError::Io { source })
}

/// Fills `buf` unless the stream ends first; returns how much was read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ProtocolError::Io { source }),
        }
    }
    Ok(filled)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn frame<M: Message>(msg: &M) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(msg, &mut out);
        out
    }

    fn all_requests() -> Vec<Request> {
        vec![
            Request::Hello(Hello {
                version: PROTOCOL_VERSION,
                info: "supermin 0.1".into(),
            }),
            Request::Exec(ExecRequest {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    OsString::from_vec(vec![0xff, b'x']),
                ],
                env: vec![("A".into(), "b=c".into()), ("EMPTY".into(), "".into())],
                cwd: Some("/tmp".into()),
                stdin: true,
                pty: Some(WinSize {
                    rows: 30,
                    cols: 100,
                }),
            }),
            Request::Exec(ExecRequest::default()),
            Request::Stdin(b"line\n".to_vec()),
            Request::Stdin(Vec::new()),
            Request::StdinEof,
            Request::Upload {
                path: "/root/f".into(),
                mode: 0o644,
            },
            Request::FileData(vec![0; 1000]),
            Request::FileEnd,
            Request::Download {
                path: "/etc/hostname".into(),
            },
            Request::Shutdown,
            Request::Sync,
            Request::AwaitDisks { count: 3 },
            Request::Mount {
                tag: "supermin0".into(),
                target: OsString::from_vec(b"/home/a b/\xff".to_vec()),
                readonly: true,
                fs: ShareFs::NineP,
            },
            Request::Mount {
                tag: "supermin1".into(),
                target: "/mnt/w".into(),
                readonly: false,
                fs: ShareFs::Virtiofs,
            },
            Request::Resume {
                secs: 1_764_590_000,
                nanos: 999_999_999,
                entropy: vec![0xa5; MAX_ENTROPY],
            },
            Request::Resume {
                secs: -1,
                nanos: 0,
                entropy: Vec::new(),
            },
            Request::Resize(WinSize {
                rows: 50,
                cols: 132,
            }),
            Request::Lstat {
                path: "/etc".into(),
            },
            Request::ListDir { path: "/".into() },
            Request::Mkdir {
                path: "/d".into(),
                mode: 0o1777,
            },
            Request::Symlink {
                target: "../x".into(),
                path: "/l".into(),
            },
            Request::SetTimes {
                path: "/f".into(),
                atime: Time { sec: -5, nsec: 1 },
                mtime: Time {
                    sec: 1 << 40,
                    nsec: 999_999_999,
                },
            },
        ]
    }

    fn entry(name: &str, kind: EntryKind, target: &str) -> Entry {
        Entry {
            name: name.into(),
            kind,
            mode: 0o4755,
            size: 1 << 33,
            atime: Time { sec: 1, nsec: 2 },
            mtime: Time { sec: -3, nsec: 4 },
            target: target.into(),
        }
    }

    fn all_replies() -> Vec<Reply> {
        vec![
            Reply::Hello(Hello {
                version: 7,
                info: "6.1.0".into(),
            }),
            Reply::Stdout(b"out".to_vec()),
            Reply::Stderr(b"err".to_vec()),
            Reply::Exit(ExitStatus::Code(3)),
            Reply::Exit(ExitStatus::Code(255)),
            Reply::Exit(ExitStatus::Signal(9)),
            Reply::Exit(ExitStatus::Signal(64)),
            Reply::ExecFailed {
                message: "no such".into(),
            },
            Reply::FileData(vec![1, 2, 3]),
            Reply::FileEnd,
            Reply::Done,
            Reply::Error {
                message: "é".into(),
            },
            Reply::Entries(vec![
                entry("f", EntryKind::File, ""),
                entry("d", EntryKind::Dir, ""),
                entry("l", EntryKind::Symlink, "/etc"),
                entry("p", EntryKind::Other, ""),
            ]),
            Reply::Entries(Vec::new()),
        ]
    }

    #[test]
    fn entry_wire_len_is_what_an_entry_takes_in_a_frame() {
        let e = entry("name", EntryKind::Symlink, "target");
        let mut one = Vec::new();
        Reply::Entries(vec![e.clone()]).encode_body(&mut one);
        let mut none = Vec::new();
        Reply::Entries(Vec::new()).encode_body(&mut none);
        assert_eq!(one.len() - none.len(), entry_wire_len(&e));
    }

    #[test]
    fn entries_with_mode_bits_beyond_permissions_or_bad_times_are_refused() {
        let mut e = entry("f", EntryKind::File, "");
        e.mode = 0o170000;
        let bytes = frame(&Reply::Entries(vec![e]));
        assert!(matches!(
            read_message::<Reply, _>(&mut &bytes[..]),
            Err(ProtocolError::BadValue {
                what: "entry mode",
                ..
            })
        ));
        let mut e = entry("f", EntryKind::File, "");
        e.mtime.nsec = 1_000_000_000;
        let bytes = frame(&Reply::Entries(vec![e]));
        assert!(matches!(
            read_message::<Reply, _>(&mut &bytes[..]),
            Err(ProtocolError::BadValue { .. })
        ));
    }

    // Regression: Exit(Signal(i32::MAX)) from a hostile daemon overflowed
    // `shell_code` (a panic in debug builds, exit 0 in release).
    #[test]
    fn exit_statuses_outside_a_shells_range_are_refused() {
        for bad in [
            ExitStatus::Code(-1),
            ExitStatus::Code(256),
            ExitStatus::Signal(0),
            ExitStatus::Signal(65),
            ExitStatus::Signal(i32::MAX),
            ExitStatus::Signal(i32::MIN),
        ] {
            let bytes = frame(&Reply::Exit(bad));
            let got = read_message::<Reply, _>(&mut &bytes[..]);
            assert!(
                matches!(got, Err(ProtocolError::BadValue { .. })),
                "{bad:?}: {got:?}"
            );
        }
    }

    #[test]
    fn every_request_survives_a_round_trip() {
        for msg in all_requests() {
            let bytes = frame(&msg);
            let back: Request = read_message(&mut &bytes[..]).unwrap().unwrap();
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn every_reply_survives_a_round_trip() {
        for msg in all_replies() {
            let bytes = frame(&msg);
            let back: Reply = read_message(&mut &bytes[..]).unwrap().unwrap();
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn a_reply_frame_is_not_accepted_as_a_request() {
        let bytes = frame(&Reply::Done);
        let err = read_message::<Request, _>(&mut &bytes[..]).unwrap_err();
        assert!(
            matches!(err, ProtocolError::UnknownKind { kind: 0x88 }),
            "{err:?}"
        );
    }

    #[test]
    fn decoder_reassembles_frames_fed_one_byte_at_a_time() {
        let msgs = all_requests();
        let mut stream = Vec::new();
        for m in &msgs {
            encode_frame(m, &mut stream);
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in stream {
            dec.feed(&[b]);
            while let Some(m) = dec.next_message::<Request>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        dec.finish().unwrap();
    }

    #[test]
    fn decoder_rejects_an_oversized_length_before_the_body_arrives() {
        let mut dec = FrameDecoder::new();
        dec.feed(&((MAX_FRAME as u32) + 1).to_be_bytes());
        let err = dec.next_message::<Request>().unwrap_err();
        assert!(
            matches!(err, ProtocolError::Oversized { len, .. } if len == MAX_FRAME + 1),
            "{err:?}"
        );
    }

    #[test]
    fn a_frame_of_exactly_the_limit_is_accepted() {
        let msg = Reply::Stdout(vec![7; MAX_FRAME - 1]);
        let bytes = frame(&msg);
        let back: Reply = read_message(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn blocking_reader_rejects_an_oversized_length() {
        let bytes = u32::MAX.to_be_bytes();
        let err = read_message::<Reply, _>(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::Oversized { .. }), "{err:?}");
    }

    #[test]
    fn zero_length_frame_is_an_error() {
        let bytes = 0u32.to_be_bytes();
        let err = read_message::<Reply, _>(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::Empty), "{err:?}");
    }

    #[test]
    fn stream_cut_inside_a_frame_is_unexpected_eof_at_every_cut_point() {
        let bytes = frame(&Request::Upload {
            path: "/x".into(),
            mode: 0o600,
        });
        for cut in 1..bytes.len() {
            let err = read_message::<Request, _>(&mut &bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, ProtocolError::UnexpectedEof { have, .. } if have == cut),
                "cut {cut}: {err:?}"
            );
            let mut dec = FrameDecoder::new();
            dec.feed(&bytes[..cut]);
            assert!(dec.next_message::<Request>().unwrap().is_none());
            assert!(matches!(
                dec.finish(),
                Err(ProtocolError::UnexpectedEof { .. })
            ));
        }
    }

    #[test]
    fn empty_stream_is_a_clean_end() {
        assert!(read_message::<Reply, _>(&mut &[][..]).unwrap().is_none());
    }

    #[test]
    fn body_truncated_inside_its_frame_is_reported_with_the_field() {
        // A frame whose length is honest but whose body lies about a string length.
        let mut body = vec![0x05]; // upload
        body.extend_from_slice(&100u32.to_be_bytes());
        body.extend_from_slice(b"/short");
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let err = read_message::<Request, _>(&mut &bytes[..]).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::Truncated {
                    what: "path",
                    need: 100,
                    have: 6,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn forged_argument_count_does_not_allocate_and_is_rejected() {
        let mut body = vec![0x02]; // exec
        body.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let err = read_message::<Request, _>(&mut &bytes[..]).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::Truncated {
                    what: "argv count",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn trailing_bytes_after_a_message_are_rejected() {
        let mut bytes = frame(&Request::Shutdown);
        bytes.push(0);
        bytes[3] += 1;
        let err = read_message::<Request, _>(&mut &bytes[..]).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Trailing { extra: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn hello_with_wrong_magic_is_rejected() {
        let mut bytes = frame(&Reply::Hello(Hello {
            version: 1,
            info: String::new(),
        }));
        bytes[5] = b'X';
        let err = read_message::<Reply, _>(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::BadMagic { .. }), "{err:?}");
    }

    #[test]
    fn invalid_flag_byte_is_rejected() {
        let mut bytes = frame(&Request::Exec(ExecRequest::default()));
        let last = bytes.len() - 1;
        bytes[last] = 2;
        let err = read_message::<Request, _>(&mut &bytes[..]).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::BadValue {
                    what: "pty flag",
                    value: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn signals_map_to_128_plus_n() {
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
    }

    #[test]
    fn only_final_replies_end_a_request() {
        let enders: Vec<bool> = all_replies().iter().map(Reply::ends_request).collect();
        assert_eq!(
            enders,
            [
                false, false, false, true, true, true, true, true, false, true, true, true, false,
                false
            ]
        );
    }
}
