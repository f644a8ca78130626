//! The one place that knows compressed formats: [`Compression`], recognised by its first
//! bytes ([`Compression::sniff`]) or a module file's extension
//! ([`Compression::of_module_name`]), and [`decoder`], the decompressing reader. The
//! kernel's payload, its modules and supermin.d inputs (in `supermin-hostfiles`, which
//! accepts gzip and xz only, as supermin does) all go through here.
//!
//! One thing differs between the callers: a kernel payload is one stream followed by the
//! kernel build's size word, so it is read as [`Members::One`]; a file (`cat a.gz b.gz`,
//! a module, a list) may hold several streams back to back, read as [`Members::All`] like
//! `gzip -d` and `xz -d` do.

use std::io::{self, BufRead, Read};

/// A compressed format, as the kernel's `decompress_method()` knows them (lib/decompress.c)
/// and its build writes them (arch/x86/boot/compressed/Makefile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (deflate).
    Gzip,
    /// xz.
    Xz,
    /// zstd.
    Zstd,
    /// lzma "alone" (the xz tools' `--format=lzma`).
    Lzma,
    /// bzip2.
    Bzip2,
    /// lz4 in the kernel's legacy framing (`lz4 -l`).
    Lz4,
    /// lzo (recognised, never decoded).
    Lzo,
}

/// Every format, for [`Compression::from_name`].
pub(crate) const ALL: [Compression; 7] = [
    Compression::Gzip,
    Compression::Xz,
    Compression::Zstd,
    Compression::Lzma,
    Compression::Bzip2,
    Compression::Lz4,
    Compression::Lzo,
];

impl Compression {
    /// The format's usual name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Lzma => "lzma",
            Compression::Bzip2 => "bzip2",
            Compression::Lz4 => "lz4",
            Compression::Lzo => "lzo",
        }
    }

    /// The format [`Compression::as_str`] names.
    pub fn from_name(name: &str) -> Option<Compression> {
        ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Recognises a stream by its first bytes, as the kernel's own
    /// `decompress_method()` does (lib/decompress.c).
    pub fn sniff(magic: &[u8]) -> Option<Compression> {
        const TABLE: &[(&[u8], Compression)] = &[
            (b"\x1f\x8b", Compression::Gzip),
            (b"\x1f\x9e", Compression::Gzip),
            (b"\xfd7zXZ\x00", Compression::Xz),
            (b"\x28\xb5\x2f\xfd", Compression::Zstd),
            (b"\x5d\x00\x00", Compression::Lzma),
            (b"BZh", Compression::Bzip2),
            (b"\x02\x21\x4c\x18", Compression::Lz4),
            (b"\x89LZO", Compression::Lzo),
        ];
        TABLE
            .iter()
            .find(|(m, _)| magic.starts_with(m))
            .map(|(_, c)| *c)
    }

    /// How a kernel module file is compressed, by its name as kmod names them:
    /// `Some(None)` for a plain `.ko`, `None` for a name that is not a module's.
    pub fn of_module_name(name: &str) -> Option<Option<Compression>> {
        if name.ends_with(".ko") {
            Some(None)
        } else if name.ends_with(".ko.xz") {
            Some(Some(Compression::Xz))
        } else if name.ends_with(".ko.gz") {
            Some(Some(Compression::Gzip))
        } else if name.ends_with(".ko.zst") {
            Some(Some(Compression::Zstd))
        } else {
            None
        }
    }
}

/// Whether a decoder stops after the first compressed stream or reads every one that
/// follows (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    /// One stream; what follows it is not read.
    One,
    /// Every stream, back to back, to the end of the input.
    All,
}

/// `input` decompressed as `compression`. zstd with [`Members::All`] (skippable frames
/// allowed) is decoded in memory at once, which suits the modules it is used for. lz4's
/// legacy framing and lzo have no streaming decoder here: an [`io::ErrorKind::Unsupported`]
/// error (the kernel payload's lz4 has its own decoder, in `vmlinux`).
pub fn decoder<'a>(
    compression: Compression,
    mut input: impl BufRead + Send + 'a,
    members: Members,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match (compression, members) {
        (Compression::Gzip, Members::One) => Box::new(flate2::bufread::GzDecoder::new(input)),
        (Compression::Gzip, Members::All) => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        (Compression::Xz, Members::One) => {
            let stream = liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0)
                .map_err(io::Error::other)?;
            Box::new(liblzma::bufread::XzDecoder::new_stream(input, stream))
        }
        (Compression::Xz, Members::All) => {
            Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(input))
        }
        (Compression::Lzma, _) => {
            let stream =
                liblzma::stream::Stream::new_lzma_decoder(u64::MAX).map_err(io::Error::other)?;
            Box::new(liblzma::bufread::XzDecoder::new_stream(input, stream))
        }
        (Compression::Zstd, Members::One) => Box::new(
            ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
        ),
        (Compression::Zstd, Members::All) => {
            let mut data = Vec::new();
            input.read_to_end(&mut data)?;
            Box::new(io::Cursor::new(zstd_decode_all(&data)?))
        }
        (Compression::Bzip2, Members::One) => Box::new(bzip2::bufread::BzDecoder::new(input)),
        (Compression::Bzip2, Members::All) => Box::new(bzip2::bufread::MultiBzDecoder::new(input)),
        (Compression::Lz4 | Compression::Lzo, _) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("no streaming {} decoder", compression.as_str()),
            ))
        }
    })
}

/// Decodes every zstd frame in `data`, skipping skippable frames (a `.ko.zst` module may
/// hold more than one frame).
fn zstd_decode_all(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut input = data;
    let mut out = Vec::with_capacity(data.len() * 3);
    while input.len() >= 4 {
        let magic = u32::from_le_bytes([input[0], input[1], input[2], input[3]]);
        if magic & 0xffff_fff0 == 0x184d_2a50 {
            let len = input
                .get(4..8)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "truncated skippable frame")
                })?;
            input = input.get(8 + len..).ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "truncated skippable frame")
            })?;
            continue;
        }
        let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut input)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        dec.read_to_end(&mut out)?;
    }
    if !input.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "trailing bytes after the last zstd frame",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const TEXT: &[u8] = b"the same bytes, compressed and back\n";

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn bzip2(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    fn decode(c: Compression, data: &[u8], members: Members) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(c, data, members)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn each_format_is_recognised_by_its_magic() {
        for (c, data) in [
            (Compression::Gzip, gzip(TEXT)),
            (Compression::Xz, xz(TEXT)),
            (Compression::Bzip2, bzip2(TEXT)),
            (Compression::Zstd, zstd(TEXT)),
        ] {
            assert_eq!(Compression::sniff(&data), Some(c), "{}", c.as_str());
        }
        assert_eq!(Compression::sniff(b"\x89LZO\x00"), Some(Compression::Lzo));
        assert_eq!(Compression::sniff(b"bash\n"), None);
        assert_eq!(Compression::sniff(b""), None);
    }

    #[test]
    fn every_member_is_read_or_only_the_first() {
        for (c, enc) in [
            (Compression::Gzip, gzip as fn(&[u8]) -> Vec<u8>),
            (Compression::Xz, xz),
            (Compression::Bzip2, bzip2),
            (Compression::Zstd, zstd),
        ] {
            let mut two = enc(b"one\n");
            two.extend(enc(b"two\n"));
            assert_eq!(
                decode(c, &two, Members::All).unwrap(),
                b"one\ntwo\n",
                "{c:?}"
            );
            assert_eq!(decode(c, &enc(TEXT), Members::One).unwrap(), TEXT, "{c:?}");
        }
        // A kernel payload: one stream, then the size word, which is not read.
        let mut payload = gzip(TEXT);
        payload.extend(123u32.to_le_bytes());
        assert_eq!(
            decode(Compression::Gzip, &payload, Members::One).unwrap(),
            TEXT
        );
    }

    #[test]
    fn zstd_skippable_frames_are_skipped_and_trailing_bytes_refused() {
        let mut data = 0x184d_2a50u32.to_le_bytes().to_vec();
        data.extend(3u32.to_le_bytes());
        data.extend(b"abc");
        data.extend(zstd(TEXT));
        assert_eq!(
            decode(Compression::Zstd, &data, Members::All).unwrap(),
            TEXT
        );
        data.extend(b"xy");
        assert!(decode(Compression::Zstd, &data, Members::All).is_err());
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        for (c, data) in [
            (Compression::Gzip, gzip(TEXT)),
            (Compression::Xz, xz(TEXT)),
            (Compression::Bzip2, bzip2(TEXT)),
            (Compression::Zstd, zstd(TEXT)),
        ] {
            let cut = &data[..data.len() / 2];
            assert!(decode(c, cut, Members::All).is_err(), "{c:?}");
        }
    }

    #[test]
    fn lz4_and_lzo_have_no_streaming_decoder() {
        for c in [Compression::Lz4, Compression::Lzo] {
            let err = decoder(c, &b""[..], Members::All).err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        }
    }

    #[test]
    fn names_read_back() {
        for c in ALL {
            assert_eq!(Compression::from_name(c.as_str()), Some(c));
        }
        assert_eq!(Compression::from_name("zip"), None);
    }

    #[test]
    fn module_names_say_their_compression() {
        assert_eq!(Compression::of_module_name("ext4.ko"), Some(None));
        assert_eq!(
            Compression::of_module_name("ext4.ko.xz"),
            Some(Some(Compression::Xz))
        );
        assert_eq!(
            Compression::of_module_name("ext4.ko.gz"),
            Some(Some(Compression::Gzip))
        );
        assert_eq!(
            Compression::of_module_name("ext4.ko.zst"),
            Some(Some(Compression::Zstd))
        );
        assert_eq!(Compression::of_module_name("ext4.ko.bz2"), None);
    }
}
