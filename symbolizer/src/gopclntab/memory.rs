//! The binary's virtual address space as the file lays it out (PT_LOAD file parts), with
//! pointer reads that fall back to `R_*_RELATIVE` addends for PIE files whose words are zero.

use std::collections::HashMap;
use std::sync::Arc;

use object::{Object, ObjectSection};

use super::read::word_at;
use crate::binary::Bytes;
use crate::{Binary, LoadSegment};

/// Relocation tables larger than this are ignored (hostile input).
const MAX_RELOCATIONS: usize = 1 << 24;

pub(crate) struct Memory {
    pub data: Arc<Bytes>,
    segments: Vec<LoadSegment>,
    /// r_offset -> addend of relative relocations (ET_DYN only).
    relative: HashMap<u64, u64>,
    pub ptr_size: u8,
}

impl Memory {
    pub fn new(binary: &Binary, obj: &object::File<'_>, ptr_size: u8) -> Memory {
        let mut relative = HashMap::new();
        if binary.is_pie_or_shared() {
            // `.rela.dyn` (or Go's `.rela`): relative relocations carry the pointer in the addend.
            for section in obj.sections() {
                if !matches!(
                    section.kind(),
                    object::SectionKind::Elf(object::elf::SHT_RELA)
                ) {
                    continue;
                }
                let Ok(data) = section.data() else { continue };
                for rec in data.chunks_exact(24).take(MAX_RELOCATIONS) {
                    let off = u64::from_le_bytes(rec[0..8].try_into().unwrap_or_default());
                    let info = u64::from_le_bytes(rec[8..16].try_into().unwrap_or_default());
                    let addend = u64::from_le_bytes(rec[16..24].try_into().unwrap_or_default());
                    // R_X86_64_RELATIVE = 8, R_AARCH64_RELATIVE = 1027.
                    if matches!(info & 0xffff_ffff, 8 | 1027) {
                        relative.insert(off, addend);
                    }
                }
            }
        }
        Memory {
            data: binary.data.clone(),
            segments: binary.load_segments().to_vec(),
            relative,
            ptr_size,
        }
    }

    /// Bytes with no address space (a bare table, for fuzzing): every vaddr read misses.
    pub fn bare(data: Bytes, ptr_size: u8) -> Memory {
        Memory {
            data: Arc::new(data),
            segments: Vec::new(),
            relative: HashMap::new(),
            ptr_size,
        }
    }

    /// File offset of `vaddr` and the number of file bytes after it in its segment.
    pub fn file_offset(&self, vaddr: u64) -> Option<(usize, usize)> {
        self.segments.iter().find_map(|s| {
            let rel = vaddr.checked_sub(s.p_vaddr)?;
            if rel >= s.p_filesz {
                return None;
            }
            let off = usize::try_from(s.p_offset.checked_add(rel)?).ok()?;
            let left = usize::try_from(s.p_filesz - rel).ok()?;
            Some((off, left))
        })
    }

    /// The file bytes from `vaddr` to the end of its segment.
    pub fn bytes_from(&self, vaddr: u64) -> Option<&[u8]> {
        let (off, left) = self.file_offset(vaddr)?;
        self.data.get(off..off.checked_add(left)?)
    }

    /// A pointer-sized word at `vaddr`; a zero word takes the relative relocation's addend.
    pub fn word(&self, vaddr: u64) -> Option<u64> {
        let w = word_at(self.bytes_from(vaddr)?, 0, self.ptr_size)?;
        if w == 0 {
            if let Some(&a) = self.relative.get(&vaddr) {
                return Some(a);
            }
        }
        Some(w)
    }

    pub fn segments(&self) -> &[LoadSegment] {
        &self.segments
    }
}
