//! Turning a bzImage into the ELF `vmlinux` that qemu boots through PVH.
//!
//! Under TCG most of a bzImage boot is spent in firmware and in the emulated
//! decompressor (DESIGN.md, "Where boot time goes"). The payload of a bzImage
//! is the compressed, stripped `vmlinux` ELF itself, so decompressing it once
//! at build time gives a file qemu can load with `-kernel vmlinux`, provided
//! the kernel carries the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, 18;
//! `CONFIG_PVH=y`).
//!
//! The payload is streamed from the bzImage to the output file: the result
//! is tens of MB and never held in memory. The kernel build appends the
//! uncompressed size (4 bytes) after the compressed stream, so every decoder
//! here stops at the end of its first stream instead of reading to EOF.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::program_header::{ProgramHeader, PT_NOTE};
use goblin::elf::section_header::{SectionHeader, SHT_NOTE};

use crate::bzimage::{payload_location, read_head, SETUP_HEADER_LEN};
pub use crate::compression::Compression;
use crate::compression::{decoder, Members};
use crate::ProbeError;

/// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point (xen/include/public/elfnote.h).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Note segments of a kernel are a few KiB; refuse to read absurd sizes.
const MAX_NOTE_BYTES: u64 = 1 << 20;

/// What [`extract_vmlinux`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmlinuxInfo {
    /// How the payload was compressed.
    pub compression: Compression,
    /// Bytes written to the output file.
    pub size: u64,
    /// The PVH entry point, when the ELF carries XEN_ELFNOTE_PHYS32_ENTRY.
    pub pvh_entry: Option<u64>,
}

impl VmlinuxInfo {
    /// Whether qemu can boot the vmlinux directly (`-kernel vmlinux`).
    pub fn pvh(&self) -> bool {
        self.pvh_entry.is_some()
    }
}

/// Decompresses the payload of `bzimage` into an ELF vmlinux at `out`
/// (created or truncated) and reports whether it has the PVH entry note.
/// On any error `out` is removed, so a half-written file is never left.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<VmlinuxInfo, ProbeError> {
    let result = extract_inner(bzimage, out);
    if result.is_err() {
        let _ = fs::remove_file(out);
    }
    result
}

fn extract_inner(bzimage: &Path, out: &Path) -> Result<VmlinuxInfo, ProbeError> {
    let io_err = |source| crate::bzimage::io_error(bzimage, source);
    let head = read_head(bzimage, SETUP_HEADER_LEN).map_err(io_err)?;
    let file_len = fs::metadata(bzimage).map_err(io_err)?.len();
    let loc = payload_location(&head, file_len).map_err(|reason| ProbeError::NotBzImage {
        path: bzimage.to_path_buf(),
        reason,
    })?;
    let mut file = File::open(bzimage).map_err(io_err)?;
    file.seek(SeekFrom::Start(loc.offset)).map_err(io_err)?;
    let mut payload = BufReader::with_capacity(1 << 16, file.take(loc.length));
    let magic = {
        let buf = payload.fill_buf().map_err(io_err)?;
        buf[..buf.len().min(8)].to_vec()
    };
    let compression =
        Compression::sniff(&magic).ok_or_else(|| ProbeError::UnsupportedCompression {
            path: bzimage.to_path_buf(),
            format: format!("an unknown format (magic {})", hex(&magic)),
        })?;

    let decompress_err = |source| ProbeError::PayloadDecompress {
        path: bzimage.to_path_buf(),
        format: compression.as_str(),
        source,
    };
    let out_file = File::create(out).map_err(|source| ProbeError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let mut writer = BufWriter::with_capacity(1 << 20, out_file);
    let size = match compression {
        Compression::Lz4 => {
            let mut data = Vec::new();
            payload.read_to_end(&mut data).map_err(io_err)?;
            lz4_legacy_decode(&data, &mut writer, out).map_err(|e| e.into_probe(decompress_err))?
        }
        Compression::Lzo => {
            return Err(ProbeError::UnsupportedCompression {
                path: bzimage.to_path_buf(),
                format: "lzo".into(),
            })
        }
        // One stream: the kernel build appends the payload's size after it.
        c => {
            let stream = decoder(c, payload, Members::One).map_err(decompress_err)?;
            pump(stream, &mut writer, out).map_err(|e| e.into_probe(decompress_err))?
        }
    };
    writer.flush().map_err(|source| ProbeError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    drop(writer);
    let pvh_entry = pvh_entry_of(out)?;
    Ok(VmlinuxInfo {
        compression,
        size,
        pvh_entry,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A failure while streaming: the decoder's, or the output file's.
enum PumpError {
    Decode(io::Error),
    Write(std::path::PathBuf, io::Error),
}

impl PumpError {
    fn into_probe(self, decode: impl FnOnce(io::Error) -> ProbeError) -> ProbeError {
        match self {
            PumpError::Decode(e) => decode(e),
            PumpError::Write(path, source) => ProbeError::Write { path, source },
        }
    }
}

fn pump(mut from: impl Read, to: &mut impl Write, out: &Path) -> Result<u64, PumpError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PumpError::Decode(e)),
        };
        to.write_all(&buf[..n])
            .map_err(|e| PumpError::Write(out.to_path_buf(), e))?;
        total += n as u64;
    }
}

/// The lz4 "legacy" frame the kernel uses (`lz4 -l`): a magic, then blocks
/// of `u32 compressed size` + raw lz4 block, each up to 8 MiB uncompressed.
/// The stream has no end marker; the appended size word is recognised as a
/// block size that runs past the input.
fn lz4_legacy_decode(data: &[u8], to: &mut impl Write, out: &Path) -> Result<u64, PumpError> {
    const MAGIC: u32 = 0x184c_2102;
    const BLOCK_MAX: usize = 8 << 20;
    let bad =
        |msg: &str| PumpError::Decode(io::Error::new(io::ErrorKind::InvalidData, msg.to_string()));
    let mut pos = 0usize;
    let mut total = 0u64;
    let mut buf = vec![0u8; BLOCK_MAX];
    let mut blocks = 0usize;
    while pos + 4 <= data.len() {
        let word = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        if word == MAGIC {
            pos += 4;
            continue;
        }
        let size = word as usize;
        if size == 0 || pos + 4 + size > data.len() {
            break;
        }
        let block = &data[pos + 4..pos + 4 + size];
        let n = lz4_flex::block::decompress_into(block, &mut buf)
            .map_err(|e| PumpError::Decode(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        to.write_all(&buf[..n])
            .map_err(|e| PumpError::Write(out.to_path_buf(), e))?;
        total += n as u64;
        pos += 4 + size;
        blocks += 1;
    }
    if blocks == 0 {
        return Err(bad("no lz4 block found"));
    }
    Ok(total)
}

/// Reads the PVH entry note from the ELF at `path`, looking in PT_NOTE
/// segments first and SHT_NOTE sections second (a stripped vmlinux keeps
/// both). `Err(NotElf)` when the file is not a little-endian ELF. goblin parses
/// the headers; only they and the note areas are read, never the whole file.
pub fn pvh_entry_of(path: &Path) -> Result<Option<u64>, ProbeError> {
    let not_elf = |reason: &str| ProbeError::NotElf {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let io_err = |source| ProbeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut ehdr = [0u8; 64];
    let mut got = 0;
    while got < ehdr.len() {
        match file.read(&mut ehdr[got..]).map_err(io_err)? {
            0 => break,
            n => got += n,
        }
    }
    if got < 52 || &ehdr[..4] != b"\x7fELF" {
        return Err(not_elf("no ELF magic"));
    }
    if ehdr[5] != 1 {
        return Err(not_elf("not little-endian"));
    }
    let hdr = goblin::elf::Elf::parse_header(&ehdr[..got])
        .map_err(|e| not_elf(&format!("unknown ELF class ({e})")))?;
    let container = hdr
        .container()
        .map_err(|e| not_elf(&format!("unknown ELF class ({e})")))?;
    let ctx = Ctx::new(container, Endian::Little);
    let is64 = container == Container::Big;

    // (offset, size, alignment) of every note area, segments first.
    let mut regions = Vec::new();
    let (phent, shent) = if is64 { (56, 64) } else { (32, 40) };
    // A header table's bytes and how many standard-size entries they hold: none when its
    // entries have another size, fewer when it is cut short (no notes to read there).
    let mut table = |off: u64, entsize: u16, count: u16, standard: usize| {
        let bytes =
            read_at(&mut file, off, u64::from(entsize) * u64::from(count)).map_err(io_err)?;
        let n = if usize::from(entsize) == standard {
            usize::from(count).min(bytes.len() / standard)
        } else {
            0
        };
        Ok::<_, ProbeError>((bytes, n))
    };
    let (ph_table, n) = table(hdr.e_phoff, hdr.e_phentsize, hdr.e_phnum, phent)?;
    let phdrs = ProgramHeader::parse(&ph_table, 0, n, ctx).unwrap_or_default();
    regions.extend(
        phdrs
            .iter()
            .filter(|p| p.p_type == PT_NOTE)
            .map(|p| (p.p_offset, p.p_filesz, p.p_align)),
    );
    if hdr.e_shoff != 0 && hdr.e_shnum != 0 {
        let (sh_table, n) = table(hdr.e_shoff, hdr.e_shentsize, hdr.e_shnum, shent)?;
        let shdrs = SectionHeader::parse(&sh_table, 0, n, ctx).unwrap_or_default();
        regions.extend(
            shdrs
                .iter()
                .filter(|s| s.sh_type == SHT_NOTE)
                .map(|s| (s.sh_offset, s.sh_size, s.sh_addralign)),
        );
    }
    for (off, size, align) in regions {
        let notes = read_at(&mut file, off, size.min(MAX_NOTE_BYTES)).map_err(io_err)?;
        if let Some(entry) = find_pvh_note(&notes, if align == 8 { 8 } else { 4 }) {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// Reads up to `len` bytes at `off` (fewer at end of file).
fn read_at(file: &mut File, off: u64, len: u64) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(off))?;
    let mut buf = Vec::new();
    file.take(len.min(MAX_NOTE_BYTES)).read_to_end(&mut buf)?;
    Ok(buf)
}

fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// Walks an ELF note area (namesz, descsz, type, name, desc; each padded to
/// `align`) for the "Xen" PHYS32_ENTRY note.
fn find_pvh_note(notes: &[u8], align: usize) -> Option<u64> {
    let mut pos = 0usize;
    let rd = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(notes.get(at..at + 4)?.try_into().ok()?))
    };
    while pos + 12 <= notes.len() {
        let namesz = rd(pos)? as usize;
        let descsz = rd(pos + 4)? as usize;
        let ntype = rd(pos + 8)?;
        let name_at = pos + 12;
        let desc_at = name_at.checked_add(align_up(namesz, align))?;
        let next = desc_at.checked_add(align_up(descsz, align))?;
        let name = notes.get(name_at..name_at + namesz)?;
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" {
            let desc = notes.get(desc_at..desc_at + descsz)?;
            return match descsz {
                4 => Some(u64::from(u32::from_le_bytes(desc.try_into().ok()?))),
                8 => Some(u64::from_le_bytes(desc.try_into().ok()?)),
                _ => None,
            };
        }
        pos = next;
    }
    None
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::bzimage::testutil::fake_bzimage;

    fn note(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((name.len() as u32).to_le_bytes());
        v.extend((desc.len() as u32).to_le_bytes());
        v.extend(ntype.to_le_bytes());
        v.extend(name);
        v.resize(align_up(v.len(), 4), 0);
        v.extend(desc);
        v.resize(align_up(v.len(), 4), 0);
        v
    }

    /// A minimal ELF64 with one PT_NOTE segment: a GNU build-id note, then
    /// (if `pvh` is set) the Xen PHYS32_ENTRY note, like a real vmlinux.
    fn fake_elf64(pvh: Option<u64>) -> Vec<u8> {
        let mut notes = note(b"GNU\0", 3, &[0xab; 20]);
        notes.extend(note(b"Xen\0", 6, b"linux\0\0\0")); // XEN_ELFNOTE_GUEST_OS
        if let Some(entry) = pvh {
            notes.extend(note(
                b"Xen\0",
                XEN_ELFNOTE_PHYS32_ENTRY,
                &entry.to_le_bytes(),
            ));
        }
        let phoff = 64u64;
        let notes_off = phoff + 56;
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // ELFCLASS64
        e[5] = 1; // little-endian
        e[6] = 1;
        e[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        e[0x20..0x28].copy_from_slice(&phoff.to_le_bytes());
        e[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        ph[0x08..0x10].copy_from_slice(&notes_off.to_le_bytes());
        ph[0x20..0x28].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        ph[0x28..0x30].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        ph[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
        e.extend(ph);
        e.extend(notes);
        // Kernel text stand-in: compressible but not trivial.
        e.extend((0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 & 0x3f));
        e
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut out = match c {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Lzma => {
                let opts = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
                let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
                let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => {
                ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Lz4 => {
                let mut v = 0x184c_2102u32.to_le_bytes().to_vec();
                // Small blocks so the test crosses block boundaries.
                for chunk in data.chunks(64 * 1024) {
                    let b = lz4_flex::block::compress(chunk);
                    v.extend((b.len() as u32).to_le_bytes());
                    v.extend(b);
                }
                v
            }
            Compression::Lzo => b"\x89LZO\x00\r\n\x1a\n".to_vec(),
        };
        // Like the kernel build's size_append: the uncompressed size follows.
        out.extend((data.len() as u32).to_le_bytes());
        out
    }

    /// Every format but lzo, which is recognised and never decoded.
    fn decodable() -> impl Iterator<Item = Compression> {
        crate::compression::ALL
            .into_iter()
            .filter(|c| *c != Compression::Lzo)
    }

    #[test]
    fn every_supported_payload_decompresses_to_the_original_elf() {
        let elf = fake_elf64(Some(0x100_0000));
        let dir = tempfile::tempdir().unwrap();
        for c in decodable() {
            let img = dir.path().join(format!("bzImage-{}", c.as_str()));
            fs::write(&img, fake_bzimage(Some("6.1.0"), 27, &compress(c, &elf))).unwrap();
            let out = dir.path().join(format!("vmlinux-{}", c.as_str()));
            let info =
                extract_vmlinux(&img, &out).unwrap_or_else(|e| panic!("{}: {e:?}", c.as_str()));
            assert_eq!(info.compression, c);
            assert_eq!(info.size, elf.len() as u64, "{}", c.as_str());
            assert_eq!(fs::read(&out).unwrap(), elf, "{}", c.as_str());
            assert_eq!(info.pvh_entry, Some(0x100_0000), "{}", c.as_str());
            assert!(info.pvh());
        }
    }

    #[test]
    fn a_kernel_without_the_pvh_note_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("bzImage");
        fs::write(
            &img,
            fake_bzimage(None, 30, &compress(Compression::Gzip, &fake_elf64(None))),
        )
        .unwrap();
        let info = extract_vmlinux(&img, &dir.path().join("vmlinux")).unwrap();
        assert!(!info.pvh());
    }

    #[test]
    fn a_32_bit_pvh_entry_note_is_read_too() {
        let notes = [
            note(b"GNU\0", 3, &[1; 8]),
            note(b"Xen\0", 18, &0x1234u32.to_le_bytes()),
        ]
        .concat();
        assert_eq!(find_pvh_note(&notes, 4), Some(0x1234));
        assert_eq!(
            find_pvh_note(&notes[..notes.len() - 2], 4),
            None,
            "truncated desc"
        );
        assert_eq!(
            find_pvh_note(&note(b"Xen\0", 17, &[0; 4]), 4),
            None,
            "other note type"
        );
        assert_eq!(
            find_pvh_note(&note(b"XEN\0", 18, &[0; 4]), 4),
            None,
            "other owner"
        );
    }

    #[test]
    fn the_pvh_note_is_read_from_the_elf_headers_and_odd_files_are_not_elves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        fs::write(&path, fake_elf64(Some(0x100_0000))).unwrap();
        assert_eq!(pvh_entry_of(&path).unwrap(), Some(0x100_0000));
        fs::write(&path, fake_elf64(None)).unwrap();
        assert_eq!(pvh_entry_of(&path).unwrap(), None);
        // A program header table cut short: no notes to read, not an error.
        let mut cut = fake_elf64(Some(0x100_0000));
        cut.truncate(64 + 20);
        fs::write(&path, &cut).unwrap();
        assert_eq!(pvh_entry_of(&path).unwrap(), None);
        for (bytes, why) in [
            (
                {
                    let mut e = fake_elf64(None);
                    e[5] = 2;
                    e
                },
                "little-endian",
            ),
            (
                {
                    let mut e = fake_elf64(None);
                    e[4] = 3;
                    e
                },
                "ELF class",
            ),
            (b"#!/bin/sh\n".to_vec(), "no ELF magic"),
        ] {
            fs::write(&path, bytes).unwrap();
            match pvh_entry_of(&path) {
                Err(ProbeError::NotElf { reason, .. }) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn lzo_and_unknown_payloads_are_unsupported_and_leave_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vmlinux");
        for (payload, want) in [
            (compress(Compression::Lzo, b"x"), "lzo"),
            (b"\x00\x01\x02\x03garbage".to_vec(), "unknown"),
        ] {
            let img = dir.path().join("bzImage");
            fs::write(&img, fake_bzimage(None, 30, &payload)).unwrap();
            match extract_vmlinux(&img, &out) {
                Err(ProbeError::UnsupportedCompression { format, .. }) => {
                    assert!(format.contains(want))
                }
                other => panic!("expected UnsupportedCompression, got {other:?}"),
            }
            assert!(!out.exists());
        }
    }

    #[test]
    fn a_corrupt_payload_is_an_error_and_the_partial_output_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vmlinux");
        for c in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
            let mut payload = compress(c, &fake_elf64(Some(1)));
            let mid = payload.len() / 2;
            payload.truncate(mid);
            let img = dir.path().join("bzImage");
            fs::write(&img, fake_bzimage(None, 30, &payload)).unwrap();
            let err = extract_vmlinux(&img, &out).unwrap_err();
            assert!(
                matches!(err, ProbeError::PayloadDecompress { .. }),
                "{}: {err:?}",
                c.as_str()
            );
            assert!(!out.exists(), "{}", c.as_str());
        }
    }

    #[test]
    fn a_payload_that_is_not_an_elf_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("bzImage");
        fs::write(
            &img,
            fake_bzimage(None, 30, &compress(Compression::Gzip, b"not an elf at all")),
        )
        .unwrap();
        let out = dir.path().join("vmlinux");
        assert!(matches!(
            extract_vmlinux(&img, &out),
            Err(ProbeError::NotElf { .. })
        ));
        assert!(!out.exists());
    }

    #[test]
    fn a_file_that_is_not_a_bzimage_is_rejected_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("notakernel");
        fs::write(&img, vec![0u8; 4096]).unwrap();
        match extract_vmlinux(&img, &dir.path().join("vmlinux")) {
            Err(ProbeError::NotBzImage { reason, .. }) => assert!(reason.contains("HdrS")),
            other => panic!("expected NotBzImage, got {other:?}"),
        }
        let short = dir.path().join("short");
        fs::write(&short, b"MZ").unwrap();
        assert!(matches!(
            extract_vmlinux(&short, &dir.path().join("vmlinux")),
            Err(ProbeError::NotBzImage { .. })
        ));
    }

    /// The compression the kernel's build config chose for its payload.
    fn configured_compression(k: &crate::testhost::HostKernel) -> Compression {
        const SYMBOLS: [(&str, Compression); 7] = [
            ("CONFIG_KERNEL_GZIP", Compression::Gzip),
            ("CONFIG_KERNEL_XZ", Compression::Xz),
            ("CONFIG_KERNEL_ZSTD", Compression::Zstd),
            ("CONFIG_KERNEL_LZMA", Compression::Lzma),
            ("CONFIG_KERNEL_BZIP2", Compression::Bzip2),
            ("CONFIG_KERNEL_LZ4", Compression::Lz4),
            ("CONFIG_KERNEL_LZO", Compression::Lzo),
        ];
        SYMBOLS
            .iter()
            .find(|(symbol, _)| k.config_has(symbol))
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("{}: no CONFIG_KERNEL_<compression>=y", k.version))
    }

    #[test]
    fn every_host_kernel_extracts_to_an_elf_with_the_configured_compression_and_pvh_entry() {
        let dir = tempfile::tempdir().unwrap();
        for k in crate::testhost::host_kernels() {
            let v = &k.version;
            let out = dir.path().join(format!("vmlinux-{v}"));
            let info = extract_vmlinux(&k.path, &out).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(info.compression, configured_compression(&k), "{v}");
            assert_eq!(info.pvh(), k.config_has("CONFIG_PVH"), "{v}: PVH note");
            assert_eq!(read_head(&out, 4).unwrap(), b"\x7fELF", "{v}");
            assert_eq!(info.size, fs::metadata(&out).unwrap().len(), "{v}");
            // The decompressed kernel is much bigger than the compressed image.
            assert!(
                info.size > fs::metadata(&k.path).unwrap().len() * 2,
                "{v}: {} bytes",
                info.size
            );
            fs::remove_file(&out).unwrap();
        }
    }

    /// Boots an extracted vmlinux (the newest host kernel built with PVH)
    /// under qemu (TCG; KVM hangs Debian kernels on these machines) with no
    /// root disk: reaching the kernel's banner and then its "cannot mount
    /// root" panic proves the PVH entry works.
    #[test]
    fn an_extracted_host_kernel_boots_in_qemu_through_pvh() {
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant};
        let qemu = "qemu-system-x86_64";
        if let Err(e) = Command::new(qemu).arg("--version").output() {
            panic!("cannot run {qemu}: {e}; install it (Debian: apt-get install qemu-system-x86)");
        }
        let kernels = crate::testhost::host_kernels();
        let Some(k) = kernels.iter().rev().find(|k| k.config_has("CONFIG_PVH")) else {
            panic!("no host kernel is built with CONFIG_PVH=y: {kernels:?}");
        };
        let dir = tempfile::tempdir().unwrap();
        let vmlinux = dir.path().join("vmlinux");
        assert!(extract_vmlinux(&k.path, &vmlinux).unwrap().pvh());
        let log = dir.path().join("console.log");
        let mut child = Command::new(qemu)
            .args(["-accel", "tcg", "-m", "512", "-no-reboot", "-nographic"])
            .arg("-kernel")
            .arg(&vmlinux)
            .args(["-append", "console=ttyS0 panic=-1"])
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A guard against a hung guest, not a timing assertion.
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let console = fs::read_to_string(&log).unwrap_or_default();
        assert!(status.is_some(), "qemu did not exit; console:\n{console}");
        assert!(
            console.contains(&format!("Linux version {} ", k.version)),
            "console:\n{console}"
        );
        assert!(
            console.contains("Unable to mount root"),
            "console:\n{console}"
        );
    }
}
