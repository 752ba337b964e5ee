//! Finds `.eh_frame` and the base addresses it needs in an ELF file.

use super::{compile_eh_frame, CompileOptions, CompiledTable, Error, SectionAddrs};
use object::{Architecture, Object, ObjectSection, ObjectSegment, SegmentFlags};
use std::ops::Range;

/// Compiles the `.eh_frame` of an x86-64 ELF file (executable or shared object).
pub fn compile_elf(data: &[u8], opts: &CompileOptions) -> Result<CompiledTable, Error> {
    let file = object::File::parse(data)?;
    if file.architecture() != Architecture::X86_64 || !file.is_little_endian() {
        return Err(Error::UnsupportedArch);
    }
    let eh_frame = file.section_by_name(".eh_frame").ok_or(Error::NoEhFrame)?;
    let addrs = SectionAddrs {
        eh_frame: eh_frame.address(),
        text: file.section_by_name(".text").map(|s| s.address()),
        got: file.section_by_name(".got").map(|s| s.address()),
        code: executable_range(&file),
    };
    compile_eh_frame(eh_frame.data()?, &addrs, opts)
}

/// The span of the executable PT_LOAD segments.
fn executable_range(file: &object::File<'_>) -> Option<Range<u64>> {
    let mut range: Option<Range<u64>> = None;
    for seg in file.segments() {
        let SegmentFlags::Elf { p_flags } = seg.flags() else { continue };
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
