//! The one place the binary reads its environment: [`Env::capture`], called once in `main`.
//! Commands ask this snapshot and hand the libraries values (a [`BuildEnv`] in the build
//! plan, a lookup function for the cache directory); no library reads the environment.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;
use supermin::plan::BuildEnv;

/// The process environment as it was when `main` started.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<OsString, OsString>,
}

impl Env {
    /// Reads every variable, once.
    pub fn capture() -> Env {
        Env {
            vars: std::env::vars_os().collect(),
        }
    }

    /// A variable's value (`None` = unset; set-to-empty is `Some("")`).
    pub fn var(&self, name: &str) -> Option<OsString> {
        self.vars.get(std::ffi::OsStr::new(name)).cloned()
    }

    /// Every variable whose name starts with `prefix`, sorted by name.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, OsString)> {
        let mut vars: Vec<(String, OsString)> = self
            .vars
            .iter()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v.clone())))
            .filter(|(k, _)| k.starts_with(prefix))
            .collect();
        vars.sort();
        vars
    }

    /// The variables that choose the kernel, for a build plan.
    pub fn build(&self) -> BuildEnv {
        BuildEnv::from_vars(|n| self.var(n))
    }

    /// `SOURCE_DATE_EPOCH`: the one place it is parsed (seconds, surrounding blanks
    /// allowed; unset or not UTF-8 is none).
    pub fn source_date_epoch(&self) -> anyhow::Result<Option<i64>> {
        match self.var("SOURCE_DATE_EPOCH").map(OsString::into_string) {
            Some(Ok(v)) => v
                .trim()
                .parse::<i64>()
                .map(Some)
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
            Some(Err(_)) | None => Ok(None),
        }
    }

    /// `SOURCE_DATE_EPOCH`, or now.
    pub fn now_or_epoch(&self) -> anyhow::Result<i64> {
        Ok(match self.source_date_epoch()? {
            Some(t) => t,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        })
    }

    /// `SUPERMIN_MAX_INPUT_SIZE`: how far supermin.d inputs may expand (unset or empty: the
    /// default).
    pub fn max_input_size(&self) -> anyhow::Result<u64> {
        const VAR: &str = "SUPERMIN_MAX_INPUT_SIZE";
        let Some(value) = self.var(VAR).filter(|v| !v.is_empty()) else {
            return Ok(supermin_hostfiles::DEFAULT_MAX_INPUT_SIZE);
        };
        value
            .to_str()
            .and_then(supermin::cli::parse_byte_count)
            .with_context(|| {
                format!(
                    "{VAR}={value:?} is not a size: give bytes, or a number with K, M, G or T \
                     (e.g. {VAR}=16G), or unset it for the default of {}G",
                    supermin_hostfiles::DEFAULT_MAX_INPUT_SIZE >> 30
                )
            })
    }

    /// This user's runtime cache directory (`$LIBGUESTFS_CACHEDIR`, `$TMPDIR` or
    /// `/var/tmp`, then `.guestfs-UID`), checked.
    pub fn runtime_cache_dir(&self) -> Result<PathBuf, supermin_cache::CacheError> {
        supermin_cache::runtime_cache_dir(|n| self.var(n))
    }

    /// Every cache directory of this user's that `supermin cache` looks at.
    pub fn user_cache_dirs(&self) -> Vec<(PathBuf, supermin_cache::BaseOrigin)> {
        supermin_cache::user_cache_dirs(|n| self.var(n))
    }

    /// Where extracted `vmlinux` files are kept between builds: the user's runtime cache,
    /// when it is usable (a build never fails for want of it).
    pub fn vmlinux_cache(&self) -> Option<PathBuf> {
        self.runtime_cache_dir()
            .ok()
            .map(|d| d.join("supermin-rs-vmlinux"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env {
            vars: pairs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
        }
    }

    #[test]
    fn source_date_epoch_is_parsed_once_here() {
        assert_eq!(env(&[]).source_date_epoch().unwrap(), None);
        let e = env(&[("SOURCE_DATE_EPOCH", " 1700000000\n")]);
        assert_eq!(e.source_date_epoch().unwrap(), Some(1_700_000_000));
        assert_eq!(e.now_or_epoch().unwrap(), 1_700_000_000);
        let bad = env(&[("SOURCE_DATE_EPOCH", "yesterday")]);
        let msg = format!("{:#}", bad.source_date_epoch().unwrap_err());
        assert!(msg.contains("SOURCE_DATE_EPOCH=\"yesterday\""), "{msg}");
        assert!(env(&[("SOURCE_DATE_EPOCH", "")])
            .source_date_epoch()
            .is_err());
    }

    #[test]
    fn max_input_size_defaults_when_unset_or_empty() {
        let default = supermin_hostfiles::DEFAULT_MAX_INPUT_SIZE;
        assert_eq!(env(&[]).max_input_size().unwrap(), default);
        let empty = env(&[("SUPERMIN_MAX_INPUT_SIZE", "")]);
        assert_eq!(empty.max_input_size().unwrap(), default);
        let set = env(&[("SUPERMIN_MAX_INPUT_SIZE", "16G")]);
        assert_eq!(set.max_input_size().unwrap(), 16 << 30);
        assert!(env(&[("SUPERMIN_MAX_INPUT_SIZE", "lots")])
            .max_input_size()
            .is_err());
    }

    #[test]
    fn the_build_snapshot_keeps_empty_apart_from_unset() {
        let e = env(&[("SUPERMIN_KERNEL", ""), ("SUPERMIN_MODULES", "/m")]);
        let b = e.build();
        assert_eq!(b.kernel, Some(OsString::new()));
        assert_eq!(b.kernel_version, None);
        assert_eq!(b.modules, Some(OsString::from("/m")));
    }
}
