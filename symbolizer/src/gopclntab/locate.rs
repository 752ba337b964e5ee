//! Finding the pclntab, moduledata and symbols, in full, stripped and section-less files.

use object::{Object, ObjectSection, ObjectSymbol};

use super::memory::Memory;
use super::read::{u8_at, word_at};
use crate::Binary;

pub(crate) struct Found {
    pub start: usize,
    pub end: usize,
    pub vaddr: u64,
}

pub(crate) fn section_address(obj: &object::File<'_>, name: &str) -> Option<u64> {
    obj.section_by_name(name).map(|s| s.address())
}

pub(crate) fn section_data<'a>(obj: &object::File<'a>, name: &str) -> Option<&'a [u8]> {
    obj.section_by_name(name)?.data().ok()
}

pub(crate) fn symbol_address(obj: &object::File<'_>, name: &str) -> Option<u64> {
    obj.symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| s.address())
        .filter(|&a| a != 0)
}

fn file_range(binary: &Binary, vaddr: u64, len: u64) -> Option<Found> {
    let start = binary.load_segments().iter().find_map(|s| {
        let rel = vaddr.checked_sub(s.p_vaddr)?;
        (rel < s.p_filesz).then(|| s.p_offset + rel)
    })?;
    let start = usize::try_from(start).ok()?;
    let end = start
        .checked_add(usize::try_from(len).ok()?)?
        .min(binary.bytes().len());
    (start < end).then_some(Found { start, end, vaddr })
}

/// `.gopclntab`, `.data.rel.ro.gopclntab`, `runtime.pclntab`..`runtime.epclntab`, then a
/// validated magic scan of the read-only segments.
pub(crate) fn find_pclntab(binary: &Binary, obj: &object::File<'_>) -> Option<Found> {
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(s) = obj.section_by_name(name) {
            let (off, size) = s.file_range()?;
            let start = usize::try_from(off).ok()?;
            let end = start.checked_add(usize::try_from(size).ok()?)?;
            if end <= binary.bytes().len() && start < end {
                return Some(Found {
                    start,
                    end,
                    vaddr: s.address(),
                });
            }
        }
    }
    if let (Some(a), Some(b)) = (
        symbol_address(obj, "runtime.pclntab"),
        symbol_address(obj, "runtime.epclntab"),
    ) {
        if let Some(f) = b.checked_sub(a).and_then(|len| file_range(binary, a, len)) {
            return Some(f);
        }
    }
    // Scanning costs a pass over the read-only data: only for files that look like Go (a Go
    // build ID or buildinfo) or that have no section headers to tell.
    let looks_go = binary.go_build_id().is_some()
        || obj.section_by_name(".go.buildinfo").is_some()
        || obj.sections().next().is_none();
    if looks_go {
        scan_for_magic(binary)
    } else {
        None
    }
}

/// A pclntab header at `b[0..]`: known magic, zero pad bytes, sane quantum and pointer size.
fn plausible_header(b: &[u8]) -> bool {
    let magic = b
        .get(0..4)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    matches!(
        magic,
        Some(0xffff_fffb | 0xffff_fffa | 0xffff_fff0 | 0xffff_fff1)
    ) && u8_at(b, 4) == Some(0)
        && u8_at(b, 5) == Some(0)
        && matches!(u8_at(b, 6), Some(1 | 2 | 4))
        && matches!(u8_at(b, 7), Some(4 | 8))
        && word_at(b, 8, u8_at(b, 7).unwrap_or(8))
            .is_some_and(|n| n > 0 && n < (b.len() as u64) / 8)
}

fn scan_for_magic(binary: &Binary) -> Option<Found> {
    let bytes = binary.bytes();
    for seg in binary.load_segments().iter().filter(|s| !s.executable) {
        let start = usize::try_from(seg.p_offset).ok()?;
        let end = start
            .checked_add(usize::try_from(seg.p_filesz).ok()?)?
            .min(bytes.len());
        let data = bytes.get(start..end)?;
        // The header is pointer-aligned.
        let mut off = 0;
        while off + 16 <= data.len() {
            if plausible_header(&data[off..]) {
                return Some(Found {
                    start: start + off,
                    end,
                    vaddr: seg.p_vaddr + off as u64,
                });
            }
            off += 4;
        }
    }
    None
}

/// `runtime.firstmoduledata`, else the `.go.module` section (Go 1.26+), else a scan of the
/// writable segments for a word pointing at the pclntab whose next word points at funcnametab.
pub(crate) fn find_moduledata(
    binary: &Binary,
    obj: &object::File<'_>,
    mem: &Memory,
    pclntab_vaddr: u64,
    funcnametab_off: u64,
) -> Option<u64> {
    let valid = |m: u64| {
        let ps = u64::from(mem.ptr_size);
        mem.word(m) == Some(pclntab_vaddr)
            && mem.word(m + ps) == pclntab_vaddr.checked_add(funcnametab_off)
    };
    if let Some(m) = symbol_address(obj, "runtime.firstmoduledata").filter(|&m| valid(m)) {
        return Some(m);
    }
    if let Some(m) = section_address(obj, ".go.module").filter(|&m| valid(m)) {
        return Some(m);
    }
    let ps = usize::from(mem.ptr_size);
    for seg in binary.load_segments().iter().filter(|s| !s.executable) {
        let data = mem.bytes_from(seg.p_vaddr)?;
        let mut off = 0;
        while off + 2 * ps <= data.len() {
            let vaddr = seg.p_vaddr + off as u64;
            let w = word_at(data, off, mem.ptr_size);
            // In PIE files the word may be zero with the value in a relocation.
            if (w == Some(pclntab_vaddr) || w == Some(0)) && valid(vaddr) {
                return Some(vaddr);
            }
            off += ps;
        }
    }
    None
}
