//! The one error type of this crate. Every variant names the path it is about;
//! the cause is its `#[source]` (never repeated in the message), and what the
//! user can do is in the message or in [`CacheError::hint`], because the
//! builder prints these as the line a failed `supermin --build` leaves on stderr.

use std::io;
use std::path::PathBuf;

/// Every failure of this crate, with the path it is about.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache base directory cannot be used.
    #[error("cache base directory {path} (from {origin}) cannot be used")]
    BaseDir {
        /// The path concerned.
        path: PathBuf,
        /// Where the base came from, for people.
        origin: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The cache base directory is not a directory.
    #[error("cache base directory {path} (from {origin}) is not a directory")]
    BaseNotADirectory {
        /// The path concerned.
        path: PathBuf,
        /// Where the base came from, for people.
        origin: &'static str,
    },

    /// A cache directory cannot be created.
    #[error("cannot create cache directory {path}")]
    CreateDir {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A cache directory, or an entry in it, cannot be inspected.
    #[error("cannot inspect cache directory {path}")]
    InspectDir {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The cache directory belongs to another user.
    #[error(
        "security: cache directory {path} is owned by uid {owner}, not by this user (uid {euid}); \
         remove it, or set LIBGUESTFS_CACHEDIR to a directory you own"
    )]
    NotOwned {
        /// The path concerned.
        path: PathBuf,
        /// The directory's owner.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },

    /// The cache directory is a symbolic link.
    #[error(
        "security: cache directory {path} is a symbolic link; \
         remove it so that a real directory can be created"
    )]
    IsSymlink {
        /// The path concerned.
        path: PathBuf,
    },

    /// The cache directory is something other than a directory.
    #[error("security: cache directory {path} is not a directory (mode {mode:o}); remove it")]
    NotADirectory {
        /// The path concerned.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },

    /// The cache directory is writable by group or other.
    #[error(
        "security: cache directory {path} is writable by group or other (mode {mode:o}); \
         run `chmod go-w {path}` or remove it"
    )]
    WritableByOthers {
        /// The path concerned.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },

    /// An input of the fingerprint cannot be read.
    #[error("cannot read fingerprint input {path}")]
    ReadInput {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// An output's stamp cannot be read.
    #[error("cannot read the stamp {path}")]
    ReadStamp {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A file of the output cannot be checked.
    #[error("cannot check output file {path}")]
    CheckOutput {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The lock file cannot be opened.
    #[error("cannot open lock file {path}")]
    OpenLock {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The lock cannot be taken.
    #[error("cannot lock {path}")]
    Lock {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The output path has no final component.
    #[error("output path {path} has no final component to build into; name a directory such as DIR/appliance.d")]
    BadOutputPath {
        /// The path concerned.
        path: PathBuf,
    },

    /// The staging directory cannot be created.
    #[error("cannot create a staging directory {path} beside the output")]
    CreateStaging {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The stamp cannot be written.
    #[error("cannot write the stamp {path}")]
    WriteStamp {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// Syncing the output to disk failed.
    #[error("cannot sync {path} to disk")]
    Sync {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The rename that publishes the output failed.
    #[error("cannot move {from} into place as {to}")]
    Publish {
        /// The staging directory.
        from: PathBuf,
        /// The output path.
        to: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The output's parent cannot be listed for debris.
    #[error("cannot list {path} to clean up debris of earlier builds")]
    ListDebris {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// Removing a cached entry or debris failed.
    #[error("cannot remove {path}")]
    Remove {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
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
