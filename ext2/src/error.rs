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
    /// A path does not start with `/`.
    #[error("{path}: paths in the image tree must be absolute (start with '/')")]
    NotAbsolute {
        /// The path concerned.
        path: String,
    },
    /// A name ext2 cannot store.
    #[error("{path}: a name is '.', '..' or contains a NUL byte, which ext2 cannot store")]
    InvalidName {
        /// The path concerned.
        path: String,
    },
    /// A name longer than 255 bytes.
    #[error("{path}: a name is {len} bytes long; ext2 names are at most 255 bytes")]
    NameTooLong {
        /// The path concerned.
        path: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The parent is not in the tree.
    #[error("{path}: the parent directory is not in the tree yet; insert it first (or use ensure_parents)")]
    ParentMissing {
        /// The path concerned.
        path: String,
    },
    /// A parent is not a directory.
    #[error("{path}: a parent of this path is not a directory in the tree")]
    ParentNotDir {
        /// The path concerned.
        path: String,
    },
    /// The root is not a directory.
    #[error("{path}: the root of the image must be a directory")]
    RootNotDir {
        /// The path concerned.
        path: String,
    },
    /// A hard link to a directory.
    #[error("{path}: hard links to directories are not allowed")]
    LinkToDir {
        /// The path concerned.
        path: String,
    },
    /// A link to a node that is not in this tree.
    #[error("{path}: the link target is not a node of this tree")]
    UnknownNode {
        /// The path concerned.
        path: String,
    },
    /// A symlink with an empty target.
    #[error("{path}: a symlink needs a non-empty target")]
    EmptySymlink {
        /// The path concerned.
        path: String,
    },
    /// A symlink target with a NUL byte.
    #[error("{path}: a symlink target cannot contain a NUL byte")]
    SymlinkHasNul {
        /// The path concerned.
        path: String,
    },
    /// Device numbers ext2 cannot store.
    #[error(
        "{path}: device number {major}:{minor} is out of range (major <= 4095, minor <= 1048575)"
    )]
    DeviceOutOfRange {
        /// The path concerned.
        path: String,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// A failure to read the source tree or to write the image.
#[derive(Debug, thiserror::Error)]
pub enum Ext2Error {
    /// The tree was refused.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// A source directory cannot be listed.
    #[error("cannot read directory {path}")]
    ReadDir {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A source path cannot be examined.
    #[error("cannot stat {path}")]
    Stat {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A source symlink cannot be read.
    #[error("cannot read symlink {path}")]
    ReadLink {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A source file of a kind ext2 cannot hold.
    #[error("{path} is of a file type ext2 cannot hold")]
    UnsupportedFileType {
        /// The path concerned.
        path: PathBuf,
    },
    /// A directory larger than ext2 allows.
    #[error("{path}: directory of {size} bytes is larger than ext2 allows (4 GiB)")]
    DirTooLarge {
        /// The path concerned.
        path: String,
        /// Its size in bytes.
        size: u64,
    },
    /// The source is not a directory.
    #[error("{path} is not a directory; give a directory to copy into the image")]
    NotADirectory {
        /// The path concerned.
        path: PathBuf,
    },
    /// A file whose contents go into the image cannot be opened.
    #[error("cannot open {path}, whose contents go into the image")]
    OpenSource {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file whose contents go into the image cannot be read.
    #[error("cannot read {path}, whose contents go into the image")]
    ReadSource {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A byte range of an open file cannot be read.
    #[error("cannot read the byte range at offset {offset} (length {len}) of an open source file for {image_path}")]
    ReadRange {
        /// The path in the image it was for.
        image_path: String,
        /// Where the range starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image file cannot be created.
    #[error("cannot create image file {path}")]
    CreateImage {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image file cannot be written.
    #[error("cannot write image file {path} (is the disk full?)")]
    WriteImage {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The given size cannot hold the tree.
    #[error("image size {size} bytes is too small for this tree, which needs at least {needed} bytes; give a larger --size, or none to size the image from its content")]
    ImageTooSmall {
        /// Its size in bytes.
        size: u64,
        /// The least size that can.
        needed: u64,
    },
    /// The given size is past what ext2 allows.
    #[error("image of {size} bytes is larger than ext2 with {block_size}-byte blocks allows ({max} bytes)")]
    ImageTooLarge {
        /// The size asked for.
        size: u64,
        /// The block size.
        block_size: u32,
        /// The limit.
        max: u64,
    },
    /// A block size other than 1024, 2048 or 4096.
    #[error("block size {block_size} is not supported; use 1024, 2048 or 4096")]
    BadBlockSize {
        /// The block size.
        block_size: u32,
    },
    /// A label longer than 16 bytes.
    #[error("label {label:?} is {len} bytes; ext2 labels are at most 16 bytes")]
    LabelTooLong {
        /// The label.
        label: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A file larger than ext2 allows.
    #[error("{path}: file of {len} bytes is larger than ext2 with {block_size}-byte blocks allows ({max} bytes)")]
    FileTooLarge {
        /// The path concerned.
        path: String,
        /// Its length in bytes.
        len: u64,
        /// The block size.
        block_size: u32,
        /// The limit.
        max: u64,
    },
    /// A symlink target longer than one block.
    #[error("{path}: symlink target of {len} bytes is too long; with {block_size}-byte blocks the limit is {max}")]
    SymlinkTooLong {
        /// The path concerned.
        path: String,
        /// Its length in bytes.
        len: usize,
        /// The block size.
        block_size: u32,
        /// The limit.
        max: usize,
    },
    /// A bug: an invariant of the writer does not hold.
    #[error("internal error: {what}; this is a bug in supermin-ext2, please report it")]
    Internal {
        /// Which one.
        what: &'static str,
    },
    /// More hard links than ext2 counts.
    #[error("{path}: {links} links exceed ext2's limit of {max}")]
    TooManyLinks {
        /// The path concerned.
        path: String,
        /// How many.
        links: u64,
        /// The limit.
        max: u64,
    },
    /// More nodes than ext2 numbers.
    #[error("the tree has {count} nodes; ext2 numbers at most 2^32 - 1 inodes")]
    TooManyInodes {
        /// How many.
        count: u64,
    },
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
    /// Not a size.
    #[error(
        "{input:?}: cannot parse size; use a number and a unit b, K, M or G (e.g. 4G, 512M, 1.5G)"
    )]
    Syntax {
        /// What was given.
        input: String,
    },
    /// A size too large to count in bytes.
    #[error("{input:?}: size is too large")]
    TooLarge {
        /// What was given.
        input: String,
    },
}

/// A UUID that is not `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex.
#[derive(Debug, thiserror::Error)]
#[error("{input:?}: not a UUID; expected 32 hex digits as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")]
pub struct UuidError {
    /// What was given.
    pub input: String,
}
