//! Turning a process's executable mappings into LPM trie entries (see
//! [`profiler_common::unwind::MappingKey`]).

use object::{Object, ObjectSegment, SegmentFlags};
use profiler_common::unwind::MappingKey;

/// A PT_LOAD program header, as far as mapping addresses to ELF vaddrs needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// `p_offset`: where the segment starts in the file.
    pub offset: u64,
    /// `p_filesz`: its length in the file.
    pub file_size: u64,
    /// `p_vaddr`: the ELF virtual address it is linked at.
    pub vaddr: u64,
    /// `PF_X` is set.
    pub executable: bool,
}

/// The PT_LOAD segments of an ELF file.
pub fn load_segments(elf: &[u8]) -> Result<Vec<LoadSegment>, object::Error> {
    let file = object::File::parse(elf)?;
    Ok(file
        .segments()
        .map(|seg| {
            let (offset, file_size) = seg.file_range();
            let executable =
                matches!(seg.flags(), SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
            LoadSegment { offset, file_size, vaddr: seg.address(), executable }
        })
        .collect())
}

/// `UnwindMapping::bias` for an executable mapping (`/proc/PID/maps`: `start`, `len`, file
/// `offset`), so that ELF vaddr = pc - bias.
///
/// The segment must be chosen by overlap, not by looking up `offset` itself: the kernel maps
/// from the page-aligned-down `p_offset`, which often lies in the previous (read-only)
/// segment, and segments can differ in `p_vaddr - p_offset` (rustc/ld output does).
pub fn mapping_bias(start: u64, len: u64, offset: u64, segments: &[LoadSegment]) -> Option<u64> {
    let end = offset.checked_add(len)?;
    let overlaps =
        |s: &&LoadSegment| s.offset < end && offset < s.offset.saturating_add(s.file_size);
    let seg = segments
        .iter()
        .filter(overlaps)
        .find(|s| s.executable)
        .or_else(|| segments.iter().find(overlaps))?;
    Some(
        start
            .wrapping_sub(offset)
            .wrapping_add(seg.offset)
            .wrapping_sub(seg.vaddr),
    )
}

/// The aligned power-of-two blocks that exactly cover `[start, end)`, as `(key, prefix_len)`
/// pairs for the LPM trie. At most 2 × 64 blocks for any range; page-aligned mappings give far
/// fewer.
pub fn lpm_blocks(pid: u32, start: u64, end: u64) -> impl Iterator<Item = (MappingKey, u32)> {
    let mut at = start;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        // The largest block that is aligned at `at` and does not pass `end`.
        let align_bits = at.trailing_zeros().min(63);
        let room = end - at;
        let room_bits = 63 - room.leading_zeros();
        let bits = align_bits.min(room_bits);
        // The pid's 32 bits plus the address bits above the block.
        let block = (MappingKey::new(pid, at), MappingKey::BITS - bits);
        // Cannot overflow: the block ends at or before `end`.
        at += 1 << bits;
        Some(block)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(pid: u32, start: u64, end: u64) -> Vec<(u64, u64)> {
        lpm_blocks(pid, start, end)
            .map(|(key, prefix)| {
                assert_eq!(key.pid, pid.to_be_bytes());
                let addr_bits = prefix - 32;
                let size = if addr_bits == 0 {
                    u64::MAX
                } else {
                    1u64 << (64 - addr_bits)
                };
                (u64::from_be_bytes(key.addr), size)
            })
            .collect()
    }

    #[test]
    fn exact_cover() {
        assert_eq!(
            covered(7, 0x1000, 0x3000),
            [(0x1000, 0x1000), (0x2000, 0x1000)]
        );
        assert_eq!(covered(7, 0x4000, 0x8000), [(0x4000, 0x4000)]);
        let blocks = covered(1, 0x5555_5555_4000, 0x5555_5559_b000);
        let mut at = 0x5555_5555_4000;
        for (addr, size) in &blocks {
            assert_eq!(*addr, at);
            assert_eq!(addr % size, 0, "aligned");
            at += size;
        }
        assert_eq!(at, 0x5555_5559_b000);
        assert!(blocks.len() <= 2 * 64);
        assert!(covered(1, 5, 5).is_empty());
        assert_eq!(covered(1, 0, 1), [(0, 1)]);
        let top = covered(1, u64::MAX - 0x1000, u64::MAX);
        assert_eq!(top.iter().map(|b| b.1).sum::<u64>(), 0x1000);
    }

    #[test]
    fn bias_uses_the_executable_segment() {
        // rustc output: text at file 0x12a60 but vaddr 0x13a60; mapped from file page 0x12000,
        // which also holds the tail of the read-only segment.
        let segs = [
            LoadSegment {
                offset: 0,
                file_size: 0x12a58,
                vaddr: 0,
                executable: false,
            },
            LoadSegment {
                offset: 0x12a60,
                file_size: 0x3e380,
                vaddr: 0x13a60,
                executable: true,
            },
        ];
        let start = 0x55c9_9945_5000;
        let bias = mapping_bias(start, 0x3f000, 0x12000, &segs).unwrap();
        assert_eq!(start + 0x1860 - bias, 0x14860);
        assert_eq!(mapping_bias(start, 0x1000, 0x90000, &segs), None);
    }

    #[test]
    fn prefix_lengths() {
        // A 4 KiB block: pid (32 bits) + the top 52 address bits.
        let (_, prefix) = lpm_blocks(3, 0x1000, 0x2000).next().unwrap();
        assert_eq!(prefix, 32 + 52);
        let (_, prefix) = lpm_blocks(3, 0x1001, 0x1002).next().unwrap();
        assert_eq!(prefix, 96);
    }
}
