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
//!   PID 1 runs (or by an earlier module in the list, such as `virtio_pci`, since each
//!   module is judged just before its turn); SCSI, ACPI or platform aliases are never
//!   judged, and a module without aliases always loads.
//! - a generic crypto fallback (`*_generic`, crypto aliases only) whose algorithm an
//!   accelerated driver already registered (`crc32c_generic` after `crc32c_intel`); on a
//!   CPU where the accelerated one failed to load, the fallback loads.
//!
//! Never skipped: a module another listed module depends on (its `depends=`), whatever
//! its aliases. The kernel command line's `supermin.all_modules` loads every module.
//!
//! The module facts come from each module's own `.modinfo` section, read here with a
//! few lines of ELF rather than a parser crate: this program is PID 1 of every appliance
//! and kept to one dependency (see `main.rs`), and it needs one section by name.

use std::collections::HashSet;
use std::path::Path;

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

/// The `.modinfo` facts of a module image (ELF64, little-endian: what x86_64 modules
/// are); `None` when the image is not one or has no such section, and then the module
/// is simply loaded.
pub fn modinfo(image: &[u8]) -> Option<ModInfo> {
    let section = find_section(image, b".modinfo")?;
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
    Some(info)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<usize> {
    let v = u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?);
    usize::try_from(v).ok()
}

/// The bytes of the section called `name`, every offset checked against the image.
fn find_section<'a>(image: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB.
    if image.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64_at(image, 0x28)?;
    let shentsize = usize::from(u16_at(image, 0x3a)?);
    let shnum = usize::from(u16_at(image, 0x3c)?);
    let shstrndx = usize::from(u16_at(image, 0x3e)?);
    if shentsize < 0x40 {
        return None;
    }
    let header = |i: usize| -> Option<(usize, usize, usize)> {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let sh_name = usize::try_from(u32_at(image, at)?).ok()?;
        let offset = u64_at(image, at.checked_add(0x18)?)?;
        let size = u64_at(image, at.checked_add(0x20)?)?;
        Some((sh_name, offset, size))
    };
    let bytes = |offset: usize, size: usize| image.get(offset..offset.checked_add(size)?);
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = bytes(str_off, str_size)?;
    (0..shnum).find_map(|i| {
        let (sh_name, offset, size) = header(i)?;
        let rest = names.get(sh_name..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        (&rest[..end] == name)
            .then(|| bytes(offset, size))
            .flatten()
    })
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
    /// The algorithm names the kernel's crypto API has registered now.
    fn crypto_algorithms(&self) -> Vec<String>;
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

    fn crypto_algorithms(&self) -> Vec<String> {
        crypto_names(&std::fs::read_to_string(Path::new("/proc/crypto")).unwrap_or_default())
    }
}

/// The `name` fields of /proc/crypto.
pub fn crypto_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "name").then(|| value.trim().to_owned())
        })
        .collect()
}

/// Why `module` can be left out of this boot, or `None` when it must load. `depended`
/// holds every name some listed module depends on.
pub fn skip_reason(
    module: &ModInfo,
    depended: &HashSet<String>,
    system: &dyn System,
) -> Option<String> {
    if module.name.is_empty() || module.aliases.is_empty() || depended.contains(&module.name) {
        return None;
    }
    let on_enumerated_bus = |a: &String| a.starts_with("pci:") || a.starts_with("virtio:");
    if module.aliases.iter().all(on_enumerated_bus) {
        let present = system.device_modaliases();
        let wanted = module
            .aliases
            .iter()
            .any(|pattern| present.iter().any(|dev| alias_matches(pattern, dev)));
        return (!wanted).then(|| "none of the devices it drives is present".to_owned());
    }
    // MODULE_ALIAS_CRYPTO gives each algorithm twice: `crypto-crc32c` and `crc32c`.
    let algorithms: Vec<&str> = module
        .aliases
        .iter()
        .filter_map(|a| a.strip_prefix("crypto-"))
        .collect();
    let crypto_only = module
        .aliases
        .iter()
        .all(|a| a.starts_with("crypto-") || algorithms.contains(&a.as_str()));
    if module.name.ends_with("_generic") && !algorithms.is_empty() && crypto_only {
        let registered = system.crypto_algorithms();
        return algorithms
            .into_iter()
            .find(|algo| registered.iter().any(|r| r == algo))
            .map(|algo| format!("another driver already provides {algo}"));
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
        fn crypto_algorithms(&self) -> Vec<String> {
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

    /// A minimal ELF64 relocatable with the given sections (name, bytes).
    fn elf(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut names = vec![0u8];
        let mut name_at = Vec::new();
        for (n, _) in sections {
            name_at.push(names.len());
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let shstr_name = names.len();
        names.extend_from_slice(b".shstrtab\0");
        let mut image = vec![0u8; 0x40];
        image[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let mut placed = Vec::new();
        for (_, data) in sections {
            placed.push((image.len(), data.len()));
            image.extend_from_slice(data);
        }
        let names_at = image.len();
        image.extend_from_slice(&names);
        let shoff = image.len();
        let mut header = |name: usize, off: usize, size: usize| {
            let mut h = vec![0u8; 0x40];
            h[..4].copy_from_slice(&u32::try_from(name).unwrap().to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            image.extend_from_slice(&h);
        };
        header(0, 0, 0);
        for (i, (off, size)) in placed.iter().enumerate() {
            header(name_at[i], *off, *size);
        }
        header(shstr_name, names_at, names.len());
        let shnum = sections.len() + 2;
        image[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        image[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        image[0x3c..0x3e].copy_from_slice(&u16::try_from(shnum).unwrap().to_le_bytes());
        image[0x3e..0x40].copy_from_slice(&u16::try_from(shnum - 1).unwrap().to_le_bytes());
        image
    }

    #[test]
    fn modinfo_reads_name_aliases_and_depends_from_the_section() {
        let info =
            b"alias=virtio:d00000002v*\0depends=virtio-ring,\0name=virtio_blk\0license=GPL\0";
        let image = elf(&[(".text", b"\x90\x90"), (".modinfo", info)]);
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
        let good = elf(&[(".modinfo", b"name=x\0")]);
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
        assert_eq!(modinfo(&elf(&[(".text", b"x")])), None);
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
            devices: vec![VIRTIO_SCSI_DEV, "pci:v00001AF4d00001004sv*"],
            crypto: vec![],
        };
        assert!(skip_reason(&blk, &none, &libguestfs).is_some());
        let run = Fake {
            devices: vec![VIRTIO_BLK_DEV],
            crypto: vec![],
        };
        assert_eq!(skip_reason(&blk, &none, &run), None);
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
        assert_eq!(skip_reason(&blk, &depended, &empty), None);
        assert_eq!(skip_reason(&module("ext4", &[], &[]), &none, &empty), None);
        // SCSI devices appear only once a host adapter has scanned: never judged.
        let sd = module("sd_mod", &["scsi:t-0x00*", "scsi:t-0x0e*"], &[]);
        assert_eq!(skip_reason(&sd, &none, &empty), None);
        // One alias outside PCI/virtio is enough to load.
        let mixed = module("x", &["virtio:d00000002v*", "acpi*:PNP0A03:*"], &[]);
        assert_eq!(skip_reason(&mixed, &none, &empty), None);
        // A module whose .modinfo gave no name is loaded.
        assert_eq!(
            skip_reason(&module("", &["virtio:d1v*"], &[]), &none, &empty),
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
        assert!(skip_reason(&generic, &none, &accelerated)
            .unwrap()
            .contains("crc32c"));
        let plain_cpu = Fake {
            devices: vec![],
            crypto: vec!["sha256"],
        };
        assert_eq!(skip_reason(&generic, &none, &plain_cpu), None);
        // The accelerated driver itself is never skipped for a generic one loaded first.
        let intel = module(
            "crc32c_intel",
            &["crypto-crc32c", "crypto-crc32c-intel"],
            &[],
        );
        assert_eq!(skip_reason(&intel, &none, &accelerated), None);
    }

    #[test]
    fn crypto_names_are_read_from_proc_crypto() {
        let text = "name         : crc32c\ndriver       : crc32c-intel\nmodule       : crc32c_intel\n\nname         : sha256\n";
        assert_eq!(crypto_names(text), ["crc32c", "sha256"]);
    }
}
