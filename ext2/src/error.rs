//! The crate's error types. Each variant names the path or value it is about
//! and, where there is one, the underlying cause as `source`, so the binary
//! can print one line that says what failed, where, and what to do.

use std::io;
use std::path::PathBuf;

/// Paths inside the tree are bytes; show them as text when they are UTF-8 and
/// with `\xNN` escapes otherwise, so any name can be named in a message.
pub(crate) fn show(path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(s) => s.to_owned(),
        Err(_) => path.escape_ascii().to_string(),
    }
}

/// A path or node given to [`crate::Tree`] that the tree cannot hold.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: paths in the image tree must be absolute (start with '/')")]
    NotAbsolute { path: String },
    #[error("{path}: a name is '.', '..' or contains a NUL byte, which ext2 cannot store")]
    InvalidName { path: String },
    #[error("{path}: a name is {len} bytes long; ext2 names are at most 255 bytes")]
    NameTooLong { path: String, len: usize },
    #[error("{path}: the parent directory is not in the tree yet; insert it first (or use ensure_parents)")]
    ParentMissing { path: String },
    #[error("{path}: a parent of this path is not a directory in the tree")]
    ParentNotDir { path: String },
    #[error("{path}: the root of the image must be a directory")]
    RootNotDir { path: String },
    #[error("{path}: hard links to directories are not allowed")]
    LinkToDir { path: String },
    #[error("{path}: the link target is not a node of this tree")]
    UnknownNode { path: String },
    #[error("{path}: a symlink needs a non-empty target")]
    EmptySymlink { path: String },
    #[error("{path}: a symlink target cannot contain a NUL byte")]
    SymlinkHasNul { path: String },
    #[error(
        "{path}: device number {major}:{minor} is out of range (major <= 4095, minor <= 1048575)"
    )]
    DeviceOutOfRange {
        path: String,
        major: u32,
        minor: u32,
    },
}

/// A failure to read the source tree or to write the image.
#[derive(Debug, thiserror::Error)]
pub enum Ext2Error {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("cannot read directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot stat {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read symlink {path}")]
    ReadLink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is of a file type ext2 cannot hold")]
    UnsupportedFileType { path: PathBuf },
    #[error("{path}: directory of {size} bytes is larger than ext2 allows (4 GiB)")]
    DirTooLarge { path: String, size: u64 },
    #[error("{path} is not a directory; give a directory to copy into the image")]
    NotADirectory { path: PathBuf },
    #[error("cannot open {path}, whose contents go into the image")]
    OpenSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}, whose contents go into the image")]
    ReadSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the byte range at offset {offset} (length {len}) of an open source file for {image_path}")]
    ReadRange {
        image_path: String,
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot create image file {path}")]
    CreateImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write image file {path} (is the disk full?)")]
    WriteImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image size {size} bytes is too small for this tree, which needs at least {needed} bytes; give a larger --size, or none to size the image from its content")]
    ImageTooSmall { size: u64, needed: u64 },
    #[error("image of {size} bytes is larger than ext2 with {block_size}-byte blocks allows ({max} bytes)")]
    ImageTooLarge {
        size: u64,
        block_size: u32,
        max: u64,
    },
    #[error("block size {block_size} is not supported; use 1024, 2048 or 4096")]
    BadBlockSize { block_size: u32 },
    #[error("label {label:?} is {len} bytes; ext2 labels are at most 16 bytes")]
    LabelTooLong { label: String, len: usize },
    #[error("{path}: file of {len} bytes is larger than ext2 with {block_size}-byte blocks allows ({max} bytes)")]
    FileTooLarge {
        path: String,
        len: u64,
        block_size: u32,
        max: u64,
    },
    #[error("{path}: symlink target of {len} bytes is too long; with {block_size}-byte blocks the limit is {max}")]
    SymlinkTooLong {
        path: String,
        len: usize,
        block_size: u32,
        max: usize,
    },
    #[error("internal error: {what}; this is a bug in supermin-ext2, please report it")]
    Internal { what: &'static str },
    #[error("{path}: {links} links exceed ext2's limit of {max}")]
    TooManyLinks { path: String, links: u64, max: u64 },
    #[error("the tree has {count} nodes; ext2 numbers at most 2^32 - 1 inodes")]
    TooManyInodes { count: u64 },
}

impl Ext2Error {
    /// The way out, where the message and its cause do not say it. None so far: each
    /// variant that has one says it in its message; this is where a new one goes.
    pub fn hint(&self) -> Option<String> {
        None
    }
}

/// A `--size` value that is not supermin's `^[.0-9]+[bKMG]$`.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    #[error(
        "{input:?}: cannot parse size; use a number and a unit b, K, M or G (e.g. 4G, 512M, 1.5G)"
    )]
    Syntax { input: String },
    #[error("{input:?}: size is too large")]
    TooLarge { input: String },
}

/// A UUID that is not `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex.
#[derive(Debug, thiserror::Error)]
#[error("{input:?}: not a UUID; expected 32 hex digits as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")]
pub struct UuidError {
    pub input: String,
}
