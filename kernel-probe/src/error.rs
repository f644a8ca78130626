//! The one error type of this crate.
//!
//! Every variant names the path or value it is about, so the binary can print
//! one line that says what failed and where; [`ProbeError::hint`] adds the way
//! out for the failures a user can fix themselves (permissions, env vars,
//! a missing `depmod`).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("SUPERMIN_KERNEL={path} does not exist")]
    EnvKernelMissing { path: PathBuf },

    #[error("SUPERMIN_KERNEL={path} is not a regular file")]
    EnvKernelNotFile { path: PathBuf },

    #[error("SUPERMIN_MODULES={path} does not exist or is not a directory")]
    EnvModulesMissing { path: PathBuf },

    #[error("SUPERMIN_KERNEL_VERSION={version} is set but SUPERMIN_KERNEL is not")]
    EnvVersionWithoutKernel { version: String },

    #[error("cannot tell the version of kernel {path}: no bzImage version string and no vmlinuz-VERSION file name")]
    KernelVersionUnknown { path: PathBuf },

    #[error("kernel {path} is not readable by this user")]
    KernelUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("modules directory {path} is not readable by this user")]
    ModulesUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("modules directory {dir} has no modules.dep")]
    ModulesDepMissing { dir: PathBuf },

    #[error("no usable kernel found for host CPU {host_cpu} (looked in {lib_modules} and {boot}; {considered} candidate(s) considered)")]
    NoKernel {
        host_cpu: String,
        lib_modules: PathBuf,
        boot: PathBuf,
        considered: usize,
    },

    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "module {name} was requested but is neither in {dir}/modules.dep nor built into the kernel"
    )]
    ModuleNotFound { name: String, dir: PathBuf },

    #[error(
        "module {path} has an unknown compression suffix (expected .ko, .ko.xz, .ko.zst or .ko.gz)"
    )]
    ModuleUnknownCompression { path: PathBuf },

    #[error("cannot decompress module {path}")]
    ModuleDecompress {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("module {path} is not an ELF object after decompression")]
    ModuleNotElf { path: PathBuf },

    #[error("{path} is not a bzImage with a payload: {reason}")]
    NotBzImage { path: PathBuf, reason: String },

    #[error("{path}: kernel payload compressed with {format}, which this build cannot decompress")]
    UnsupportedCompression { path: PathBuf, format: String },

    #[error("cannot decompress the {format} payload of {path}")]
    PayloadDecompress {
        path: PathBuf,
        format: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("the payload of {path} did not decompress to an ELF vmlinux ({reason})")]
    NotElf { path: PathBuf, reason: String },
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
