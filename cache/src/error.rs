//! The one error type of this crate. Every variant names the path it is about;
//! the cause is its `#[source]` (never repeated in the message), and what the
//! user can do is in the message or in [`CacheError::hint`], because the
//! builder prints these as the line a failed `supermin --build` leaves on stderr.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache base directory {path} (from {origin}) cannot be used")]
    BaseDir {
        path: PathBuf,
        origin: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("cache base directory {path} (from {origin}) is not a directory")]
    BaseNotADirectory { path: PathBuf, origin: &'static str },

    #[error("cannot create cache directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot inspect cache directory {path}")]
    InspectDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "security: cache directory {path} is owned by uid {owner}, not by this user (uid {euid}); \
         remove it, or set LIBGUESTFS_CACHEDIR to a directory you own"
    )]
    NotOwned {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },

    #[error(
        "security: cache directory {path} is a symbolic link; \
         remove it so that a real directory can be created"
    )]
    IsSymlink { path: PathBuf },

    #[error("security: cache directory {path} is not a directory (mode {mode:o}); remove it")]
    NotADirectory { path: PathBuf, mode: u32 },

    #[error(
        "security: cache directory {path} is writable by group or other (mode {mode:o}); \
         run `chmod go-w {path}` or remove it"
    )]
    WritableByOthers { path: PathBuf, mode: u32 },

    #[error("cannot read fingerprint input {path}")]
    ReadInput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot read the stamp {path}")]
    ReadStamp {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot check output file {path}")]
    CheckOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot open lock file {path}")]
    OpenLock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("output path {path} has no final component to build into; name a directory such as DIR/appliance.d")]
    BadOutputPath { path: PathBuf },

    #[error("cannot create a staging directory {path} beside the output")]
    CreateStaging {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot write the stamp {path}")]
    WriteStamp {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot sync {path} to disk")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot move {from} into place as {to}")]
    Publish {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot list {path} to clean up debris of earlier builds")]
    ListDebris {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CacheError {
    /// The way out, for the failures whose cause (printed after the message) leaves the
    /// user to guess it; the `security:` ones say theirs in the message.
    pub fn hint(&self) -> Option<String> {
        match self {
            CacheError::BaseDir { origin, .. } => {
                Some(format!("point {origin} at an existing directory"))
            }
            CacheError::OpenLock { .. } => {
                Some("check that the lock file's directory exists and is writable".into())
            }
            CacheError::CreateStaging { .. } => {
                Some("the output's parent directory must exist and be writable".into())
            }
            CacheError::Remove { path, .. } => Some(format!("remove {} by hand", path.display())),
            _ => None,
        }
    }
}
