//! The stamp: a small text file inside a published output that says which
//! inputs built it, whether it was synced to disk, in which boot it was
//! written and by which tool version. It lives inside the output directory
//! (`DIR/.supermin-stamp`) so that it is published by the same rename as the
//! data it describes: an output and its stamp can never disagree.
//!
//! Freshness is decided here. An unsynced output may have lost data in a
//! power cut even though its directory entry survived, so an unsynced stamp
//! only vouches for its output within the boot that wrote it.
//!
//! Parsing is strict and total: anything unexpected makes the stamp corrupt,
//! which means "stale", never a panic and never an error.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use crate::{CacheError, Fingerprint};

/// File name of the stamp inside an output directory.
pub const STAMP_NAME: &str = ".supermin-stamp";

const MAGIC: &str = "supermin-rs stamp 1";
/// Larger than any stamp we write; bounds what a corrupt stamp can cost.
const MAX_STAMP_BYTES: u64 = 4096;
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// What a stamp records (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The inputs that built the output.
    pub fingerprint: Fingerprint,
    /// Whether the output was fsynced before it was published.
    pub synced: bool,
    /// `/proc/sys/kernel/random/boot_id` when written, or `None` if unknown.
    pub boot_id: Option<String>,
    /// The version of the tool that wrote it.
    pub tool_version: String,
}

impl Stamp {
    /// The stamp's file contents.
    pub fn to_text(&self) -> String {
        format!(
            "{MAGIC}\nfingerprint={}\nsynced={}\nboot_id={}\ntool_version={}\n",
            self.fingerprint,
            if self.synced { "yes" } else { "no" },
            self.boot_id.as_deref().unwrap_or("unknown"),
            one_line(&self.tool_version),
        )
    }

    /// Parses a stamp; the error says what is wrong, for `-v` output.
    pub fn parse(text: &str) -> Result<Stamp, String> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!("first line is not {MAGIC:?}"));
        }
        let (mut fingerprint, mut synced, mut boot_id, mut tool_version) = (None, None, None, None);
        for line in lines {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} has no '='"))?;
            let slot_taken = match key {
                "fingerprint" => fingerprint
                    .replace(value.parse::<Fingerprint>().map_err(|e| e.to_string())?)
                    .is_some(),
                "synced" => synced
                    .replace(match value {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(format!("synced={value:?} is neither yes nor no")),
                    })
                    .is_some(),
                "boot_id" => {
                    if value.is_empty() {
                        return Err("empty boot_id".into());
                    }
                    let id = (value != "unknown").then(|| value.to_string());
                    boot_id.replace(id).is_some()
                }
                "tool_version" => tool_version.replace(value.to_string()).is_some(),
                _ => return Err(format!("unknown key {key:?}")),
            };
            if slot_taken {
                return Err(format!("key {key:?} appears twice"));
            }
        }
        Ok(Stamp {
            fingerprint: fingerprint.ok_or("no fingerprint line")?,
            synced: synced.ok_or("no synced line")?,
            boot_id: boot_id.ok_or("no boot_id line")?,
            tool_version: tool_version.ok_or("no tool_version line")?,
        })
    }

    /// Reads `out/.supermin-stamp`. `Ok(None)` when there is none (or no
    /// `out`); `Ok(Some(Err(why)))` when it is corrupt.
    pub fn read(out: &Path) -> Result<Option<Result<Stamp, String>>, CacheError> {
        let path = out.join(STAMP_NAME);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(source) => return Err(CacheError::ReadStamp { path, source }),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STAMP_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| CacheError::ReadStamp {
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_STAMP_BYTES {
            return Ok(Some(Err(format!("longer than {MAX_STAMP_BYTES} bytes"))));
        }
        Ok(Some(match String::from_utf8(bytes) {
            Ok(text) => Stamp::parse(&text),
            Err(_) => Err("not UTF-8".into()),
        }))
    }
}

fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}

/// This boot's id, or `None` where `/proc` does not tell it.
/// The one reader of `/proc/sys/kernel/random/boot_id` in the workspace (the
/// stamp, the launcher's saved machines and accelerator verdicts use it).
pub fn current_boot_id() -> Option<String> {
    boot_id_from(&fs::read_to_string(BOOT_ID_PATH).ok()?)
}

/// The id in the text of the `boot_id` file: one line that can go into a
/// `key=value` file, and not our own placeholder `unknown`.
fn boot_id_from(text: &str) -> Option<String> {
    let id = text.trim();
    (!id.is_empty() && id != "unknown" && !id.contains(['\n', '='])).then(|| id.to_string())
}

/// Whether an output can be used as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// It can.
    Fresh,
    /// It must be rebuilt, and why.
    Stale(StaleReason),
}

impl Freshness {
    /// True for [`Freshness::Fresh`].
    pub fn is_fresh(&self) -> bool {
        matches!(self, Freshness::Fresh)
    }
}

/// Why an output must be rebuilt; displayed in `-v` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleReason {
    /// The output directory does not exist.
    NoOutput,
    /// It has no stamp.
    NoStamp,
    /// Its stamp cannot be parsed (what is wrong with it).
    CorruptStamp(String),
    /// It was built from other inputs.
    FingerprintChanged,
    /// A file it must hold is missing (its name).
    MissingFile(String),
    /// Written without fsync in an earlier boot (or one we cannot identify):
    /// a power cut may have lost its data.
    UnsyncedFromAnotherBoot,
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StaleReason::NoOutput => write!(f, "the output does not exist"),
            StaleReason::NoStamp => write!(f, "the output has no {STAMP_NAME}"),
            StaleReason::CorruptStamp(why) => write!(f, "the stamp is corrupt: {why}"),
            StaleReason::FingerprintChanged => write!(f, "the inputs changed"),
            StaleReason::MissingFile(name) => write!(f, "the output lacks {name}"),
            StaleReason::UnsyncedFromAnotherBoot => {
                write!(
                    f,
                    "the output was not synced to disk and was written before this boot"
                )
            }
        }
    }
}

/// Decides whether `out` can be used as it is: a stamp with the same
/// fingerprint, every `required` file present (following symlinks, so a
/// dangling `kernel` link counts as missing), and, for an unsynced stamp,
/// written in this boot.
pub fn is_fresh(out: &Path, fp: &Fingerprint, required: &[&str]) -> Result<Freshness, CacheError> {
    is_fresh_in_boot(out, fp, required, current_boot_id().as_deref())
}

/// [`is_fresh`] with the current boot id given, `None` meaning unknown.
pub fn is_fresh_in_boot(
    out: &Path,
    fp: &Fingerprint,
    required: &[&str],
    boot_id: Option<&str>,
) -> Result<Freshness, CacheError> {
    let stale = |r| Ok(Freshness::Stale(r));
    match fs::metadata(out) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return stale(StaleReason::NoOutput),
        Err(e) if is_missing(&e) => return stale(StaleReason::NoOutput),
        Err(source) => {
            return Err(CacheError::CheckOutput {
                path: out.to_path_buf(),
                source,
            })
        }
    }
    let stamp = match Stamp::read(out)? {
        None => return stale(StaleReason::NoStamp),
        Some(Err(why)) => return stale(StaleReason::CorruptStamp(why)),
        Some(Ok(s)) => s,
    };
    if stamp.fingerprint != *fp {
        return stale(StaleReason::FingerprintChanged);
    }
    if !stamp.synced {
        match (stamp.boot_id.as_deref(), boot_id) {
            (Some(then), Some(now)) if then == now => {}
            _ => return stale(StaleReason::UnsyncedFromAnotherBoot),
        }
    }
    for name in required {
        let path = out.join(name);
        match fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if is_missing(&e) => {
                return stale(StaleReason::MissingFile((*name).to_string()))
            }
            Err(source) => return Err(CacheError::CheckOutput { path, source }),
        }
    }
    Ok(Freshness::Fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_is_one_trimmed_line_that_fits_a_key_value_file() {
        let id = "45987078-e925-4cdc-b4d5-8873fcb8d970";
        assert_eq!(boot_id_from(&format!("{id}\n")).as_deref(), Some(id));
        for bad in ["", " \n", "unknown\n", "a=b\n", "one\ntwo\n"] {
            assert_eq!(boot_id_from(bad), None, "{bad:?}");
        }
        // On this host (Linux with /proc) the real file reads back as a UUID.
        if let Ok(text) = fs::read_to_string(BOOT_ID_PATH) {
            assert_eq!(current_boot_id().as_deref(), Some(text.trim()));
        }
    }

    fn sample() -> Stamp {
        Stamp {
            fingerprint: Fingerprint([7; 32]),
            synced: false,
            boot_id: Some("45987078-e925-4cdc-b4d5-8873fcb8d970".into()),
            tool_version: "supermin-rs 0.1.0".into(),
        }
    }

    #[test]
    fn stamp_round_trips_through_text() {
        let s = sample();
        assert_eq!(Stamp::parse(&s.to_text()), Ok(s.clone()));
        let unknown = Stamp {
            boot_id: None,
            synced: true,
            ..s
        };
        assert_eq!(Stamp::parse(&unknown.to_text()), Ok(unknown));
    }

    #[test]
    fn every_truncation_of_a_stamp_is_rejected_or_equal() {
        // A power cut can leave any prefix of the file; none may parse as a
        // different stamp.
        let s = sample();
        let text = s.to_text();
        for cut in 0..text.len() {
            if let Ok(parsed) = Stamp::parse(&text[..cut]) {
                assert_eq!(parsed.fingerprint, s.fingerprint);
                assert_eq!(parsed.synced, s.synced);
            }
        }
    }

    #[test]
    fn corrupt_stamps_are_rejected_with_a_reason() {
        let good = sample().to_text();
        let cases = [
            String::new(),
            "\0\0\0\0".to_string(),
            good.replace("supermin-rs stamp 1", "supermin-rs stamp 2"),
            good.replace("synced=no", "synced=maybe"),
            good.replace("fingerprint=07", "fingerprint=zz"),
            good.replace("boot_id=", "boot_id=\nx="),
            format!("{good}fingerprint={}\n", Fingerprint([1; 32])),
            good.replace("tool_version=", "tool_versio="),
            good.replace("synced=no\n", ""),
        ];
        for case in cases {
            assert!(Stamp::parse(&case).is_err(), "accepted {case:?}");
        }
    }

    #[test]
    fn a_tool_version_with_newlines_cannot_inject_keys() {
        let s = Stamp {
            tool_version: "1\nsynced=yes".into(),
            ..sample()
        };
        let parsed = Stamp::parse(&s.to_text()).unwrap();
        assert!(!parsed.synced);
    }
}
