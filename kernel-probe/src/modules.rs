//! The initrd module set: the few modules boot needs, closed over
//! `modules.dep` and `modules.softdep` `pre:` entries, in load order.
//!
//! supermin 5 copied every module matching `virtio*`/`crc*` and friends (52 on
//! Debian 6.1, bluetooth included). The initrd only has to reach the root
//! disk and mount it; everything else loads later from the root's own
//! `/lib/modules`. Names resolve the way modprobe resolves them: `-` equals
//! `_`, a name may be built in (`modules.builtin`, or `=y` in the kernel
//! config when that file is missing), or an alias (`crypto-crc32c`), which
//! pulls in every module that provides it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::choose::Kernel;
use crate::compression::{decoder, Compression, Members};
use crate::ProbeError;

/// What the initrd must load to find and mount the root: the virtio PCI
/// transport, both disk paths (virtio-blk, and virtio-scsi + sd for
/// libguestfs's default), ext4 (which mounts the ext2 root) and the console.
pub const BOOT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ext4",
    "virtio_console",
];

/// Kernel config symbols of [`BOOT_MODULES`], to tell built-in from absent
/// when a modules directory has no `modules.builtin`.
const CONFIG_SYMBOLS: &[(&str, &str)] = &[
    ("virtio_pci", "CONFIG_VIRTIO_PCI"),
    ("virtio_blk", "CONFIG_VIRTIO_BLK"),
    ("virtio_scsi", "CONFIG_SCSI_VIRTIO"),
    ("sd_mod", "CONFIG_BLK_DEV_SD"),
    ("ext4", "CONFIG_EXT4_FS"),
    ("virtio_console", "CONFIG_VIRTIO_CONSOLE"),
    ("virtio", "CONFIG_VIRTIO"),
    ("virtio_ring", "CONFIG_VIRTIO"),
    ("scsi_mod", "CONFIG_SCSI"),
    ("jbd2", "CONFIG_JBD2"),
    ("mbcache", "CONFIG_FS_MBCACHE"),
    ("crc16", "CONFIG_CRC16"),
];

/// A module file to put in the initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module name, `_` form (`crc32c_intel`), as `/proc/modules` shows it.
    pub name: String,
    /// The file as on disk, maybe compressed; see [`read_module`].
    pub path: PathBuf,
}

/// A module that was wanted but is not loaded from the initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLoaded {
    /// The module's name.
    pub name: String,
    /// Who wanted it: `boot`, `extra`, or the module whose softdep named it.
    pub wanted_by: String,
    /// True when built into the kernel (nothing to load); false when no
    /// module by that name or alias exists.
    pub builtin: bool,
}

/// The initrd module set and the wanted names it does not contain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleSet {
    /// In load order: each module after everything it depends on.
    pub modules: Vec<Module>,
    /// Wanted names the set does not hold, and why.
    pub not_loaded: Vec<NotLoaded>,
}

/// `-` and `_` are the same in module names (kmod normalises to `_`).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a `modules.dep` path: `kernel/arch/x86/crypto/crc32c-intel.ko.xz`
/// is `crc32c_intel`.
pub fn module_name_of(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.find(".ko").map(|i| &base[..i]).unwrap_or(base);
    normalize(stem)
}

/// The parsed index files of one modules directory.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// name -> (relative path, dependency names in modules.dep order)
    deps: HashMap<String, (String, Vec<String>)>,
    softdep_pre: HashMap<String, Vec<String>>,
    builtin: HashSet<String>,
    /// Read on first use only: modules.alias is over 1 MB and most sets need
    /// no alias at all.
    aliases: Option<HashMap<String, Vec<String>>>,
    /// `/boot/config-VERSION`, used only when modules.builtin is missing.
    config: Option<PathBuf>,
    has_builtin_list: bool,
}

fn read_text(path: &Path) -> Result<Option<String>, ProbeError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) if source.kind() == io::ErrorKind::PermissionDenied => {
            Err(ProbeError::ModulesUnreadable {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ProbeError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl ModuleIndex {
    /// Reads `modules.dep` (required), `modules.softdep` and `modules.builtin`
    /// from `dir`. `config` is the kernel config to consult when
    /// `modules.builtin` is missing.
    pub fn load(dir: &Path, config: Option<PathBuf>) -> Result<ModuleIndex, ProbeError> {
        let dep =
            read_text(&dir.join("modules.dep"))?.ok_or_else(|| ProbeError::ModulesDepMissing {
                dir: dir.to_path_buf(),
            })?;
        let mut idx = ModuleIndex {
            dir: dir.to_path_buf(),
            config,
            ..ModuleIndex::default()
        };
        idx.parse_dep(&dep);
        if let Some(soft) = read_text(&dir.join("modules.softdep"))? {
            idx.parse_softdep(&soft);
        }
        if let Some(builtin) = read_text(&dir.join("modules.builtin"))? {
            idx.has_builtin_list = true;
            idx.builtin = builtin
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(module_name_of)
                .collect();
        }
        Ok(idx)
    }

    /// `path: dep dep ...` per line (depmod(8)). Lines without a colon are
    /// not depmod output and are ignored rather than guessed at.
    fn parse_dep(&mut self, text: &str) {
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(module_name_of).collect();
            self.deps
                .insert(module_name_of(path), (path.to_string(), deps));
        }
    }

    /// `softdep MODULE pre: A B post: C` (modprobe.d(5)); the words before any
    /// `pre:`/`post:` are pre-dependencies too (`softdep cifs gcm`).
    fn parse_softdep(&mut self, text: &str) {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let mut pre = true;
            for w in words {
                match w {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    _ if pre => self
                        .softdep_pre
                        .entry(normalize(module))
                        .or_default()
                        .push(w.to_string()),
                    _ => {}
                }
            }
        }
    }

    fn load_aliases(&mut self) -> Result<&HashMap<String, Vec<String>>, ProbeError> {
        if self.aliases.is_none() {
            let mut map: HashMap<String, Vec<String>> = HashMap::new();
            if let Some(text) = read_text(&self.dir.join("modules.alias"))? {
                for line in text.lines() {
                    let mut w = line.split_whitespace();
                    if let (Some("alias"), Some(alias), Some(module)) =
                        (w.next(), w.next(), w.next())
                    {
                        // Wildcard aliases are device IDs (pci:v...*); names never need them.
                        if !alias.contains(['*', '?', '[']) {
                            map.entry(normalize(alias))
                                .or_default()
                                .push(normalize(module));
                        }
                    }
                }
            }
            self.aliases = Some(map);
        }
        Ok(self.aliases.get_or_insert_with(HashMap::new))
    }

    fn is_builtin(&self, name: &str) -> bool {
        if self.has_builtin_list {
            return self.builtin.contains(name);
        }
        let Some(symbol) = CONFIG_SYMBOLS
            .iter()
            .find(|(m, _)| *m == name)
            .map(|(_, s)| *s)
        else {
            return false;
        };
        let Some(config) = self.config.as_deref() else {
            return false;
        };
        let Ok(text) = fs::read_to_string(config) else {
            return false;
        };
        let want = format!("{symbol}=y");
        text.lines().any(|l| l.trim() == want)
    }

    /// What a name stands for: modules to load, built in, or nothing.
    fn resolve(&mut self, name: &str) -> Result<Resolved, ProbeError> {
        let n = normalize(name);
        if self.deps.contains_key(&n) {
            return Ok(Resolved::Modules(vec![n]));
        }
        if self.is_builtin(&n) {
            return Ok(Resolved::Builtin);
        }
        let aliases = self.load_aliases()?;
        let Some(targets) = aliases.get(&n).cloned() else {
            return Ok(Resolved::Absent);
        };
        let present: Vec<String> = targets
            .iter()
            .filter(|t| self.deps.contains_key(*t))
            .cloned()
            .collect();
        if !present.is_empty() {
            Ok(Resolved::Modules(present))
        } else if targets.iter().any(|t| self.is_builtin(t)) {
            Ok(Resolved::Builtin)
        } else {
            Ok(Resolved::Absent)
        }
    }

    /// The closure of `wanted` (each with who wants it) in load order.
    pub fn closure(&mut self, wanted: &[(String, String)]) -> Result<ModuleSet, ProbeError> {
        let mut walk = Walk::default();
        for (name, by) in wanted {
            self.visit(name, by, &mut walk)?;
        }
        Ok(ModuleSet {
            modules: walk.order,
            not_loaded: walk.not_loaded,
        })
    }

    fn visit(&mut self, name: &str, wanted_by: &str, walk: &mut Walk) -> Result<(), ProbeError> {
        let resolved = self.resolve(name)?;
        let targets = match resolved {
            Resolved::Modules(t) => t,
            Resolved::Builtin | Resolved::Absent => {
                let n = normalize(name);
                if walk.reported.insert(n.clone()) {
                    walk.not_loaded.push(NotLoaded {
                        name: n,
                        wanted_by: wanted_by.to_string(),
                        builtin: matches!(resolved, Resolved::Builtin),
                    });
                }
                return Ok(());
            }
        };
        for m in targets {
            // Entered before its dependencies so a softdep cycle ends here;
            // kmod breaks such cycles the same way.
            if !walk.entered.insert(m.clone()) {
                continue;
            }
            let pre = self.softdep_pre.get(&m).cloned().unwrap_or_default();
            for p in &pre {
                self.visit(p, &m, walk)?;
            }
            let deps = self
                .deps
                .get(&m)
                .map(|(_, d)| d.clone())
                .unwrap_or_default();
            for d in &deps {
                self.visit(d, &m, walk)?;
            }
            if let Some((rel, _)) = self.deps.get(&m) {
                walk.order.push(Module {
                    name: m.clone(),
                    path: self.dir.join(rel),
                });
            }
        }
        Ok(())
    }
}

enum Resolved {
    Modules(Vec<String>),
    Builtin,
    Absent,
}

#[derive(Default)]
struct Walk {
    entered: HashSet<String>,
    reported: HashSet<String>,
    order: Vec<Module>,
    not_loaded: Vec<NotLoaded>,
}

/// The initrd module set for `kernel` with its reasons: [`BOOT_MODULES`] plus
/// `extra`, closed over dependencies. A boot module the kernel lacks is
/// listed as not loaded (the root may still mount, e.g. with ext2 built in);
/// an `extra` module that does not exist is an error.
pub fn module_set(kernel: &Kernel, extra: &[String]) -> Result<ModuleSet, ProbeError> {
    module_set_for(kernel, BOOT_MODULES, extra)
}

/// The boot modules of an appliance whose root is always on virtio-blk (supermin's own
/// launcher): [`BOOT_MODULES`] without the SCSI path, which only costs boot time there.
pub const VIRTIO_BLK_BOOT_MODULES: &[&str] =
    &["virtio_pci", "virtio_blk", "ext4", "virtio_console"];

/// `boot` (wanted by `boot`) and then `more` (wanted by `by`), closed over dependencies,
/// from an index already loaded.
fn closure_with(
    idx: &mut ModuleIndex,
    boot: &[&str],
    more: &[String],
    by: &str,
) -> Result<ModuleSet, ProbeError> {
    let mut wanted: Vec<(String, String)> = boot
        .iter()
        .map(|m| (m.to_string(), "boot".to_string()))
        .collect();
    wanted.extend(more.iter().map(|m| (m.clone(), by.to_string())));
    idx.closure(&wanted)
}

/// [`module_set`] with another list of boot modules.
pub fn module_set_for(
    kernel: &Kernel,
    boot: &[&str],
    extra: &[String],
) -> Result<ModuleSet, ProbeError> {
    let mut idx = ModuleIndex::load(&kernel.modules_dir, kernel.config.clone())?;
    let set = closure_with(&mut idx, boot, extra, "extra")?;
    if let Some(missing) = set
        .not_loaded
        .iter()
        .find(|n| !n.builtin && n.wanted_by == "extra")
    {
        return Err(ProbeError::ModuleNotFound {
            name: missing.name.clone(),
            dir: kernel.modules_dir.clone(),
        });
    }
    Ok(set)
}

/// [`module_set_for`] plus `preload`: modules that the appliance's root loads at every boot
/// anyway, which the initrd loads first (what the builder finds in the root), closed over
/// their dependencies and softdeps after the boot modules. A preload name the kernel lacks
/// or has built in is only listed in `not_loaded` (wanted by `root`).
pub fn module_set_preloading(
    kernel: &Kernel,
    boot: &[&str],
    preload: &[String],
) -> Result<ModuleSet, ProbeError> {
    Ok(module_set_layers(kernel, boot, &[preload])?
        .pop()
        .unwrap_or_default())
}

/// The boot set, then [`module_set_preloading`] for each cumulative prefix of `layers`
/// (the boot set alone first, then with `layers[0]`, then with `layers[0]` and `layers[1]`,
/// and so on), reading the modules index once: which modules each layer adds.
pub fn module_set_layers(
    kernel: &Kernel,
    boot: &[&str],
    layers: &[&[String]],
) -> Result<Vec<ModuleSet>, ProbeError> {
    let mut idx = ModuleIndex::load(&kernel.modules_dir, kernel.config.clone())?;
    let mut wanted: Vec<String> = Vec::new();
    let mut sets = vec![closure_with(&mut idx, boot, &wanted, "root")?];
    for layer in layers {
        wanted.extend(layer.iter().cloned());
        sets.push(closure_with(&mut idx, boot, &wanted, "root")?);
    }
    Ok(sets)
}

/// The initrd module set in load order (dependencies first). `extra` names
/// more modules (or aliases) to include.
pub fn initrd_modules(kernel: &Kernel, extra: &[String]) -> Result<Vec<Module>, ProbeError> {
    Ok(module_set(kernel, extra)?.modules)
}

/// The bytes of a module, decompressed by extension (`.ko`, `.ko.xz`,
/// `.ko.zst`, `.ko.gz`), checked to be an ELF object.
pub fn read_module(path: &Path) -> Result<Vec<u8>, ProbeError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let raw = fs::read(path).map_err(|source| ProbeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let decompress_err = |source: io::Error| ProbeError::ModuleDecompress {
        path: path.to_path_buf(),
        source,
    };
    let Some(compression) = Compression::of_module_name(&name) else {
        return Err(ProbeError::ModuleUnknownCompression {
            path: path.to_path_buf(),
        });
    };
    let out = match compression {
        None => raw,
        Some(c) => {
            let mut out = Vec::with_capacity(raw.len() * 3);
            decoder(c, raw.as_slice(), Members::All)
                .and_then(|mut d| d.read_to_end(&mut out))
                .map_err(decompress_err)?;
            out
        }
    };
    if !out.starts_with(b"\x7fELF") {
        return Err(ProbeError::ModuleNotElf {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::choose::{KernelSource, VersionSource};
    use std::io::Write;

    /// A fake modules directory: `deps` are modules.dep lines, and a tiny ELF
    /// stands in for each module file named there.
    fn fake_dir(
        deps: &str,
        softdep: &str,
        builtin: Option<&str>,
        alias: &str,
    ) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("modules.dep"), deps).unwrap();
        fs::write(d.path().join("modules.softdep"), softdep).unwrap();
        if let Some(b) = builtin {
            fs::write(d.path().join("modules.builtin"), b).unwrap();
        }
        fs::write(d.path().join("modules.alias"), alias).unwrap();
        for line in deps.lines() {
            if let Some((p, _)) = line.split_once(':') {
                let f = d.path().join(p);
                fs::create_dir_all(f.parent().unwrap()).unwrap();
                fs::write(f, b"\x7fELF fake module").unwrap();
            }
        }
        d
    }

    fn kernel_for(dir: &Path) -> Kernel {
        Kernel {
            path: dir.join("vmlinuz"),
            version: "6.1.0-test".into(),
            version_source: VersionSource::Directory,
            modules_dir: dir.to_path_buf(),
            source: KernelSource::LibModules,
            config: None,
            candidates: Vec::new(),
        }
    }

    fn names(ms: &[Module]) -> Vec<&str> {
        ms.iter().map(|m| m.name.as_str()).collect()
    }

    fn pos(ms: &[Module], name: &str) -> usize {
        ms.iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {:?}", names(ms)))
    }

    const DEBIAN_LIKE_DEP: &str = "\
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/crypto/crc32c_generic.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/bluetooth/virtio_bt.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko
";
    const DEBIAN_LIKE_SOFTDEP: &str = "\
# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
softdep virtio_net post: net_failover
";
    const DEBIAN_LIKE_ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
";

    #[test]
    fn every_module_loads_after_its_dependencies() {
        let d = fake_dir(
            DEBIAN_LIKE_DEP,
            DEBIAN_LIKE_SOFTDEP,
            Some(""),
            DEBIAN_LIKE_ALIAS,
        );
        let ms = initrd_modules(&kernel_for(d.path()), &[]).unwrap();
        let idx = ModuleIndex::load(d.path(), None).unwrap();
        for (i, m) in ms.iter().enumerate() {
            for dep in &idx.deps[&m.name].1 {
                assert!(
                    pos(&ms, dep) < i,
                    "{dep} must precede {} in {:?}",
                    m.name,
                    names(&ms)
                );
            }
        }
        assert!(pos(&ms, "virtio_ring") < pos(&ms, "virtio"));
        assert_eq!(
            ms.iter().filter(|m| m.name == "virtio").count(),
            1,
            "no duplicates"
        );
    }

    #[test]
    fn the_set_is_exactly_boot_modules_and_their_closure() {
        let d = fake_dir(
            DEBIAN_LIKE_DEP,
            DEBIAN_LIKE_SOFTDEP,
            Some(""),
            DEBIAN_LIKE_ALIAS,
        );
        let ms = initrd_modules(&kernel_for(d.path()), &[]).unwrap();
        let mut got = names(&ms);
        got.sort_unstable();
        let mut want = vec![
            "crc16",
            "crc32c_generic",
            "crc32c_intel",
            "ext4",
            "jbd2",
            "mbcache",
            "scsi_common",
            "scsi_mod",
            "sd_mod",
            "virtio",
            "virtio_blk",
            "virtio_console",
            "virtio_pci",
            "virtio_pci_legacy_dev",
            "virtio_pci_modern_dev",
            "virtio_ring",
            "virtio_scsi",
        ];
        want.sort_unstable();
        assert_eq!(got, want, "no virtio_bt or virtio_net: not needed to boot");
        assert_eq!(
            ms[pos(&ms, "ext4")].path,
            d.path().join("kernel/fs/ext4/ext4.ko")
        );
    }

    #[test]
    fn softdep_pre_aliases_load_every_provider_before_the_module() {
        let d = fake_dir(
            DEBIAN_LIKE_DEP,
            DEBIAN_LIKE_SOFTDEP,
            Some(""),
            DEBIAN_LIKE_ALIAS,
        );
        let ms = initrd_modules(&kernel_for(d.path()), &[]).unwrap();
        // jbd2 is ext4's dependency and has the same softdep; both come first.
        assert!(pos(&ms, "crc32c_intel") < pos(&ms, "jbd2"));
        assert!(pos(&ms, "crc32c_generic") < pos(&ms, "jbd2"));
        assert!(pos(&ms, "crc32c_intel") < pos(&ms, "ext4"));
    }

    #[test]
    fn builtin_modules_are_reported_not_loaded() {
        let builtin = "kernel/drivers/char/virtio_console.ko\nkernel/drivers/scsi/sd_mod.ko\n";
        let dep: String = DEBIAN_LIKE_DEP
            .lines()
            .filter(|l| !l.contains("virtio_console.ko:") && !l.contains("sd_mod.ko:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let d = fake_dir(&dep, DEBIAN_LIKE_SOFTDEP, Some(builtin), DEBIAN_LIKE_ALIAS);
        let set = module_set(&kernel_for(d.path()), &[]).unwrap();
        assert!(!names(&set.modules).contains(&"virtio_console"));
        let nl: Vec<_> = set
            .not_loaded
            .iter()
            .map(|n| (n.name.as_str(), n.builtin))
            .collect();
        assert_eq!(nl, vec![("sd_mod", true), ("virtio_console", true)]);
    }

    #[test]
    fn the_kernel_config_tells_builtin_when_modules_builtin_is_missing() {
        let dep: String = DEBIAN_LIKE_DEP
            .lines()
            .filter(|l| !l.contains("virtio_console.ko:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let d = fake_dir(&dep, DEBIAN_LIKE_SOFTDEP, None, DEBIAN_LIKE_ALIAS);
        let config = d.path().join("config-6.1.0-test");
        fs::write(
            &config,
            "CONFIG_VIRTIO_CONSOLE=y\n# CONFIG_SCSI_VIRTIO is not set\n",
        )
        .unwrap();
        let mut k = kernel_for(d.path());
        k.config = Some(config);
        let set = module_set(&k, &[]).unwrap();
        let vc = set
            .not_loaded
            .iter()
            .find(|n| n.name == "virtio_console")
            .unwrap();
        assert!(vc.builtin);

        k.config = None;
        let set = module_set(&k, &[]).unwrap();
        let vc = set
            .not_loaded
            .iter()
            .find(|n| n.name == "virtio_console")
            .unwrap();
        assert!(
            !vc.builtin,
            "without config or modules.builtin it is simply absent"
        );
    }

    #[test]
    fn extra_modules_are_added_with_their_dependencies() {
        let d = fake_dir(
            DEBIAN_LIKE_DEP,
            DEBIAN_LIKE_SOFTDEP,
            Some(""),
            DEBIAN_LIKE_ALIAS,
        );
        let ms = initrd_modules(&kernel_for(d.path()), &["virtio-net".to_string()]).unwrap();
        assert!(pos(&ms, "virtio") < pos(&ms, "virtio_net"));
        assert!(
            !names(&ms).contains(&"net_failover"),
            "post: softdeps are not boot needs"
        );
    }

    #[test]
    fn root_preloads_come_after_the_boot_modules_and_a_missing_one_is_only_noted() {
        let dep = format!("{DEBIAN_LIKE_DEP}kernel/drivers/scsi/sg.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko\n");
        let d = fake_dir(
            &dep,
            DEBIAN_LIKE_SOFTDEP,
            Some("kernel/drivers/md/dm-mod.ko\n"),
            DEBIAN_LIKE_ALIAS,
        );
        let set = module_set_preloading(
            &kernel_for(d.path()),
            BOOT_MODULES,
            &[
                "dm-mod".to_string(),
                "sg".to_string(),
                "nosuchmod".to_string(),
            ],
        )
        .unwrap();
        let ms = &set.modules;
        // Last, after everything the boot needs, and no second copy of a shared dependency.
        assert_eq!(names(ms).last(), Some(&"sg"));
        assert!(pos(ms, "ext4") < pos(ms, "sg"));
        assert_eq!(names(ms).iter().filter(|n| **n == "scsi_mod").count(), 1);
        let noted = |name: &str| set.not_loaded.iter().find(|n| n.name == name).cloned();
        let dm = noted("dm_mod").expect("built-in dm_mod noted");
        assert!(dm.builtin && dm.wanted_by == "root");
        let missing = noted("nosuchmod").expect("missing preload noted, not an error");
        assert!(!missing.builtin && missing.wanted_by == "root");
    }

    #[test]
    fn an_unknown_extra_module_is_an_error_naming_it() {
        let d = fake_dir(
            DEBIAN_LIKE_DEP,
            DEBIAN_LIKE_SOFTDEP,
            Some(""),
            DEBIAN_LIKE_ALIAS,
        );
        match initrd_modules(&kernel_for(d.path()), &["nosuchmod".to_string()]) {
            Err(ProbeError::ModuleNotFound { name, .. }) => assert_eq!(name, "nosuchmod"),
            other => panic!("expected ModuleNotFound, got {other:?}"),
        }
    }

    #[test]
    fn an_extra_alias_resolves_to_its_modules() {
        let d = fake_dir(DEBIAN_LIKE_DEP, "", Some(""), DEBIAN_LIKE_ALIAS);
        let ms = initrd_modules(&kernel_for(d.path()), &["crc32c".to_string()]).unwrap();
        assert!(names(&ms).contains(&"crc32c_intel"));
        assert!(names(&ms).contains(&"crc32c_generic"));
    }

    #[test]
    fn softdep_cycles_terminate_and_keep_each_module_once() {
        let dep = "a.ko:\nb.ko:\next4.ko:\n";
        let soft = "softdep a pre: b\nsoftdep b pre: a\nsoftdep ext4 pre: a\n";
        let d = fake_dir(dep, soft, Some(""), "");
        let set = module_set(&kernel_for(d.path()), &[]).unwrap();
        assert_eq!(names(&set.modules), vec!["b", "a", "ext4"]);
    }

    #[test]
    fn missing_softdep_targets_are_noted_not_fatal() {
        let dep = "ext4.ko:\n";
        let soft = "softdep ext4 pre: crypto-crc32c platform:thing\n";
        let d = fake_dir(dep, soft, Some(""), "");
        let set = module_set(&kernel_for(d.path()), &[]).unwrap();
        assert_eq!(names(&set.modules), vec!["ext4"]);
        let absent: Vec<_> = set
            .not_loaded
            .iter()
            .filter(|n| n.wanted_by == "ext4")
            .collect();
        assert_eq!(absent.len(), 2);
        assert!(absent.iter().all(|n| !n.builtin));
    }

    #[test]
    fn module_names_come_from_file_names_with_dashes_normalised() {
        assert_eq!(
            module_name_of("kernel/arch/x86/crypto/crc32c-intel.ko.xz"),
            "crc32c_intel"
        );
        assert_eq!(module_name_of("kernel/fs/ext4/ext4.ko"), "ext4");
        assert_eq!(module_name_of("updates/dkms/zfs.ko.zst"), "zfs");
        assert_eq!(module_name_of("t10-pi.ko.gz"), "t10_pi");
    }

    #[test]
    fn softdep_lines_without_pre_marker_count_as_pre() {
        let mut idx = ModuleIndex::default();
        idx.parse_softdep("softdep cifs gcm\nsoftdep x pre: a b post: c\n# comment\nsoftdep\n");
        assert_eq!(idx.softdep_pre["cifs"], vec!["gcm"]);
        assert_eq!(idx.softdep_pre["x"], vec!["a", "b"]);
    }

    #[test]
    fn a_modules_dir_without_modules_dep_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            ModuleIndex::load(d.path(), None),
            Err(ProbeError::ModulesDepMissing { .. })
        ));
    }

    fn elf_module() -> Vec<u8> {
        let mut v = b"\x7fELF\x02\x01\x01".to_vec();
        v.extend((0..5000u32).map(|i| (i * 7 % 251) as u8));
        v
    }

    #[test]
    fn read_module_decompresses_by_extension() {
        let d = tempfile::tempdir().unwrap();
        let body = elf_module();
        let plain = d.path().join("m.ko");
        fs::write(&plain, &body).unwrap();

        let xz = d.path().join("m.ko.xz");
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(&body).unwrap();
        fs::write(&xz, e.finish().unwrap()).unwrap();

        let gz = d.path().join("m.ko.gz");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&body).unwrap();
        fs::write(&gz, e.finish().unwrap()).unwrap();

        let zst = d.path().join("m.ko.zst");
        let frame = ruzstd::encoding::compress_to_vec(
            body.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        fs::write(&zst, frame).unwrap();

        for p in [&plain, &xz, &gz, &zst] {
            assert_eq!(read_module(p).unwrap(), body, "{}", p.display());
        }
    }

    #[test]
    fn read_module_handles_multi_frame_zstd() {
        let d = tempfile::tempdir().unwrap();
        let body = elf_module();
        let (a, b) = body.split_at(1000);
        let lvl = ruzstd::encoding::CompressionLevel::Fastest;
        let mut data = ruzstd::encoding::compress_to_vec(a, lvl);
        // A skippable frame between the two data frames.
        data.extend_from_slice(&0x184d_2a50u32.to_le_bytes());
        data.extend_from_slice(&3u32.to_le_bytes());
        data.extend_from_slice(b"abc");
        data.extend(ruzstd::encoding::compress_to_vec(b, lvl));
        let p = d.path().join("m.ko.zst");
        fs::write(&p, data).unwrap();
        assert_eq!(read_module(&p).unwrap(), body);
    }

    #[test]
    fn read_module_rejects_corrupt_non_elf_and_unknown_files() {
        let d = tempfile::tempdir().unwrap();
        let bad_xz = d.path().join("m.ko.xz");
        fs::write(&bad_xz, b"\xfd7zXZ\x00garbage").unwrap();
        assert!(matches!(
            read_module(&bad_xz),
            Err(ProbeError::ModuleDecompress { .. })
        ));

        let not_elf = d.path().join("n.ko");
        fs::write(&not_elf, b"hello").unwrap();
        assert!(matches!(
            read_module(&not_elf),
            Err(ProbeError::ModuleNotElf { .. })
        ));

        let bz = d.path().join("m.ko.bz2");
        fs::write(&bz, b"BZh").unwrap();
        assert!(matches!(
            read_module(&bz),
            Err(ProbeError::ModuleUnknownCompression { .. })
        ));

        assert!(matches!(
            read_module(&d.path().join("absent.ko")),
            Err(ProbeError::Io { .. })
        ));
    }

    /// A [`Kernel`] for one of this machine's modules directories.
    fn host_kernel(dir: &Path) -> Kernel {
        let mut k = kernel_for(dir);
        let version = dir.file_name().unwrap().to_string_lossy().into_owned();
        k.config =
            Some(Path::new("/boot").join(format!("config-{version}"))).filter(|p| p.exists());
        k.version = version;
        k
    }

    /// Checks the real set: small, in load order (dependencies and softdep
    /// `pre:` providers first), each module the file modules.dep names and
    /// decompressible, free of supermin's glob catches (bluetooth, net), and
    /// agreeing with the directory's own modules.builtin about every boot
    /// module.
    fn check_host_set(k: &Kernel) -> ModuleSet {
        let dir = &k.modules_dir;
        let set = module_set(k, &[]).unwrap();
        let ms = &set.modules;
        let mut idx = ModuleIndex::load(dir, None).unwrap();
        let aliases = idx.load_aliases().unwrap().clone();
        let builtin: HashSet<String> = fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_else(|e| panic!("{}/modules.builtin: {e}", dir.display()))
            .lines()
            .map(module_name_of)
            .collect();
        for (i, m) in ms.iter().enumerate() {
            let (rel, deps) = &idx.deps[&m.name];
            assert_eq!(m.path, dir.join(rel));
            for dep in deps {
                assert!(pos(ms, dep) < i, "{dep} before {}", m.name);
            }
            // A softdep names a module, or else an alias for every module
            // that provides it (`crypto-crc32c`).
            for p in idx.softdep_pre.get(&m.name).into_iter().flatten() {
                let p = normalize(p);
                let providers = match idx.deps.contains_key(&p) {
                    true => vec![p.clone()],
                    false => aliases.get(&p).cloned().unwrap_or_default(),
                };
                for provider in providers.iter().filter(|p| idx.deps.contains_key(*p)) {
                    assert!(
                        pos(ms, provider) < i,
                        "{provider} (softdep {p}) before {}",
                        m.name
                    );
                }
            }
            let bytes = read_module(&m.path).unwrap();
            assert!(bytes.starts_with(b"\x7fELF"), "{}", m.path.display());
        }
        assert!(ms.len() < 30, "{:?}", names(ms));
        for m in ms {
            assert!(
                !m.name.contains("bt") && !m.name.contains("net"),
                "{}",
                m.name
            );
        }
        for want in BOOT_MODULES {
            if builtin.contains(*want) {
                assert!(!names(ms).contains(want), "{want} is built in");
                assert!(
                    set.not_loaded.iter().any(|n| n.name == *want && n.builtin),
                    "{want} reported built in: {:?}",
                    set.not_loaded
                );
            } else {
                pos(ms, want);
            }
        }
        set
    }

    #[test]
    fn every_host_modules_dir_gives_a_small_ordered_boot_set_true_to_modules_builtin() {
        for dir in crate::testhost::modules_dirs() {
            check_host_set(&host_kernel(&dir));
        }
    }

    #[test]
    fn xz_compressed_host_modules_are_chosen_by_their_real_names_and_decompressed() {
        let dir = crate::testhost::modules_dir_with(".ko.xz");
        let set = check_host_set(&host_kernel(&dir));
        assert!(
            set.modules
                .iter()
                .all(|m| m.path.to_string_lossy().ends_with(".ko.xz")),
            "{:?}",
            set.modules
        );
    }
}
