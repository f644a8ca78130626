//! Reading the x86 boot protocol setup header of a bzImage.
//!
//! Two facts come from it (Documentation/arch/x86/boot.rst): the version
//! string the kernel carries ("HdrS" at 0x202, protocol version at 0x206,
//! `kernel_version` pointer at 0x20e, relative to 0x200), which is more
//! trustworthy than a file name; and where the compressed payload lies
//! (`setup_sects` at 0x1f1, `payload_offset`/`payload_length` at 0x248/0x24c
//! from the start of the protected-mode part, protocol >= 2.08).
//!
//! Only the first 64 KiB + 0x400 bytes are ever read: the version pointer is a
//! 16-bit offset, so the string always lies inside that window.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::ProbeError;

const HDRS_OFFSET: usize = 0x202;
const PROTOCOL_OFFSET: usize = 0x206;
const VERSION_PTR_OFFSET: usize = 0x20e;
const SETUP_SECTS_OFFSET: usize = 0x1f1;
const PAYLOAD_OFFSET_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH_OFFSET: usize = 0x24c;
/// The longest version string we accept (supermin and file(1) read 132 bytes).
const VERSION_MAX: usize = 132;
/// Enough for any `kernel_version` pointer plus the string it points at.
const HEADER_WINDOW: usize = 0x200 + 0xffff + VERSION_MAX + 1;

fn le16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn le32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// Reads up to `limit` bytes from the start of `path`, fewer if the file is shorter.
pub(crate) fn read_head(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut buf = Vec::with_capacity(limit.min(1 << 20));
    file.take(limit as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The boot protocol version, if `head` starts with an x86 setup header.
fn protocol(head: &[u8]) -> Option<u16> {
    if head.get(HDRS_OFFSET..HDRS_OFFSET + 4)? != b"HdrS" {
        return None;
    }
    le16(head, PROTOCOL_OFFSET)
}

/// The version string from a bzImage's first bytes, or `None` when `head`
/// is not a bzImage, is truncated, or carries no plausible version.
pub fn version_from_header(head: &[u8]) -> Option<String> {
    // The kernel_version field exists from boot protocol 2.00 (0x200); file(1)
    // and supermin require > 0x1ff too.
    if protocol(head)? < 0x200 {
        return None;
    }
    let ptr = le16(head, VERSION_PTR_OFFSET)?;
    if ptr == 0 {
        return None;
    }
    let start = usize::from(ptr) + 0x200;
    let window = head.get(start..head.len().min(start + VERSION_MAX))?;
    let end = window
        .iter()
        .position(|&b| b == 0 || b.is_ascii_whitespace())?;
    let v = &window[..end];
    // A real version starts with a digit and is printable ASCII; anything else
    // means the pointer was garbage.
    if v.first().is_some_and(u8::is_ascii_digit) && v.iter().all(u8::is_ascii_graphic) {
        String::from_utf8(v.to_vec()).ok()
    } else {
        None
    }
}

/// Reads the version string embedded in a bzImage. `Ok(None)` when the file
/// is readable but is not a bzImage (or is truncated, or garbage); `Err` only
/// when the file cannot be opened or read.
pub fn bzimage_version(path: &Path) -> Result<Option<String>, ProbeError> {
    let head = read_head(path, HEADER_WINDOW).map_err(|source| io_error(path, source))?;
    Ok(version_from_header(&head))
}

pub(crate) fn io_error(path: &Path, source: io::Error) -> ProbeError {
    if source.kind() == io::ErrorKind::PermissionDenied {
        ProbeError::KernelUnreadable {
            path: path.to_path_buf(),
            source,
        }
    } else {
        ProbeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where the compressed kernel lies inside a bzImage file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLocation {
    /// Byte offset of the payload from the start of the file.
    pub offset: u64,
    /// Its length in bytes.
    pub length: u64,
}

/// Finds the payload from the setup header in `head` (the file's first bytes).
/// Fails with a reason when the header is missing, too old or inconsistent
/// with `file_len`.
pub fn payload_location(head: &[u8], file_len: u64) -> Result<PayloadLocation, String> {
    let proto = protocol(head).ok_or("no \"HdrS\" setup header at 0x202")?;
    if proto < 0x208 {
        return Err(format!(
            "boot protocol {}.{:02} predates payload_offset (needs 2.08)",
            proto >> 8,
            proto & 0xff
        ));
    }
    let sects = *head
        .get(SETUP_SECTS_OFFSET)
        .ok_or("header truncated before setup_sects")?;
    // A setup_sects of 0 means 4, for compatibility with ancient loaders.
    let sects = if sects == 0 { 4 } else { u64::from(sects) };
    let pm_start = (sects + 1) * 512;
    let off = le32(head, PAYLOAD_OFFSET_OFFSET).ok_or("header truncated before payload_offset")?;
    let len = le32(head, PAYLOAD_LENGTH_OFFSET).ok_or("header truncated before payload_length")?;
    if len == 0 {
        return Err("payload_length is 0".into());
    }
    let offset = pm_start + u64::from(off);
    let length = u64::from(len);
    if offset + length > file_len {
        return Err(format!(
            "payload at {offset}+{length} runs past the end of the file ({file_len} bytes)"
        ));
    }
    Ok(PayloadLocation { offset, length })
}

/// The setup header bytes needed by [`payload_location`].
pub(crate) const SETUP_HEADER_LEN: usize = 0x268;

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod testutil {
    /// A fake bzImage: a setup header carrying `version` (if any) and a
    /// payload placed after `setup_sects` sectors.
    pub fn fake_bzimage(version: Option<&str>, setup_sects: u8, payload: &[u8]) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            usize::from(setup_sects)
        };
        let pm_start = (sects + 1) * 512;
        let mut img = vec![0u8; pm_start];
        img[0x1f1] = setup_sects;
        img[0x1fe] = 0x55;
        img[0x1ff] = 0xaa;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        if let Some(v) = version {
            // Like real kernels, the string sits in the setup code, here at 0x300.
            let at = 0x300;
            let s = format!("{v} (builder@example) #1 SMP Debian");
            img[at..at + s.len()].copy_from_slice(s.as_bytes());
            img[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
        }
        // Some padding code before the payload, like the real decompressor stub.
        let payload_offset = 0x40usize;
        img.resize(pm_start + payload_offset, 0x90);
        img[0x248..0x24c].copy_from_slice(&(payload_offset as u32).to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(payload);
        // The stub appends more code and data after the payload.
        img.extend_from_slice(&[0xcc; 64]);
        img
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::testutil::fake_bzimage;
    use super::*;

    #[test]
    fn version_is_read_from_the_header_pointer() {
        let img = fake_bzimage(Some("6.1.0-56-amd64"), 30, b"payload");
        assert_eq!(version_from_header(&img).as_deref(), Some("6.1.0-56-amd64"));
    }

    #[test]
    fn a_file_without_hdrs_has_no_version() {
        let mut img = fake_bzimage(Some("6.1.0"), 30, b"");
        img[0x202] = b'X';
        assert_eq!(version_from_header(&img), None);
    }

    #[test]
    fn old_boot_protocols_have_no_version() {
        let mut img = fake_bzimage(Some("2.4.0"), 30, b"");
        img[0x206..0x208].copy_from_slice(&0x01ffu16.to_le_bytes());
        assert_eq!(version_from_header(&img), None);
    }

    #[test]
    fn truncated_headers_give_no_version_and_do_not_panic() {
        let img = fake_bzimage(Some("6.1.0-56-amd64"), 30, b"");
        for len in [0, 1, 0x201, 0x204, 0x207, 0x20f, 0x300, 0x305] {
            assert_eq!(version_from_header(&img[..len]), None, "length {len}");
        }
        // Cut inside the version string: no terminator seen, so no version.
        assert_eq!(version_from_header(&img[..0x308]), None);
    }

    #[test]
    fn a_zero_pointer_or_garbage_string_gives_no_version() {
        let mut img = fake_bzimage(Some("6.1.0"), 30, b"");
        img[0x20e..0x210].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(version_from_header(&img), None);

        let mut img = fake_bzimage(Some("6.1.0"), 30, b"");
        img[0x300] = 0xff;
        assert_eq!(version_from_header(&img), None);

        let mut img = fake_bzimage(None, 30, b"");
        img[0x20e..0x210].copy_from_slice(&0x0100u16.to_le_bytes());
        assert_eq!(version_from_header(&img), None, "points at zeros");
    }

    #[test]
    fn random_garbage_never_panics() {
        // A fixed xorshift stream: reproducible, and covers many byte patterns.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..200 {
            let len = (round * 97) % 2000;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            if round % 2 == 0 && len > 0x206 {
                buf[0x202..0x206].copy_from_slice(b"HdrS");
            }
            let _ = version_from_header(&buf);
            let _ = payload_location(&buf, len as u64);
        }
    }

    #[test]
    fn bzimage_version_reads_a_file_and_reports_non_kernels_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinuz");
        std::fs::write(&k, fake_bzimage(Some("6.12.117+deb12-amd64"), 27, b"x")).unwrap();
        assert_eq!(
            bzimage_version(&k).unwrap().as_deref(),
            Some("6.12.117+deb12-amd64")
        );

        let t = dir.path().join("text");
        std::fs::write(&t, b"#!/bin/sh\necho not a kernel\n").unwrap();
        assert_eq!(bzimage_version(&t).unwrap(), None);

        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(bzimage_version(&empty).unwrap(), None);

        assert!(matches!(
            bzimage_version(&dir.path().join("absent")),
            Err(ProbeError::Io { .. })
        ));
    }

    #[test]
    fn payload_is_located_after_the_setup_sectors() {
        for sects in [0u8, 1, 30] {
            let img = fake_bzimage(None, sects, b"PAYLOAD");
            let loc = payload_location(&img, img.len() as u64).unwrap();
            let at = loc.offset as usize;
            assert_eq!(
                &img[at..at + loc.length as usize],
                b"PAYLOAD",
                "setup_sects {sects}"
            );
        }
    }

    #[test]
    fn payload_past_end_of_file_is_rejected() {
        let img = fake_bzimage(None, 30, b"PAYLOAD");
        let err = payload_location(&img, (img.len() - 70) as u64).unwrap_err();
        assert!(err.contains("past the end"), "{err}");
    }

    #[test]
    fn pre_2_08_headers_have_no_payload_fields() {
        let mut img = fake_bzimage(None, 30, b"PAYLOAD");
        img[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
        assert!(payload_location(&img, img.len() as u64)
            .unwrap_err()
            .contains("2.08"));
    }

    #[test]
    fn every_installed_host_kernel_carries_its_file_name_version_in_the_header() {
        for k in crate::testhost::host_kernels() {
            assert_eq!(
                bzimage_version(&k.path).unwrap().as_deref(),
                Some(k.version.as_str()),
                "{}",
                k.path.display()
            );
        }
    }
}
