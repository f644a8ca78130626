//! An ext2 (rev 1) filesystem writer: builds a complete, sparse image file in
//! one pass from an in-memory [`Tree`] and the host files that hold the data,
//! without mounting anything and without root.
//!
//! The work is split in two: planning (`plan.rs`) decides everything (inode numbers,
//! every block, bitmaps, descriptors) from the tree alone, then
//! [`write_image`] writes the metadata in large sequential chunks while the
//! file data is copied in parallel with `copy_file_range`. Holes in sparse
//! source files stay holes, unused parts of the image are never written (the
//! image file is sparse), and the same tree and [`Options`] always give the
//! same bytes.
//!
//! The format written is what `mke2fs -t ext2` makes, minus the resize
//! inode, extended attributes and htree indexes: sparse_super, large_file,
//! filetype, 256-byte inodes with nanosecond and post-2038 timestamps.

#![warn(missing_docs)]

mod blockmap;
mod disk;
mod error;
mod io;
mod layout;
mod parse;
mod plan;
mod tree;

use std::fs::OpenOptions;
use std::path::Path;

pub use error::{Ext2Error, SizeError, TreeError, UuidError};
pub use parse::{format_uuid, parse_size, parse_uuid};
pub use tree::{FileData, Meta, NodeId, NodeKind, Timestamp, Tree, WalkEntry, MAX_NAME_LEN};

/// How to shape the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Image size in bytes; `None` derives it from the content with headroom
    /// (a fifth more data blocks, at least 4 MiB free, spare inodes).
    pub size: Option<u64>,
    /// `None` derives a UUID from a hash of the tree and these options.
    pub uuid: Option<[u8; 16]>,
    /// Volume label, at most 16 bytes.
    pub label: Option<String>,
    /// 1024, 2048 or 4096.
    pub block_size: u32,
    /// Superblock times, lost+found's times and every inode's creation time
    /// (seconds since the epoch); callers pass `SOURCE_DATE_EPOCH` or now.
    pub creation_time: i64,
    /// Directory hash seed; `None` derives one from the UUID.
    pub hash_seed: Option<[u8; 16]>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            size: None,
            uuid: None,
            label: None,
            block_size: 4096,
            creation_time: 0,
            hash_seed: None,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Bytes of the image file.
    pub size: u64,
    /// Blocks in use, metadata included.
    pub blocks_used: u64,
    /// Inodes in use, the reserved ones included.
    pub inodes_used: u64,
    /// The filesystem UUID.
    pub uuid: [u8; 16],
    /// The tree holds a file or directory that others may not read, so the
    /// image was left mode 0600.
    pub private: bool,
}

fn check_options(opts: &Options) -> Result<(), Ext2Error> {
    if !matches!(opts.block_size, 1024 | 2048 | 4096) {
        return Err(Ext2Error::BadBlockSize {
            block_size: opts.block_size,
        });
    }
    if let Some(l) = &opts.label {
        if l.len() > 16 {
            return Err(Ext2Error::LabelTooLong {
                label: l.clone(),
                len: l.len(),
            });
        }
    }
    Ok(())
}

/// Writes `tree` as an ext2 image to `out`, which is created or truncated
/// and left sparse. Nothing is synced to disk; callers that need durability
/// fsync the file.
///
/// The image is as readable as the most private file in it, whatever the
/// umask: mode 0600 while it is written, and 0644 at the end only when
/// every regular file with contents in the tree is readable by anyone
/// ([`Summary::private`] says which). A root image that holds a host's
/// root-only files (`/etc/shadow`, keys) must not hand them to every user.
pub fn write_image(tree: &Tree, out: &Path, opts: &Options) -> Result<Summary, Ext2Error> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    check_options(opts)?;
    let mut plan = plan::plan(tree, opts)?;
    plan.summary.private = tree.has_private_nodes();
    let img = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .map_err(|source| Ext2Error::CreateImage {
            path: out.to_path_buf(),
            source,
        })?;
    img.set_len(plan.image_size)
        .map_err(|source| Ext2Error::WriteImage {
            path: out.to_path_buf(),
            source,
        })?;
    let (meta, data) = rayon::join(
        || io::write_chunks(&img, out, &plan.chunks),
        || io::copy_all(&img, out, &plan.jobs, plan.block_size),
    );
    meta?;
    data?;
    // An existing file keeps its old mode through `open`: set it either way.
    let mode = if plan.summary.private { 0o600 } else { 0o644 };
    img.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|source| Ext2Error::WriteImage {
            path: out.to_path_buf(),
            source,
        })?;
    Ok(plan.summary)
}
