//! The appliance cache: where it lives, fingerprints, locks and atomic publish.
//!
//! The builder uses it in this order for `--build --if-newer --lock F -o DIR`:
//! compute a [`Fingerprint`] of everything that determines the output, take
//! the [`lock`], check [`is_fresh`] (done if fresh), [`clean_debris`] of
//! earlier killed builds, build into a [`Staging`] directory and
//! [`Staging::commit`] it. The runtime cache of `supermin run` lives in
//! [`runtime_cache_dir`]. This crate builds nothing itself.

#![warn(missing_docs)]

mod dir;
mod entries;
mod error;
mod fingerprint;
mod lock;
mod publish;
mod stamp;

pub use dir::{
    cache_base_from, check_cache_dir, runtime_cache_dir, runtime_cache_dir_in, BaseOrigin,
};
pub use entries::{
    disk_usage, list_entries, remove_entry, user_cache_dirs, Entry, EntryKind, Removal,
    DEFAULT_ENTRY, ENTRY_KINDS, LIBGUESTFS_ENTRY,
};
pub use error::CacheError;
pub use fingerprint::{
    Fingerprint, FingerprintBuilder, HashMode, ParseFingerprintError, RACY_WINDOW,
};
pub use lock::{lock, try_lock, Lock};
pub use publish::{clean_debris, Durability, Published, Staging};
pub use stamp::{
    current_boot_id, is_fresh, is_fresh_in_boot, Freshness, StaleReason, Stamp, STAMP_NAME,
};

/// The files libguestfs needs in an appliance directory.
pub const APPLIANCE_FILES: [&str; 3] = ["kernel", "initrd", "root"];
