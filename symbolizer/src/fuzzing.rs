//! Entry points shared by the `cargo fuzz` targets (symbolizer/fuzz) and the seed-corpus
//! regression test. Each must return without panicking on any input.

use crate::gopclntab::GoTable;
use crate::{Binary, Kallsyms, Symbolizer, SymbolizerConfig};

/// Addresses to probe: a spread over the executable segments plus values taken from the input.
fn probes(bin: &Binary, data: &[u8]) -> Vec<u64> {
    let mut v: Vec<u64> = data
        .chunks_exact(8)
        .take(16)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    for s in bin.load_segments().iter().filter(|s| s.executable).take(4) {
        let step = (s.p_filesz / 64).max(1);
        v.extend((0..64u64).map(|i| s.p_vaddr.wrapping_add(i.wrapping_mul(step))));
    }
    v
}

/// A whole ELF file: headers, symbol tables, DWARF, pclntab.
pub fn elf(data: &[u8]) {
    let Ok(bin) = Binary::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = bin.file_offset_to_vaddr(u64::from(data.first().copied().unwrap_or(0)) << 12);
    let config = SymbolizerConfig {
        debug_dirs: Vec::new(),
        ..Default::default()
    };
    let _ = Symbolizer::new(config).symbolize(&bin, &probes(&bin, data));
}

/// Raw DWARF: the input is cut into .debug_info, .debug_abbrev, .debug_line, .debug_str,
/// .debug_ranges/.debug_rnglists and .debug_addr by the u16 lengths in its first 12 bytes.
pub fn dwarf(data: &[u8]) {
    use gimli::{EndianSlice, LittleEndian, SectionId};
    let Some((head, mut rest)) = data.split_at_checked(12) else {
        return;
    };
    let mut parts = Vec::new();
    for c in head.chunks_exact(2) {
        let n = usize::from(u16::from_le_bytes([c[0], c[1]])).min(rest.len());
        let (p, r) = rest.split_at(n);
        parts.push(p);
        rest = r;
    }
    let pick = |id: SectionId| -> Result<EndianSlice<'_, LittleEndian>, gimli::Error> {
        let i = match id {
            SectionId::DebugInfo => 0,
            SectionId::DebugAbbrev => 1,
            SectionId::DebugLine => 2,
            SectionId::DebugStr | SectionId::DebugLineStr => 3,
            SectionId::DebugRanges | SectionId::DebugRngLists => 4,
            SectionId::DebugAddr | SectionId::DebugStrOffsets => 5,
            _ => return Ok(EndianSlice::new(&[], LittleEndian)),
        };
        Ok(EndianSlice::new(
            parts.get(i).copied().unwrap_or(&[]),
            LittleEndian,
        ))
    };
    let Ok(dwarf) = gimli::Dwarf::load(pick) else {
        return;
    };
    let Ok(ctx) = addr2line::Context::from_dwarf(dwarf) else {
        return;
    };
    for probe in [0u64, 0x1000, 0x401000, 0x1139, u64::MAX - 1] {
        if let Ok(mut frames) = ctx.find_frames(probe).skip_all_loads() {
            for _ in 0..64 {
                match frames.next() {
                    Ok(Some(f)) => {
                        let _ = f
                            .function
                            .as_ref()
                            .map(|n| n.raw_name().map(|n| crate::demangle::demangle(&n)));
                    }
                    _ => break,
                }
            }
        }
        let _ = ctx.find_location(probe);
    }
}

/// A bare pclntab (no ELF around it).
pub fn gopclntab(data: &[u8]) {
    let Some(t) = GoTable::from_pclntab(data.to_vec()) else {
        return;
    };
    let entries: Vec<u64> = t.functions().take(256).map(|(e, _)| e).collect();
    for &e in &entries {
        for pc in [e, e.wrapping_add(1), e.wrapping_add(17)] {
            let _ = t.lookup(pc, true);
        }
    }
    let _ = t.lookup(t.text_start(), true);
}

/// `/proc/kallsyms` text, plus lookups at addresses taken from the input.
pub fn kallsyms(data: &[u8]) {
    let k = Kallsyms::parse(&String::from_utf8_lossy(data));
    for c in data.chunks_exact(8).take(32) {
        let _ = k.lookup(u64::from_le_bytes(c.try_into().unwrap_or_default()));
    }
    let _ = k.lookup(0xffff_ffff_8100_0000);
}

/// Symbol names through both demanglers.
pub fn demangle(data: &[u8]) {
    let _ = crate::demangle::demangle(&String::from_utf8_lossy(data));
}
