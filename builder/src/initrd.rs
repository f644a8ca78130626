//! The initrd writer: a newc ("070701") cpio archive holding the static init, the
//! kernel modules it loads and the list of those modules in load order.
//!
//! The layout is our own contract with `supermin-init` (libguestfs never looks inside):
//!
//! ```text
//! /dev/                      the kernel mounts nothing here; init mounts devtmpfs on it
//! /dev/console               c 5:1, so PID 1 has a console even if the kernel's built-in
//!                            initramfs lacks one
//! /init                      the static init, mode 0755
//! /lib/modules/<name>.ko     each module, already decompressed by the caller
//! /modules                   the module paths, one per line, in load order (may be empty);
//!                            `PATH preload [when=scsi-device]`: a module the root would
//!                            load itself (see `LoadWhen`)
//! /proc/ /root/ /sys/        mount points
//! ```
//!
//! The archive is written in one pass, in a fixed entry order, with inode numbers counted
//! from 1 and one mtime for every entry (0, or `SOURCE_DATE_EPOCH`), so the same inputs give
//! the same bytes. It is not compressed: the kernel unpacks a plain archive fastest, and the
//! modules in it are few (a gzip or zstd mode once here was never used, and went).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// newc header magic; the kernel's initramfs unpacker accepts this and "070702" (with a
/// checksum that it verifies), nothing else.
const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Each header is the magic and 13 fields of 8 hex digits.
const NEWC_HEADER_LEN: usize = 6 + 13 * 8;
const TRAILER_NAME: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// Where the init finds the module list and the modules (see the module docs).
pub const MODULE_LIST_PATH: &str = "/modules";
/// Where the modules are, one `NAME.ko` each.
pub const MODULE_DIR: &str = "/lib/modules";

/// One kernel module for the initrd. `name` is the module's name without `.ko`
/// (a trailing `.ko` is tolerated and dropped); `data` is the decompressed ELF object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitrdModule {
    /// The module's name.
    pub name: String,
    /// The decompressed ELF object.
    pub data: Vec<u8>,
    /// When the init loads it.
    pub when: LoadWhen,
}

/// When the init loads a listed module (written after its path in `/modules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadWhen {
    /// On every boot (the init still skips a driver none of whose devices is present).
    #[default]
    Always,
    /// A module the root would load itself on every boot (`preload`): the init loads it
    /// first, unless the kernel command line sets its parameters or blacklists it (then
    /// the root's modprobe, which applies those, does).
    Preload,
    /// The same for a module the root's udev would load for each SCSI device (`preload
    /// when=scsi-device`): only when the VM has one.
    PreloadScsiDevice,
}

/// Why a cpio entry could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// An entry name that is not a clean path.
    #[error(
        "cpio entry name {name:?} is not a clean path (empty, `.`/`..` component or NUL byte)"
    )]
    InvalidName {
        /// The entry's name.
        name: String,
    },
    /// An entry larger than newc can describe.
    #[error("cpio entry {name:?} is {size} bytes; newc stores sizes in 32 bits (at most 4 GiB)")]
    TooLarge {
        /// The entry's name.
        name: String,
        /// Its size.
        size: u64,
    },
    /// An entry's reader gave fewer bytes than promised.
    #[error("cpio entry {name:?}: the reader gave {actual} bytes, the header promised {expected}")]
    ShortRead {
        /// The entry's name.
        name: String,
        /// What the header promised.
        expected: u32,
        /// What the reader gave.
        actual: u64,
    },
    /// Writing an entry failed.
    #[error("writing cpio entry {name:?} failed")]
    Io {
        /// The entry's name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Why an initrd could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// A module name the initrd cannot store.
    #[error(
        "module name {name:?} cannot be stored in the initrd: it must be non-empty and \
         contain no `/`, white space or NUL"
    )]
    BadModuleName {
        /// The name.
        name: String,
    },
    /// A module listed twice.
    #[error("module {name:?} is listed twice; each module can be loaded only once")]
    DuplicateModule {
        /// The module.
        name: String,
    },
    /// `SOURCE_DATE_EPOCH` outside newc's 32-bit times.
    #[error(
        "SOURCE_DATE_EPOCH={value:?} is not a number of seconds between 0 and 4294967295; \
         unset it or set it to a Unix time"
    )]
    BadSourceDateEpoch {
        /// Its value.
        value: String,
    },
    /// The initrd file cannot be created.
    #[error("cannot create the initrd {path}")]
    Create {
        /// The initrd.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry could not be written.
    #[error("building the initrd {path} failed")]
    Cpio {
        /// The initrd.
        path: PathBuf,
        /// The cause.
        #[source]
        source: CpioError,
    },
    /// The initrd file cannot be written.
    #[error("writing the initrd {path} failed (is the disk full?)")]
    Write {
        /// The initrd.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl InitrdError {
    /// The way out, where the message and its cause do not say it. None so far: each
    /// variant that has one says it in its message; this is where a new one goes.
    pub fn hint(&self) -> Option<String> {
        None
    }
}

/// A streaming newc writer. Entries are written in the order the caller adds them; the
/// writer numbers inodes from 1 and stamps every entry with the same `mtime`, so output
/// depends only on what is added. Parent directories are not created implicitly.
pub struct CpioWriter<W: Write> {
    inner: W,
    next_ino: u32,
    mtime: u32,
    written: u64,
}

/// The fixed part of one newc header.
struct Header {
    mode: u32,
    nlink: u32,
    size: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

impl<W: Write> CpioWriter<W> {
    /// A writer into `inner`; every entry gets `mtime`.
    pub fn new(inner: W, mtime: u32) -> Self {
        CpioWriter {
            inner,
            next_ino: 1,
            mtime,
            written: 0,
        }
    }

    /// A directory; `perm` is the permission bits (e.g. 0o755).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        let name = entry_name(path)?;
        let header = Header {
            mode: S_IFDIR | (perm & 0o7777),
            nlink: 2,
            size: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        self.entry(name, &header, &mut io::empty())
    }

    /// A regular file whose contents are in memory.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.file_from_reader(path, perm, data.len() as u64, &mut &data[..])
    }

    /// A regular file of `size` bytes read from `reader`, so large files need not be held
    /// in memory. The reader must yield exactly `size` bytes.
    pub fn file_from_reader(
        &mut self,
        path: &str,
        perm: u32,
        size: u64,
        reader: &mut dyn Read,
    ) -> Result<(), CpioError> {
        let name = entry_name(path)?;
        let size32 = u32::try_from(size).map_err(|_| CpioError::TooLarge {
            name: name.to_owned(),
            size,
        })?;
        let header = Header {
            mode: S_IFREG | (perm & 0o7777),
            nlink: 1,
            size: size32,
            rdev_major: 0,
            rdev_minor: 0,
        };
        self.entry(name, &header, reader)
    }

    /// A character device node.
    pub fn char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let name = entry_name(path)?;
        let header = Header {
            mode: S_IFCHR | (perm & 0o7777),
            nlink: 1,
            size: 0,
            rdev_major: major,
            rdev_minor: minor,
        };
        self.entry(name, &header, &mut io::empty())
    }

    /// Writes the `TRAILER!!!` entry and returns the inner writer (not flushed).
    pub fn finish(mut self) -> Result<W, CpioError> {
        // The trailer is all zeros but nlink, as GNU cpio and the kernel's gen_init_cpio write it.
        let header = Header {
            mode: 0,
            nlink: 1,
            size: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        self.write_header(TRAILER_NAME, 0, 0, &header)?;
        Ok(self.inner)
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn entry(&mut self, name: &str, header: &Header, data: &mut dyn Read) -> Result<(), CpioError> {
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        self.write_header(name, ino, self.mtime, header)?;
        let copied = io::copy(&mut data.take(u64::from(header.size)), &mut self.inner)
            .map_err(|source| io_error(name, source))?;
        if copied != u64::from(header.size) {
            return Err(CpioError::ShortRead {
                name: name.to_owned(),
                expected: header.size,
                actual: copied,
            });
        }
        self.written += copied;
        self.pad(name)
    }

    fn write_header(
        &mut self,
        name: &str,
        ino: u32,
        mtime: u32,
        header: &Header,
    ) -> Result<(), CpioError> {
        let mut buf = Vec::with_capacity(NEWC_HEADER_LEN + name.len() + 1);
        buf.extend_from_slice(NEWC_MAGIC);
        // namesize counts the terminating NUL.
        let namesize = u32::try_from(name.len() + 1).map_err(|_| CpioError::TooLarge {
            name: name.to_owned(),
            size: name.len() as u64 + 1,
        })?;
        let fields = [
            ino,
            header.mode,
            0, // uid: root
            0, // gid: root
            header.nlink,
            mtime,
            header.size,
            0, // devmajor of the archived file system: meaningless here
            0, // devminor
            header.rdev_major,
            header.rdev_minor,
            namesize,
            0, // check: only used by the "070702" format
        ];
        for field in fields {
            buf.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        self.inner
            .write_all(&buf)
            .map_err(|source| io_error(name, source))?;
        self.written += buf.len() as u64;
        self.pad(name)
    }

    /// newc aligns each header and each file's data to 4 bytes from the archive's start.
    fn pad(&mut self, name: &str) -> Result<(), CpioError> {
        let padding = (4 - (self.written % 4) as usize) % 4;
        self.inner
            .write_all(&[0u8; 3][..padding])
            .map_err(|source| io_error(name, source))?;
        self.written += padding as u64;
        Ok(())
    }
}

fn io_error(name: &str, source: io::Error) -> CpioError {
    CpioError::Io {
        name: name.to_owned(),
        source,
    }
}

/// Archive names are relative ("lib/modules/x.ko"), as the kernel's own gen_init_cpio
/// writes them; a leading `/` is accepted for convenience and dropped.
fn entry_name(path: &str) -> Result<&str, CpioError> {
    let name = path.trim_start_matches('/');
    let clean = !name.is_empty()
        && !name.contains('\0')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if clean {
        Ok(name)
    } else {
        Err(CpioError::InvalidName {
            name: path.to_owned(),
        })
    }
}

/// The mtime stamped on every entry: `SOURCE_DATE_EPOCH` (parsed once, by the binary)
/// when set, else 0. newc stores 32 bits.
pub fn initrd_mtime(epoch: Option<i64>) -> Result<u32, InitrdError> {
    match epoch {
        None => Ok(0),
        Some(secs) => u32::try_from(secs).map_err(|_| InitrdError::BadSourceDateEpoch {
            value: secs.to_string(),
        }),
    }
}

/// The path a module is stored at inside the initrd, and listed under in `/modules`.
pub fn module_path(name: &str) -> String {
    let name = name.strip_suffix(".ko").unwrap_or(name);
    format!("{MODULE_DIR}/{name}.ko")
}

/// Writes the whole initrd into `w`: directories, device node, `/init`, `/modules`, then
/// the modules in load order.
pub fn write_initrd_cpio<W: Write>(
    w: W,
    mtime: u32,
    init: &[u8],
    modules: &[InitrdModule],
) -> Result<W, InitrdError> {
    let mut list = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for module in modules {
        let name = module.name.strip_suffix(".ko").unwrap_or(&module.name);
        if name.is_empty() || name.contains(['/', '\n', '\0', ' ', '\t', '\r']) {
            return Err(InitrdError::BadModuleName {
                name: module.name.clone(),
            });
        }
        if !seen.insert(name) {
            return Err(InitrdError::DuplicateModule {
                name: module.name.clone(),
            });
        }
        list.push_str(&module_path(name));
        match module.when {
            LoadWhen::Always => {}
            LoadWhen::Preload => list.push_str(" preload"),
            LoadWhen::PreloadScsiDevice => list.push_str(" preload when=scsi-device"),
        }
        list.push('\n');
    }

    let cpio = |source| InitrdError::Cpio {
        path: PathBuf::from("<initrd>"),
        source,
    };
    let mut cpio_w = CpioWriter::new(w, mtime);
    (|| {
        cpio_w.dir("dev", 0o755)?;
        cpio_w.char_device("dev/console", 0o600, 5, 1)?;
        cpio_w.file("init", 0o755, init)?;
        cpio_w.dir("lib", 0o755)?;
        cpio_w.dir("lib/modules", 0o755)?;
        cpio_w.file(MODULE_LIST_PATH, 0o644, list.as_bytes())?;
        cpio_w.dir("proc", 0o755)?;
        cpio_w.dir("root", 0o700)?;
        cpio_w.dir("sys", 0o755)?;
        for module in modules {
            cpio_w.file(&module_path(&module.name), 0o644, &module.data)?;
        }
        Ok(())
    })()
    .map_err(cpio)?;
    cpio_w.finish().map_err(cpio)
}

/// Writes the initrd to `out` (created or truncated). Every entry gets `mtime` (see
/// [`initrd_mtime`]), so the same inputs give the same file.
pub fn write_initrd(
    out: &Path,
    init: &[u8],
    modules: &[InitrdModule],
    mtime: u32,
) -> Result<(), InitrdError> {
    let with_path = |err: InitrdError| match err {
        InitrdError::Cpio { source, .. } => InitrdError::Cpio {
            path: out.to_owned(),
            source,
        },
        other => other,
    };
    let write_err = |source| InitrdError::Write {
        path: out.to_owned(),
        source,
    };
    let file = File::create(out).map_err(|source| InitrdError::Create {
        path: out.to_owned(),
        source,
    })?;
    let buffered = BufWriter::with_capacity(1 << 20, file);
    let buffered = write_initrd_cpio(buffered, mtime, init, modules).map_err(with_path)?;
    // Durability (fsync before publishing) is the caller's decision, not the writer's.
    buffered
        .into_inner()
        .map_err(|err| write_err(err.into_error()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// One parsed newc entry, for checking archives written here.
    #[derive(Debug, PartialEq, Eq)]
    struct Entry {
        ino: u32,
        mode: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        name: String,
        data: Vec<u8>,
    }

    /// An independent newc reader: checks magic, alignment and the trailer.
    fn parse(bytes: &[u8]) -> Vec<Entry> {
        let mut pos = 0;
        let mut entries = Vec::new();
        loop {
            assert_eq!(pos % 4, 0, "header at unaligned offset {pos}");
            assert_eq!(&bytes[pos..pos + 6], b"070701");
            let field = |i: usize| {
                let start = pos + 6 + i * 8;
                let text = std::str::from_utf8(&bytes[start..start + 8]).unwrap();
                u32::from_str_radix(text, 16).unwrap()
            };
            let (ino, mode, nlink, mtime, size) =
                (field(0), field(1), field(4), field(5), field(6));
            let rdev = (field(9), field(10));
            let namesize = field(11) as usize;
            let name_start = pos + NEWC_HEADER_LEN;
            assert_eq!(
                bytes[name_start + namesize - 1],
                0,
                "name not NUL-terminated"
            );
            let name =
                String::from_utf8(bytes[name_start..name_start + namesize - 1].to_vec()).unwrap();
            let data_start = (name_start + namesize).next_multiple_of(4);
            let data_end = data_start + size as usize;
            let data = bytes[data_start..data_end].to_vec();
            pos = data_end.next_multiple_of(4);
            if name == TRAILER_NAME {
                assert_eq!(pos, bytes.len(), "bytes after the trailer");
                return entries;
            }
            entries.push(Entry {
                ino,
                mode,
                nlink,
                mtime,
                rdev,
                name,
                data,
            });
        }
    }

    fn module(name: &str, data: &[u8]) -> InitrdModule {
        InitrdModule {
            name: name.to_owned(),
            data: data.to_vec(),
            when: LoadWhen::Always,
        }
    }

    #[test]
    fn header_bytes_match_the_newc_layout() {
        let mut w = CpioWriter::new(Vec::new(), 0x1234_5678);
        w.file("a", 0o644, b"xyz").unwrap();
        let bytes = w.finish().unwrap();
        let expected_header = concat!(
            "070701", "00000001", // ino
            "000081A4", // mode: regular, 0644
            "00000000", // uid
            "00000000", // gid
            "00000001", // nlink
            "12345678", // mtime
            "00000003", // filesize
            "00000000", "00000000", "00000000", "00000000", "00000002", // namesize: "a" + NUL
            "00000000",
        );
        assert_eq!(&bytes[..NEWC_HEADER_LEN], expected_header.as_bytes());
        // 110 header bytes + "a\0" = 112, already aligned; then "xyz" + 1 byte of padding.
        assert_eq!(&bytes[110..112], b"a\0");
        assert_eq!(&bytes[112..116], b"xyz\0");
        assert_eq!(&bytes[116..122], b"070701");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn names_and_data_are_padded_to_four_bytes() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        for len in 0..9 {
            let name = "n".repeat(len + 1);
            w.file(&name, 0o600, &vec![b'd'; len]).unwrap();
        }
        let bytes = w.finish().unwrap();
        let entries = parse(&bytes);
        assert_eq!(entries.len(), 9);
        for (len, entry) in entries.iter().enumerate() {
            assert_eq!(entry.name.len(), len + 1);
            assert_eq!(entry.data, vec![b'd'; len]);
        }
    }

    #[test]
    fn inodes_count_up_from_one_and_the_trailer_has_inode_zero() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        w.dir("d", 0o755).unwrap();
        w.file("d/f", 0o644, b"").unwrap();
        w.char_device("c", 0o600, 5, 1).unwrap();
        let bytes = w.finish().unwrap();
        let inos: Vec<u32> = parse(&bytes).iter().map(|e| e.ino).collect();
        assert_eq!(inos, [1, 2, 3]);
        let trailer_at = bytes.len() - (NEWC_HEADER_LEN + TRAILER_NAME.len() + 1).div_ceil(4) * 4;
        assert_eq!(&bytes[trailer_at..trailer_at + 14], b"07070100000000");
    }

    #[test]
    fn device_nodes_carry_their_numbers_and_type() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        let entries = parse(&w.finish().unwrap());
        assert_eq!(entries[0].name, "dev/console");
        assert_eq!(entries[0].mode, 0o020_600);
        assert_eq!(entries[0].rdev, (5, 1));
    }

    #[test]
    fn unclean_names_are_rejected() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        for bad in ["", "/", "a/../b", "./a", "a//b", "a\0b"] {
            assert!(
                matches!(w.file(bad, 0o644, b""), Err(CpioError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn a_reader_shorter_than_promised_is_an_error() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        let err = w
            .file_from_reader("f", 0o644, 10, &mut &b"abc"[..])
            .unwrap_err();
        assert!(matches!(
            err,
            CpioError::ShortRead {
                expected: 10,
                actual: 3,
                ..
            }
        ));
    }

    #[test]
    fn write_errors_name_the_entry() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::StorageFull))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = CpioWriter::new(Full, 0);
        let err = w.file("init", 0o755, b"x").unwrap_err();
        assert!(matches!(err, CpioError::Io { ref name, .. } if name == "init"));
    }

    #[test]
    fn initrd_holds_init_modules_and_the_load_order() {
        let sg = InitrdModule {
            when: LoadWhen::PreloadScsiDevice,
            ..module("sg", b"three")
        };
        let dm = InitrdModule {
            when: LoadWhen::Preload,
            ..module("dm_mod", b"four")
        };
        let modules = [
            module("virtio_pci", b"one"),
            module("ext4.ko", b"two!!"),
            dm,
            sg,
        ];
        let bytes = write_initrd_cpio(Vec::new(), 7, b"\x7fELF-init", &modules).unwrap();
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "modules",
                "proc",
                "root",
                "sys",
                "lib/modules/virtio_pci.ko",
                "lib/modules/ext4.ko",
                "lib/modules/dm_mod.ko",
                "lib/modules/sg.ko",
            ]
        );
        let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by_name("init").mode, 0o100_755);
        assert_eq!(by_name("init").data, b"\x7fELF-init");
        assert_eq!(
            by_name("modules").data,
            b"/lib/modules/virtio_pci.ko\n/lib/modules/ext4.ko\n/lib/modules/dm_mod.ko preload\n/lib/modules/sg.ko preload when=scsi-device\n"
        );
        assert_eq!(by_name("lib/modules/ext4.ko").data, b"two!!");
        assert_eq!(by_name("root").mode, 0o040_700);
        assert_eq!(by_name("dev").nlink, 2);
        assert!(entries.iter().all(|e| e.mtime == 7));
    }

    #[test]
    fn no_modules_gives_an_empty_module_list() {
        let entries = parse(&write_initrd_cpio(Vec::new(), 0, b"i", &[]).unwrap());
        let list = entries.iter().find(|e| e.name == "modules").unwrap();
        assert!(list.data.is_empty());
    }

    #[test]
    fn duplicate_or_unstorable_module_names_are_rejected() {
        let dup = [module("a", b""), module("a.ko", b"")];
        assert!(matches!(
            write_initrd_cpio(Vec::new(), 0, b"", &dup),
            Err(InitrdError::DuplicateModule { .. })
        ));
        for bad in ["", ".ko", "a/b", "a\nb", "a b", "a\tb"] {
            assert!(
                matches!(
                    write_initrd_cpio(Vec::new(), 0, b"", &[module(bad, b"")]),
                    Err(InitrdError::BadModuleName { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn source_date_epoch_sets_the_mtime_and_out_of_range_is_an_error() {
        assert_eq!(initrd_mtime(None).unwrap(), 0);
        assert_eq!(initrd_mtime(Some(1_700_000_000)).unwrap(), 1_700_000_000);
        for bad in [-1, 4_294_967_296, i64::MIN] {
            assert!(initrd_mtime(Some(bad)).is_err(), "{bad} accepted");
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("supermin-initrd-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample_modules() -> Vec<InitrdModule> {
        vec![
            module("virtio_blk", &[0x55; 1000]),
            module("ext4", b"not really a module"),
        ]
    }

    #[test]
    fn same_inputs_give_the_same_bytes() {
        let dir = temp_dir("determinism");
        let a = dir.join("a");
        let b = dir.join("b");
        write_initrd(&a, b"init", &sample_modules(), 0).unwrap();
        write_initrd(&b, b"init", &sample_modules(), 0).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Lists with GNU cpio, which the kernel's unpacker agrees with on newc.
    fn cpio_listing(path: &Path) -> String {
        let raw = std::fs::read(path).unwrap();
        let mut child = Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&raw).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "cpio -itv rejected the archive");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn gnu_cpio_reads_the_initrd() {
        let dir = temp_dir("gnu-cpio");
        {
            let path = dir.join("initrd");
            write_initrd(&path, b"#!init", &sample_modules(), 0).unwrap();
            let listing = cpio_listing(&path);
            let lines: Vec<&str> = listing.lines().collect();
            assert_eq!(lines.len(), 11, "{listing}");
            assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" dev"));
            assert!(lines[1].starts_with("crw-------") && lines[1].contains("5,"));
            assert!(lines[2].starts_with("-rwxr-xr-x") && lines[2].ends_with(" init"));
            assert!(lines[9].contains(" 1000 ") && lines[9].ends_with("lib/modules/virtio_blk.ko"));
            assert!(lines[10].ends_with("lib/modules/ext4.ko"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_output_is_a_create_error_naming_the_path() {
        let path = Path::new("/nonexistent-dir/initrd");
        let err = write_initrd(path, b"", &[], 0).unwrap_err();
        assert!(matches!(err, InitrdError::Create { path: ref p, .. } if p == path));
    }
}
