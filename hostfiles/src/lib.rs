//! Reading supermin.d inputs and resolving them into the ordered set of host files the
//! appliance root must hold: package handlers (dpkg, rpm, pacman), hostfiles globs,
//! excludefiles, merged-/usr symlinks, the ELF closure, and `supermin --prepare`.
//!
//! Data flows one way: [`read_inputs`] -> [`Inputs`] -> [`resolve`] -> [`FileSet`]. This
//! crate never writes an image; the builder streams the file set and the base images, whose
//! members this crate walks for it ([`read_base_image`]: base-image tars live here only).
//! Decompression is bounded by an [`InputBudget`] the caller passes in.

#![warn(missing_docs)]

mod base_image;
mod budget;
mod elf;
mod error;
mod inputs;
mod linkcheck;
mod packages;
mod pattern;
mod prepare;
mod resolve;
pub mod sparse;
#[cfg(test)]
mod testutil;
mod tree;

use std::path::Path;

pub use base_image::{
    open_base_image, read_base_image, safe_tar_path, BaseEntry, BaseEntryKind, BaseImage,
    BaseImageGuard,
};
pub use budget::{too_large, InputBudget, DEFAULT_MAX_INPUT_SIZE};
pub use elf::{read_elf, read_elf_from, ElfInfo};
pub use error::HostfilesError;
pub use inputs::{read_inputs, Compression, Inputs};
pub use linkcheck::{
    check_links, elf_info_in, resolve_in, LinkProblem, LinkReport, Missing, TreeView, ViewNode,
};
pub use packages::{DepRule, Handler};
pub use pattern::{fnmatch, glob};
pub use prepare::{prepare, PrepareOptions};
pub use resolve::{elf_closure, resolve, ElfClosure, FileSet, ResolveOptions};
pub use tree::{FileKind, HostFile};

/// Every package handler and whether it is detected on this host, in supermin's order.
/// supermin prints each as `name\tdetected` or `name\tnot-detected`.
pub fn list_drivers() -> Vec<(String, bool)> {
    packages::list_drivers_at(Path::new("/"))
}

/// [`list_drivers`] for another root.
pub fn list_drivers_at(root: &Path) -> Vec<(String, bool)> {
    packages::list_drivers_at(root)
}

/// The handler detected at `root`, if any.
pub fn detect_handler(root: &Path) -> Option<Handler> {
    packages::detect(root)
}

/// A cheap identity of the package database state (sizes, times, inodes of the database
/// files of the detected handler) for cache fingerprints. Changes whenever a package is
/// installed, removed or upgraded.
pub fn package_db_identity(root: &Path) -> Result<Vec<u8>, HostfilesError> {
    packages::package_db_identity_at(root)
}
