//! The one error type of this crate: every variant names the file, package or value it is
//! about, so the builder can print one line that tells the user what to fix.

use std::io;
use std::path::PathBuf;

use crate::budget::{human_size, size_setting};

#[derive(Debug, thiserror::Error)]
pub enum HostfilesError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot decompress {path} (is it a truncated gzip/xz file?)")]
    Decompress {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} decompresses to more than {}, the most a build's compressed inputs may expand \
         to; if it is trusted, raise the limit, e.g. SUPERMIN_MAX_INPUT_SIZE={}",
        human_size(*limit),
        size_setting(limit.saturating_mul(4))
    )]
    InputTooLarge { path: PathBuf, limit: u64 },
    #[error(
        "base image {path}: {member} declares {}, more than the {} one file may have; if it is \
         trusted, raise the limit, e.g. SUPERMIN_MAX_INPUT_SIZE={}",
        human_size(*size),
        human_size(*limit),
        size_setting(*size)
    )]
    MemberTooLarge {
        path: PathBuf,
        member: String,
        size: u64,
        limit: u64,
    },
    #[error("{path}: unknown file type in supermin directory (expected a tar archive, or a packages, hostfiles or excludefiles list)")]
    UnknownInputType { path: PathBuf },
    #[error("{path}: cpio files are not supported as supermin input; repack it as a tar archive")]
    CpioInput { path: PathBuf },
    #[error("{path}: excludefiles line {line:?} does not start with '-'")]
    BadExcludeLine { path: PathBuf, line: String },
    #[error("tar entry {entry:?} would land outside the appliance root ({reason})")]
    UnsafeTarPath { entry: String, reason: &'static str },
    #[error("cannot read base image {path}")]
    BaseImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("base image {path} is not a valid tar archive")]
    BaseImageFormat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("base image {image}: unsafe entry")]
    UnsafeEntry {
        image: PathBuf,
        #[source]
        source: Box<HostfilesError>,
    },
    #[error(
        "base image {image} is truncated: member {member} runs past its end; rebuild or re-download it"
    )]
    Truncated { image: PathBuf, member: String },
    #[error(
        "base image {image}: hard link {path} points at {target}, which is not in the archive"
    )]
    DanglingHardLink {
        image: PathBuf,
        path: String,
        target: String,
    },
    #[error("cannot write a scratch copy of base image {image} in {dir}")]
    Scratch {
        image: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("base image {image}: sparse member {member} has a malformed map: {reason}")]
    SparseMap {
        image: PathBuf,
        member: String,
        reason: &'static str,
    },
    #[error(
        "base image {image}: a member carries more than {} MiB of tar metadata (sparse map, long \
         names, pax records) where real archives carry kilobytes; repack it (GNU tar: \
         --format=gnu, without --sparse)",
        crate::base_image::MAX_MEMBER_METADATA >> 20
    )]
    MemberMetadata { image: PathBuf },
    #[error("base image {image}: member {member} has owner id {id}; ext2 stores 32-bit ids")]
    OwnerTooLarge {
        image: PathBuf,
        member: String,
        id: u64,
    },
    #[error("could not detect the package manager of {root} (no dpkg, rpm or pacman database); run `supermin --list-drivers` to see what was probed")]
    NoPackageHandler { root: PathBuf },
    #[error("{path}: malformed package database: {message}")]
    PackageDb { path: PathBuf, message: String },
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("package(s) not installed on this system: {}", names.join(", "))]
    UnknownPackages { names: Vec<String> },
    #[error("prepare: no packages named; give at least one package name")]
    NoPackages,
    #[error("{path}: malformed ELF file: {message}")]
    Elf { path: PathBuf, message: String },
}

impl HostfilesError {
    /// The way out, for the failures whose cause (printed after the message) leaves the
    /// user to guess it; the others say theirs in the message.
    pub fn hint(&self) -> Option<String> {
        match self {
            HostfilesError::Spawn { command, .. } => {
                Some(format!("is {command} installed, and in PATH?"))
            }
            _ => None,
        }
    }
}

pub type Result<T, E = HostfilesError> = std::result::Result<T, E>;

pub(crate) fn read_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> HostfilesError {
    let path = path.into();
    move |source| HostfilesError::Read { path, source }
}

pub(crate) fn write_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> HostfilesError {
    let path = path.into();
    move |source| HostfilesError::Write { path, source }
}
