//! Block-group geometry: how many groups an image of a given block count
//! has, where each group's superblock backup, descriptor table, bitmaps and
//! inode table sit, and how many blocks are left for data.
//!
//! The layout is the classic ext2 one (no flex_bg, no reserved GDT blocks):
//! each group starts with its metadata and the rest is data, so a group's
//! bitmaps and inode table always fall inside the group, as `e2fsck` checks.

use crate::disk::{GROUP_DESC_SIZE, INODE_SIZE};

/// A group this small past its metadata is dropped, as `mke2fs` does, rather
/// than kept as a sliver that costs a bitmap pair and an inode table.
const MIN_LAST_GROUP_DATA: u64 = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub block_size: u32,
    /// log2 of the block size.
    pub log_block_size: u32,
    pub blocks_count: u64,
    /// 1 with 1 KiB blocks (block 0 holds the boot sector and nothing of the
    /// filesystem), else 0.
    pub first_data_block: u64,
    pub blocks_per_group: u64,
    pub groups: u32,
    pub inodes_per_group: u32,
    pub gdt_blocks: u64,
    pub itable_blocks: u64,
}

/// Why no geometry exists for a block count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GeometryError {
    /// Too few blocks for even one group's metadata.
    TooFewBlocks,
    /// More inodes wanted than the groups can number.
    TooManyInodes,
}

/// ext2 rev 1 keeps backup superblocks only in groups 0, 1 and powers of 3,
/// 5 and 7 (the sparse_super feature); `e2fsck` checks each one.
pub(crate) fn has_superblock_backup(group: u32) -> bool {
    if group <= 1 {
        return true;
    }
    [3u32, 5, 7].iter().any(|&base| {
        let mut n = base;
        while n < group {
            match n.checked_mul(base) {
                Some(next) => n = next,
                None => return false,
            }
        }
        n == group
    })
}

impl Geometry {
    /// The geometry of an image of `blocks_count` blocks holding at least
    /// `inodes_wanted` inodes. The block count may shrink by a tiny last
    /// group.
    pub(crate) fn new(
        block_size: u32,
        mut blocks_count: u64,
        inodes_wanted: u64,
    ) -> Result<Geometry, GeometryError> {
        let log_block_size = block_size.trailing_zeros();
        let bs = u64::from(block_size);
        let first_data_block = u64::from(block_size == 1024);
        let blocks_per_group = 8 * bs;
        let inodes_per_block = bs / INODE_SIZE as u64;
        // Inode bitmaps are whole bytes and inode tables whole blocks.
        let align = inodes_per_block.max(8);
        loop {
            if blocks_count <= first_data_block {
                return Err(GeometryError::TooFewBlocks);
            }
            let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);
            // One bitmap block per group, and bg_free_inodes_count is 16 bits.
            let max_ipg = (8 * bs).min(65536 - inodes_per_block) / align * align;
            let max_ipg = max_ipg.min(u64::from(u32::MAX) / groups / align * align);
            let ipg = inodes_wanted.div_ceil(groups).div_ceil(align).max(1) * align;
            if ipg > max_ipg {
                return Err(GeometryError::TooManyInodes);
            }
            // max_ipg keeps ipg below 65536 and groups * ipg within u32.
            let (Ok(groups), Ok(ipg32)) = (u32::try_from(groups), u32::try_from(ipg)) else {
                return Err(GeometryError::TooManyInodes);
            };
            let geo = Geometry {
                block_size,
                log_block_size,
                blocks_count,
                first_data_block,
                blocks_per_group,
                groups,
                inodes_per_group: ipg32,
                gdt_blocks: (u64::from(groups) * GROUP_DESC_SIZE as u64).div_ceil(bs),
                itable_blocks: ipg / inodes_per_block,
            };
            let last = geo.groups - 1;
            let last_len = geo.group_len(last);
            let overhead = geo.overhead(last);
            if last > 0 && last_len < overhead + MIN_LAST_GROUP_DATA {
                blocks_count = geo.group_start(last);
                continue;
            }
            if last_len <= overhead {
                return Err(GeometryError::TooFewBlocks);
            }
            return Ok(geo);
        }
    }

    pub(crate) fn inodes_count(&self) -> u64 {
        u64::from(self.groups) * u64::from(self.inodes_per_group)
    }

    pub(crate) fn group_start(&self, g: u32) -> u64 {
        self.first_data_block + u64::from(g) * self.blocks_per_group
    }

    pub(crate) fn group_len(&self, g: u32) -> u64 {
        (self.blocks_count - self.group_start(g)).min(self.blocks_per_group)
    }

    /// Superblock and descriptor copies, if this group keeps them.
    pub(crate) fn backup_blocks(&self, g: u32) -> u64 {
        if has_superblock_backup(g) {
            1 + self.gdt_blocks
        } else {
            0
        }
    }

    /// Metadata blocks at the start of group `g`.
    pub(crate) fn overhead(&self, g: u32) -> u64 {
        self.backup_blocks(g) + 2 + self.itable_blocks
    }

    pub(crate) fn block_bitmap(&self, g: u32) -> u64 {
        self.group_start(g) + self.backup_blocks(g)
    }

    pub(crate) fn inode_bitmap(&self, g: u32) -> u64 {
        self.block_bitmap(g) + 1
    }

    pub(crate) fn inode_table(&self, g: u32) -> u64 {
        self.block_bitmap(g) + 2
    }

    /// First block of group `g` free for data.
    pub(crate) fn data_start(&self, g: u32) -> u64 {
        self.group_start(g) + self.overhead(g)
    }

    /// Blocks left for data in the whole image.
    pub(crate) fn capacity(&self) -> u64 {
        (0..self.groups)
            .map(|g| self.group_len(g) - self.overhead(g))
            .sum()
    }
}

/// Hands out data blocks in ascending order, group after group, skipping
/// each group's metadata. Allocating everything in one sweep makes the used
/// blocks of every group a prefix of its data area, which is what the block
/// bitmaps then record.
pub(crate) struct Allocator<'g> {
    geo: &'g Geometry,
    group: u32,
    next: u64,
    allocated: u64,
}

impl<'g> Allocator<'g> {
    pub(crate) fn new(geo: &'g Geometry) -> Allocator<'g> {
        Allocator {
            geo,
            group: 0,
            next: geo.data_start(0),
            allocated: 0,
        }
    }

    /// The next free block, or `None` when the image is full.
    pub(crate) fn alloc(&mut self) -> Option<u32> {
        loop {
            let g = self.group;
            if g >= self.geo.groups {
                return None;
            }
            if self.next < self.geo.group_start(g) + self.geo.group_len(g) {
                let b = self.next;
                self.next += 1;
                self.allocated += 1;
                return u32::try_from(b).ok();
            }
            self.group += 1;
            if self.group < self.geo.groups {
                self.next = self.geo.data_start(self.group);
            }
        }
    }

    pub(crate) fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Data blocks of group `g` handed out so far.
    pub(crate) fn used_in_group(&self, g: u32) -> u64 {
        let start = self.geo.data_start(g);
        let end = self.geo.group_start(g) + self.geo.group_len(g);
        if g < self.group {
            end - start
        } else if g == self.group {
            self.next.clamp(start, end) - start
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_live_in_groups_0_1_and_powers_of_3_5_7() {
        let with: Vec<u32> = (0..400).filter(|&g| has_superblock_backup(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343]);
        assert!(!has_superblock_backup(u32::MAX));
    }

    #[test]
    fn one_kib_blocks_start_at_block_one() {
        let geo = Geometry::new(1024, 16384, 4096).unwrap();
        assert_eq!(geo.first_data_block, 1);
        assert_eq!(geo.groups, 2);
        assert_eq!(geo.inodes_per_group, 2048);
        assert_eq!(geo.itable_blocks, 512);
        assert_eq!(geo.block_bitmap(0), 3);
        assert_eq!(geo.inode_table(0), 5);
        assert_eq!(geo.data_start(0), 517);
        assert_eq!(geo.group_start(1), 8193);
        assert_eq!(geo.group_len(1), 8191);
    }

    #[test]
    fn four_kib_layout_puts_gdt_in_block_one() {
        let geo = Geometry::new(4096, 1 << 20, 100).unwrap();
        assert_eq!(geo.first_data_block, 0);
        assert_eq!(geo.groups, 32);
        assert_eq!(geo.gdt_blocks, 1);
        assert_eq!(geo.block_bitmap(0), 2);
        // 100 inodes over 32 groups round up to one block of 16 per group.
        assert_eq!(geo.inodes_per_group, 16);
        assert_eq!(geo.overhead(2), 3);
        assert_eq!(geo.overhead(3), 5);
        let overhead: u64 = (0..32).map(|g| geo.overhead(g)).sum();
        assert_eq!(geo.capacity() + overhead, 1 << 20);
    }

    #[test]
    fn tiny_last_group_is_dropped() {
        let geo = Geometry::new(4096, 32768 + 10, 64).unwrap();
        assert_eq!(geo.groups, 1);
        assert_eq!(geo.blocks_count, 32768);
    }

    #[test]
    fn too_few_blocks_for_metadata_is_an_error() {
        assert_eq!(Geometry::new(4096, 3, 16), Err(GeometryError::TooFewBlocks));
        assert_eq!(
            Geometry::new(4096, 100, 1_000_000),
            Err(GeometryError::TooManyInodes)
        );
    }

    #[test]
    fn allocator_skips_metadata_and_fills_groups_in_order() {
        let geo = Geometry::new(1024, 8193 + 600, 64).unwrap();
        assert_eq!(geo.groups, 2);
        let mut a = Allocator::new(&geo);
        let mut blocks = Vec::new();
        while let Some(b) = a.alloc() {
            blocks.push(u64::from(b));
        }
        assert_eq!(blocks.len() as u64, geo.capacity());
        assert_eq!(blocks[0], geo.data_start(0));
        assert!(blocks.windows(2).all(|w| w[0] < w[1]));
        assert!(blocks.contains(&geo.data_start(1)));
        assert!(!blocks.contains(&geo.inode_table(1)));
        assert_eq!(a.used_in_group(0), 8192 - geo.overhead(0));
        assert_eq!(a.used_in_group(1), 600 - geo.overhead(1));
    }
}
