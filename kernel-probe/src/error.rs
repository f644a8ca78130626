//! The one error type of this crate.
//!
//! Every variant names the path or value it is about, so the binary can print
//! one line that says what failed and where; [`ProbeError::hint`] adds the way
//! out for the failures a user can fix themselves (permissions, env vars,
//! a missing `depmod`).

use std::io;
use std::path::PathBuf;

/// Why no kernel or module could be used.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `SUPERMIN_KERNEL` names nothing.
    #[error("SUPERMIN_KERNEL={path} does not exist")]
    EnvKernelMissing {
        /// The path concerned.
        path: PathBuf,
    },

    /// `SUPERMIN_KERNEL` names something other than a file.
    #[error("SUPERMIN_KERNEL={path} is not a regular file")]
    EnvKernelNotFile {
        /// The path concerned.
        path: PathBuf,
    },

    /// `SUPERMIN_MODULES` names no directory.
    #[error("SUPERMIN_MODULES={path} does not exist or is not a directory")]
    EnvModulesMissing {
        /// The path concerned.
        path: PathBuf,
    },

    /// `SUPERMIN_KERNEL_VERSION` without `SUPERMIN_KERNEL`.
    #[error("SUPERMIN_KERNEL_VERSION={version} is set but SUPERMIN_KERNEL is not")]
    EnvVersionWithoutKernel {
        /// The version given.
        version: String,
    },

    /// The chosen kernel's version cannot be told.
    #[error("cannot tell the version of kernel {path}: no bzImage version string and no vmlinuz-VERSION file name")]
    KernelVersionUnknown {
        /// The path concerned.
        path: PathBuf,
    },

    /// The chosen kernel cannot be read.
    #[error("kernel {path} is not readable by this user")]
    KernelUnreadable {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The modules directory cannot be read.
    #[error("modules directory {path} is not readable by this user")]
    ModulesUnreadable {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The modules directory has no `modules.dep`.
    #[error("modules directory {dir} has no modules.dep")]
    ModulesDepMissing {
        /// The modules directory.
        dir: PathBuf,
    },

    /// No usable kernel at all.
    #[error("no usable kernel found for host CPU {host_cpu} (looked in {lib_modules} and {boot}; {considered} candidate(s) considered)")]
    NoKernel {
        /// The host CPU looked for.
        host_cpu: String,
        /// Where `/lib/modules` was looked up.
        lib_modules: PathBuf,
        /// Where `/boot` was looked up.
        boot: PathBuf,
        /// How many files were considered.
        considered: usize,
    },

    /// A file cannot be read.
    #[error("cannot read {path}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A module that `modules.dep` does not list.
    #[error(
        "module {name} was requested but is neither in {dir}/modules.dep nor built into the kernel"
    )]
    ModuleNotFound {
        /// The module.
        name: String,
        /// The modules directory.
        dir: PathBuf,
    },

    /// A module file with an extension that is no known compression.
    #[error(
        "module {path} has an unknown compression suffix (expected .ko, .ko.xz, .ko.zst or .ko.gz)"
    )]
    ModuleUnknownCompression {
        /// The path concerned.
        path: PathBuf,
    },

    /// A module cannot be decompressed.
    #[error("cannot decompress module {path}")]
    ModuleDecompress {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A module is not an ELF object.
    #[error("module {path} is not an ELF object after decompression")]
    ModuleNotElf {
        /// The path concerned.
        path: PathBuf,
    },

    /// The kernel is not a bzImage with a payload.
    #[error("{path} is not a bzImage with a payload: {reason}")]
    NotBzImage {
        /// The path concerned.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A kernel payload in a format this build cannot decompress.
    #[error("{path}: kernel payload compressed with {format}, which this build cannot decompress")]
    UnsupportedCompression {
        /// The path concerned.
        path: PathBuf,
        /// The format.
        format: String,
    },

    /// The kernel payload cannot be decompressed.
    #[error("cannot decompress the {format} payload of {path}")]
    PayloadDecompress {
        /// The path concerned.
        path: PathBuf,
        /// The format.
        format: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The output cannot be written.
    #[error("cannot write {path}")]
    Write {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The payload is not an ELF vmlinux.
    #[error("the payload of {path} did not decompress to an ELF vmlinux ({reason})")]
    NotElf {
        /// The path concerned.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ProbeError {
    /// What the user can do about this error, when there is something to do.
    pub fn hint(&self) -> Option<String> {
        match self {
            ProbeError::KernelUnreadable { path, .. } => Some(format!(
                "run `sudo chmod 0644 {}`, or point SUPERMIN_KERNEL at a readable copy \
                 (with SUPERMIN_KERNEL_VERSION and SUPERMIN_MODULES if needed)",
                path.display()
            )),
            ProbeError::ModulesUnreadable { path, .. } => Some(format!(
                "make {} readable (`sudo chmod -R a+rX {}`), or point SUPERMIN_MODULES at a readable copy",
                path.display(),
                path.display()
            )),
            ProbeError::EnvKernelMissing { .. } | ProbeError::EnvKernelNotFile { .. } => {
                Some("point SUPERMIN_KERNEL at a kernel image, or unset it to let supermin choose".into())
            }
            ProbeError::EnvModulesMissing { .. } => Some(
                "point SUPERMIN_MODULES at a /lib/modules/VERSION directory, or unset it".into(),
            ),
            ProbeError::EnvVersionWithoutKernel { .. } => Some(
                "SUPERMIN_KERNEL_VERSION only overrides the version of SUPERMIN_KERNEL: set both, or unset it"
                    .into(),
            ),
            ProbeError::KernelVersionUnknown { .. } => {
                Some("set SUPERMIN_KERNEL_VERSION to the kernel's version (its /lib/modules directory name)".into())
            }
            ProbeError::ModulesDepMissing { dir } => Some(format!(
                "run `depmod -b / {}` (as root) to create it",
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )),
            ProbeError::NoKernel { .. } => Some(
                "install a kernel package (with its modules), or set SUPERMIN_KERNEL and SUPERMIN_MODULES; \
                 Xen-only (domU) kernels are not usable: install a fullvirt kernel; \
                 `supermin kernel` lists every candidate and why it was skipped"
                    .into(),
            ),
            ProbeError::ModuleNotFound { .. } => {
                Some("check the module name with `modinfo NAME` for this kernel version".into())
            }
            _ => None,
        }
    }
}
