//! This machine's kernels and modules directories, found at run time for the
//! tests that check real files.
//!
//! Kernel versions differ from machine to machine and change with every
//! Debian point release, so no test names one. Each finder panics, saying
//! what to install, when the host has nothing to offer: a test that passes
//! without looking at a real kernel would hide a regression.

use std::fs;
use std::path::{Path, PathBuf};

use crate::version::{compare_versions, version_from_file_name};

const INSTALL_HINT: &str =
    "install a distribution kernel (Debian: apt-get install linux-image-amd64)";

/// An installed kernel: `/boot/vmlinuz-VERSION` with `/lib/modules/VERSION/modules.dep`.
#[derive(Debug, Clone)]
pub struct HostKernel {
    pub path: PathBuf,
    /// The version in the file name, which names the modules directory too.
    pub version: String,
}

impl HostKernel {
    pub fn modules_dir(&self) -> PathBuf {
        Path::new("/lib/modules").join(&self.version)
    }

    /// The kernel config: Debian and Ubuntu keep it in `/boot`, Fedora beside
    /// the modules.
    pub fn config_path(&self) -> Option<PathBuf> {
        [
            Path::new("/boot").join(format!("config-{}", self.version)),
            self.modules_dir().join("config"),
        ]
        .into_iter()
        .find(|p| p.is_file())
    }

    /// The kernel config's text; panics when the kernel has none.
    pub fn config(&self) -> String {
        let path = self.config_path().unwrap_or_else(|| {
            panic!(
                "no /boot/config-{v} or {}/config for {}; the distribution kernel package ships one",
                self.modules_dir().display(),
                self.path.display(),
                v = self.version,
            )
        });
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// Whether the config sets `symbol` to `y`.
    pub fn config_has(&self, symbol: &str) -> bool {
        let want = format!("{symbol}=y");
        self.config().lines().any(|l| l.trim() == want)
    }
}

/// Every installed, readable kernel of this machine, oldest first. Panics
/// when there is none.
pub fn host_kernels() -> Vec<HostKernel> {
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    for entry in fs::read_dir("/boot").into_iter().flatten().flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(version) = version_from_file_name(&name) else {
            continue;
        };
        let k = HostKernel {
            path: entry.path(),
            version: version.to_string(),
        };
        // Without its modules it is not an installed kernel (Fedora's
        // vmlinuz-0-rescue-*, a leftover of a removed package).
        if !k.modules_dir().join("modules.dep").is_file() {
            continue;
        }
        if fs::File::open(&k.path).is_err() {
            unreadable.push(k.path.display().to_string());
            continue;
        }
        found.push(k);
    }
    assert!(
        !found.is_empty(),
        "no readable /boot/vmlinuz-VERSION with /lib/modules/VERSION/modules.dep on this \
         machine (unreadable: {unreadable:?}); {INSTALL_HINT}, or `chmod 0644 /boot/vmlinuz-*`"
    );
    found.sort_by(|a, b| compare_versions(&a.version, &b.version));
    found
}

/// Every `/lib/modules/*` with a `modules.dep`, oldest first. Panics when
/// there is none.
pub fn modules_dirs() -> Vec<PathBuf> {
    let mut found: Vec<(String, PathBuf)> = fs::read_dir("/lib/modules")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("modules.dep").is_file())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    assert!(
        !found.is_empty(),
        "no /lib/modules/*/modules.dep on this machine; {INSTALL_HINT}"
    );
    found.sort_by(|a, b| compare_versions(&a.0, &b.0));
    found.into_iter().map(|(_, p)| p).collect()
}

/// The newest modules directory whose `modules.dep` lists modules ending in
/// `suffix` (`.ko.xz`). Panics when there is none.
pub fn modules_dir_with(suffix: &str) -> PathBuf {
    let dirs = modules_dirs();
    dirs.iter()
        .rev()
        .find(|d| {
            fs::read_to_string(d.join("modules.dep")).is_ok_and(|dep| {
                dep.lines()
                    .any(|l| l.split_once(':').is_some_and(|(p, _)| p.ends_with(suffix)))
            })
        })
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no modules directory here has {suffix} modules (looked in {dirs:?}); \
                 install a kernel packaged that way (Debian 12: linux-image-amd64 from \
                 bookworm-backports has .ko.xz modules)"
            )
        })
}
