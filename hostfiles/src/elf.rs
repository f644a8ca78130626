//! ELF dependency closure without a package manager and without running `ldd`: each ELF
//! object brings its `PT_INTERP` and, transitively, the `DT_NEEDED` libraries found the way
//! glibc's ld.so finds them (`DT_RPATH` when there is no `DT_RUNPATH`, then `DT_RUNPATH` with
//! `$ORIGIN`/`$LIB`/`$PLATFORM`, then `/etc/ld.so.cache`, `ld.so.conf`, multiarch and default
//! directories; `LD_LIBRARY_PATH` is ignored since the appliance does not have it).
//!
//! Objects are read with positioned reads of just the ELF header, program headers, dynamic
//! segment and dynamic string table (goblin parses the headers), so a 100 MiB library costs
//! a few kilobytes of I/O. Headers are parsed in parallel with rayon.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::dynamic::{DT_NEEDED, DT_NULL, DT_RPATH, DT_RUNPATH, DT_STRSZ, DT_STRTAB};
use goblin::elf::header::{EM_386, EM_AARCH64, EM_ARM, EM_PPC64, EM_RISCV, EM_S390, EM_X86_64};
use goblin::elf::program_header::{ProgramHeader, PT_DYNAMIC, PT_INTERP, PT_LOAD};
use rayon::prelude::*;

use crate::error::{read_err, HostfilesError, Result};
use crate::pattern::{glob, join_root};
use crate::tree::{FileKind, Tree};

/// What the closure needs from one ELF object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// ELF64 (else ELF32).
    pub class64: bool,
    /// Little-endian (else big-endian).
    pub little_endian: bool,
    /// `e_machine`.
    pub machine: u16,
    /// `PT_INTERP`: the program interpreter, for executables.
    pub interp: Option<String>,
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` directories.
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` directories.
    pub runpath: Vec<String>,
}

impl ElfInfo {
    pub(crate) fn abi(&self) -> Abi {
        Abi {
            class64: self.class64,
            little_endian: self.little_endian,
            machine: self.machine,
        }
    }
}

/// Objects can only load libraries of their own class, byte order and machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Abi {
    class64: bool,
    little_endian: bool,
    machine: u16,
}

impl Abi {
    fn triplet(&self) -> Option<&'static str> {
        Some(match (self.machine, self.class64) {
            (EM_X86_64, true) => "x86_64-linux-gnu",
            (EM_X86_64, false) => "x86_64-linux-gnux32",
            (EM_386, _) => "i386-linux-gnu",
            (EM_AARCH64, _) => "aarch64-linux-gnu",
            (EM_ARM, _) => "arm-linux-gnueabihf",
            (EM_PPC64, _) if self.little_endian => "powerpc64le-linux-gnu",
            (EM_PPC64, _) => "powerpc64-linux-gnu",
            (EM_S390, _) => "s390x-linux-gnu",
            (EM_RISCV, true) => "riscv64-linux-gnu",
            _ => return None,
        })
    }

    /// AT_PLATFORM as the kernel reports it, for `$PLATFORM`.
    fn platform(&self) -> &'static str {
        match self.machine {
            EM_X86_64 => "x86_64",
            EM_386 => "i686",
            EM_AARCH64 => "aarch64",
            EM_ARM => "v7l",
            EM_PPC64 => "power8",
            EM_S390 => "s390x",
            EM_RISCV => "riscv64",
            _ => "unknown",
        }
    }

    /// `$LIB` expansions: Debian's multiarch directory first, then the lib64/lib32 layout.
    fn lib_names(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(t) = self.triplet() {
            v.push(format!("lib/{t}"));
        }
        v.push(if self.class64 { "lib64" } else { "lib32" }.to_string());
        v.push("lib".to_string());
        v
    }

    pub(crate) fn default_dirs(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some(t) = self.triplet() {
            v.push(PathBuf::from(format!("/lib/{t}")));
            v.push(PathBuf::from(format!("/usr/lib/{t}")));
        }
        let bits = if self.class64 { "lib64" } else { "lib32" };
        v.push(PathBuf::from(format!("/{bits}")));
        v.push(PathBuf::from(format!("/usr/{bits}")));
        v.push(PathBuf::from("/lib"));
        v.push(PathBuf::from("/usr/lib"));
        v
    }
}

const MAX_DYNAMIC: u64 = 1 << 20;
const MAX_STRTAB: u64 = 64 << 20;

fn elf_err(path: &Path, message: impl Into<String>) -> HostfilesError {
    HostfilesError::Elf {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_at(f: &impl FileExt, path: &Path, off: u64, len: u64, what: &str) -> Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| elf_err(path, format!("{what} too large")))?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            elf_err(
                path,
                format!("truncated: {what} at offset {off:#x} lies past the end"),
            )
        } else {
            HostfilesError::Read {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    Ok(buf)
}

/// Read the dynamic-linking facts of `path`: Ok(None) if it is not an ELF file at all,
/// an error if it claims to be ELF but is malformed or truncated.
pub fn read_elf(path: &Path) -> Result<Option<ElfInfo>> {
    let f = File::open(path).map_err(read_err(path))?;
    read_elf_from(&f, path)
}

/// [`read_elf`] of anything that reads at offsets (a file, a range of an archive, bytes in
/// memory); `path` only names it in errors.
pub fn read_elf_from(f: &impl FileExt, path: &Path) -> Result<Option<ElfInfo>> {
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < head.len() {
        match f.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(path)(e)),
        }
    }
    if n < 4 || head[..4] != *b"\x7fELF" {
        return Ok(None);
    }
    let hdr = goblin::elf::Elf::parse_header(&head[..n])
        .map_err(|e| elf_err(path, format!("bad ELF header: {e}")))?;
    let container = hdr
        .container()
        .map_err(|e| elf_err(path, format!("bad ELF class: {e}")))?;
    let endian = hdr
        .endianness()
        .map_err(|e| elf_err(path, format!("bad ELF byte order: {e}")))?;
    let ctx = Ctx::new(container, endian);
    let class64 = container == Container::Big;
    let phent = if class64 { 56 } else { 32 };
    let mut info = ElfInfo {
        class64,
        little_endian: endian == Endian::Little,
        machine: hdr.e_machine,
        interp: None,
        needed: Vec::new(),
        rpath: Vec::new(),
        runpath: Vec::new(),
    };
    if hdr.e_phnum == 0 {
        return Ok(Some(info));
    }
    if hdr.e_phentsize as usize != phent {
        return Err(elf_err(
            path,
            format!("unexpected e_phentsize {}", hdr.e_phentsize),
        ));
    }
    let phbuf = read_at(
        f,
        path,
        hdr.e_phoff,
        hdr.e_phnum as u64 * phent as u64,
        "program headers",
    )?;
    let phdrs = ProgramHeader::parse(&phbuf, 0, hdr.e_phnum as usize, ctx)
        .map_err(|e| elf_err(path, format!("bad program headers: {e}")))?;

    if let Some(ph) = phdrs.iter().find(|p| p.p_type == PT_INTERP) {
        let raw = read_at(f, path, ph.p_offset, ph.p_filesz.min(4096), "PT_INTERP")?;
        let s = raw.split(|&c| c == 0).next().unwrap_or_default();
        if !s.is_empty() {
            info.interp = Some(String::from_utf8_lossy(s).into_owned());
        }
    }
    let Some(dynh) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) else {
        return Ok(Some(info));
    };
    if dynh.p_filesz > MAX_DYNAMIC {
        return Err(elf_err(path, "PT_DYNAMIC is implausibly large"));
    }
    let dynbuf = read_at(f, path, dynh.p_offset, dynh.p_filesz, "PT_DYNAMIC")?;
    let word = if class64 { 8 } else { 4 };
    let rd = |b: &[u8]| -> u64 {
        match (class64, info.little_endian) {
            (true, true) => u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])),
            (true, false) => u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8])),
            (false, true) => u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4])) as u64,
            (false, false) => u32::from_be_bytes(b[..4].try_into().unwrap_or([0; 4])) as u64,
        }
    };
    let (mut strtab, mut strsz) = (None, None);
    let mut needed = Vec::new();
    let (mut rpath, mut runpath) = (None, None);
    for ent in dynbuf.chunks_exact(2 * word) {
        let tag = rd(&ent[..word]);
        let val = rd(&ent[word..]);
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_RPATH => rpath = Some(val),
            DT_RUNPATH => runpath = Some(val),
            _ => {}
        }
    }
    if needed.is_empty() && rpath.is_none() && runpath.is_none() {
        return Ok(Some(info));
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(elf_err(path, "DT_NEEDED without DT_STRTAB/DT_STRSZ"));
    };
    if strsz > MAX_STRTAB {
        return Err(elf_err(path, "DT_STRSZ is implausibly large"));
    }
    let load = phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .find(|p| p.p_vaddr <= strtab && strtab - p.p_vaddr < p.p_filesz)
        .ok_or_else(|| elf_err(path, "DT_STRTAB is not inside any PT_LOAD segment"))?;
    let off = strtab - load.p_vaddr + load.p_offset;
    let strs = read_at(f, path, off, strsz, "dynamic string table")?;
    let get = |o: u64| -> Result<String> {
        let o = usize::try_from(o).unwrap_or(usize::MAX);
        let s = strs
            .get(o..)
            .and_then(|t| t.split(|&c| c == 0).next())
            .ok_or_else(|| elf_err(path, "dynamic string offset out of range"))?;
        Ok(String::from_utf8_lossy(s).into_owned())
    };
    for o in needed {
        info.needed.push(get(o)?);
    }
    let split = |s: String| -> Vec<String> {
        s.split(':')
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect()
    };
    if let Some(o) = rpath {
        info.rpath = split(get(o)?);
    }
    if let Some(o) = runpath {
        info.runpath = split(get(o)?);
    }
    Ok(Some(info))
}

/// The linker's configuration inside `root`: `ld.so.cache` and `ld.so.conf` directories.
pub(crate) struct LdConfig {
    cache: HashMap<String, Vec<PathBuf>>,
    conf_dirs: Vec<PathBuf>,
}

impl LdConfig {
    pub fn load(root: &Path) -> Self {
        let cache = fs::read(join_root(root, Path::new("/etc/ld.so.cache")))
            .ok()
            .map(|b| parse_ld_so_cache(&b))
            .unwrap_or_default();
        let mut conf_dirs = Vec::new();
        let mut seen = HashSet::new();
        read_ld_so_conf(
            root,
            Path::new("/etc/ld.so.conf"),
            &mut conf_dirs,
            &mut seen,
            0,
        );
        LdConfig { cache, conf_dirs }
    }
}

/// Parse glibc's `ld.so.cache` ("glibc-ld.so.cache1.1", optionally behind the old
/// "ld.so-1.7.0" table) into soname -> paths, in cache order. Entries for hwcap
/// subdirectories are skipped: the baseline library is always there too.
pub(crate) fn parse_ld_so_cache(b: &[u8]) -> HashMap<String, Vec<PathBuf>> {
    const OLD: &[u8] = b"ld.so-1.7.0";
    const NEW: &[u8] = b"glibc-ld.so.cache1.1";
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?)) };
    let mut map: HashMap<String, Vec<PathBuf>> = HashMap::new();
    let mut base = 0usize;
    if b.starts_with(OLD) {
        let Some(n) = u32_at(12) else { return map };
        base = (16usize).saturating_add((n as usize).saturating_mul(12));
        base = (base + 7) & !7;
    }
    if b.get(base..base + NEW.len()) != Some(NEW) {
        return map;
    }
    let Some(nlibs) = u32_at(base + 20) else {
        return map;
    };
    let cstr = |o: u32| -> Option<&[u8]> {
        let start = base.checked_add(o as usize)?;
        b.get(start..)?.split(|&c| c == 0).next()
    };
    for i in 0..nlibs as usize {
        let e = base + 48 + i * 24;
        let (Some(key), Some(value)) = (u32_at(e + 4), u32_at(e + 8)) else {
            break;
        };
        let hwcap = b
            .get(e + 16..e + 24)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        if hwcap != 0 {
            continue;
        }
        if let (Some(k), Some(v)) = (cstr(key), cstr(value)) {
            map.entry(String::from_utf8_lossy(k).into_owned())
                .or_default()
                .push(PathBuf::from(String::from_utf8_lossy(v).into_owned()));
        }
    }
    map
}

fn read_ld_so_conf(
    root: &Path,
    file: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut HashSet<PathBuf>,
    depth: usize,
) {
    if depth > 10 || !seen.insert(file.to_path_buf()) {
        return;
    }
    let Ok(text) = fs::read_to_string(join_root(root, file)) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with("hwcap ") {
            continue;
        }
        if let Some(pat) = line.strip_prefix("include") {
            for pat in pat.split_whitespace() {
                let abs = if pat.starts_with('/') {
                    pat.to_string()
                } else {
                    let dir = file.parent().unwrap_or(Path::new("/"));
                    format!("{}/{}", dir.display(), pat)
                };
                for inc in glob(&abs, root) {
                    read_ld_so_conf(root, &inc, out, seen, depth + 1);
                }
            }
        } else {
            for d in line
                .split([':', ',', ' ', '\t'])
                .filter(|d| d.starts_with('/'))
            {
                out.push(PathBuf::from(d));
            }
        }
    }
}

/// Expand `$ORIGIN`, `$LIB`, `$PLATFORM` (also `${...}`) in one RPATH/RUNPATH entry.
/// `$LIB` has several candidate expansions, so this returns a list.
pub(crate) fn expand_dst(entry: &str, origin: &Path, abi: Abi) -> Vec<PathBuf> {
    let origin = origin.display().to_string();
    let base = entry
        .replace("${ORIGIN}", &origin)
        .replace("$ORIGIN", &origin)
        .replace("${PLATFORM}", abi.platform())
        .replace("$PLATFORM", abi.platform());
    let out: Vec<String> = if base.contains("$LIB") || base.contains("${LIB}") {
        abi.lib_names()
            .iter()
            .map(|l| base.replace("${LIB}", l).replace("$LIB", l))
            .collect()
    } else {
        vec![base]
    };
    // Relative entries are relative to the process's cwd, which we cannot know.
    out.into_iter()
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// ELF facts of the host files a closure parsed in this process, by host path (`None`: not
/// ELF): the builder's check of the assembled tree asks about the same files moments later,
/// and reading them again was most of its cost.
static PARSED: Mutex<Option<HashMap<PathBuf, Option<Arc<ElfInfo>>>>> = Mutex::new(None);

/// What a closure in this process found at host path `path`: `None` when it did not parse
/// it, `Some(None)` when it is not ELF.
pub fn parsed_host_elf(path: &Path) -> Option<Option<Arc<ElfInfo>>> {
    PARSED.lock().ok()?.as_ref()?.get(path).cloned()
}

/// One object waiting for its dependencies: where it was found (for `$ORIGIN`) and the
/// executable's DT_RPATH that glibc also searches for every library the program loads.
struct Pending {
    found_at: PathBuf,
    phys: PathBuf,
    is_main: bool,
    exe_rpath: Arc<Vec<PathBuf>>,
}

/// Closure over a [`Tree`]: adds to it everything the given objects need to run.
pub(crate) struct Closure<'t> {
    tree: &'t mut Tree,
    ld: LdConfig,
    infos: HashMap<PathBuf, Option<Arc<ElfInfo>>>,
    abis: HashMap<PathBuf, Option<Abi>>,
    done: HashSet<(PathBuf, Arc<Vec<PathBuf>>)>,
    /// File names of every library found, and (object, name) pairs not found.
    found_names: HashSet<String>,
    unresolved: Vec<(PathBuf, String)>,
    pub warnings: Vec<String>,
}

impl<'t> Closure<'t> {
    pub fn new(tree: &'t mut Tree) -> Self {
        let ld = LdConfig::load(tree.root());
        Closure {
            tree,
            ld,
            infos: HashMap::new(),
            abis: HashMap::new(),
            done: HashSet::new(),
            found_names: HashSet::new(),
            unresolved: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Parse `paths` (physical in-root paths of regular files) in parallel and remember them.
    /// `strict`: a malformed ELF is an error instead of a warning.
    fn parse_all(&mut self, paths: &[PathBuf], strict: bool) -> Result<()> {
        let root = self.tree.root().to_path_buf();
        let todo: Vec<&PathBuf> = paths
            .iter()
            .filter(|p| !self.infos.contains_key(*p))
            .collect();
        let parsed: Vec<(PathBuf, Result<Option<ElfInfo>>)> = todo
            .par_iter()
            .map(|p| ((*p).clone(), read_elf(&join_root(&root, p))))
            .collect();
        for (p, r) in parsed {
            let info = match r {
                Ok(i) => i.map(Arc::new),
                Err(e @ HostfilesError::Elf { .. }) if strict => return Err(e),
                Err(HostfilesError::Read { .. }) => None,
                Err(e) => {
                    self.warnings
                        .push(format!("{e}; its dependencies are not followed"));
                    None
                }
            };
            self.abis.insert(p.clone(), info.as_ref().map(|i| i.abi()));
            if let Ok(mut memo) = PARSED.lock() {
                memo.get_or_insert_with(HashMap::new)
                    .insert(join_root(&root, &p), info.clone());
            }
            self.infos.insert(p, info);
        }
        Ok(())
    }

    /// Add the closure of `objects` (in-root paths as named: symlinks are followed and kept).
    pub fn run(&mut self, objects: &[PathBuf], strict: bool) -> Result<()> {
        let mut pending = Vec::new();
        for o in objects {
            self.tree.add_following(o);
            if let Some((phys, hf)) = self.tree.canonical(o) {
                if hf.kind == FileKind::Regular {
                    pending.push(Pending {
                        found_at: phys.clone(),
                        phys,
                        is_main: true,
                        exe_rpath: Arc::new(Vec::new()),
                    });
                }
            }
        }
        let no_rpath = Arc::new(Vec::new());
        while !pending.is_empty() {
            let paths: Vec<PathBuf> = pending.iter().map(|p| p.phys.clone()).collect();
            self.parse_all(&paths, strict)?;
            let mut next = Vec::new();
            for item in pending {
                if !self
                    .done
                    .insert((item.phys.clone(), item.exe_rpath.clone()))
                {
                    continue;
                }
                let Some(Some(info)) = self.infos.get(&item.phys).cloned() else {
                    continue;
                };
                let abi = info.abi();
                let origin = item
                    .found_at
                    .parent()
                    .unwrap_or(Path::new("/"))
                    .to_path_buf();
                // The executable's DT_RPATH applies to all it loads, unless it has RUNPATH.
                let exe_rpath = if item.is_main {
                    if info.runpath.is_empty() {
                        Arc::new(
                            info.rpath
                                .iter()
                                .flat_map(|e| expand_dst(e, &origin, abi))
                                .collect(),
                        )
                    } else {
                        no_rpath.clone()
                    }
                } else {
                    item.exe_rpath.clone()
                };
                if let Some(interp) = &info.interp {
                    let ip = PathBuf::from(interp);
                    if self.tree.add_following(&ip).is_some() {
                        if let Some((phys, _)) = self.tree.canonical(&ip) {
                            next.push(Pending {
                                found_at: ip.clone(),
                                phys,
                                is_main: false,
                                exe_rpath: no_rpath.clone(),
                            });
                        }
                    } else {
                        self.warnings.push(format!(
                            "{}: ELF interpreter {interp} not found",
                            item.phys.display()
                        ));
                    }
                }
                let mut dirs: Vec<PathBuf> = Vec::new();
                if info.runpath.is_empty() {
                    dirs.extend(info.rpath.iter().flat_map(|e| expand_dst(e, &origin, abi)));
                    dirs.extend(exe_rpath.iter().cloned());
                }
                dirs.extend(
                    info.runpath
                        .iter()
                        .flat_map(|e| expand_dst(e, &origin, abi)),
                );
                for name in &info.needed {
                    match self.find_library(name, &dirs, abi) {
                        Some((found_at, phys)) => {
                            self.tree.add_following(&found_at);
                            self.found_names.insert(name.clone());
                            next.push(Pending {
                                found_at,
                                phys,
                                is_main: false,
                                exe_rpath: exe_rpath.clone(),
                            });
                        }
                        None => self.unresolved.push((item.phys.clone(), name.clone())),
                    }
                }
            }
            pending = next;
        }
        // A library's DT_NEEDED may be satisfied by one its program loaded first through the
        // program's own RUNPATH (systemd's private libsystemd-shared): ld.so matches loaded
        // sonames before searching. So only names found nowhere in the closure are missing.
        for (obj, name) in std::mem::take(&mut self.unresolved) {
            if !self.found_names.contains(&name) {
                self.warnings.push(format!(
                    "{}: needed library {name} not found",
                    obj.display()
                ));
            }
        }
        Ok(())
    }

    /// ld.so's search for a DT_NEEDED name: returns (path as found, physical path).
    fn find_library(
        &mut self,
        name: &str,
        dirs: &[PathBuf],
        abi: Abi,
    ) -> Option<(PathBuf, PathBuf)> {
        if name.contains('/') {
            let p = PathBuf::from(name);
            return p.is_absolute().then(|| self.candidate(&p, abi)).flatten();
        }
        for d in dirs {
            if let Some(r) = self.candidate(&d.join(name), abi) {
                return Some(r);
            }
        }
        let cached: Vec<PathBuf> = self.ld.cache.get(name).cloned().unwrap_or_default();
        for p in cached {
            if let Some(r) = self.candidate(&p, abi) {
                return Some(r);
            }
        }
        let mut more: Vec<PathBuf> = self.ld.conf_dirs.clone();
        more.extend(abi.default_dirs());
        for d in more {
            if let Some(r) = self.candidate(&d.join(name), abi) {
                return Some(r);
            }
        }
        None
    }

    /// A library file usable by an object of `abi` (ld.so skips files of another class or
    /// machine and keeps searching, and so do we).
    fn candidate(&mut self, p: &Path, abi: Abi) -> Option<(PathBuf, PathBuf)> {
        let (phys, hf) = self.tree.canonical(p)?;
        if hf.kind != FileKind::Regular {
            return None;
        }
        let a = match self.abis.get(&phys) {
            Some(a) => *a,
            None => {
                let host = join_root(self.tree.root(), &phys);
                let a = read_abi(&host);
                self.abis.insert(phys.clone(), a);
                a
            }
        };
        (a == Some(abi)).then(|| (p.to_path_buf(), phys))
    }
}

/// Only the class/byte order/machine of a file, for checking search candidates cheaply.
pub(crate) fn read_abi(path: &Path) -> Option<Abi> {
    let f = File::open(path).ok()?;
    let mut head = [0u8; 20];
    f.read_exact_at(&mut head, 0).ok()?;
    if head[..4] != *b"\x7fELF" {
        return None;
    }
    let little_endian = head[5] == 1;
    let machine = if little_endian {
        u16::from_le_bytes([head[18], head[19]])
    } else {
        u16::from_be_bytes([head[18], head[19]])
    };
    Some(Abi {
        class64: head[4] == 2,
        little_endian,
        machine,
    })
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::testutil::{craft_elf, link, write};
    use std::process::Command;

    /// Compiles C source with gcc; panics with gcc's message when it cannot
    /// (these tests need gcc and the static C library: Debian's gcc and
    /// libc6-dev).
    fn gcc(dir: &Path, src: &str, out: &str, args: &[&str]) -> PathBuf {
        let c = dir.join(format!("{out}.c"));
        fs::write(&c, src).unwrap();
        let o = dir.join(out);
        let res = Command::new("gcc")
            .arg(&c)
            .arg("-o")
            .arg(&o)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run gcc: {e}; install gcc and libc6-dev"));
        assert!(
            res.status.success(),
            "gcc {args:?} failed ({}); install gcc and libc6-dev:\n{}",
            res.status,
            String::from_utf8_lossy(&res.stderr)
        );
        o
    }

    #[test]
    fn origin_runpath_program_reports_interp_needed_and_runpath() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("lib")).unwrap();
        gcc(
            d.path(),
            "int foo(void){return 42;}",
            "lib/libfoo.so",
            &["-shared", "-fPIC", "-Wl,-soname,libfoo.so"],
        );
        let libdir = format!("-L{}", d.path().join("lib").display());
        let prog = gcc(
            d.path(),
            "int foo(void); int main(void){return foo()==42?0:1;}",
            "prog",
            &[
                &libdir,
                "-lfoo",
                "-Wl,--enable-new-dtags,-rpath,$ORIGIN/lib",
            ],
        );
        let info = read_elf(&prog).unwrap().unwrap();
        assert!(info.class64);
        assert_eq!(info.machine, EM_X86_64);
        assert!(info.interp.as_deref().unwrap().contains("ld-linux"));
        assert!(info.needed.contains(&"libfoo.so".to_string()));
        assert!(info.needed.contains(&"libc.so.6".to_string()));
        assert_eq!(info.runpath, ["$ORIGIN/lib"]);
        assert!(info.rpath.is_empty());

        // The closure on the real host root finds libfoo through $ORIGIN, and libc,
        // the interpreter and the merged-/usr links through the host's ld.so config.
        let c = crate::elf_closure(std::slice::from_ref(&prog), Path::new("/")).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let files: HashSet<PathBuf> = c.files.into_iter().collect();
        assert!(files.contains(&fs::canonicalize(d.path().join("lib/libfoo.so")).unwrap()));
        assert!(files.contains(&fs::canonicalize(&prog).unwrap()));
        let libc = fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        assert!(files.contains(&libc), "{libc:?} missing");
        if fs::symlink_metadata("/lib64").is_ok_and(|m| m.file_type().is_symlink()) {
            assert!(files.contains(Path::new("/lib64")), "merged-/usr link kept");
        }
    }

    #[test]
    fn static_and_static_pie_programs_need_nothing() {
        let d = tempfile::tempdir().unwrap();
        for (name, flag) in [("static", "-static"), ("static-pie", "-static-pie")] {
            let p = gcc(d.path(), "int main(void){return 0;}", name, &[flag]);
            let info = read_elf(&p).unwrap().unwrap();
            assert_eq!(info.interp, None, "{name}");
            assert!(info.needed.is_empty(), "{name}");
            let c = crate::elf_closure(std::slice::from_ref(&p), Path::new("/")).unwrap();
            assert!(c.warnings.is_empty());
            // Only the program and its directories.
            assert!(c
                .files
                .iter()
                .all(|f| fs::canonicalize(&p).unwrap().starts_with(f)));
        }
    }

    #[test]
    fn garbage_and_truncated_files_are_not_elf_or_errors_never_panics() {
        let d = tempfile::tempdir().unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("text", b"#!/bin/sh\necho hi\n".to_vec()),
            ("short-magic", b"\x7fEL".to_vec()),
            ("magic-only", b"\x7fELF".to_vec()),
            (
                "bad-class",
                b"\x7fELF\x09\x01\x01\0\0\0\0\0\0\0\0\0".to_vec(),
            ),
        ];
        for (name, data) in &cases {
            let p = d.path().join(name);
            fs::write(&p, data).unwrap();
            let r = read_elf(&p);
            match *name {
                "empty" | "text" | "short-magic" => assert_eq!(r.unwrap(), None, "{name}"),
                _ => assert!(r.is_err(), "{name}: {r:?}"),
            }
        }
        // Every prefix of a real object either parses or is an error naming the file.
        let full = craft_elf(
            true,
            EM_X86_64,
            Some("/lib64/ld.so"),
            &["libz.so.1"],
            None,
            None,
        );
        for cut in 0..full.len() {
            let p = d.path().join("cut");
            fs::write(&p, &full[..cut]).unwrap();
            if let Err(e) = read_elf(&p) {
                assert!(e.to_string().contains("cut"), "{e}");
            }
        }
        // Random bytes behind a valid magic never panic either.
        let mut x: u32 = 12345;
        for _ in 0..300 {
            let mut data = b"\x7fELF\x02\x01\x01".to_vec();
            for _ in 0..400 {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                data.push((x >> 16) as u8);
            }
            let p = d.path().join("rand");
            fs::write(&p, &data).unwrap();
            let _ = read_elf(&p);
        }
        // A real host binary truncated mid-way is an error, not a panic.
        if let Ok(ls) = fs::read("/usr/bin/ls") {
            for cut in [64usize, 200, 1000, 5000] {
                let p = d.path().join("ls-cut");
                fs::write(&p, &ls[..cut.min(ls.len())]).unwrap();
                let _ = read_elf(&p);
            }
        }
    }

    #[test]
    fn crafted_32_bit_object_is_read_as_elf32() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a32");
        fs::write(
            &p,
            craft_elf(
                false,
                EM_386,
                Some("/lib/ld-linux.so.2"),
                &["libm.so.6", "libc.so.6"],
                None,
                Some("/opt/x"),
            ),
        )
        .unwrap();
        let info = read_elf(&p).unwrap().unwrap();
        assert!(!info.class64);
        assert_eq!(info.machine, EM_386);
        assert_eq!(info.interp.as_deref(), Some("/lib/ld-linux.so.2"));
        assert_eq!(info.needed, ["libm.so.6", "libc.so.6"]);
        assert_eq!(info.rpath, ["/opt/x"]);
    }

    #[test]
    fn search_skips_libraries_of_another_class_and_follows_ld_so_conf_includes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let lib64 = craft_elf(true, EM_X86_64, None, &[], None, None);
        let lib32 = craft_elf(false, EM_386, None, &[], None, None);
        // A 32-bit program whose RPATH holds a 64-bit libm first: ld.so skips it.
        write(
            r,
            "/usr/bin/p32",
            &craft_elf(
                false,
                EM_386,
                Some("/lib/ld-linux.so.2"),
                &["libm.so.6", "libq.so.1"],
                None,
                Some("/opt/wrong"),
            ),
        );
        write(r, "/opt/wrong/libm.so.6", &lib64);
        write(r, "/usr/lib/i386-linux-gnu/libm.so.6", &lib32);
        write(r, "/usr/lib/ld-linux.so.2", &lib32);
        link(r, "/lib", "usr/lib");
        write(
            r,
            "/etc/ld.so.conf",
            b"# comment\ninclude ld.so.conf.d/*.conf\n",
        );
        write(r, "/etc/ld.so.conf.d/q.conf", b"/opt/q\n");
        write(r, "/opt/q/libq.so.1", &lib32);
        let c = crate::elf_closure(&[PathBuf::from("/usr/bin/p32")], r).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let files: Vec<String> = c.files.iter().map(|p| p.display().to_string()).collect();
        assert!(
            files.contains(&"/usr/lib/i386-linux-gnu/libm.so.6".to_string()),
            "{files:?}"
        );
        assert!(!files.contains(&"/opt/wrong/libm.so.6".to_string()));
        assert!(files.contains(&"/opt/q/libq.so.1".to_string()));
        assert!(
            files.contains(&"/lib".to_string())
                && files.contains(&"/usr/lib/ld-linux.so.2".to_string())
        );
    }

    #[test]
    fn runpath_origin_lib_and_platform_are_expanded_and_symlinks_kept() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let lib = craft_elf(
            true,
            EM_X86_64,
            None,
            &["libdeep.so"],
            Some("$ORIGIN/${PLATFORM}"),
            None,
        );
        write(
            r,
            "/app/bin/prog",
            &craft_elf(
                true,
                EM_X86_64,
                None,
                &["libfoo.so.1", "libbar.so"],
                Some("$ORIGIN/../$LIB:${ORIGIN}/../other"),
                None,
            ),
        );
        write(r, "/app/lib/x86_64-linux-gnu/libfoo.so.1.2", &lib);
        link(r, "/app/lib/x86_64-linux-gnu/libfoo.so.1", "libfoo.so.1.2");
        write(
            r,
            "/app/other/libbar.so",
            &craft_elf(true, EM_X86_64, None, &[], None, None),
        );
        write(
            r,
            "/app/lib/x86_64-linux-gnu/x86_64/libdeep.so",
            &craft_elf(true, EM_X86_64, None, &[], None, None),
        );
        let c = crate::elf_closure(&[PathBuf::from("/app/bin/prog")], r).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let files: Vec<String> = c.files.iter().map(|p| p.display().to_string()).collect();
        for want in [
            "/app/lib/x86_64-linux-gnu/libfoo.so.1",
            "/app/lib/x86_64-linux-gnu/libfoo.so.1.2",
            "/app/other/libbar.so",
            "/app/lib/x86_64-linux-gnu/x86_64/libdeep.so",
        ] {
            assert!(
                files.contains(&want.to_string()),
                "{want} missing from {files:?}"
            );
        }
    }

    #[test]
    fn runpath_disables_rpath_and_missing_libraries_are_warned_about() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(
            r,
            "/p",
            &craft_elf(
                true,
                EM_X86_64,
                None,
                &["libx.so"],
                Some("/nowhere"),
                Some("/rp"),
            ),
        );
        write(
            r,
            "/rp/libx.so",
            &craft_elf(true, EM_X86_64, None, &[], None, None),
        );
        let c = crate::elf_closure(&[PathBuf::from("/p")], r).unwrap();
        assert!(!c.files.contains(&PathBuf::from("/rp/libx.so")));
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("libx.so"));
    }

    #[test]
    fn ld_so_cache_written_by_ldconfig_is_parsed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("opt/zz")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        // ldconfig lists a library under the soname it finds inside it.
        gcc(
            &r.join("opt/zz"),
            "int zz(void){return 1;}",
            "libzz.so.1",
            &["-shared", "-fPIC", "-Wl,-soname,libzz.so.1"],
        );
        fs::remove_file(r.join("opt/zz/libzz.so.1.c")).unwrap();
        fs::write(r.join("etc/ld.so.conf"), "/opt/zz\n").unwrap();
        let out = Command::new("/sbin/ldconfig")
            .arg("-r")
            .arg(r)
            .output()
            .unwrap_or_else(|e| panic!("cannot run /sbin/ldconfig: {e}"));
        assert!(
            out.status.success(),
            "ldconfig -r {} failed ({}):\n{}",
            r.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let cache = parse_ld_so_cache(&fs::read(r.join("etc/ld.so.cache")).unwrap());
        assert_eq!(
            cache.get("libzz.so.1"),
            Some(&vec![PathBuf::from("/opt/zz/libzz.so.1")])
        );
        // And the host's own cache knows libc.
        let host = parse_ld_so_cache(&fs::read("/etc/ld.so.cache").unwrap());
        assert!(host.contains_key("libc.so.6"));
        // Garbage caches give an empty map, not a panic.
        assert!(parse_ld_so_cache(b"glibc-ld.so.cache1.1\xff\xff\xff\xff").is_empty());
        assert!(parse_ld_so_cache(b"ld.so-1.7.0\0\xff\xff\xff\x7f").is_empty());
    }
}
