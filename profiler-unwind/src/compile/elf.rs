//! Finds `.eh_frame` and the base addresses it needs in an ELF file.

use super::{compile_sections, CfiSection, CompileOptions, CompiledTable, Error, SectionAddrs};
use object::{Architecture, Object, ObjectSection, ObjectSegment, SegmentFlags};
use std::borrow::Cow;
use std::ops::Range;

/// Compiles the CFI of an x86-64 ELF file (executable or shared object): `.eh_frame`, plus
/// `.debug_frame` (possibly compressed) if there is one. A binary built with
/// `-fno-asynchronous-unwind-tables -g` has its own code's CFI only in `.debug_frame`, while
/// the C runtime's objects still bring a little `.eh_frame`.
pub fn compile_elf(data: &[u8], opts: &CompileOptions) -> Result<CompiledTable, Error> {
    let file = object::File::parse(data)?;
    if file.architecture() != Architecture::X86_64 || !file.is_little_endian() {
        return Err(Error::UnsupportedArch);
    }
    let mut addrs = SectionAddrs {
        eh_frame: 0,
        text: file.section_by_name(".text").map(|s| s.address()),
        got: file.section_by_name(".got").map(|s| s.address()),
        code: executable_range(&file),
    };
    let mut sections: Vec<(Cow<'_, [u8]>, CfiSection)> = Vec::new();
    if let Some(eh_frame) = file.section_by_name(".eh_frame").filter(|s| s.size() > 0) {
        addrs.eh_frame = eh_frame.address();
        sections.push((Cow::Borrowed(eh_frame.data()?), CfiSection::EhFrame));
    }
    if let Some(debug_frame) = file.section_by_name(".debug_frame") {
        // The compression header's size is input too: refuse to reserve absurd amounts.
        let compressed = debug_frame.compressed_data()?;
        if compressed.uncompressed_size > MAX_DEBUG_FRAME {
            return Err(Error::SectionTooLarge(compressed.uncompressed_size));
        }
        sections.push((compressed.decompress()?, CfiSection::DebugFrame));
    }
    if sections.is_empty() {
        return Err(Error::NoEhFrame);
    }
    let sections: Vec<(&[u8], CfiSection)> = sections.iter().map(|(d, k)| (&**d, *k)).collect();
    let mut table = compile_sections(&sections, &addrs, opts)?;
    super::go::mark_stack_switches(&file, &mut table);
    Ok(table)
}

/// Largest `.debug_frame` decompressed; real ones are a few tens of MiB at most.
const MAX_DEBUG_FRAME: u64 = 256 << 20;

/// The span of the executable PT_LOAD segments.
fn executable_range(file: &object::File<'_>) -> Option<Range<u64>> {
    let mut range: Option<Range<u64>> = None;
    for seg in file.segments() {
        let SegmentFlags::Elf { p_flags } = seg.flags() else {
            continue;
        };
        if p_flags & object::elf::PF_X == 0 {
            continue;
        }
        let start = seg.address();
        let end = start.saturating_add(seg.size());
        range = Some(match range {
            Some(r) => r.start.min(start)..r.end.max(end),
            None => start..end,
        });
    }
    range
}
