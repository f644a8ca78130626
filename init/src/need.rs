//! Which of the initrd's modules this boot can do without.
//!
//! One initrd serves every VM that boots the appliance: libguestfs attaches its disks
//! over virtio-scsi, `supermin run` over virtio-blk, and a CPU may or may not have the
//! instructions a crypto driver needs. Under emulation every module costs its load
//! (relocation, code patching; 20-40 ms each for small ones under TCG), so two kinds are
//! skipped when they would do nothing:
//!
//! - a device driver none of whose devices is present. Only drivers whose every alias
//!   names a PCI or virtio device are judged, because those buses are enumerated before
//!   PID 1 runs, or by a virtio transport module (`virtio_pci` on 6.1): each module is
//!   judged just before its turn, and no virtio driver is judged while a transport is
//!   still to load. SCSI, ACPI or platform aliases are never judged, and a module
//!   without aliases always loads.
//! - a generic crypto fallback (`*_generic`, crypto aliases only) every one of whose
//!   algorithms another driver has already registered, and passed its self-test
//!   (`crc32c_generic` after `crc32c_intel`); on a CPU where the accelerated one failed
//!   to load, the fallback loads.
//!
//! Never skipped: a module another listed module depends on (its `depends=`), whatever
//! its aliases; and nothing is skipped when any listed module's facts cannot be read. The
//! kernel command line's `supermin.all_modules` loads every module.
//!
//! The module facts come from each module's own `.modinfo` section (see `elf.rs`).

use std::collections::HashSet;
use std::path::Path;

use crate::elf;

/// What a module's `.modinfo` says about when it is needed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`, `_` form.
    pub name: String,
    /// Every `alias=`.
    pub aliases: Vec<String>,
    /// `depends=`, split.
    pub depends: Vec<String>,
}

/// The `.modinfo` facts of the module file at `path`, reading only its ELF headers and
/// that section (a module is megabytes, its `.modinfo` a few hundred bytes); `None` when
/// it is not an ELF64 little-endian file (what x86_64 modules are) or has no such
/// section, and then the module is simply loaded.
pub fn read_modinfo(path: &Path) -> Option<ModInfo> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).ok()?;
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    let read = |offset: usize, size: usize| -> Option<Vec<u8>> {
        if offset.checked_add(size)? > len {
            return None;
        }
        let mut buf = vec![0; size];
        file.read_exact_at(&mut buf, u64::try_from(offset).ok()?)
            .ok()?;
        Some(buf)
    };
    modinfo_through(&read)
}

/// The `.modinfo` facts of a module image in memory.
#[cfg(test)]
pub fn modinfo(image: &[u8]) -> Option<ModInfo> {
    modinfo_through(&|offset, size| Some(image.get(offset..offset.checked_add(size)?)?.to_vec()))
}

/// Finds `.modinfo` through `read(offset, size)` and parses it.
fn modinfo_through(read: &dyn Fn(usize, usize) -> Option<Vec<u8>>) -> Option<ModInfo> {
    let section = elf::sections(read)?
        .into_iter()
        .find(|s| s.name == b".modinfo")?;
    Some(parse_modinfo(&read(section.offset, section.size)?))
}

fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for entry in section.split(|&b| b == 0) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            continue;
        };
        if let Some(alias) = entry.strip_prefix("alias=") {
            info.aliases.push(alias.to_owned());
        } else if let Some(depends) = entry.strip_prefix("depends=") {
            info.depends
                .extend(depends.split(',').filter(|d| !d.is_empty()).map(normalize));
        } else if let Some(name) = entry.strip_prefix("name=") {
            info.name = normalize(name);
        }
    }
    info
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `fnmatch`-style matching of a modalias against an alias pattern: `*` and `?`. A
/// pattern with a bracket class counts as matching (such drivers load: better a module
/// too many than a disk missing).
pub fn alias_matches(pattern: &str, text: &str) -> bool {
    if pattern.contains('[') {
        return true;
    }
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What the running system has, as the skip rules need it.
pub trait System {
    /// The modaliases of the PCI and virtio devices present now.
    fn device_modaliases(&self) -> Vec<String>;
    /// The algorithm names a crypto API lookup would get now; waits a little for those of
    /// `wanted` that are registered but still being self-tested.
    fn crypto_algorithms(&self, wanted: &[&str]) -> Vec<String>;
}

/// The running kernel, through /sys and /proc.
pub struct Live;

impl System for Live {
    fn device_modaliases(&self) -> Vec<String> {
        let mut out = Vec::new();
        for bus in ["/sys/bus/pci/devices", "/sys/bus/virtio/devices"] {
            let Ok(dir) = std::fs::read_dir(bus) else {
                continue;
            };
            for entry in dir.flatten() {
                if let Ok(alias) = std::fs::read_to_string(entry.path().join("modalias")) {
                    out.push(alias.trim().to_owned());
                }
            }
        }
        out
    }

    fn crypto_algorithms(&self, wanted: &[&str]) -> Vec<String> {
        // A driver's self-test runs in a kernel thread after it registers (even with
        // cryptomgr.notests, which only makes it pass at once), so an algorithm just loaded
        // may not count yet. Waiting costs nothing overall: ext4's first use of crc32c
        // would wait for the same test. A test that fails, or outlasts the wait, means
        // the fallback loads.
        let deadline = std::time::Instant::now() + CRYPTO_TEST_WAIT;
        loop {
            let text = std::fs::read_to_string(Path::new("/proc/crypto")).unwrap_or_default();
            let (usable, pending) = usable_and_pending(&crypto_entries(&text));
            let waiting = wanted
                .iter()
                .any(|w| !usable.iter().any(|u| u == w) && pending.iter().any(|p| p == w));
            if !waiting || std::time::Instant::now() >= deadline {
                return usable;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// How long a generic crypto module's turn waits for another driver's self-test.
const CRYPTO_TEST_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Every /proc/crypto entry: its algorithm name, and whether a lookup would take it. It
/// would not take a larval one (still being set up) or one whose self-test has not passed
/// (a failed algorithm stays listed, `selftest : unknown`, but lookups refuse it).
fn crypto_entries(text: &str) -> Vec<(String, bool)> {
    text.split("\n\n")
        .filter_map(|block| {
            let field = |wanted: &str| {
                block.lines().find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    (key.trim() == wanted).then(|| value.trim())
                })
            };
            let usable = field("type") != Some("larval")
                && field("selftest").is_none_or(|result| result == "passed");
            field("name").map(|name| (name.to_owned(), usable))
        })
        .collect()
}

/// The algorithm names of /proc/crypto that a lookup would get.
#[cfg(test)]
pub fn crypto_names(text: &str) -> Vec<String> {
    usable_and_pending(&crypto_entries(text)).0
}

/// The algorithm names of /proc/crypto that are registered but not usable yet (no usable
/// entry of the same name).
#[cfg(test)]
pub fn crypto_pending(text: &str) -> Vec<String> {
    usable_and_pending(&crypto_entries(text)).1
}

fn usable_and_pending(entries: &[(String, bool)]) -> (Vec<String>, Vec<String>) {
    let usable: Vec<String> = entries
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(name, _)| name.clone())
        .collect();
    let pending = entries
        .iter()
        .filter(|(name, ok)| !ok && !usable.contains(name))
        .map(|(name, _)| name.clone())
        .collect();
    (usable, pending)
}

/// Where the kernel lists SCSI devices (`H:C:T:L`) beside hosts and targets.
pub const SCSI_DEVICES: &str = "/sys/bus/scsi/devices";

/// Whether `dir` (see [`SCSI_DEVICES`]) lists a SCSI device. By a module's turn in the list
/// the SCSI hosts of the boot modules have been scanned: module loading waits for the scan.
pub fn scsi_device_present(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let parts: Vec<&str> = name.split(':').collect();
        parts.len() == 4
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Whether a module is a virtio transport: until it has loaded, the virtio devices it
/// carries are not on the virtio bus yet.
pub fn is_virtio_transport(name: &str) -> bool {
    ["virtio_pci", "virtio_mmio", "virtio_vdpa"]
        .iter()
        .any(|t| name.starts_with(t))
}

/// Why `module` can be left out of this boot, or `None` when it must load. `depended`
/// holds every name some listed module depends on; `transport_pending` says a virtio
/// transport module comes later in the list (then no virtio driver is judged: its device
/// may not be on the bus yet).
pub fn skip_reason(
    module: &ModInfo,
    depended: &HashSet<String>,
    transport_pending: bool,
    system: &dyn System,
) -> Option<String> {
    if module.name.is_empty() || module.aliases.is_empty() || depended.contains(&module.name) {
        return None;
    }
    let on_enumerated_bus = |a: &String| a.starts_with("pci:") || a.starts_with("virtio:");
    let virtio = module.aliases.iter().any(|a| a.starts_with("virtio:"));
    if module.aliases.iter().all(on_enumerated_bus) {
        if virtio && transport_pending {
            return None;
        }
        let present = system.device_modaliases();
        let wanted = module
            .aliases
            .iter()
            .any(|pattern| present.iter().any(|dev| alias_matches(pattern, dev)));
        return (!wanted).then(|| "none of the devices it drives is present".to_owned());
    }
    // MODULE_ALIAS_CRYPTO gives each name twice: `crypto-crc32c` and `crc32c`. Names
    // ending in `-generic` are this module's driver names, not algorithms others provide.
    let names: Vec<&str> = module
        .aliases
        .iter()
        .filter_map(|a| a.strip_prefix("crypto-"))
        .collect();
    let crypto_only = module
        .aliases
        .iter()
        .all(|a| a.starts_with("crypto-") || names.contains(&a.as_str()));
    let algorithms: Vec<&str> = names
        .into_iter()
        .filter(|n| !n.ends_with("-generic"))
        .collect();
    if module.name.ends_with("_generic") && !algorithms.is_empty() && crypto_only {
        // Every algorithm it provides must already be there: one missing means it loads.
        let registered = system.crypto_algorithms(&algorithms);
        let all_there = algorithms
            .iter()
            .all(|algo| registered.iter().any(|r| r == algo));
        return all_there
            .then(|| format!("other drivers already provide {}", algorithms.join(", ")));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        devices: Vec<&'static str>,
        crypto: Vec<&'static str>,
    }

    impl System for Fake {
        fn device_modaliases(&self) -> Vec<String> {
            self.devices.iter().map(|s| s.to_string()).collect()
        }
        fn crypto_algorithms(&self, _wanted: &[&str]) -> Vec<String> {
            self.crypto.iter().map(|s| s.to_string()).collect()
        }
    }

    const VIRTIO_SCSI_DEV: &str = "virtio:d00000008v00001AF4";
    const VIRTIO_BLK_DEV: &str = "virtio:d00000002v00001AF4";

    fn module(name: &str, aliases: &[&str], depends: &[&str]) -> ModInfo {
        ModInfo {
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            depends: depends.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn modinfo_reads_name_aliases_and_depends_from_the_section() {
        let info =
            b"alias=virtio:d00000002v*\0depends=virtio-ring,\0name=virtio_blk\0license=GPL\0";
        let image = elf::build(&[(".text", b"\x90\x90"), (".modinfo", info)]);
        assert_eq!(
            modinfo(&image),
            Some(module(
                "virtio_blk",
                &["virtio:d00000002v*"],
                &["virtio_ring"]
            ))
        );
    }

    #[test]
    fn modinfo_of_a_damaged_or_foreign_image_is_none_not_a_panic() {
        assert_eq!(modinfo(b""), None);
        assert_eq!(modinfo(b"\x7fELF\x01\x01 32-bit"), None);
        let good = elf::build(&[(".modinfo", b"name=x\0")]);
        // Every truncation, and every byte of the header area mangled, stays in bounds.
        for cut in 0..good.len() {
            let _ = modinfo(&good[..cut]);
        }
        for at in 0x28..0x40 {
            let mut bad = good.clone();
            bad[at] = 0xff;
            let _ = modinfo(&bad);
        }
        // Section header table offset pointing past the end.
        let mut bad = good.clone();
        bad[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(modinfo(&bad), None);
        // No .modinfo section.
        assert_eq!(modinfo(&elf::build(&[(".text", b"x")])), None);
    }

    #[test]
    fn alias_patterns_match_like_fnmatch() {
        assert!(alias_matches("virtio:d00000002v*", VIRTIO_BLK_DEV));
        assert!(!alias_matches("virtio:d00000002v*", VIRTIO_SCSI_DEV));
        assert!(alias_matches(
            "pci:v00001AF4d00001041sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001041sv00001AF4sd00001100bc01sc00i00"
        ));
        assert!(alias_matches("a?c", "abc"));
        assert!(!alias_matches("a?c", "ac"));
        assert!(alias_matches("*", ""));
        assert!(alias_matches("a*b*c", "axxbyyc"));
        assert!(!alias_matches("a*b*c", "axxbyy"));
        // A class is not interpreted: it counts as a match.
        assert!(alias_matches("pci:v[0-9]*", "usb:x"));
    }

    #[test]
    fn a_disk_driver_without_its_device_is_skipped_and_with_it_loads() {
        let blk = module("virtio_blk", &["virtio:d00000002v*"], &[]);
        let none = HashSet::new();
        let libguestfs = Fake {
            devices: vec![
                VIRTIO_SCSI_DEV,
                "pci:v00001AF4d00001004sv00001AF4sd00000008bc01sc00i00",
            ],
            crypto: vec![],
        };
        assert!(skip_reason(&blk, &none, false, &libguestfs).is_some());
        let run = Fake {
            devices: vec![VIRTIO_BLK_DEV],
            crypto: vec![],
        };
        assert_eq!(skip_reason(&blk, &none, false, &run), None);
    }

    #[test]
    fn a_dependency_a_module_without_aliases_or_with_other_aliases_always_loads() {
        let empty = Fake {
            devices: vec![],
            crypto: vec!["crc32c"],
        };
        let none = HashSet::new();
        let blk = module("virtio_blk", &["virtio:d00000002v*"], &[]);
        let depended: HashSet<String> = ["virtio_blk".to_string()].into();
        assert_eq!(skip_reason(&blk, &depended, false, &empty), None);
        assert_eq!(
            skip_reason(&module("ext4", &[], &[]), &none, false, &empty),
            None
        );
        // SCSI devices appear only once a host adapter has scanned: never judged.
        let sd = module("sd_mod", &["scsi:t-0x00*", "scsi:t-0x0e*"], &[]);
        assert_eq!(skip_reason(&sd, &none, false, &empty), None);
        // One alias outside PCI/virtio is enough to load.
        let mixed = module("x", &["virtio:d00000002v*", "acpi*:PNP0A03:*"], &[]);
        assert_eq!(skip_reason(&mixed, &none, false, &empty), None);
        // A module whose .modinfo gave no name is loaded.
        assert_eq!(
            skip_reason(&module("", &["virtio:d1v*"], &[]), &none, false, &empty),
            None
        );
    }

    #[test]
    fn a_generic_crypto_fallback_loads_only_when_nothing_provides_its_algorithm() {
        let generic = module(
            "crc32c_generic",
            &["crypto-crc32c", "crypto-crc32c-generic"],
            &[],
        );
        let none = HashSet::new();
        let accelerated = Fake {
            devices: vec![],
            crypto: vec!["crc32c", "sha256"],
        };
        assert!(skip_reason(&generic, &none, false, &accelerated)
            .unwrap()
            .contains("crc32c"));
        let plain_cpu = Fake {
            devices: vec![],
            crypto: vec!["sha256"],
        };
        assert_eq!(skip_reason(&generic, &none, false, &plain_cpu), None);
        // The accelerated driver itself is never skipped for a generic one loaded first.
        let intel = module(
            "crc32c_intel",
            &["crypto-crc32c", "crypto-crc32c-intel"],
            &[],
        );
        assert_eq!(skip_reason(&intel, &none, false, &accelerated), None);
    }

    #[test]
    fn a_virtio_driver_is_not_judged_while_a_transport_is_still_to_load() {
        let blk = module("virtio_blk", &["virtio:d00000002v*"], &[]);
        let none = HashSet::new();
        // 6.1: virtio_pci is a module; before it loads the virtio bus is empty.
        let early = Fake {
            devices: vec!["pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"],
            crypto: vec![],
        };
        assert_eq!(skip_reason(&blk, &none, true, &early), None);
        assert!(skip_reason(&blk, &none, false, &early).is_some());
        // A PCI-only driver is judged whatever the transports.
        let nic = module("e1000", &["pci:v00008086d0000100Esv*sd*bc*sc*i*"], &[]);
        assert!(skip_reason(&nic, &none, true, &early).is_some());
        for name in [
            "virtio_pci",
            "virtio_pci_modern_dev",
            "virtio_mmio",
            "virtio_vdpa",
        ] {
            assert!(is_virtio_transport(name), "{name}");
        }
        for name in ["virtio_blk", "virtio_ring", "virtio", "scsi_mod"] {
            assert!(!is_virtio_transport(name), "{name}");
        }
    }

    #[test]
    fn a_generic_module_loads_unless_every_algorithm_it_provides_is_there() {
        // des_generic provides des and des3_ede; an accelerated driver may offer only one.
        let des = module(
            "des_generic",
            &[
                "crypto-des3_ede-generic",
                "des3_ede-generic",
                "crypto-des3_ede",
                "des3_ede",
                "crypto-des-generic",
                "des-generic",
                "crypto-des",
                "des",
            ],
            &[],
        );
        let none = HashSet::new();
        let only_3des = Fake {
            devices: vec![],
            crypto: vec!["des3_ede"],
        };
        assert_eq!(skip_reason(&des, &none, false, &only_3des), None);
        let both = Fake {
            devices: vec![],
            crypto: vec!["des3_ede", "des"],
        };
        assert!(skip_reason(&des, &none, false, &both).is_some());
        // Its own driver names ("des-generic") never count as provided by someone else.
        let only_driver_names = Fake {
            devices: vec![],
            crypto: vec!["des-generic", "des3_ede-generic"],
        };
        assert_eq!(skip_reason(&des, &none, false, &only_driver_names), None);
    }

    #[test]
    fn proc_crypto_entries_that_a_lookup_would_refuse_do_not_count() {
        let text = "name         : crc32c\ndriver       : crc32c-intel\nselftest     : unknown\n\n\
                    name         : sha256\ndriver       : sha256-avx2\ntype         : larval\nselftest     : passed\n\n\
                    name         : crc16\ndriver       : crc16-generic\nselftest     : passed\ntype         : shash\n\n\
                    name         : old\ntype         : cipher\n";
        assert_eq!(crypto_names(text), ["crc16", "old"]);
        assert_eq!(crypto_pending(text), ["crc32c", "sha256"]);
    }

    #[test]
    fn read_modinfo_reads_only_what_the_file_holds() {
        let dir = std::env::temp_dir().join(format!("supermin-init-need-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.ko");
        let good = elf::build(&[(".modinfo", b"name=virtio_blk\0alias=virtio:d00000002v*\0")]);
        std::fs::write(&path, &good).unwrap();
        assert_eq!(
            read_modinfo(&path),
            Some(module("virtio_blk", &["virtio:d00000002v*"], &[]))
        );
        // A .modinfo whose size field claims a terabyte: no allocation, no panic.
        let modinfo_size_at = {
            let s = elf::sections_of(&good).unwrap();
            s.iter().find(|s| s.name == b".modinfo").unwrap().header_at + 0x20
        };
        let mut huge = good.clone();
        huge[modinfo_size_at..modinfo_size_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert_eq!(read_modinfo(&path), None);
        // Truncated files, and a missing one.
        for cut in [0, 10, 0x40, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert_eq!(read_modinfo(&path), None, "cut at {cut}");
        }
        assert_eq!(read_modinfo(&dir.join("missing.ko")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn crypto_names_are_read_from_proc_crypto() {
        let text = "name         : crc32c\ndriver       : crc32c-intel\nmodule       : crc32c_intel\n\nname         : sha256\n";
        assert_eq!(crypto_names(text), ["crc32c", "sha256"]);
    }

    #[test]
    fn only_a_device_entry_counts_as_a_scsi_device() {
        let dir = std::env::temp_dir().join(format!("supermin-init-scsi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!scsi_device_present(&dir), "no such directory");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!scsi_device_present(&dir), "empty");
        // A host and a target alone (a SCSI controller without disks) are not devices.
        for name in ["host0", "target0:0:1", "0:0:1", "0:0::1", "a:0:0:0"] {
            std::fs::create_dir(dir.join(name)).unwrap();
        }
        assert!(!scsi_device_present(&dir));
        std::fs::create_dir(dir.join("0:0:1:0")).unwrap();
        assert!(scsi_device_present(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
