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
    let mut idx = ModuleIndex::load(&kernel.modules_dir, kernel.config.clone())?;
    let mut wanted: Vec<(String, String)> = BOOT_MODULES
        .iter()
        .map(|m| (m.to_string(), "boot".to_string()))
        .collect();
    wanted.extend(extra.iter().map(|m| (m.clone(), "extra".to_string())));
    let set = idx.closure(&wanted)?;
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
    let out = if name.ends_with(".ko") {
        raw
    } else if name.ends_with(".ko.xz") {
        let mut out = Vec::with_capacity(raw.len() * 3);
        liblzma::read::XzDecoder::new_multi_decoder(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(decompress_err)?;
        out
    } else if name.ends_with(".ko.gz") {
        let mut out = Vec::with_capacity(raw.len() * 3);
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(decompress_err)?;
        out
    } else if name.ends_with(".ko.zst") {
        crate::vmlinux::zstd_decode_all(&raw).map_err(decompress_err)?
    } else {
        return Err(ProbeError::ModuleUnknownCompression {
            path: path.to_path_buf(),
        });
    };
    if !out.starts_with(b"\x7fELF") {
        return Err(ProbeError::ModuleNotElf {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}
