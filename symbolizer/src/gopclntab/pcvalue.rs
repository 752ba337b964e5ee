//! pcvalue programs: (value delta, pc delta) uvarint pairs mapping PC ranges to values.

use super::read::uvarint;

/// The value at `target` of the program starting at `tab[off..]` for a function at `entry`.
/// `None` when the program is corrupt or does not cover `target`.
pub(crate) fn pcvalue(tab: &[u8], off: usize, entry: u64, target: u64, quantum: u64) -> Option<i32> {
    if off == 0 || off >= tab.len() {
        return None;
    }
    let mut pos = off;
    let mut val: i32 = -1;
    let mut pc = entry;
    let mut first = true;
    // Every step consumes at least two bytes, so this ends within the table.
    loop {
        let uv = uvarint(tab, &mut pos)?;
        if uv == 0 && !first {
            return None;
        }
        first = false;
        let delta = ((uv >> 1) as i64) ^ -((uv & 1) as i64);
        val = val.wrapping_add(delta as i32);
        let pcdelta = uvarint(tab, &mut pos)?;
        pc = pc.checked_add(pcdelta.checked_mul(quantum)?)?;
        if target < pc {
            return Some(val);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pcvalue;

    #[test]
    fn decodes_ranges() {
        // val -1 -> 10 (zigzag 22) over 4 bytes; then +2 (zigzag 4) over 6 bytes; end.
        let tab = [0u8, 22, 4, 4, 6, 0];
        assert_eq!(pcvalue(&tab, 1, 0x100, 0x100, 1), Some(10));
        assert_eq!(pcvalue(&tab, 1, 0x100, 0x103, 1), Some(10));
        assert_eq!(pcvalue(&tab, 1, 0x100, 0x104, 1), Some(12));
        assert_eq!(pcvalue(&tab, 1, 0x100, 0x109, 1), Some(12));
        assert_eq!(pcvalue(&tab, 1, 0x100, 0x10a, 1), None);
        assert_eq!(pcvalue(&tab, 0, 0x100, 0x100, 1), None);
        for cut in 0..tab.len() {
            let _ = pcvalue(&tab[..cut], 1, 0x100, 0x105, 1);
        }
    }
}
