//! Turning a module's ftrace call sites into the no-ops the kernel would make of them,
//! before the kernel sees the module, and hiding them from ftrace.
//!
//! Every traceable function of an x86_64 module built by GCC for ftrace starts (after its
//! `endbr64`, if any) with `call __fentry__`, and the module's `__mcount_loc` section lists
//! each such call. At load, ftrace rewrites every listed call into a five-byte no-op and
//! then, for each one, looks up the function it is in (a kallsyms lookup that scans the
//! module's whole symbol table: ext4 has 985 sites and 5148 symbols). On hardware that is
//! nothing; under TCG it is the largest part of ext4's load (55 ms of libguestfs's launch,
//! measured side by side).
//!
//! So, on the init's private copy of the module, modelled on the kernel's own
//! `ftrace_init_nop`: each listed call becomes the same no-op ftrace writes there
//! (`0f 1f 44 00 00`, `x86_nops[5]`), the relocation that would fill in the call's target
//! becomes `R_X86_64_NONE` (which the module loader skips), and the `__mcount_loc`
//! section's name moves one byte on to `_mcount_loc`, a name the kernel never looks for.
//! The module's code is then byte for byte what it is after a normal load with tracing off
//! (checked on every module of Debian's 6.1 and 6.12 kernels). What is lost is everything
//! that needs ftrace to know the module's functions: the function and stack tracers, kprobe
//! events (`kprobe_events`, `perf probe`, BPF kprobes and `kprobe_multi`: the kernel refuses
//! to probe a function without an ftrace location), BPF fentry programs and livepatch. Done
//! only to a module already handed over without its signature, and never when the kernel
//! command line asks for such tracing (see `cmdline.rs`), `supermin.trace_modules` keeps
//! the sites or `supermin.verify_modules` keeps the whole module.
//!
//! All or nothing: the module must have one `__mcount_loc`, allocated, and every site it
//! lists must be a `call` with a relocation to an undefined `__fentry__`, or the module is
//! left as it is. (A kernel whose sites are already no-ops, as objtool's `--mnop` makes
//! them, has no such calls: its modules are left alone, and gain nothing.)

use std::collections::HashMap;

use crate::elf::{self, Section, EM_X86_64, SHF_ALLOC, SHF_EXECINSTR, SHT_RELA, SHT_SYMTAB};

/// The section ftrace reads a module's call sites from (`FTRACE_CALLSITE_SECTION`).
const MCOUNT_LOC: &[u8] = b"__mcount_loc";
/// The function every call site calls until ftrace patches it.
const FENTRY: &[u8] = b"__fentry__";
/// `x86_nops[5]`, what ftrace writes over a call site.
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
/// `call rel32`.
const CALL: u8 = 0xe8;

const R_X86_64_NONE: u32 = 0;
const R_X86_64_64: u32 = 1;
const R_X86_64_PC32: u32 = 2;
const R_X86_64_PLT32: u32 = 4;

const SYM_SIZE: usize = 24;
const RELA_SIZE: usize = 24;

/// One relocation with addend.
struct Rela {
    /// Where its `r_info` is in the image.
    info_at: usize,
    offset: u64,
    symbol: usize,
    kind: u32,
    addend: i64,
}

fn relas<'a>(image: &'a [u8], section: &Section) -> impl Iterator<Item = Option<Rela>> + 'a {
    let (start, count) = (section.offset, section.size / RELA_SIZE);
    (0..count).map(move |i| {
        let at = start.checked_add(i * RELA_SIZE)?;
        at.checked_add(RELA_SIZE)?;
        let info = elf::u64_raw_at(image, at + 8)?;
        Some(Rela {
            info_at: at + 8,
            offset: elf::u64_raw_at(image, at)?,
            symbol: usize::try_from(info >> 32).ok()?,
            kind: (info & 0xffff_ffff) as u32,
            addend: elf::u64_raw_at(image, at + 16)? as i64,
        })
    })
}

/// A symbol's section index and value.
fn symbol(image: &[u8], symtab: &Section, index: usize) -> Option<(u16, u64)> {
    if index >= symtab.size / SYM_SIZE {
        return None;
    }
    let at = symtab.offset.checked_add(index * SYM_SIZE)?;
    at.checked_add(SYM_SIZE)?;
    Some((elf::u16_at(image, at + 6)?, elf::u64_raw_at(image, at + 8)?))
}

fn symbol_name<'a>(
    image: &'a [u8],
    symtab: &Section,
    strtab: &Section,
    index: usize,
) -> Option<&'a [u8]> {
    let at = symtab.offset.checked_add(index.checked_mul(SYM_SIZE)?)?;
    let name = usize::try_from(elf::u32_at(image, at)?).ok()?;
    let table = image.get(strtab.offset..strtab.offset.checked_add(strtab.size)?)?;
    let rest = table.get(name..)?;
    Some(&rest[..rest.iter().position(|&b| b == 0)?])
}

/// Writes the no-ops over the module's listed ftrace call sites, drops their relocations
/// and hides `__mcount_loc`; returns how many sites, or `None` (the image untouched)
/// when the module has none or anything is not as described above.
pub fn nop_call_sites(image: &mut [u8]) -> Option<usize> {
    if elf::machine(image)? != EM_X86_64 {
        return None;
    }
    let sections = elf::sections_of(image)?;
    // The kernel takes the first allocated one; with exactly one there is no doubt which.
    let mut listings = sections
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name == MCOUNT_LOC);
    let (mcount, listing_section) = listings.next()?;
    if listings.next().is_some() || listing_section.flags & SHF_ALLOC == 0 {
        return None;
    }
    let symtab_index = sections.iter().position(|s| s.kind == SHT_SYMTAB)?;
    let symtab = &sections[symtab_index];
    let strtab = sections.get(usize::try_from(symtab.link).ok()?)?;
    let fentry = (1..symtab.size / SYM_SIZE).find(|&i| {
        symbol(image, symtab, i).is_some_and(|(shndx, _)| shndx == 0)
            && symbol_name(image, symtab, strtab, i) == Some(FENTRY)
    })?;
    let is_code = |index: u32| {
        usize::try_from(index)
            .ok()
            .and_then(|i| sections.get(i))
            .is_some_and(|s| s.flags & SHF_EXECINSTR != 0)
    };
    let uses_symtab = |s: &Section| s.kind == SHT_RELA && s.link as usize == symtab_index;

    // Every relocation to __fentry__ in code: (section, offset) -> where its r_info is.
    let mut calls: HashMap<(u32, u64), usize> = HashMap::new();
    for section in sections
        .iter()
        .filter(|s| uses_symtab(s) && is_code(s.info))
    {
        for rela in relas(image, section) {
            let rela = rela?;
            if rela.symbol != fentry {
                continue;
            }
            if !matches!(rela.kind, R_X86_64_PLT32 | R_X86_64_PC32) || rela.addend != -4 {
                return None;
            }
            calls.insert((section.info, rela.offset), rela.info_at);
        }
    }

    // Each entry of __mcount_loc names one call: (its code section, the call's offset).
    let listing = sections
        .iter()
        .find(|s| uses_symtab(s) && s.info as usize == mcount)?;
    let mut patches = Vec::new();
    for rela in relas(image, listing) {
        let rela = rela?;
        let (shndx, value) = symbol(image, symtab, rela.symbol)?;
        if rela.kind != R_X86_64_64 || !is_code(u32::from(shndx)) {
            return None;
        }
        let site = value.checked_add_signed(rela.addend)?;
        let info_at = calls.remove(&(u32::from(shndx), site.checked_add(1)?))?;
        let code = &sections[usize::from(shndx)];
        let site = usize::try_from(site).ok()?;
        if site.checked_add(NOP5.len())? > code.size {
            return None;
        }
        let at = code.offset.checked_add(site)?;
        let call = image.get(at..at.checked_add(NOP5.len())?)?;
        if call[0] != CALL || image.get(info_at..info_at.checked_add(4)?).is_none() {
            return None;
        }
        patches.push((at, info_at));
    }
    if patches.len() * 8 != sections[mcount].size {
        return None;
    }
    let name_offset = sections[mcount].name_offset.checked_add(1)?;
    let header_at = sections[mcount].header_at;
    // Everything checked: now write.
    for &(at, info_at) in &patches {
        image.get_mut(at..at + NOP5.len())?.copy_from_slice(&NOP5);
        image
            .get_mut(info_at..info_at + 4)?
            .copy_from_slice(&R_X86_64_NONE.to_le_bytes());
    }
    image
        .get_mut(header_at..header_at + 4)?
        .copy_from_slice(&name_offset.to_le_bytes());
    Some(patches.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{build_with, Spec};

    fn sym(name: u32, info: u8, shndx: u16, value: u64) -> Vec<u8> {
        let mut s = vec![0u8; SYM_SIZE];
        s[..4].copy_from_slice(&name.to_le_bytes());
        s[4] = info;
        s[6..8].copy_from_slice(&shndx.to_le_bytes());
        s[8..16].copy_from_slice(&value.to_le_bytes());
        s
    }

    fn rela(offset: u64, symbol: u64, kind: u32, addend: i64) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&offset.to_le_bytes());
        r.extend_from_slice(&((symbol << 32) | u64::from(kind)).to_le_bytes());
        r.extend_from_slice(&addend.to_le_bytes());
        r
    }

    /// Sections: 1 .text, 2 .rela.text, 3 __mcount_loc, 4 .rela__mcount_loc, 5 .symtab,
    /// 6 .strtab. Two functions, each `endbr64; call __fentry__; ...; ret`, and a third
    /// call to another function that must stay.
    struct Module {
        text: Vec<u8>,
        rela_text: Vec<u8>,
        mcount: Vec<u8>,
        rela_mcount: Vec<u8>,
        symtab: Vec<u8>,
        strtab: Vec<u8>,
        mcount_flags: u64,
        /// A second, empty `__mcount_loc` after the symbol tables.
        second_listing: bool,
    }

    const ENDBR: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    /// Symbols: 0 null, 1 .text's section symbol, 2 __fentry__, 3 other_function.
    const TEXT_SYM: u64 = 1;
    const FENTRY_SYM: u64 = 2;
    const OTHER_SYM: u64 = 3;

    fn module() -> Module {
        let mut text = Vec::new();
        for _ in 0..2 {
            text.extend_from_slice(&ENDBR);
            text.extend_from_slice(&[CALL, 0, 0, 0, 0]);
            text.extend_from_slice(&[0x90, 0xc3]);
        }
        // At 22: a call to another function.
        text.extend_from_slice(&[CALL, 0, 0, 0, 0, 0xc3]);
        let mut rela_text = rela(5, FENTRY_SYM, R_X86_64_PLT32, -4);
        rela_text.extend(rela(16, FENTRY_SYM, R_X86_64_PLT32, -4));
        rela_text.extend(rela(23, OTHER_SYM, R_X86_64_PLT32, -4));
        let mut rela_mcount = rela(0, TEXT_SYM, R_X86_64_64, 4);
        rela_mcount.extend(rela(8, TEXT_SYM, R_X86_64_64, 15));
        let strtab = b"\0__fentry__\0other_function\0".to_vec();
        let mut symtab = sym(0, 0, 0, 0);
        symtab.extend(sym(0, 3, 1, 0)); // STT_SECTION, .text
        symtab.extend(sym(1, 0x10, 0, 0)); // global, undefined
        symtab.extend(sym(12, 0x10, 0, 0));
        Module {
            text,
            rela_text,
            mcount: vec![0; 16],
            rela_mcount,
            symtab,
            strtab,
            mcount_flags: 0x2,
            second_listing: false,
        }
    }

    fn image(m: &Module, machine: u16) -> Vec<u8> {
        let spec = |name, bytes, kind, flags, link, info| Spec {
            name,
            bytes,
            kind,
            flags,
            link,
            info,
        };
        let mut sections = vec![
            spec(".text", &m.text, 1, 0x6, 0, 0),
            spec(".rela.text", &m.rela_text, SHT_RELA, 0x40, 5, 1),
            spec("__mcount_loc", &m.mcount, 1, m.mcount_flags, 0, 0),
            spec(".rela__mcount_loc", &m.rela_mcount, SHT_RELA, 0x40, 5, 3),
            spec(".symtab", &m.symtab, SHT_SYMTAB, 0, 6, 1),
            spec(".strtab", &m.strtab, 3, 0, 0, 0),
        ];
        if m.second_listing {
            sections.push(spec("__mcount_loc", &[], 1, 0x2, 0, 0));
        }
        build_with(&sections, machine)
    }

    fn section<'a>(image: &'a [u8], name: &[u8]) -> &'a [u8] {
        let s = elf::sections_of(image)
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap();
        &image[s.offset..s.offset + s.size]
    }

    fn kinds(rela_section: &[u8]) -> Vec<u32> {
        rela_section
            .chunks(RELA_SIZE)
            .map(|r| u32::from_le_bytes(r[8..12].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn listed_calls_become_the_kernels_nop_their_relocations_none_and_the_listing_hidden() {
        let mut image = image(&module(), EM_X86_64);
        assert_eq!(nop_call_sites(&mut image), Some(2));
        let mut expected = Vec::new();
        for _ in 0..2 {
            expected.extend_from_slice(&ENDBR);
            expected.extend_from_slice(&NOP5);
            expected.extend_from_slice(&[0x90, 0xc3]);
        }
        expected.extend_from_slice(&[CALL, 0, 0, 0, 0, 0xc3]);
        assert_eq!(section(&image, b".text"), &expected[..]);
        // The other call keeps its relocation; the two __fentry__ ones are R_X86_64_NONE.
        assert_eq!(
            kinds(section(&image, b".rela.text")),
            [R_X86_64_NONE, R_X86_64_NONE, R_X86_64_PLT32]
        );
        // The listing is now `_mcount_loc`, its bytes and relocations unchanged.
        let names: Vec<Vec<u8>> = elf::sections_of(&image)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert!(names.contains(&b"_mcount_loc".to_vec()), "{names:?}");
        assert!(!names.contains(&MCOUNT_LOC.to_vec()));
        assert_eq!(
            kinds(section(&image, b".rela__mcount_loc")),
            [R_X86_64_64, R_X86_64_64]
        );
    }

    #[test]
    fn anything_unexpected_leaves_the_module_untouched() {
        let mut cases: Vec<(&str, Module, u16)> = Vec::new();
        cases.push(("another machine", module(), 183));
        let mut m = module();
        m.text[4] = 0x90; // the first site is not a call
        cases.push(("not a call", m, EM_X86_64));
        let mut m = module();
        m.rela_mcount = rela(0, TEXT_SYM, R_X86_64_64, 4);
        cases.push(("a site without its relocation", m, EM_X86_64));
        let mut m = module();
        m.rela_mcount = rela(0, TEXT_SYM, R_X86_64_64, 4);
        m.rela_mcount.extend(rela(8, TEXT_SYM, R_X86_64_64, 9));
        cases.push(("a site that is no __fentry__ call", m, EM_X86_64));
        let mut m = module();
        m.rela_text = rela(5, FENTRY_SYM, R_X86_64_64, 0);
        m.rela_text.extend(rela(16, FENTRY_SYM, R_X86_64_PLT32, -4));
        cases.push(("__fentry__ relocated another way", m, EM_X86_64));
        let mut m = module();
        m.rela_mcount = rela(0, TEXT_SYM, R_X86_64_64, 4);
        m.rela_mcount.extend(rela(8, TEXT_SYM, R_X86_64_64, 4));
        cases.push(("one site listed twice", m, EM_X86_64));
        let mut m = module();
        m.mcount_flags = 0;
        cases.push(("a listing the kernel does not load", m, EM_X86_64));
        let mut m = module();
        m.second_listing = true;
        cases.push(("two listings", m, EM_X86_64));
        let mut m = module();
        m.rela_mcount = rela(0, TEXT_SYM, R_X86_64_64, 4);
        m.rela_mcount
            .extend(rela(8, TEXT_SYM, R_X86_64_64, 1 << 40));
        cases.push(("a site past its section", m, EM_X86_64));
        let mut m = module();
        m.strtab = b"\0__fentry_X\0other_function\0".to_vec();
        cases.push(("no __fentry__ symbol", m, EM_X86_64));
        for (what, m, machine) in cases {
            let original = image(&m, machine);
            let mut patched = original.clone();
            assert_eq!(nop_call_sites(&mut patched), None, "{what}");
            assert_eq!(patched, original, "{what}");
        }
    }

    #[test]
    fn a_module_without_call_sites_is_left_alone() {
        let m = module();
        let mut image = build_with(
            &[Spec {
                name: ".text",
                bytes: &m.text,
                kind: 1,
                flags: 0x6,
                link: 0,
                info: 0,
            }],
            EM_X86_64,
        );
        let original = image.clone();
        assert_eq!(nop_call_sites(&mut image), None);
        assert_eq!(image, original);
    }

    #[test]
    fn damaged_images_give_none_never_a_panic() {
        let good = image(&module(), EM_X86_64);
        for cut in 0..good.len() {
            let mut short = good[..cut].to_vec();
            let _ = nop_call_sites(&mut short);
        }
        for at in 0..good.len() {
            for value in [0x00, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[at] = value;
                let _ = nop_call_sites(&mut bad);
            }
        }
    }
}
