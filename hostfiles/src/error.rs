//! The one error type of this crate: every variant names the file, package or value it is
//! about, so the builder can print one line that tells the user what to fix.

use std::io;
use std::path::PathBuf;

use crate::budget::{human_size, size_setting};

/// Why reading inputs, resolving or preparing failed.
#[derive(Debug, thiserror::Error)]
pub enum HostfilesError {
    /// A file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file cannot be written.
    #[error("cannot write {path}")]
    Write {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A compressed input cannot be decompressed.
    #[error("cannot decompress {path} (is it a truncated gzip/xz file?)")]
    Decompress {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Compressed inputs decompress past the build's limit.
    #[error(
        "{path} decompresses to more than {}, the most a build's compressed inputs may expand \
         to; if it is trusted, raise the limit, e.g. SUPERMIN_MAX_INPUT_SIZE={}",
        human_size(*limit),
        size_setting(limit.saturating_mul(4))
    )]
    InputTooLarge {
        /// The path concerned.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A base-image member declares more than the limit.
    #[error(
        "base image {path}: {member} declares {}, more than the {} one file may have; if it is \
         trusted, raise the limit, e.g. SUPERMIN_MAX_INPUT_SIZE={}",
        human_size(*size),
        human_size(*limit),
        size_setting(*size)
    )]
    MemberTooLarge {
        /// The base image.
        path: PathBuf,
        /// The member, as named in the appliance.
        member: String,
        /// What it declares.
        size: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// An input that is no kind of supermin.d file.
    #[error("{path}: unknown file type in supermin directory (expected a tar archive, or a packages, hostfiles or excludefiles list)")]
    UnknownInputType {
        /// The path concerned.
        path: PathBuf,
    },
    /// A cpio archive given as an input.
    #[error("{path}: cpio files are not supported as supermin input; repack it as a tar archive")]
    CpioInput {
        /// The path concerned.
        path: PathBuf,
    },
    /// An excludefiles line without the leading `-`.
    #[error("{path}: excludefiles line {line:?} does not start with '-'")]
    BadExcludeLine {
        /// The path concerned.
        path: PathBuf,
        /// The line.
        line: String,
    },
    /// A tar entry path that leaves the root.
    #[error("tar entry {entry:?} would land outside the appliance root ({reason})")]
    UnsafeTarPath {
        /// The entry's path.
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// A base image cannot be read.
    #[error("cannot read base image {path}")]
    BaseImage {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A base image is not a tar archive.
    #[error("base image {path} is not a valid tar archive")]
    BaseImageFormat {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A base-image entry was refused.
    #[error("base image {image}: unsafe entry")]
    UnsafeEntry {
        /// The base image.
        image: PathBuf,
        /// The cause.
        #[source]
        source: Box<HostfilesError>,
    },
    /// A base-image member runs past the end of the archive.
    #[error(
        "base image {image} is truncated: member {member} runs past its end; rebuild or re-download it"
    )]
    Truncated {
        /// The base image.
        image: PathBuf,
        /// The member, as named in the appliance.
        member: String,
    },
    /// A hard link to no earlier member.
    #[error(
        "base image {image}: hard link {path} points at {target}, which is not in the archive"
    )]
    DanglingHardLink {
        /// The base image.
        image: PathBuf,
        /// The link.
        path: String,
        /// What it names.
        target: String,
    },
    /// A scratch file cannot be written.
    #[error("cannot write a scratch copy of base image {image} in {dir}")]
    Scratch {
        /// The base image.
        image: PathBuf,
        /// Where.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A GNU sparse member with a malformed map.
    #[error("base image {image}: sparse member {member} has a malformed map: {reason}")]
    SparseMap {
        /// The base image.
        image: PathBuf,
        /// The member, as named in the appliance.
        member: String,
        /// Why.
        reason: &'static str,
    },
    /// A member with more tar metadata than any real archive has.
    #[error(
        "base image {image}: a member carries more than {} MiB of tar metadata (sparse map, long \
         names, pax records) where real archives carry kilobytes; repack it (GNU tar: \
         --format=gnu, without --sparse)",
        crate::base_image::MAX_MEMBER_METADATA >> 20
    )]
    MemberMetadata {
        /// The base image.
        image: PathBuf,
    },
    /// A member's owner id is past 32 bits.
    #[error("base image {image}: member {member} has owner id {id}; ext2 stores 32-bit ids")]
    OwnerTooLarge {
        /// The base image.
        image: PathBuf,
        /// The member, as named in the appliance.
        member: String,
        /// The id.
        id: u64,
    },
    /// No package manager database was found.
    #[error("could not detect the package manager of {root} (no dpkg, rpm or pacman database); run `supermin --list-drivers` to see what was probed")]
    NoPackageHandler {
        /// The root looked in.
        root: PathBuf,
    },
    /// A package database cannot be parsed.
    #[error("{path}: malformed package database: {message}")]
    PackageDb {
        /// The path concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A command cannot be started.
    #[error("cannot run {command}")]
    Spawn {
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A command failed.
    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        /// The command.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Packages that are not installed.
    #[error("package(s) not installed on this system: {}", names.join(", "))]
    UnknownPackages {
        /// Their names.
        names: Vec<String>,
    },
    /// `--prepare` without package names.
    #[error("prepare: no packages named; give at least one package name")]
    NoPackages,
    /// A malformed ELF file.
    #[error("{path}: malformed ELF file: {message}")]
    Elf {
        /// The path concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
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
