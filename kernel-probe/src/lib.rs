//! Choosing the kernel and modules for an appliance, and the initrd module set.
//!
//! The builder calls [`probe`] once to resolve which kernel and modules
//! directory to use (with a reason for every candidate), [`initrd_modules`]
//! for what the initrd must load, [`read_module`] to get each module's bytes
//! decompressed, and optionally [`extract_vmlinux`] for a faster-booting ELF
//! kernel. Nothing here caches or writes an appliance; [`Kernel::identity`]
//! gives the cache what it needs to notice a change. [`compression`] is the
//! workspace's one decompressing reader (supermin.d inputs use it too).

#![warn(missing_docs)]

mod bzimage;
mod choose;
pub mod compression;
mod error;
mod modules;
mod report;
#[cfg(test)]
mod testhost;
mod version;
mod vmlinux;

pub use bzimage::{bzimage_version, payload_location, version_from_header, PayloadLocation};
pub use choose::{
    probe, Candidate, FileIdentity, Kernel, KernelSource, ProbeEnv, Verdict, VersionSource,
    MIN_KERNEL_SIZE,
};
pub use compression::Compression;
pub use error::ProbeError;
pub use modules::{
    initrd_modules, module_name_of, module_set, module_set_for, module_set_layers,
    module_set_preloading, normalize, read_module, Module, ModuleIndex, ModuleSet, NotLoaded,
    BOOT_MODULES, VIRTIO_BLK_BOOT_MODULES,
};
pub use report::{report_json, report_json_set, report_text, report_text_set};
pub use version::{compare_versions, version_from_file_name};
pub use vmlinux::{extract_vmlinux, pvh_entry_of, VmlinuxInfo};
