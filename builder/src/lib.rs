//! The supermin builder library: CLI planning, initrd and chroot writers, launcher.
pub mod initrd;
pub mod embedded;
