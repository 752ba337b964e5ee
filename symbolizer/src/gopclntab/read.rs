//! Bounds-checked little readers over untrusted bytes: every access returns `Option`.

pub(crate) fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(crate) fn i32_at(b: &[u8], off: usize) -> Option<i32> {
    u32_at(b, off).map(|v| v as i32)
}

pub(crate) fn i16_at(b: &[u8], off: usize) -> Option<i16> {
    Some(i16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// A pointer-sized word (4 or 8 bytes), little-endian.
pub(crate) fn word_at(b: &[u8], off: usize, ptr_size: u8) -> Option<u64> {
    match ptr_size {
        8 => Some(u64::from_le_bytes(
            b.get(off..off.checked_add(8)?)?.try_into().ok()?,
        )),
        4 => u32_at(b, off).map(u64::from),
        _ => None,
    }
}

/// A NUL-terminated string, at most 64 KiB long.
pub(crate) fn cstr_at(b: &[u8], off: usize) -> Option<&str> {
    let rest = b.get(off..)?;
    let rest = &rest[..rest.len().min(1 << 16)];
    let len = rest.iter().position(|&c| c == 0)?;
    std::str::from_utf8(&rest[..len]).ok()
}

/// Go's uvarint: 7 bits per byte, at most 10 bytes. Advances `pos`.
pub(crate) fn uvarint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_are_checked() {
        let b = [1u8, 2, 3, 4, 5];
        assert_eq!(u32_at(&b, 0), Some(0x0403_0201));
        assert_eq!(u32_at(&b, 2), None);
        assert_eq!(u32_at(&b, usize::MAX), None);
        assert_eq!(word_at(&b, 0, 8), None);
        assert_eq!(cstr_at(b"ab\0c", 0), Some("ab"));
        assert_eq!(cstr_at(b"abc", 0), None);
        let mut p = 0;
        assert_eq!(uvarint(&[0x96, 0x01], &mut p), Some(150));
        assert_eq!(p, 2);
        let mut p = 0;
        assert_eq!(uvarint(&[0xff; 12], &mut p), None);
    }
}
