//! The kernel command line, read once into a [`Config`] before anything acts on it.
//!
//! Words are split the way the kernel's `next_arg()` splits them (whitespace, with double
//! quotes allowed around spaces); everything after a lone `--` belongs to the init's argv,
//! not to us. Where a key repeats, the last one wins, as in the kernel.
//!
//! What we read, and who sends it:
//! - `root=/dev/NAME`, `root=UUID=<uuid>`, `root=LABEL=<label>`: libguestfs sends the first
//!   two (see its `lib/appliance-kcmdline.c`); supermin's init accepts the same.
//! - `ro` / `rw`: mount the root read-only or read-write. supermin's init always mounts
//!   read-write and libguestfs sends neither, so read-write is the default.
//! - `guestfs_verbose=1` (libguestfs), `supermin.debug` / `supermin.verbose`: say what we do.
//!   Otherwise we only speak when something fails.
//! - `rootwait=SECONDS` or `supermin.rootwait=SECONDS`: how long to wait for the root device.
//! - `supermin.verify_modules`: hand the kernel each module with its signature even when it
//!   does not enforce signing (see `modules.rs`; costs about 0.15 s of TCG boot).
//! - any `ftrace*` or `stacktrace*` parameter (`ftrace=function`, `ftrace_filter=`,
//!   `ftrace_graph_max_depth=`, `stacktrace`), or `kprobe_event=`: the kernel is asked to
//!   trace or probe functions, so modules keep their ftrace call sites (see `ftrace.rs`);
//!   `supermin.trace_modules` asks for the same.
//! - `supermin.all_modules`: load every listed module, even those this boot can do without
//!   (see `need.rs`: a disk driver whose device is absent, a generic crypto fallback).

use std::fmt;
use std::time::Duration;

/// How long we wait for the root device when the command line does not say. On slow
/// TCG machines with hundreds of disks probing really takes minutes (supermin uses the
/// same bound); the console says what we wait for long before that.
pub const DEFAULT_ROOT_WAIT: Duration = Duration::from_secs(300);

/// Which block device holds the root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    /// A kernel block device name as in `/sys/class/block` (`sda`, `vda1`, `cciss!c0d0`).
    Device(String),
    /// The ext2/3/4 superblock's `s_uuid`.
    Uuid([u8; 16]),
    /// The ext2/3/4 superblock's `s_volume_name`.
    Label(String),
}

impl fmt::Display for RootSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootSpec::Device(name) => write!(f, "/dev/{}", name.replace('!', "/")),
            RootSpec::Uuid(uuid) => {
                f.write_str("UUID=")?;
                for (i, byte) in uuid.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
            RootSpec::Label(label) => write!(f, "LABEL={label}"),
        }
    }
}

/// Everything the init takes from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub root: Option<RootSpec>,
    pub read_only: bool,
    pub verbose: bool,
    pub root_wait: Duration,
    pub verify_modules: bool,
    pub all_modules: bool,
    /// The command line asks the kernel for function tracing or probing, or
    /// `supermin.trace_modules` for traceable modules.
    pub function_tracing: bool,
}

/// A `root=` value we cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRoot {
    pub value: String,
    pub why: &'static str,
}

impl Config {
    pub fn parse(cmdline: &str) -> Result<Config, BadRoot> {
        let mut config = Config {
            root: None,
            read_only: false,
            verbose: false,
            root_wait: DEFAULT_ROOT_WAIT,
            verify_modules: false,
            all_modules: false,
            function_tracing: false,
        };
        for (key, value) in words(cmdline) {
            match (key, value) {
                ("root", Some(value)) => config.root = Some(parse_root(value)?),
                ("ro", None) => config.read_only = true,
                ("rw", None) => config.read_only = false,
                ("guestfs_verbose", Some(value)) => config.verbose = is_true(value),
                ("supermin.debug" | "supermin.verbose", None) => config.verbose = true,
                ("supermin.debug" | "supermin.verbose", Some(value)) => {
                    config.verbose = is_true(value)
                }
                ("supermin.verify_modules", None) => config.verify_modules = true,
                ("supermin.verify_modules", Some(value)) => config.verify_modules = is_true(value),
                ("supermin.all_modules", None) => config.all_modules = true,
                ("supermin.all_modules", Some(value)) => config.all_modules = is_true(value),
                ("rootwait" | "supermin.rootwait", Some(value)) => {
                    if let Ok(seconds) = value.parse::<u64>() {
                        config.root_wait = Duration::from_secs(seconds);
                    }
                }
                ("supermin.trace_modules", None) => config.function_tracing = true,
                ("supermin.trace_modules", Some(value)) => config.function_tracing = is_true(value),
                (key, _)
                    if key.starts_with("ftrace")
                        || key.starts_with("stacktrace")
                        || key == "kprobe_event" =>
                {
                    config.function_tracing = true
                }
                _ => {}
            }
        }
        Ok(config)
    }
}

fn is_true(value: &str) -> bool {
    matches!(value, "1" | "y" | "yes" | "on" | "true")
}

/// Splits the command line into `(key, value)` pairs, stopping at `--`.
pub fn words(cmdline: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    let mut rest = cmdline;
    std::iter::from_fn(move || {
        let word = next_word(&mut rest)?;
        if word == "--" {
            rest = "";
            return None;
        }
        Some(split_word(word))
    })
}

/// One whitespace-separated word; a `"` toggles quoting so that values may hold spaces.
fn next_word<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let trimmed = rest.trim_start();
    if trimmed.is_empty() {
        *rest = "";
        return None;
    }
    let mut quoted = false;
    let mut end = trimmed.len();
    for (i, c) in trimmed.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c.is_whitespace() && !quoted {
            end = i;
            break;
        }
    }
    *rest = &trimmed[end..];
    Some(&trimmed[..end])
}

/// `key=value` with the kernel's quote handling: `key="a b"` and `"key=a b"` both give
/// the value `a b`.
fn split_word(word: &str) -> (&str, Option<&str>) {
    let word = if word.starts_with('"') && word.ends_with('"') && word.len() >= 2 {
        &word[1..word.len() - 1]
    } else {
        word
    };
    match word.split_once('=') {
        None => (word, None),
        Some((key, value)) => {
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (key, Some(value))
        }
    }
}

fn parse_root(value: &str) -> Result<RootSpec, BadRoot> {
    let bad = |why| BadRoot {
        value: value.to_owned(),
        why,
    };
    if let Some(name) = value.strip_prefix("/dev/") {
        if name.is_empty() || name.split('/').any(|part| part.is_empty() || part == "..") {
            return Err(bad("expected root=/dev/NAME, e.g. root=/dev/sda"));
        }
        // The kernel names /dev/cciss/c0d0 "cciss!c0d0" in sysfs.
        return Ok(RootSpec::Device(name.replace('/', "!")));
    }
    if let Some(uuid) = value
        .strip_prefix("UUID=")
        .or_else(|| value.strip_prefix("uuid="))
    {
        return parse_uuid(uuid)
            .map(RootSpec::Uuid)
            .ok_or_else(|| bad("a UUID is 32 hex digits, optionally split by dashes"));
    }
    if let Some(label) = value.strip_prefix("LABEL=") {
        if label.is_empty() || label.len() > 16 {
            return Err(bad("an ext2 label is 1 to 16 bytes long"));
        }
        return Ok(RootSpec::Label(label.to_owned()));
    }
    Err(bad(
        "supported forms are root=/dev/NAME, root=UUID=<uuid> and root=LABEL=<label>",
    ))
}

/// 32 hex digits, dashes anywhere ignored, as supermin's init parses it.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let mut digits = text.chars().filter(|&c| c != '-');
    let mut uuid = [0u8; 16];
    for byte in &mut uuid {
        let hi = digits.next()?.to_digit(16)?;
        let lo = digits.next()?.to_digit(16)?;
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    match digits.next() {
        None => Some(uuid),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: [u8; 16] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32,
        0x10,
    ];

    fn parse(cmdline: &str) -> Config {
        Config::parse(cmdline).unwrap()
    }

    #[test]
    fn libguestfs_command_line_gives_uuid_root_rw_and_quiet() {
        let config = parse(
            "panic=1 console=ttyS0 edd=off udevtimeout=6000 udev.event-timeout=6000 \
             no_timer_check printk.time=1 cgroup_disable=memory usbcore.nousb \
             cryptomgr.notests tsc=reliable 8250.nr_uarts=1 \
             root=UUID=01234567-89ab-cdef-fedc-ba9876543210 selinux=0 quiet TERM=xterm\n",
        );
        assert_eq!(config.root, Some(RootSpec::Uuid(UUID)));
        assert!(!config.read_only);
        assert!(!config.verbose);
        assert_eq!(config.root_wait, DEFAULT_ROOT_WAIT);
        assert!(!config.verify_modules);
    }

    #[test]
    fn all_modules_is_a_flag_or_a_boolean() {
        assert!(!parse("root=/dev/vda").all_modules);
        assert!(parse("root=/dev/vda supermin.all_modules").all_modules);
        assert!(parse("supermin.all_modules=1").all_modules);
        assert!(!parse("supermin.all_modules=0").all_modules);
    }

    #[test]
    fn tracing_and_probing_parameters_ask_for_traceable_modules() {
        assert!(!parse("root=/dev/vda trace_buf_size=1M tp_printk").function_tracing);
        assert!(!parse("supermin.trace_modules=0").function_tracing);
        for cmdline in [
            "ftrace=function",
            "ftrace_filter=ext4_*",
            "ftrace_graph_max_depth=3",
            "stacktrace",
            "stacktrace_filter=ext4_*",
            "kprobe_event=p:x,ext4_sync_fs",
            "supermin.trace_modules",
            "supermin.trace_modules=1",
        ] {
            assert!(parse(cmdline).function_tracing, "{cmdline}");
        }
        // After `--` the words are the init's, not the kernel's.
        assert!(!parse("root=/dev/vda -- ftrace=function").function_tracing);
    }

    #[test]
    fn verify_modules_is_a_flag_or_a_boolean() {
        assert!(parse("root=/dev/vda supermin.verify_modules").verify_modules);
        assert!(parse("supermin.verify_modules=1").verify_modules);
        assert!(!parse("supermin.verify_modules=0").verify_modules);
    }

    #[test]
    fn device_root_names_the_sysfs_entry() {
        assert_eq!(
            parse("root=/dev/sdb").root,
            Some(RootSpec::Device("sdb".into()))
        );
        assert_eq!(
            parse("root=/dev/cciss/c0d0p1").root,
            Some(RootSpec::Device("cciss!c0d0p1".into()))
        );
    }

    #[test]
    fn the_last_root_wins_like_in_the_kernel() {
        assert_eq!(
            parse("root=/dev/sda root=/dev/vda").root,
            Some(RootSpec::Device("vda".into()))
        );
    }

    #[test]
    fn no_root_is_reported_as_none() {
        assert_eq!(parse("console=ttyS0 quiet").root, None);
        assert_eq!(parse("").root, None);
    }

    #[test]
    fn words_after_double_dash_belong_to_init() {
        assert_eq!(parse("quiet -- root=/dev/sda").root, None);
    }

    #[test]
    fn a_key_ending_in_root_is_not_root() {
        // supermin's strstr() would take "noroot=" for "root="; the kernel would not.
        assert_eq!(parse("myroot=/dev/sda").root, None);
    }

    #[test]
    fn unusable_root_values_are_errors_that_say_why() {
        for bad in [
            "root=/dev/",
            "root=UUID=0123",
            "root=UUID=01234567-89ab-cdef-fedc-ba9876543210ff",
            "root=UUID=zz234567-89ab-cdef-fedc-ba9876543210",
            "root=LABEL=",
            "root=/dev/../etc",
            "root=PARTUUID=1234",
            "root=sda",
        ] {
            let err = Config::parse(bad).unwrap_err();
            assert!(!err.why.is_empty(), "{bad}");
            assert!(bad.ends_with(&err.value), "{bad}: {err:?}");
        }
    }

    #[test]
    fn uuid_accepts_upper_case_and_no_dashes() {
        assert_eq!(parse_uuid("0123456789ABCDEFFEDCBA9876543210"), Some(UUID));
        assert_eq!(parse_uuid("01234567-89ab-cdef-fedc-ba987654321"), None);
    }

    #[test]
    fn uuid_displays_in_canonical_form() {
        assert_eq!(
            RootSpec::Uuid(UUID).to_string(),
            "UUID=01234567-89ab-cdef-fedc-ba9876543210"
        );
        assert_eq!(
            RootSpec::Device("cciss!c0d0".into()).to_string(),
            "/dev/cciss/c0d0"
        );
    }

    #[test]
    fn label_root_is_read() {
        assert_eq!(
            parse("root=LABEL=appliance").root,
            Some(RootSpec::Label("appliance".into()))
        );
    }

    #[test]
    fn ro_and_rw_last_one_wins() {
        assert!(parse("root=/dev/sda ro").read_only);
        assert!(!parse("ro rw").read_only);
        assert!(parse("rw ro").read_only);
        assert!(!parse("rootro=1").read_only);
    }

    #[test]
    fn verbose_flags_from_libguestfs_and_supermin() {
        assert!(parse("guestfs_verbose=1").verbose);
        assert!(!parse("guestfs_verbose=0").verbose);
        assert!(parse("supermin.debug").verbose);
        assert!(parse("supermin.verbose=1").verbose);
        assert!(!parse("quiet").verbose);
        assert!(!parse("").verbose);
    }

    #[test]
    fn root_wait_is_read_in_seconds_and_garbage_keeps_the_default() {
        assert_eq!(parse("rootwait=7").root_wait, Duration::from_secs(7));
        assert_eq!(
            parse("supermin.rootwait=0").root_wait,
            Duration::from_secs(0)
        );
        assert_eq!(parse("rootwait=soon").root_wait, DEFAULT_ROOT_WAIT);
        assert_eq!(parse("rootwait").root_wait, DEFAULT_ROOT_WAIT);
    }

    #[test]
    fn quoted_values_may_hold_spaces() {
        let pairs: Vec<_> = words(r#"a="x y" "b=z w" c"#).collect();
        assert_eq!(pairs, [("a", Some("x y")), ("b", Some("z w")), ("c", None)]);
    }
}
