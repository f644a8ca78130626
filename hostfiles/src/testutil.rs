//! Test fixtures shared by the unit tests: hand-made ELF objects (both classes, any
//! machine) so closure tests do not depend on a multilib toolchain.

#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::path::Path;

/// A minimal little-endian ELF shared object: one PT_LOAD mapping the whole file at vaddr 0,
/// optional PT_INTERP, and a PT_DYNAMIC with DT_NEEDED / DT_RUNPATH / DT_RPATH entries.
pub fn craft_elf(
    class64: bool,
    machine: u16,
    interp: Option<&str>,
    needed: &[&str],
    runpath: Option<&str>,
    rpath: Option<&str>,
) -> Vec<u8> {
    let (ehsize, phentsize, word) = if class64 { (64, 56, 8) } else { (52, 32, 4) };
    let phnum = 2 + usize::from(interp.is_some());
    let mut strtab = vec![0u8];
    let mut add = |s: &str| {
        let o = strtab.len();
        strtab.extend_from_slice(s.as_bytes());
        strtab.push(0);
        o as u64
    };
    let mut dyns: Vec<(u64, u64)> = needed.iter().map(|n| (1u64, add(n))).collect();
    if let Some(r) = runpath {
        dyns.push((29, add(r)));
    }
    if let Some(r) = rpath {
        dyns.push((15, add(r)));
    }
    let str_off = ehsize + phnum * phentsize;
    let interp_off = str_off + strtab.len();
    let interp_bytes: Vec<u8> = interp
        .map(|i| {
            let mut v = i.as_bytes().to_vec();
            v.push(0);
            v
        })
        .unwrap_or_default();
    let mut dyn_off = interp_off + interp_bytes.len();
    dyn_off = (dyn_off + 7) & !7;
    dyns.push((5, str_off as u64)); // DT_STRTAB
    dyns.push((10, strtab.len() as u64)); // DT_STRSZ
    dyns.push((0, 0)); // DT_NULL
    let dyn_size = dyns.len() * 2 * word;
    let total = dyn_off + dyn_size;

    let mut b: Vec<u8> = Vec::new();
    let w = |b: &mut Vec<u8>, v: u64| {
        if class64 {
            b.extend_from_slice(&v.to_le_bytes())
        } else {
            b.extend_from_slice(&(v as u32).to_le_bytes())
        }
    };
    b.extend_from_slice(b"\x7fELF");
    b.push(if class64 { 2 } else { 1 });
    b.extend_from_slice(&[1, 1, 0]);
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
    b.extend_from_slice(&machine.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    w(&mut b, 0); // entry
    w(&mut b, ehsize as u64); // phoff
    w(&mut b, 0); // shoff
    b.extend_from_slice(&0u32.to_le_bytes());
    for v in [ehsize, phentsize, phnum, 0, 0, 0] {
        b.extend_from_slice(&(v as u16).to_le_bytes());
    }
    assert_eq!(b.len(), ehsize);
    let ph = |b: &mut Vec<u8>, ty: u32, off: usize, size: usize| {
        b.extend_from_slice(&ty.to_le_bytes());
        if class64 {
            b.extend_from_slice(&4u32.to_le_bytes());
        }
        for v in [off, off, off, size, size] {
            w(b, v as u64);
        }
        if !class64 {
            b.extend_from_slice(&4u32.to_le_bytes());
        }
        w(b, 8);
    };
    ph(&mut b, 1, 0, total); // PT_LOAD
    if interp.is_some() {
        ph(&mut b, 3, interp_off, interp_bytes.len());
    }
    ph(&mut b, 2, dyn_off, dyn_size);
    b.extend_from_slice(&strtab);
    b.extend_from_slice(&interp_bytes);
    b.resize(dyn_off, 0);
    for (t, v) in dyns {
        w(&mut b, t);
        w(&mut b, v);
    }
    assert_eq!(b.len(), total);
    b
}

pub fn write(root: &Path, path: &str, data: &[u8]) {
    let p = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

pub fn link(root: &Path, path: &str, target: &str) {
    let p = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}
