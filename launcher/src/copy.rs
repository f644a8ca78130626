//! `--copy-in` and `--copy-out`: whole trees (files, directories, symlinks,
//! with their modes and times) between the host and the appliance, over the
//! daemon's upload, download, mkdir, symlink, set-times, lstat and listing
//! requests, one file streamed at a time.
//!
//! Copy-in sends what the host has; nothing the guest says decides anything
//! but success. Copy-out is the dangerous direction: the guest names the
//! entries, chooses their kinds and sizes and may lie about all of it. So:
//!
//! - the top name is the host's (the last component of the guest path the
//!   user gave), and every name from a listing must be a plain name (not
//!   empty, `.` or `..`, no `/` or NUL, at most 255 bytes) or the copy stops;
//! - everything is created relative to a directory descriptor with
//!   `O_NOFOLLOW`, files under a private temporary name with `O_EXCL` and
//!   renamed into place, directories opened `O_DIRECTORY | O_NOFOLLOW`: a
//!   symlink the guest had us make is never followed, whatever names come
//!   later (`link -> /etc` then a directory `link` fails, it does not write
//!   into `/etc`);
//! - modes lose set-id and sticky bits (`& 0o777`);
//! - bytes (file data, names, link targets), entries and depth are capped
//!   per copy-out; past the byte cap the VM is stopped.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use supermin_protocol::{Entry, EntryKind, Reply, Request, Time};

use super::{guest_text, unexpected, LaunchError, Session};

/// Entries one listing may hold, and a whole copy-out.
const MAX_LISTING: usize = 100_000;
const MAX_ENTRIES: u64 = 1_000_000;
/// Directory levels below the top of a copy-out.
const MAX_DEPTH: usize = 128;
/// Longest name a Linux filesystem takes, and longest symlink target.
const MAX_NAME: usize = 255;
const MAX_TARGET: usize = 4095;
/// Names and link targets one listing may hold in memory.
const MAX_LISTING_BYTES: usize = 16 << 20;

/// What is left of one copy-out's allowance.
struct Budget {
    limit: u64,
    bytes: u64,
    entries: u64,
    remote: PathBuf,
}

impl Budget {
    fn take_bytes(&mut self, n: u64) -> Result<(), LaunchError> {
        match self.bytes.checked_sub(n) {
            Some(left) => {
                self.bytes = left;
                Ok(())
            }
            None => Err(LaunchError::CopyOutTooLarge {
                remote: self.remote.clone(),
                limit: self.limit,
            }),
        }
    }
}

/// Why a name from the guest cannot be a host file name, if it cannot.
pub(crate) fn unsafe_name(name: &OsStr) -> Option<&'static str> {
    let b = name.as_bytes();
    if b.is_empty() {
        Some("it is empty")
    } else if b == b"." || b == b".." {
        Some("it names a directory itself or its parent")
    } else if b.contains(&b'/') {
        Some("it contains a slash")
    } else if b.contains(&0) {
        Some("it contains a NUL byte")
    } else if b.len() > MAX_NAME {
        Some("it is longer than 255 bytes")
    } else {
        None
    }
}

fn timespec(t: Time) -> Timespec {
    Timespec {
        tv_sec: t.sec,
        tv_nsec: i64::from(t.nsec),
    }
}

fn timestamps(e: &Entry) -> Timestamps {
    Timestamps {
        last_access: timespec(e.atime),
        last_modification: timespec(e.mtime),
    }
}

/// A name for a file being written, unique in this process.
fn partial_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        ".supermin-partial-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn time_of(sec: i64, nsec: i64) -> Time {
    Time {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

impl Session {
    /// Sends `req` and expects `Done`.
    fn request_done(&mut self, req: Request) -> Result<(), LaunchError> {
        self.vm.send(&req)?;
        match self.next_reply()? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `req` (lstat or listing) and gathers its entries, at most
    /// `max` of them; names and targets count against `budget`.
    fn entries(
        &mut self,
        req: Request,
        max: usize,
        budget: &mut Budget,
    ) -> Result<Vec<Entry>, LaunchError> {
        self.vm.send(&req)?;
        let mut all = Vec::new();
        let mut held = 0usize;
        loop {
            match self.next_reply()? {
                Reply::Entries(entries) => {
                    if all.len() + entries.len() > max
                        || budget.entries < (all.len() + entries.len()) as u64
                    {
                        self.vm.stop();
                        return Err(LaunchError::CopyOutTooMany {
                            remote: budget.remote.clone(),
                            max: max.min(usize::try_from(MAX_ENTRIES).unwrap_or(usize::MAX)),
                        });
                    }
                    for e in &entries {
                        // Checked as they arrive, so that a listing of long
                        // names cannot make us hold much before it is refused.
                        let why = if e.name.len() > MAX_NAME {
                            Some("it is longer than 255 bytes")
                        } else if e.target.len() > MAX_TARGET {
                            Some("its symlink target is longer than 4095 bytes")
                        } else {
                            None
                        };
                        if let Some(why) = why {
                            self.vm.stop();
                            return Err(LaunchError::UnsafeName {
                                name: vm_text(OsStr::from_bytes(
                                    &e.name.as_bytes()[..e.name.len().min(64)],
                                )),
                                remote: budget.remote.clone(),
                                why,
                            });
                        }
                        held += e.name.len() + e.target.len();
                        if let Err(err) = budget.take_bytes((e.name.len() + e.target.len()) as u64)
                        {
                            self.vm.stop();
                            return Err(err);
                        }
                    }
                    if held > MAX_LISTING_BYTES {
                        self.vm.stop();
                        return Err(LaunchError::CopyOutTooMany {
                            remote: budget.remote.clone(),
                            max: all.len() + entries.len(),
                        });
                    }
                    all.extend(entries);
                }
                Reply::Done => break,
                other => return Err(unexpected(other)),
            }
        }
        budget.entries -= all.len() as u64;
        Ok(all)
    }

    /// Streams `remote` into `file`, counting against `budget`.
    fn receive_file(
        &mut self,
        remote: &Path,
        mut file: &File,
        local: &Path,
        budget: &mut Budget,
    ) -> Result<(), LaunchError> {
        self.vm.send(&Request::Download {
            path: remote.as_os_str().to_os_string(),
        })?;
        loop {
            match self.next_reply()? {
                Reply::FileData(data) => {
                    if let Err(e) = budget.take_bytes(data.len() as u64) {
                        // The guest would still be sending.
                        self.vm.stop();
                        return Err(e);
                    }
                    file.write_all(&data)
                        .map_err(|source| LaunchError::LocalFile {
                            path: local.to_path_buf(),
                            source,
                        })?;
                }
                Reply::FileEnd => return Ok(()),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Copies `local` (a file, a symlink or a whole directory) into the
    /// appliance's directory `guest_dir`, keeping modes and times; symlinks
    /// are copied as symlinks.
    pub fn copy_in(&mut self, local: &Path, guest_dir: &Path) -> Result<(), LaunchError> {
        let name = local
            .file_name()
            .map(OsStr::to_os_string)
            .or_else(|| {
                std::fs::canonicalize(local)
                    .ok()
                    .and_then(|p| p.file_name().map(OsStr::to_os_string))
            })
            .ok_or_else(|| LaunchError::LocalFile {
                path: local.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "has no name to copy it under; name the directory itself",
                ),
            })?;
        self.log(format_args!(
            "copy-in {} -> {}",
            local.display(),
            guest_dir.display()
        ));
        self.copy_in_entry(local, &guest_dir.join(name))
    }

    fn copy_in_entry(&mut self, local: &Path, remote: &Path) -> Result<(), LaunchError> {
        let local_err = |source| LaunchError::LocalFile {
            path: local.to_path_buf(),
            source,
        };
        let meta = std::fs::symlink_metadata(local).map_err(local_err)?;
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let remote_os = remote.as_os_str().to_os_string();
        if ft.is_file() {
            self.upload(local, remote, mode)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(local).map_err(local_err)?;
            self.request_done(Request::Symlink {
                target: target.into_os_string(),
                path: remote_os.clone(),
            })?;
        } else if ft.is_dir() {
            self.request_done(Request::Mkdir {
                path: remote_os.clone(),
                mode,
            })?;
            let mut names: Vec<OsString> = std::fs::read_dir(local)
                .map_err(local_err)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(local_err)?;
            names.sort();
            for name in names {
                self.copy_in_entry(&local.join(&name), &remote.join(&name))?;
            }
        } else {
            return Err(local_err(io::Error::new(
                io::ErrorKind::Unsupported,
                "is a device, fifo or socket, which --copy-in does not copy",
            )));
        }
        // Last, so that creating the children did not change a directory's times.
        self.request_done(Request::SetTimes {
            path: remote_os,
            atime: time_of(meta.atime(), meta.atime_nsec()),
            mtime: time_of(meta.mtime(), meta.mtime_nsec()),
        })
    }

    /// Copies `remote` (a file, a symlink or a whole directory) from the
    /// appliance into the local directory `host_dir`, under its own last
    /// name, keeping modes (without set-id and sticky bits) and times. At
    /// most `max_bytes` of file data, names and link targets are accepted;
    /// see the module documentation for what a hostile guest cannot do.
    pub fn copy_out(
        &mut self,
        remote: &Path,
        host_dir: &Path,
        max_bytes: u64,
    ) -> Result<(), LaunchError> {
        let name =
            remote
                .file_name()
                .map(OsStr::to_os_string)
                .ok_or_else(|| LaunchError::Daemon {
                    message: format!(
                        "{} has no name to copy it under; name a file or directory below /",
                        remote.display()
                    ),
                })?;
        let dir = rustix::fs::open(
            host_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LaunchError::LocalFile {
            path: host_dir.to_path_buf(),
            source: e.into(),
        })?;
        self.log(format_args!(
            "copy-out {} -> {}",
            remote.display(),
            host_dir.display()
        ));
        let mut budget = Budget {
            limit: max_bytes,
            bytes: max_bytes,
            entries: MAX_ENTRIES,
            remote: remote.to_path_buf(),
        };
        let mut top = self.entries(
            Request::Lstat {
                path: remote.as_os_str().to_os_string(),
            },
            1,
            &mut budget,
        )?;
        let entry = top.pop().ok_or_else(|| LaunchError::Unexpected {
            got: "an empty answer to an lstat".into(),
        })?;
        self.copy_out_entry(&dir, host_dir, &name, remote, &entry, 0, &mut budget)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_out_entry(
        &mut self,
        dir: &OwnedFd,
        dir_path: &Path,
        name: &OsStr,
        remote: &Path,
        entry: &Entry,
        depth: usize,
        budget: &mut Budget,
    ) -> Result<(), LaunchError> {
        let local = dir_path.join(name);
        let local_err = |e: rustix::io::Errno| LaunchError::LocalFile {
            path: local.clone(),
            source: e.into(),
        };
        // The guest's mode, without set-id and sticky bits and through our umask:
        // a guest cannot make a host file more open than we would create it.
        let mode = Mode::from_raw_mode(entry.mode & 0o777 & !umask_now());
        match entry.kind {
            EntryKind::File => {
                let tmp = partial_name();
                let fd = rustix::fs::openat(
                    dir,
                    tmp.as_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(local_err)?;
                let file = File::from(fd);
                let done = self
                    .receive_file(remote, &file, &local, budget)
                    .and_then(|()| {
                        rustix::fs::fchmod(&file, mode).map_err(local_err)?;
                        rustix::fs::futimens(&file, &timestamps(entry)).map_err(local_err)?;
                        rustix::fs::renameat(dir, tmp.as_str(), dir, name).map_err(local_err)
                    });
                if done.is_err() {
                    let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
                }
                done
            }
            EntryKind::Symlink => {
                let tmp = partial_name();
                rustix::fs::symlinkat(entry.target.as_os_str(), dir, tmp.as_str())
                    .map_err(local_err)?;
                let done = rustix::fs::renameat(dir, tmp.as_str(), dir, name)
                    .and_then(|()| {
                        rustix::fs::utimensat(
                            dir,
                            name,
                            &timestamps(entry),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                    })
                    .map_err(local_err);
                if done.is_err() {
                    let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
                }
                done
            }
            EntryKind::Dir => {
                if depth >= MAX_DEPTH {
                    self.vm.stop();
                    return Err(LaunchError::CopyOutTooDeep {
                        remote: budget.remote.clone(),
                        max: MAX_DEPTH,
                    });
                }
                // A directory that was already there keeps its own mode and times.
                let created = match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) => true,
                    Err(rustix::io::Errno::EXIST) => false,
                    Err(e) => return Err(local_err(e)),
                };
                // NOFOLLOW: an existing symlink here (one the guest had us
                // make a moment ago) fails instead of leading elsewhere.
                let sub = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(local_err)?;
                let entries = self.entries(
                    Request::ListDir {
                        path: remote.as_os_str().to_os_string(),
                    },
                    MAX_LISTING,
                    budget,
                )?;
                let mut seen = HashSet::with_capacity(entries.len());
                for e in &entries {
                    let why = unsafe_name(&e.name).or_else(|| {
                        (!seen.insert(e.name.as_os_str())).then_some("it is listed twice")
                    });
                    if let Some(why) = why {
                        self.vm.stop();
                        return Err(LaunchError::UnsafeName {
                            name: vm_text(&e.name),
                            remote: remote.to_path_buf(),
                            why,
                        });
                    }
                }
                for e in &entries {
                    self.copy_out_entry(
                        &sub,
                        &local,
                        &e.name,
                        &remote.join(&e.name),
                        e,
                        depth + 1,
                        budget,
                    )?;
                }
                if !created {
                    return Ok(());
                }
                rustix::fs::fchmod(&sub, mode).map_err(local_err)?;
                rustix::fs::futimens(&sub, &timestamps(entry)).map_err(local_err)
            }
            EntryKind::Other => Err(LaunchError::Daemon {
                message: format!(
                    "{} is a device, fifo or socket, which --copy-out does not copy",
                    vm_text(remote.as_os_str())
                ),
            }),
        }
    }
}

/// A name from the guest, fit for an error message.
fn vm_text(name: &OsStr) -> String {
    guest_text(&String::from_utf8_lossy(name.as_bytes()))
}

/// This process's umask (read by setting it and putting it back: there is no
/// other way; nothing else here creates files meanwhile).
fn umask_now() -> u32 {
    let old = rustix::process::umask(Mode::from_raw_mode(0o077));
    rustix::process::umask(old);
    old.as_raw_mode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_safe() {
        for bad in ["", ".", "..", "../escape", "a/b", "/etc", "a\0b"] {
            assert!(unsafe_name(OsStr::new(bad)).is_some(), "{bad:?}");
        }
        assert!(unsafe_name(OsStr::new(&"x".repeat(256))).is_some());
        for good in ["a", "...", ".hidden", "x y", "é", "a\\b"] {
            assert_eq!(unsafe_name(OsStr::new(good)), None, "{good:?}");
        }
        assert_eq!(unsafe_name(OsStr::new(&"x".repeat(255))), None);
    }

    #[test]
    fn the_byte_budget_refuses_what_goes_past_it() {
        let mut b = Budget {
            limit: 10,
            bytes: 10,
            entries: 1,
            remote: "/x".into(),
        };
        b.take_bytes(4).unwrap();
        b.take_bytes(6).unwrap();
        assert!(matches!(
            b.take_bytes(1),
            Err(LaunchError::CopyOutTooLarge { limit: 10, .. })
        ));
    }
}
