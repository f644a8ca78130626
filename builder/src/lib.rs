//! The supermin builder library: command-line grammar, the build plan and its fingerprint,
//! the appliance pipeline, the initrd and chroot writers (booting appliances is the `supermin-launcher` crate's). The binary
//! (`main.rs`) only parses, dispatches and reports; each module here returns typed errors.

#![warn(missing_docs)]

pub mod appliance;
pub mod assemble;
pub mod check;
pub mod chroot;
pub mod cli;
pub mod default_appliance;
pub mod embedded;
pub mod initrd;
pub mod plan;
pub mod preload;
pub mod vmlinux_cache;
