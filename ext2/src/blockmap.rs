//! One inode's block tree: the twelve direct pointers, then single, double
//! and triple indirect blocks (ext2's `i_block[15]`), built while data blocks
//! are handed out in ascending logical order.
//!
//! Logical blocks that are never mapped are holes: no pointer, and no
//! indirect block unless some block below it is mapped. Each indirect block
//! is allocated just before the first data block it maps, like the kernel
//! does, so a file's blocks stay in one ascending sweep.

use std::collections::HashMap;

use crate::disk::{N_BLOCKS, N_DIRECT};

/// A stretch of a file stored contiguously in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub lblock: u64,
    pub pblock: u64,
    pub count: u64,
}

/// Identifies one indirect block: the tree it belongs to (1 = single,
/// 2 = double, 3 = triple), how deep it sits in that tree (0 = the block
/// `i_block` points at), and which one at that depth.
type IndKey = (u8, u8, u64);

/// The mapped result for one inode.
#[derive(Debug, Default)]
pub(crate) struct BlockMap {
    pub i_block: [u32; N_BLOCKS],
    /// Indirect blocks with their pointer arrays, in allocation order.
    pub indirect: Vec<(u32, Vec<u32>)>,
    pub runs: Vec<Run>,
    /// Data and indirect blocks together.
    pub total_blocks: u64,
}

/// The image ran out of blocks while mapping (the planner sized it wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfBlocks;

pub(crate) struct Mapper<F: FnMut() -> Option<u32>> {
    ppb: u64,
    alloc: F,
    /// When false only counts are kept: planning uses this to size the
    /// image before any block number exists.
    store: bool,
    map: BlockMap,
    index: HashMap<IndKey, usize>,
    /// The leaf indirect block of the previous data block; consecutive
    /// blocks nearly always share it.
    last_leaf: Option<(IndKey, usize)>,
}

impl<F: FnMut() -> Option<u32>> Mapper<F> {
    /// `ppb` is pointers per block (block size / 4).
    pub(crate) fn new(ppb: u64, store: bool, alloc: F) -> Self {
        Mapper {
            ppb,
            alloc,
            store,
            map: BlockMap::default(),
            index: HashMap::new(),
            last_leaf: None,
        }
    }

    fn take(&mut self) -> Result<u32, OutOfBlocks> {
        self.map.total_blocks += 1;
        (self.alloc)().ok_or(OutOfBlocks)
    }

    /// Maps every block of `[start, start + count)`.
    pub(crate) fn map_range(&mut self, start: u64, count: u64) -> Result<(), OutOfBlocks> {
        for lb in start..start + count {
            self.map_block(lb)?;
        }
        Ok(())
    }

    /// Maps logical block `lb`, which must be above every block mapped so
    /// far.
    pub(crate) fn map_block(&mut self, lb: u64) -> Result<(), OutOfBlocks> {
        let ppb = self.ppb;
        let (depth, rel) = if lb < N_DIRECT as u64 {
            (0u8, lb)
        } else if lb - (N_DIRECT as u64) < ppb {
            (1, lb - N_DIRECT as u64)
        } else if lb - (N_DIRECT as u64) - ppb < ppb * ppb {
            (2, lb - N_DIRECT as u64 - ppb)
        } else {
            (3, lb - N_DIRECT as u64 - ppb - ppb * ppb)
        };
        let phys = if depth == 0 {
            let p = self.take()?;
            // Depth 0 means lb < N_DIRECT (12), checked above.
            #[allow(clippy::cast_possible_truncation)]
            let slot = lb as usize;
            self.map.i_block[slot] = p;
            p
        } else {
            let leaf_key: IndKey = (depth, depth - 1, rel / ppb);
            let leaf = match self.last_leaf {
                Some((key, at)) if key == leaf_key => at,
                _ => self.ensure_chain(depth, rel)?,
            };
            self.last_leaf = Some((leaf_key, leaf));
            let p = self.take()?;
            if self.store {
                // Below ppb, which is a block size / 4 (at most 1024).
                #[allow(clippy::cast_possible_truncation)]
                let slot = (rel % ppb) as usize;
                self.map.indirect[leaf].1[slot] = p;
            }
            p
        };
        self.push_run(lb, u64::from(phys));
        Ok(())
    }

    /// Makes sure every indirect block on the way to `rel` in tree `depth`
    /// exists; returns the index of the leaf one.
    fn ensure_chain(&mut self, depth: u8, rel: u64) -> Result<usize, OutOfBlocks> {
        let ppb = self.ppb;
        let mut parent: Option<usize> = None;
        for level in 0..depth {
            let span = ppb.pow(u32::from(depth - level));
            let key: IndKey = (depth, level, rel / span);
            let at = match self.index.get(&key) {
                Some(&at) => at,
                None => {
                    let p = self.take()?;
                    let at = self.map.indirect.len();
                    // ppb is a block size / 4: at most 1024.
                    #[allow(clippy::cast_possible_truncation)]
                    let slots = if self.store { ppb as usize } else { 0 };
                    self.map.indirect.push((p, vec![0; slots]));
                    self.index.insert(key, at);
                    match parent {
                        None => self.map.i_block[N_DIRECT + usize::from(depth) - 1] = p,
                        Some(up) if self.store => {
                            // Below ppb, which is a block size / 4 (at most 1024).
                            #[allow(clippy::cast_possible_truncation)]
                            let slot = ((rel / span) % ppb) as usize;
                            self.map.indirect[up].1[slot] = p;
                        }
                        Some(_) => {}
                    }
                    at
                }
            };
            parent = Some(at);
        }
        // depth >= 1, so the loop ran and set parent.
        parent.ok_or(OutOfBlocks)
    }

    fn push_run(&mut self, lb: u64, pb: u64) {
        if let Some(r) = self.map.runs.last_mut() {
            if r.lblock + r.count == lb && r.pblock + r.count == pb {
                r.count += 1;
                return;
            }
        }
        self.map.runs.push(Run {
            lblock: lb,
            pblock: pb,
            count: 1,
        });
    }

    pub(crate) fn finish(self) -> BlockMap {
        self.map
    }
}

/// Blocks (data plus indirect) a file whose data covers `extents` (sorted,
/// disjoint `(start, count)` logical ranges) occupies.
pub(crate) fn blocks_needed(extents: &[(u64, u64)], ppb: u64) -> u64 {
    let mut next = 0u32;
    let mut m = Mapper::new(ppb, false, || {
        next = next.wrapping_add(1);
        Some(next)
    });
    for &(start, count) in extents {
        // The counting allocator never runs out.
        if m.map_range(start, count).is_err() {
            break;
        }
    }
    m.finish().total_blocks
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> Option<u32> {
        let mut next = 100u32;
        move || {
            next += 1;
            Some(next)
        }
    }

    /// Reads the block tree back the way the kernel's `ext2_get_block` walks
    /// it.
    fn resolve(map: &BlockMap, ppb: u64, lb: u64) -> u32 {
        let ind = |p: u32| -> &Vec<u32> { &map.indirect.iter().find(|(q, _)| *q == p).unwrap().1 };
        if lb < 12 {
            return map.i_block[lb as usize];
        }
        let mut rel = lb - 12;
        let mut depth = 1;
        while rel >= ppb.pow(depth) {
            rel -= ppb.pow(depth);
            depth += 1;
        }
        let mut p = map.i_block[11 + depth as usize];
        for level in (0..depth).rev() {
            if p == 0 {
                return 0;
            }
            p = ind(p)[((rel / ppb.pow(level)) % ppb) as usize];
        }
        p
    }

    #[test]
    fn small_file_uses_only_direct_pointers() {
        let mut m = Mapper::new(256, true, counter());
        m.map_range(0, 5).unwrap();
        let map = m.finish();
        assert_eq!(&map.i_block[..6], &[101, 102, 103, 104, 105, 0]);
        assert!(map.indirect.is_empty());
        assert_eq!(map.total_blocks, 5);
        assert_eq!(
            map.runs,
            vec![Run {
                lblock: 0,
                pblock: 101,
                count: 5
            }]
        );
    }

    #[test]
    fn indirect_block_comes_right_before_its_first_data_block() {
        let mut m = Mapper::new(256, true, counter());
        m.map_range(0, 14).unwrap();
        let map = m.finish();
        assert_eq!(map.i_block[11], 112);
        assert_eq!(map.i_block[12], 113);
        assert_eq!(
            map.indirect,
            vec![(113, {
                let mut v = vec![0; 256];
                v[0] = 114;
                v[1] = 115;
                v
            })]
        );
        assert_eq!(map.total_blocks, 15);
        assert_eq!(map.runs.len(), 2);
    }

    #[test]
    fn every_block_resolves_through_single_double_and_triple_trees() {
        let ppb = 4;
        // 12 direct + 4 single + 16 double + 64 triple blocks.
        let total = 12 + 4 + 16 + 64;
        let mut m = Mapper::new(ppb, true, counter());
        m.map_range(0, total).unwrap();
        let map = m.finish();
        let mut seen = std::collections::HashSet::new();
        for lb in 0..total {
            let p = resolve(&map, ppb, lb);
            assert_ne!(p, 0, "block {lb}");
            assert!(seen.insert(p), "block {lb} shares {p}");
        }
        // 1 single, 1 + 4 double, 1 + 4 + 16 triple.
        assert_eq!(map.indirect.len(), 27);
        assert_eq!(map.total_blocks, total + 27);
        assert_eq!(blocks_needed(&[(0, total)], ppb), total + 27);
    }

    #[test]
    fn holes_get_neither_pointers_nor_indirect_blocks() {
        let ppb = 4;
        let extents = [(0, 1), (40, 2), (90, 1)];
        let mut m = Mapper::new(ppb, true, counter());
        for (s, c) in extents {
            m.map_range(s, c).unwrap();
        }
        let map = m.finish();
        for lb in 0..96 {
            let mapped = extents.iter().any(|&(s, c)| (s..s + c).contains(&lb));
            assert_eq!(resolve(&map, ppb, lb) != 0, mapped, "block {lb}");
        }
        // No single-indirect block at all; the triple tree only has the
        // chains leading to blocks 40, 41 and 90.
        assert_eq!(map.i_block[12], 0);
        assert_eq!(blocks_needed(&extents, ppb), map.total_blocks);
        assert_eq!(map.total_blocks, 4 + map.indirect.len() as u64);
    }

    #[test]
    fn running_out_of_blocks_is_reported() {
        let mut left = 3;
        let mut m = Mapper::new(256, true, move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            Some(left + 1)
        });
        assert_eq!(m.map_range(0, 5), Err(OutOfBlocks));
    }
}
