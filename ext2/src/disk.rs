//! On-disk encoding of the ext2 rev 1 structures this writer emits: the
//! superblock, group descriptors, 256-byte inodes, directory entries, device
//! numbers and the extended timestamps.
//!
//! Everything here is a pure function from values to little-endian bytes, so
//! each structure can be unit-tested field by field. Offsets follow the Linux
//! kernel's `fs/ext4/ext4.h` (`struct ext4_super_block`, `struct ext4_inode`,
//! `struct ext4_group_desc`), which is a superset of ext2's layout.

use crate::tree::Timestamp;

/// The primary superblock always lives at byte 1024, whatever the block size.
pub(crate) const SUPERBLOCK_OFFSET: u64 = 1024;
pub(crate) const SUPERBLOCK_SIZE: usize = 1024;
pub(crate) const GROUP_DESC_SIZE: usize = 32;
pub(crate) const INODE_SIZE: usize = 256;
/// Bytes of the inode used past the 128-byte rev 0 inode: up to and including
/// `i_projid`, as `mke2fs` writes (`s_want_extra_isize` = 32).
pub(crate) const EXTRA_ISIZE: u16 = 32;
pub(crate) const ROOT_INO: u32 = 2;
/// Inodes 1..=10 are reserved in rev 1; 11 is the first ordinary one and is
/// conventionally `lost+found`.
pub(crate) const FIRST_INO: u32 = 11;
/// Twelve direct block pointers, then single, double and triple indirect.
pub(crate) const N_DIRECT: usize = 12;
pub(crate) const N_BLOCKS: usize = 15;

const EXT2_MAGIC: u16 = 0xEF53;
const STATE_CLEAN: u16 = 1;
const ERRORS_CONTINUE: u16 = 1;
const REV_DYNAMIC: u32 = 1;
const HASH_HALF_MD4: u8 = 1;
const FLAGS_SIGNED_HASH: u32 = 0x0001;

// Feature sets of `mke2fs -t ext2` minus the ones this writer does not build:
// no resize inode, no extended attributes, and no dir_index because the
// directories written are linear (setting it without htrees is legal, but the
// kernel would then convert directories on write; keep the image plain).
pub(crate) const FEATURE_COMPAT: u32 = 0;
pub(crate) const FEATURE_INCOMPAT_FILETYPE: u32 = 0x0002;
pub(crate) const FEATURE_RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
pub(crate) const FEATURE_RO_COMPAT_LARGE_FILE: u32 = 0x0002;

pub(crate) const S_IFIFO: u16 = 0o010000;
pub(crate) const S_IFCHR: u16 = 0o020000;
pub(crate) const S_IFDIR: u16 = 0o040000;
pub(crate) const S_IFBLK: u16 = 0o060000;
pub(crate) const S_IFREG: u16 = 0o100000;
pub(crate) const S_IFLNK: u16 = 0o120000;
pub(crate) const S_IFSOCK: u16 = 0o140000;

/// Directory entry file types (the `filetype` incompat feature).
pub(crate) const FT_REG: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;
pub(crate) const FT_CHRDEV: u8 = 3;
pub(crate) const FT_BLKDEV: u8 = 4;
pub(crate) const FT_FIFO: u8 = 5;
pub(crate) const FT_SOCK: u8 = 6;
pub(crate) const FT_SYMLINK: u8 = 7;

fn put16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Everything that varies in a superblock this writer emits.
#[derive(Debug, Clone)]
pub(crate) struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u32,
    pub r_blocks_count: u32,
    pub free_blocks_count: u32,
    pub free_inodes_count: u32,
    pub first_data_block: u32,
    /// `block_size = 1024 << log_block_size`.
    pub log_block_size: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    /// Write, check and mkfs time; there is no mount time yet.
    pub time: u32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub hash_seed: [u8; 16],
    pub large_file: bool,
}

impl Superblock {
    /// The 1024 bytes of the copy kept in group `group_nr`; backups differ from
    /// the primary only in `s_block_group_nr`.
    pub(crate) fn encode(&self, group_nr: u16) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        put32(&mut b, 0x00, self.inodes_count);
        put32(&mut b, 0x04, self.blocks_count);
        put32(&mut b, 0x08, self.r_blocks_count);
        put32(&mut b, 0x0C, self.free_blocks_count);
        put32(&mut b, 0x10, self.free_inodes_count);
        put32(&mut b, 0x14, self.first_data_block);
        put32(&mut b, 0x18, self.log_block_size);
        put32(&mut b, 0x1C, self.log_block_size); // fragment size = block size
        put32(&mut b, 0x20, self.blocks_per_group);
        put32(&mut b, 0x24, self.blocks_per_group); // fragments per group
        put32(&mut b, 0x28, self.inodes_per_group);
        put32(&mut b, 0x2C, 0); // s_mtime: never mounted
        put32(&mut b, 0x30, self.time); // s_wtime
        put16(&mut b, 0x34, 0); // s_mnt_count
        put16(&mut b, 0x36, 0xFFFF); // s_max_mnt_count = -1: no forced checks
        put16(&mut b, 0x38, EXT2_MAGIC);
        put16(&mut b, 0x3A, STATE_CLEAN);
        put16(&mut b, 0x3C, ERRORS_CONTINUE);
        put16(&mut b, 0x3E, 0); // s_minor_rev_level
        put32(&mut b, 0x40, self.time); // s_lastcheck
        put32(&mut b, 0x44, 0); // s_checkinterval
        put32(&mut b, 0x48, 0); // s_creator_os = Linux
        put32(&mut b, 0x4C, REV_DYNAMIC);
        put16(&mut b, 0x50, 0); // s_def_resuid
        put16(&mut b, 0x52, 0); // s_def_resgid
        put32(&mut b, 0x54, FIRST_INO);
        // INODE_SIZE is the constant 256.
        #[allow(clippy::cast_possible_truncation)]
        put16(&mut b, 0x58, INODE_SIZE as u16);
        put16(&mut b, 0x5A, group_nr);
        put32(&mut b, 0x5C, FEATURE_COMPAT);
        put32(&mut b, 0x60, FEATURE_INCOMPAT_FILETYPE);
        let mut ro = FEATURE_RO_COMPAT_SPARSE_SUPER;
        if self.large_file {
            ro |= FEATURE_RO_COMPAT_LARGE_FILE;
        }
        put32(&mut b, 0x64, ro);
        b[0x68..0x78].copy_from_slice(&self.uuid);
        b[0x78..0x88].copy_from_slice(&self.volume_name);
        b[0xEC..0xFC].copy_from_slice(&self.hash_seed);
        b[0xFC] = HASH_HALF_MD4;
        put32(&mut b, 0x108, self.time); // s_mkfs_time
        put16(&mut b, 0x15C, EXTRA_ISIZE); // s_min_extra_isize
        put16(&mut b, 0x15E, EXTRA_ISIZE); // s_want_extra_isize
        put32(&mut b, 0x160, FLAGS_SIGNED_HASH);
        b
    }
}

/// One 32-byte block group descriptor (ext2 layout, no checksums).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupDesc {
    pub block_bitmap: u32,
    pub inode_bitmap: u32,
    pub inode_table: u32,
    pub free_blocks: u16,
    pub free_inodes: u16,
    pub used_dirs: u16,
}

impl GroupDesc {
    pub(crate) fn encode(&self) -> [u8; GROUP_DESC_SIZE] {
        let mut b = [0u8; GROUP_DESC_SIZE];
        put32(&mut b, 0, self.block_bitmap);
        put32(&mut b, 4, self.inode_bitmap);
        put32(&mut b, 8, self.inode_table);
        put16(&mut b, 12, self.free_blocks);
        put16(&mut b, 14, self.free_inodes);
        put16(&mut b, 16, self.used_dirs);
        b
    }
}

/// Seconds representable by a 32-bit signed base plus the two epoch bits of
/// the `*_extra` field: 1901-12-13 up to 2446-05-10 (kernel
/// `ext4_encode_extra_time`). Times outside are clamped, as the kernel does.
pub(crate) const MIN_TIME: i64 = -(1 << 31);
pub(crate) const MAX_TIME: i64 = (3 << 32) + (1 << 31) - 1;

/// `(i_xtime, i_xtime_extra)`: the low 32 bits of the seconds, and
/// `nanoseconds << 2 | epoch` where epoch counts the 2^32-second eras past
/// the signed 32-bit range, so that negative (pre-1970) times keep epoch 0.
pub(crate) fn encode_time(t: Timestamp) -> (u32, u32) {
    let secs = t.secs.clamp(MIN_TIME, MAX_TIME);
    // The low 32 bits, read as signed to find the era and stored as they are.
    let [a, b, c, d, ..] = secs.to_le_bytes();
    let low = i32::from_le_bytes([a, b, c, d]);
    let era = (secs - i64::from(low)) >> 32;
    let epoch = u32::from(era.to_le_bytes()[0] & 3);
    let nsec = t.nsec.min(999_999_999);
    (u32::from_le_bytes([a, b, c, d]), (nsec << 2) | epoch)
}

/// The inverse of [`encode_time`], as the kernel's `ext4_decode_extra_time`.
#[cfg(test)]
pub(crate) fn decode_time(low: u32, extra: u32) -> Timestamp {
    let secs = i64::from(low as i32) + (i64::from(extra & 3) << 32);
    Timestamp {
        secs,
        nsec: extra >> 2,
    }
}

/// Largest major and minor a Linux `dev_t` (and the new ext2 encoding) holds.
pub(crate) const MAX_MAJOR: u32 = (1 << 12) - 1;
pub(crate) const MAX_MINOR: u32 = (1 << 20) - 1;

/// `i_block[0..2]` of a device inode. Numbers that fit in 8 bits each use the
/// old 16-bit encoding in `i_block[0]`; others the new 32-bit one in
/// `i_block[1]` with `i_block[0] = 0` (kernel `old_encode_dev` /
/// `new_encode_dev`). Callers check the range with [`MAX_MAJOR`]/[`MAX_MINOR`].
pub(crate) fn encode_dev(major: u32, minor: u32) -> [u32; 2] {
    if major < 256 && minor < 256 {
        [(major << 8) | minor, 0]
    } else {
        [
            0,
            (minor & 0xff) | ((major & MAX_MAJOR) << 8) | ((minor & !0xff & MAX_MINOR) << 12),
        ]
    }
}

/// The fields of one inode as this writer fills them.
#[derive(Debug, Clone)]
pub(crate) struct Inode {
    /// File type bits and permission bits.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Timestamp,
    pub ctime: Timestamp,
    pub mtime: Timestamp,
    pub crtime: Timestamp,
    pub links_count: u16,
    /// Allocated space in 512-byte units, data and indirect blocks alike.
    pub blocks_512: u32,
    /// Block pointers, or the device numbers, or a fast symlink's target.
    pub block: [u8; 60],
}

impl Inode {
    pub(crate) fn encode(&self) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        let (atime, atime_x) = encode_time(self.atime);
        let (ctime, ctime_x) = encode_time(self.ctime);
        let (mtime, mtime_x) = encode_time(self.mtime);
        let (crtime, crtime_x) = encode_time(self.crtime);
        // ext2 keeps uid, gid and size as low and high halves in two fields.
        let (uid_lo, uid_hi) = halves(self.uid);
        let (gid_lo, gid_hi) = halves(self.gid);
        let [s0, s1, s2, s3, s4, s5, s6, s7] = self.size.to_le_bytes();
        put16(&mut b, 0, self.mode);
        put16(&mut b, 2, uid_lo);
        put32(&mut b, 4, u32::from_le_bytes([s0, s1, s2, s3]));
        put32(&mut b, 8, atime);
        put32(&mut b, 12, ctime);
        put32(&mut b, 16, mtime);
        put32(&mut b, 20, 0); // i_dtime
        put16(&mut b, 24, gid_lo);
        put16(&mut b, 26, self.links_count);
        put32(&mut b, 28, self.blocks_512);
        b[40..100].copy_from_slice(&self.block);
        // i_size_high (rev 1 with large_file; i_dir_acl before).
        put32(&mut b, 108, u32::from_le_bytes([s4, s5, s6, s7]));
        put16(&mut b, 120, uid_hi);
        put16(&mut b, 122, gid_hi);
        put16(&mut b, 128, EXTRA_ISIZE);
        put32(&mut b, 132, ctime_x);
        put32(&mut b, 136, mtime_x);
        put32(&mut b, 140, atime_x);
        put32(&mut b, 144, crtime);
        put32(&mut b, 148, crtime_x);
        b
    }
}

/// The low and high 16 bits of `v`.
fn halves(v: u32) -> (u16, u16) {
    let [a, b, c, d] = v.to_le_bytes();
    (u16::from_le_bytes([a, b]), u16::from_le_bytes([c, d]))
}

/// `i_block` holding block pointers.
pub(crate) fn block_pointers(ptrs: &[u32; N_BLOCKS]) -> [u8; 60] {
    let mut b = [0u8; 60];
    for (i, p) in ptrs.iter().enumerate() {
        put32(&mut b, i * 4, *p);
    }
    b
}

/// The space a directory entry with a name of `name_len` bytes needs:
/// 8 bytes of header plus the name, rounded up to 4.
pub(crate) fn dirent_len(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

/// Writes one directory entry at the start of `buf`; `rec_len` is the space it
/// claims, which for the last entry of a block runs to the block's end.
pub(crate) fn put_dirent(buf: &mut [u8], ino: u32, rec_len: u16, name: &[u8], file_type: u8) {
    put32(buf, 0, ino);
    put16(buf, 4, rec_len);
    // Names are at most MAX_NAME_LEN (255) bytes, checked by Tree.
    #[allow(clippy::cast_possible_truncation)]
    {
        buf[6] = name.len() as u8;
    }
    buf[7] = file_type;
    buf[8..8 + name.len()].copy_from_slice(name);
}

/// Sets bit `i` of a little-endian bitmap (ext2 bitmaps count bit 0 of byte 0
/// first).
pub(crate) fn set_bit(map: &mut [u8], i: usize) {
    map[i / 8] |= 1 << (i % 8);
}

/// Sets bits `from..to`.
pub(crate) fn set_bits(map: &mut [u8], from: usize, to: usize) {
    let mut i = from;
    while i < to && i % 8 != 0 {
        set_bit(map, i);
        i += 1;
    }
    while i + 8 <= to {
        map[i / 8] = 0xFF;
        i += 8;
    }
    while i < to {
        set_bit(map, i);
        i += 1;
    }
}

/// Largest regular file size for `log_block_size` bits (10..=12), the kernel's
/// `ext2_max_size`: bounded by the triple-indirect tree and by `i_blocks`, a
/// 32-bit count of 512-byte sectors that includes the indirect blocks.
pub(crate) fn max_file_size(bits: u32) -> u64 {
    let ppb: u64 = 1 << (bits - 2);
    let mut res: u64 = N_DIRECT as u64 + ppb + ppb * ppb + ppb * ppb * ppb;
    let mut upper_limit: u64 = ((1u64 << 32) - 1) >> (bits - 9);
    let mut meta_blocks: u64 = 1 + (1 + ppb) + (1 + ppb + ppb * ppb);
    if res + meta_blocks > upper_limit {
        res = upper_limit;
        upper_limit -= N_DIRECT as u64;
        meta_blocks = 1;
        upper_limit -= ppb;
        if upper_limit < ppb * ppb {
            meta_blocks += 1 + upper_limit.div_ceil(ppb);
        } else {
            meta_blocks += 1 + ppb;
            upper_limit -= ppb * ppb;
            meta_blocks += 1 + upper_limit.div_ceil(ppb) + upper_limit.div_ceil(ppb * ppb);
        }
        res -= meta_blocks;
    }
    res << bits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le32(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }
    fn le16(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn sample_superblock() -> Superblock {
        Superblock {
            inodes_count: 4096,
            blocks_count: 16384,
            r_blocks_count: 0,
            free_blocks_count: 15000,
            free_inodes_count: 4000,
            first_data_block: 1,
            log_block_size: 0,
            blocks_per_group: 8192,
            inodes_per_group: 2048,
            time: 1_700_000_000,
            uuid: [7; 16],
            volume_name: *b"label\0\0\0\0\0\0\0\0\0\0\0",
            hash_seed: [9; 16],
            large_file: true,
        }
    }

    #[test]
    fn superblock_places_fields_at_kernel_offsets() {
        let b = sample_superblock().encode(3);
        assert_eq!(le32(&b, 0x00), 4096);
        assert_eq!(le32(&b, 0x04), 16384);
        assert_eq!(le32(&b, 0x0C), 15000);
        assert_eq!(le32(&b, 0x10), 4000);
        assert_eq!(le32(&b, 0x14), 1);
        assert_eq!(le32(&b, 0x20), 8192);
        assert_eq!(le32(&b, 0x28), 2048);
        assert_eq!(le16(&b, 0x38), 0xEF53);
        assert_eq!(le32(&b, 0x4C), 1);
        assert_eq!(le32(&b, 0x54), 11);
        assert_eq!(le16(&b, 0x58), 256);
        assert_eq!(le16(&b, 0x5A), 3);
        assert_eq!(le32(&b, 0x60), FEATURE_INCOMPAT_FILETYPE);
        assert_eq!(le32(&b, 0x64), 3);
        assert_eq!(&b[0x68..0x78], &[7; 16]);
        assert_eq!(&b[0x78..0x7D], b"label");
        assert_eq!(&b[0xEC..0xFC], &[9; 16]);
        assert_eq!(le32(&b, 0x108), 1_700_000_000);
        assert_eq!(le16(&b, 0x15C), 32);
    }

    #[test]
    fn superblock_without_large_files_clears_the_feature() {
        let mut sb = sample_superblock();
        sb.large_file = false;
        assert_eq!(le32(&sb.encode(0), 0x64), FEATURE_RO_COMPAT_SPARSE_SUPER);
    }

    #[test]
    fn group_descriptor_is_32_little_endian_bytes() {
        let gd = GroupDesc {
            block_bitmap: 0x0102_0304,
            inode_bitmap: 5,
            inode_table: 6,
            free_blocks: 7,
            free_inodes: 8,
            used_dirs: 9,
        };
        let b = gd.encode();
        assert_eq!(&b[0..4], &[4, 3, 2, 1]);
        assert_eq!(le32(&b, 4), 5);
        assert_eq!(le32(&b, 8), 6);
        assert_eq!(le16(&b, 12), 7);
        assert_eq!(le16(&b, 14), 8);
        assert_eq!(le16(&b, 16), 9);
        assert!(b[18..].iter().all(|&x| x == 0));
    }

    #[test]
    fn old_device_encoding_for_small_numbers() {
        assert_eq!(encode_dev(8, 1), [0x0801, 0]);
        assert_eq!(encode_dev(255, 255), [0xFFFF, 0]);
    }

    #[test]
    fn new_device_encoding_for_510_70000() {
        // minor 70000 = 0x11170: low byte 0x70 stays at bits 0..8, the rest
        // moves above the 12 major bits.
        let [old, new] = encode_dev(510, 70000);
        assert_eq!(old, 0);
        assert_eq!(new, 0x70 | (510 << 8) | (0x11100 << 12));
        // Decode as the kernel's new_decode_dev does.
        let major = (new & 0xfff00) >> 8;
        let minor = (new & 0xff) | ((new >> 12) & 0xfff00);
        assert_eq!((major, minor), (510, 70000));
    }

    #[test]
    fn new_device_encoding_when_only_the_minor_is_large() {
        let [old, new] = encode_dev(1, 256);
        assert_eq!(old, 0);
        assert_eq!(new, (1 << 8) | (0x100 << 12));
    }

    #[test]
    fn extra_time_round_trips_before_1970_and_after_2038() {
        for (secs, nsec) in [
            (0, 0),
            (-1, 999_999_999),
            (-2_000_000_000, 123_456_789),
            (1_700_000_000, 5),
            (i64::from(i32::MAX), 1),
            (i64::from(i32::MAX) + 1, 2),
            (4_102_444_800, 999_999_999), // 2100-01-01
            (8_000_000_000, 42),
            (MIN_TIME, 0),
            (MAX_TIME, 0),
        ] {
            let t = Timestamp { secs, nsec };
            let (lo, extra) = encode_time(t);
            assert_eq!(decode_time(lo, extra), t, "secs {secs}");
        }
    }

    #[test]
    fn pre_1970_times_keep_epoch_zero() {
        let (lo, extra) = encode_time(Timestamp {
            secs: -86400,
            nsec: 0,
        });
        assert_eq!(lo as i32, -86400);
        assert_eq!(extra & 3, 0);
    }

    #[test]
    fn times_out_of_range_are_clamped() {
        let (lo, extra) = encode_time(Timestamp {
            secs: i64::MIN,
            nsec: 2_000_000_000,
        });
        assert_eq!(
            decode_time(lo, extra),
            Timestamp {
                secs: MIN_TIME,
                nsec: 999_999_999
            }
        );
        let (lo, extra) = encode_time(Timestamp {
            secs: i64::MAX,
            nsec: 0,
        });
        assert_eq!(decode_time(lo, extra).secs, MAX_TIME);
    }

    #[test]
    fn inode_splits_ids_sizes_and_times() {
        let t = |secs| Timestamp { secs, nsec: 7 };
        let ino = Inode {
            mode: S_IFREG | 0o4755,
            uid: 0x0012_3456,
            gid: 0x0065_4321,
            size: 0x1_2345_6789,
            atime: t(1),
            ctime: t(2),
            mtime: t(5_000_000_000),
            crtime: t(4),
            links_count: 3,
            blocks_512: 24,
            block: block_pointers(&[1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 99, 0, 0]),
        };
        let b = ino.encode();
        assert_eq!(le16(&b, 0), 0o104755);
        assert_eq!(le16(&b, 2), 0x3456);
        assert_eq!(le16(&b, 120), 0x0012);
        assert_eq!(le16(&b, 24), 0x4321);
        assert_eq!(le16(&b, 122), 0x0065);
        assert_eq!(le32(&b, 4), 0x2345_6789);
        assert_eq!(le32(&b, 108), 1);
        assert_eq!(le16(&b, 26), 3);
        assert_eq!(le32(&b, 28), 24);
        assert_eq!(le32(&b, 40), 1);
        assert_eq!(le32(&b, 40 + 12 * 4), 99);
        assert_eq!(le16(&b, 128), 32);
        assert_eq!(decode_time(le32(&b, 8), le32(&b, 140)), t(1));
        assert_eq!(decode_time(le32(&b, 12), le32(&b, 132)), t(2));
        assert_eq!(decode_time(le32(&b, 16), le32(&b, 136)), t(5_000_000_000));
        assert_eq!(decode_time(le32(&b, 144), le32(&b, 148)), t(4));
    }

    #[test]
    fn dirent_lengths_are_padded_to_four() {
        assert_eq!(dirent_len(1), 12);
        assert_eq!(dirent_len(4), 12);
        assert_eq!(dirent_len(5), 16);
        assert_eq!(dirent_len(255), 264);
    }

    #[test]
    fn dirent_encodes_header_and_name() {
        let mut buf = [0u8; 16];
        put_dirent(&mut buf, 12, 16, b"abc", FT_SYMLINK);
        assert_eq!(le32(&buf, 0), 12);
        assert_eq!(le16(&buf, 4), 16);
        assert_eq!(buf[6], 3);
        assert_eq!(buf[7], FT_SYMLINK);
        assert_eq!(&buf[8..11], b"abc");
    }

    #[test]
    fn set_bits_covers_exactly_the_range() {
        let mut map = [0u8; 4];
        set_bits(&mut map, 3, 21);
        for i in 0..32 {
            let set = map[i / 8] & (1 << (i % 8)) != 0;
            assert_eq!(set, (3..21).contains(&i), "bit {i}");
        }
    }

    #[test]
    fn max_file_size_matches_the_kernel_limits() {
        // 1 KiB blocks: the block tree (~16 GiB) is the limit.
        assert_eq!(max_file_size(10), (12 + 256 + 65536 + 16_777_216) << 10);
        // 4 KiB blocks: i_blocks (2^32 - 1 sectors = 536870911 blocks,
        // indirect blocks included) is the limit; 524801 of those blocks are
        // the indirect ones needed to map the rest.
        assert_eq!(max_file_size(12), (536_870_911 - 524_801) << 12);
    }
}
