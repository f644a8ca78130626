//! Just enough ELF64 (little-endian, what x86_64 modules are) to find a module's sections
//! by name. Hand-written rather than a parser crate: this program is PID 1 of every
//! appliance and kept to one dependency (see `main.rs`), and it needs the section table
//! only. Every offset is checked against what the reader can supply.

/// One section: its name, where its bytes are, and where its header is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: Vec<u8>,
    pub offset: usize,
    pub size: usize,
    /// The file offset of this section's header (its `sh_name` is the first 4 bytes).
    pub header_at: usize,
    /// `sh_name`: the name's offset in the section-name table.
    pub name_offset: u32,
    /// `sh_type` (`SHT_RELA`, `SHT_SYMTAB`, ...).
    pub kind: u32,
    /// `sh_flags` (`SHF_EXECINSTR`, ...).
    pub flags: u64,
    /// `sh_link`: for a relocation section, its symbol table; for a symbol table, its
    /// string table.
    pub link: u32,
    /// `sh_info`: for a relocation section, the section it applies to.
    pub info: u32,
}

/// `sh_type` of a symbol table.
pub const SHT_SYMTAB: u32 = 2;
/// `sh_type` of a relocation section with addends.
pub const SHT_RELA: u32 = 4;
/// `sh_flags`: the section is in the loaded image.
pub const SHF_ALLOC: u64 = 0x2;
/// `sh_flags`: the section holds machine code.
pub const SHF_EXECINSTR: u64 = 0x4;
/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;

/// Largest section-header table or name table read (a module has about 80 sections).
const MAX_TABLE: usize = 1 << 20;

pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(crate) fn u64_raw_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<usize> {
    let v = u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?);
    usize::try_from(v).ok()
}

/// Every section of the ELF64 LE image that `read(offset, size)` returns bytes of;
/// `None` when it is not one or its tables do not fit.
pub fn sections(read: &dyn Fn(usize, usize) -> Option<Vec<u8>>) -> Option<Vec<Section>> {
    let ehdr = read(0, 0x40)?;
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB.
    if ehdr.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64_at(&ehdr, 0x28)?;
    let shentsize = usize::from(u16_at(&ehdr, 0x3a)?);
    let shnum = usize::from(u16_at(&ehdr, 0x3c)?);
    let shstrndx = usize::from(u16_at(&ehdr, 0x3e)?);
    let table_len = shnum.checked_mul(shentsize)?;
    if shentsize < 0x40 || shstrndx >= shnum || table_len > MAX_TABLE {
        return None;
    }
    let table = read(shoff, table_len)?;
    let header = |i: usize| -> Option<(u32, usize, usize)> {
        let at = i * shentsize;
        Some((
            u32_at(&table, at)?,
            u64_at(&table, at + 0x18)?,
            u64_at(&table, at + 0x20)?,
        ))
    };
    let (_, names_at, names_len) = header(shstrndx)?;
    if names_len > MAX_TABLE {
        return None;
    }
    let names = read(names_at, names_len)?;
    (0..shnum)
        .map(|i| {
            let (name_offset, offset, size) = header(i)?;
            let rest = names.get(usize::try_from(name_offset).ok()?..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            let at = i * shentsize;
            Some(Section {
                name: rest[..end].to_vec(),
                offset,
                size,
                header_at: shoff.checked_add(at)?,
                name_offset,
                kind: u32_at(&table, at + 0x04)?,
                flags: u64_raw_at(&table, at + 0x08)?,
                link: u32_at(&table, at + 0x28)?,
                info: u32_at(&table, at + 0x2c)?,
            })
        })
        .collect()
}

/// `e_machine` of an ELF image, `None` when it is too short to have one.
pub fn machine(image: &[u8]) -> Option<u16> {
    u16_at(image, 0x12)
}

/// The sections of an image in memory.
pub fn sections_of(image: &[u8]) -> Option<Vec<Section>> {
    sections(&|offset, size| Some(image.get(offset..offset.checked_add(size)?)?.to_vec()))
}

#[cfg(test)]
/// One section for [`build_with`]: its name, bytes and header fields.
pub struct Spec<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
    pub kind: u32,
    pub flags: u64,
    pub link: u32,
    pub info: u32,
}

#[cfg(test)]
/// A minimal ELF64 relocatable with the given sections (name, bytes).
pub fn build(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let specs: Vec<Spec> = sections
        .iter()
        .map(|&(name, bytes)| Spec {
            name,
            bytes,
            kind: 1,
            flags: 0,
            link: 0,
            info: 0,
        })
        .collect();
    build_with(&specs, 0)
}

#[cfg(test)]
/// A minimal ELF64 relocatable for `machine` with the given sections, numbered from 1 in
/// order (0 is the null section), and the section-name table last.
pub fn build_with(sections: &[Spec], machine: u16) -> Vec<u8> {
    let mut names = vec![0u8];
    let mut name_at = Vec::new();
    for s in sections {
        name_at.push(names.len());
        names.extend_from_slice(s.name.as_bytes());
        names.push(0);
    }
    let shstr_name = names.len();
    names.extend_from_slice(b".shstrtab\0");
    let mut image = vec![0u8; 0x40];
    image[..6].copy_from_slice(b"\x7fELF\x02\x01");
    image[0x10..0x12].copy_from_slice(&1u16.to_le_bytes());
    image[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
    let mut placed = Vec::new();
    for s in sections {
        // Eight-byte aligned, as tables of 64-bit entries are.
        while image.len() % 8 != 0 {
            image.push(0);
        }
        placed.push((image.len(), s.bytes.len()));
        image.extend_from_slice(s.bytes);
    }
    let names_at = image.len();
    image.extend_from_slice(&names);
    while image.len() % 8 != 0 {
        image.push(0);
    }
    let shoff = image.len();
    let mut header =
        |name: usize, kind: u32, flags: u64, off: usize, size: usize, link: u32, info: u32| {
            let mut h = vec![0u8; 0x40];
            h[..4].copy_from_slice(&u32::try_from(name).unwrap().to_le_bytes());
            h[0x04..0x08].copy_from_slice(&kind.to_le_bytes());
            h[0x08..0x10].copy_from_slice(&flags.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h[0x28..0x2c].copy_from_slice(&link.to_le_bytes());
            h[0x2c..0x30].copy_from_slice(&info.to_le_bytes());
            image.extend_from_slice(&h);
        };
    header(0, 0, 0, 0, 0, 0, 0);
    for (i, (off, size)) in placed.iter().enumerate() {
        let s = &sections[i];
        header(name_at[i], s.kind, s.flags, *off, *size, s.link, s.info);
    }
    header(shstr_name, 3, 0, names_at, names.len(), 0, 0);
    let shnum = sections.len() + 2;
    image[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    image[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
    image[0x3c..0x3e].copy_from_slice(&u16::try_from(shnum).unwrap().to_le_bytes());
    image[0x3e..0x40].copy_from_slice(&u16::try_from(shnum - 1).unwrap().to_le_bytes());
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_listed_with_names_offsets_and_headers() {
        let image = build(&[(".text", b"\x90\x90"), (".modinfo", b"name=x\0")]);
        let s = sections_of(&image).unwrap();
        let names: Vec<&[u8]> = s.iter().map(|s| s.name.as_slice()).collect();
        assert_eq!(names, [&b""[..], b".text", b".modinfo", b".shstrtab"]);
        let modinfo = &s[2];
        assert_eq!(
            &image[modinfo.offset..modinfo.offset + modinfo.size],
            b"name=x\0"
        );
        let sh_name = u32::from_le_bytes(
            image[modinfo.header_at..modinfo.header_at + 4]
                .try_into()
                .unwrap(),
        );
        assert_eq!(sh_name, modinfo.name_offset);
    }

    #[test]
    fn damaged_section_headers_give_none_or_bounded_sections_never_a_panic() {
        let good = build(&[(".text", b"\x90"), (".modinfo", b"name=x\0")]);
        let headers = sections_of(&good).unwrap();
        // Every byte of every section header (name, type, offsets, sizes) set to extremes.
        for h in &headers {
            for at in h.header_at..h.header_at + 0x40 {
                for value in [0x00, 0x7f, 0xff] {
                    let mut bad = good.clone();
                    bad[at] = value;
                    if let Some(sections) = sections_of(&bad) {
                        for s in sections {
                            // What is returned lies inside the section-name table's bounds.
                            assert!(s.name.len() < bad.len());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn damaged_images_give_none_never_a_panic() {
        let good = build(&[(".modinfo", b"name=x\0")]);
        for cut in 0..good.len() {
            let _ = sections_of(&good[..cut]);
        }
        for at in 0..0x40 {
            for value in [0x00, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[at] = value;
                let _ = sections_of(&bad);
            }
        }
        let mut bad = good.clone();
        bad[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(sections_of(&bad), None);
        assert_eq!(sections_of(b"\x7fELF\x01\x01 32-bit"), None);
    }
}
