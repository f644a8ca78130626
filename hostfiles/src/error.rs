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
