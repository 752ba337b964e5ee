//! What the eBPF label reader needs to know about a Go binary: its version, the runtime
//! struct offsets for that version, and where `g` lives in TLS.
use object::{Object, ObjectSection, ObjectSymbol};
use profiler_common::{GO_LABELS_MAP, GO_LABELS_SLICE};

/// Offsets for one Go release on amd64. Every supported minor (1.19, 1.21–1.27) is checked
/// against the DWARF of a binary built by that release in `tests/go_offsets.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoOffsets {
    /// offsetof(runtime.g, m).
    pub g_m: u32,
    /// offsetof(runtime.m, curg).
    pub m_curg: u32,
    /// offsetof(runtime.g, labels).
    pub g_labels: u32,
    /// `GO_LABELS_MAP` or `GO_LABELS_SLICE`.
    pub layout: u32,
}

/// The table of verified releases; `None` outside it. 1.17, 1.18 and 1.20 have no toolchain
/// the tests can install, so they are not claimed: their binaries get no labels.
pub fn offsets_for(major: u32, minor: u32) -> Option<GoOffsets> {
    let (m_curg, g_labels, layout) = match (major, minor) {
        (1, 19) => (192, 360, GO_LABELS_MAP),
        (1, 21..=22) => (192, 344, GO_LABELS_MAP),
        (1, 23) => (192, 352, GO_LABELS_MAP),
        (1, 24) => (192, 352, GO_LABELS_SLICE),
        (1, 25) => (184, 344, GO_LABELS_SLICE),
        (1, 26..=27) => (184, 352, GO_LABELS_SLICE),
        _ => return None,
    };
    Some(GoOffsets {
        g_m: 48,
        m_curg,
        g_labels,
        layout,
    })
}

const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";

/// The Go version string (`go1.21.13`) from `.go.buildinfo`, if this is a Go binary.
pub fn go_version(obj: &object::File<'_>) -> Option<String> {
    let data = obj.section_by_name(".go.buildinfo")?.data().ok()?;
    if !data.starts_with(BUILDINFO_MAGIC) || data.len() < 32 {
        return None;
    }
    let ptr_size = *data.get(14)? as usize;
    let flags = *data.get(15)?;
    if flags & 2 != 0 {
        // Go 1.18+: the version is inline at 32, prefixed by a uvarint length.
        let (len, used) = uvarint(data.get(32..)?)?;
        let start = 32 + used;
        let bytes = data.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
        return String::from_utf8(bytes.to_vec()).ok();
    }
    // Before 1.18: a pointer to a string header {ptr, len}.
    let read_ptr = |buf: &[u8], at: usize| -> Option<u64> {
        let b = buf.get(at..at + ptr_size)?;
        Some(match ptr_size {
            8 => u64::from_le_bytes(b.try_into().ok()?),
            4 => u64::from(u32::from_le_bytes(b.try_into().ok()?)),
            _ => return None,
        })
    };
    let header_addr = read_ptr(data, 16)?;
    let header = read_at(obj, header_addr, 2 * ptr_size)?;
    let str_addr = read_ptr(header, 0)?;
    let len = read_ptr(header, ptr_size)?;
    let bytes = read_at(
        obj,
        str_addr,
        usize::try_from(len).ok().filter(|&l| l < 256)?,
    )?;
    String::from_utf8(bytes.to_vec()).ok()
}

fn read_at<'a>(obj: &object::File<'a>, addr: u64, len: usize) -> Option<&'a [u8]> {
    for s in obj.sections() {
        // Section headers are input: address + size may not fit a u64.
        if let Some(off) = addr.checked_sub(s.address()).filter(|&off| off < s.size()) {
            let off = usize::try_from(off).ok()?;
            return s.data().ok()?.get(off..off.checked_add(len)?);
        }
    }
    None
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// `go1.21.13` → (1, 21).
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let rest = v.strip_prefix("go")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Offset of a TLS symbol from the thread pointer in the main executable (static TLS,
/// x86-64 variant II): the TLS block ends at the thread pointer.
pub fn static_tls_offset(obj: &object::File<'_>, symbol: &str) -> Option<i64> {
    let sym = obj
        .symbols()
        .chain(obj.dynamic_symbols())
        .find(|s| s.name() == Ok(symbol) && s.kind() == object::SymbolKind::Tls)?;
    let (vaddr, memsz, align) = tls_segment(obj)?;
    // Both come from the file: the difference may not fit.
    (sym.address() as i64).checked_sub(executable_tls_block_offset(vaddr, memsz, align)? as i64)
}

/// Distance from the thread pointer down to the executable's TLS block, as glibc lays it out
/// for the first module on x86-64: the block ends at the thread pointer, aligned so that the
/// segment's first byte keeps its alignment offset.
fn executable_tls_block_offset(vaddr: u64, memsz: u64, align: u64) -> Option<u64> {
    let align = align.max(1);
    if !align.is_power_of_two() {
        return None;
    }
    let firstbyte = align.wrapping_sub(vaddr & (align - 1)) & (align - 1);
    let size = memsz.checked_sub(firstbyte)?;
    Some(size.checked_add(align - 1)? & !(align - 1)).map(|r| r + firstbyte)
}

fn tls_segment(obj: &object::File<'_>) -> Option<(u64, u64, u64)> {
    if let object::File::Elf64(elf) = obj {
        use object::read::elf::ProgramHeader as _;
        let endian = elf.endian();
        for ph in elf.elf_program_headers() {
            if ph.p_type(endian) == object::elf::PT_TLS {
                return Some((ph.p_vaddr(endian), ph.p_memsz(endian), ph.p_align(endian)));
            }
        }
    }
    None
}

/// Where `g` lives relative to the thread pointer: `runtime.tlsg` when the binary has
/// static TLS (cgo, external linking), else the fixed slot internal linking uses.
pub fn g_tls_offset(obj: &object::File<'_>) -> i64 {
    static_tls_offset(obj, "runtime.tlsg").unwrap_or(-8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("go1.21.13"), Some((1, 21)));
        assert_eq!(parse_version("go1.24rc1"), Some((1, 24)));
        assert_eq!(parse_version("go1.27.3 X:nodwarf5"), Some((1, 27)));
        assert_eq!(parse_version("devel +abc"), None);
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80; 12]), None);
    }

    #[test]
    fn tls_block_offsets() {
        assert_eq!(executable_tls_block_offset(0x3dd8, 8, 8), Some(8));
        assert_eq!(executable_tls_block_offset(0x3dd0, 0x14, 16), Some(0x20));
        assert_eq!(executable_tls_block_offset(0, 0, 1), Some(0));
        assert_eq!(executable_tls_block_offset(0, 8, 3), None);
    }

    #[test]
    fn table_has_no_gaps_in_supported_range() {
        for minor in [19, 21, 22, 23, 24, 25, 26, 27] {
            assert!(offsets_for(1, minor).is_some(), "1.{minor}");
        }
        for minor in [16, 17, 18, 20, 28] {
            assert!(offsets_for(1, minor).is_none(), "1.{minor} is not verified");
        }
        assert!(offsets_for(1, 99).is_none());
        assert_eq!(offsets_for(1, 23).unwrap().layout, GO_LABELS_MAP);
        assert_eq!(offsets_for(1, 24).unwrap().layout, GO_LABELS_SLICE);
    }
}
