//! pcvalue programs: (value delta, pc delta) uvarint pairs mapping PC ranges to values.

use super::read::uvarint;

/// Streaming reference decoder, kept to check [`decode`] against.
/// The value at `target` of the program starting at `tab[off..]` for a function at `entry`.
/// `None` when the program is corrupt or does not cover `target`.
#[cfg(test)]
pub(crate) fn pcvalue(
    tab: &[u8],
    off: usize,
    entry: u64,
    target: u64,
    quantum: u64,
) -> Option<i32> {
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

/// A whole pcvalue program decoded once, as runs: `ends[i]` (pc offset from the function's
/// entry, exclusive) and `values[i]`. Two flat arrays keep the binary search cache-friendly.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    ends: Vec<u32>,
    values: Vec<i32>,
}

impl Runs {
    /// The value at `target`, as the streaming decoder would compute it.
    pub fn value_at(&self, entry: u64, target: u64) -> Option<i32> {
        let off = u32::try_from(target.checked_sub(entry)?).ok()?;
        let i = self.ends.partition_point(|&end| end <= off);
        self.values.get(i).copied()
    }
}

pub(crate) fn decode(tab: &[u8], off: usize, quantum: u64) -> Runs {
    let mut runs = Runs::default();
    if off == 0 || off >= tab.len() {
        return runs;
    }
    let (mut pos, mut val, mut pc) = (off, -1i32, 0u64);
    while let Some(uv) = uvarint(tab, &mut pos) {
        if uv == 0 && !runs.ends.is_empty() {
            break;
        }
        let delta = ((uv >> 1) as i64) ^ -((uv & 1) as i64);
        val = val.wrapping_add(delta as i32);
        let Some(next) = uvarint(tab, &mut pos)
            .and_then(|d| d.checked_mul(quantum))
            .and_then(|d| pc.checked_add(d))
        else {
            break;
        };
        pc = next;
        let Ok(end) = u32::try_from(pc) else { break };
        runs.ends.push(end);
        runs.values.push(val);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::{decode, pcvalue};

    #[test]
    fn decoded_matches_streaming() {
        let tab = [0u8, 22, 4, 4, 6, 0];
        let runs = decode(&tab, 1, 1);
        for pc in 0x100..0x110 {
            assert_eq!(
                runs.value_at(0x100, pc),
                pcvalue(&tab, 1, 0x100, pc, 1),
                "{pc:#x}"
            );
        }
    }

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
