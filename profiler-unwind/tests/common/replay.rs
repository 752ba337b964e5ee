//! Captured stacks as small text files: registers, the stack bytes the walk read, the mappings
//! and the table rows it looked at, and the expected frames. Replaying one drives the walker
//! exactly as the kernel would, with no process or binary needed.

use profiler_unwind::{
    lookup_row, unwind, Regs, StopReason, UnwindMapping, UnwindRow, UnwindTableInfo, Unwound,
    NO_TABLE,
};
use std::fmt::Write as _;

#[derive(Debug)]
pub struct Replay {
    pub comment: String,
    pub regs: Regs,
    pub stack_start: u64,
    pub stack: Vec<u8>,
    /// (start, end, value) of each executable mapping the walk visited.
    pub mappings: Vec<(u64, u64, UnwindMapping)>,
    pub infos: Vec<UnwindTableInfo>,
    pub rows: Vec<UnwindRow>,
    pub frames: Vec<u64>,
    pub names: Vec<String>,
    pub stop: StopReason,
}

impl Replay {
    pub fn unwind(&self) -> (Vec<u64>, Unwound) {
        let lookup = |pc: u64| {
            let Some((_, _, m)) = self.mappings.iter().find(|(s, e, _)| *s <= pc && pc < *e) else {
                return Ok(None);
            };
            if m.table_id == NO_TABLE {
                return Ok(None);
            }
            let info = self
                .infos
                .get(m.table_id as usize)
                .ok_or(StopReason::BadFrame)?;
            lookup_row(info, pc.wrapping_sub(m.bias), |i| {
                self.rows.get(i as usize).copied()
            })
            .map(Some)
        };
        let read = |addr: u64| {
            let off = usize::try_from(addr.checked_sub(self.stack_start)?).ok()?;
            Some(u64::from_le_bytes(
                self.stack.get(off..off.checked_add(8)?)?.try_into().ok()?,
            ))
        };
        let mut frames = [0u64; 128];
        let got = unwind(self.regs, lookup, read, 127, &mut frames);
        (frames[..got.depth as usize].to_vec(), got)
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for line in self.comment.lines() {
            writeln!(out, "# {line}").unwrap();
        }
        let r = &self.regs;
        writeln!(out, "regs {:x} {:x} {:x}", r.rip, r.rsp, r.rbp).unwrap();
        let hex: String = self.stack.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(out, "stack {:x} {hex}", self.stack_start).unwrap();
        for (start, end, m) in &self.mappings {
            writeln!(
                out,
                "mapping {start:x} {end:x} {:x} {}",
                m.bias, m.table_id as i64
            )
            .unwrap();
        }
        for t in &self.infos {
            writeln!(out, "table {:x} {} {}", t.pc_base, t.first_row, t.row_count).unwrap();
        }
        for row in &self.rows {
            writeln!(
                out,
                "row {:x} {} {} {}",
                row.pc, row.cfa_offset, row.rbp_offset, row.kinds
            )
            .unwrap();
        }
        let frames: Vec<String> = self.frames.iter().map(|f| format!("{f:x}")).collect();
        writeln!(out, "frames {}", frames.join(" ")).unwrap();
        writeln!(out, "names {}", self.names.join(" | ")).unwrap();
        writeln!(out, "stop {}", self.stop.name()).unwrap();
        out
    }

    pub fn parse(text: &str) -> Replay {
        let mut r = Replay {
            comment: String::new(),
            regs: Regs::default(),
            stack_start: 0,
            stack: Vec::new(),
            mappings: Vec::new(),
            infos: Vec::new(),
            rows: Vec::new(),
            frames: Vec::new(),
            names: Vec::new(),
            stop: StopReason::BadFrame,
        };
        let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
            let f: Vec<&str> = rest.split_whitespace().collect();
            match tag {
                "regs" => {
                    r.regs = Regs {
                        rip: hex(f[0]),
                        rsp: hex(f[1]),
                        rbp: hex(f[2]),
                    }
                }
                "stack" => {
                    r.stack_start = hex(f[0]);
                    let bytes = f.get(1).copied().unwrap_or("");
                    r.stack = (0..bytes.len() / 2)
                        .map(|i| u8::from_str_radix(&bytes[2 * i..2 * i + 2], 16).unwrap())
                        .collect();
                }
                "mapping" => {
                    let id: i64 = f[3].parse().unwrap();
                    let m = UnwindMapping {
                        bias: hex(f[2]),
                        table_id: id as u32,
                        _pad: 0,
                    };
                    r.mappings.push((hex(f[0]), hex(f[1]), m));
                }
                "table" => r.infos.push(UnwindTableInfo {
                    pc_base: hex(f[0]),
                    first_row: f[1].parse().unwrap(),
                    row_count: f[2].parse().unwrap(),
                }),
                "row" => r.rows.push(UnwindRow {
                    pc: hex(f[0]) as u32,
                    cfa_offset: f[1].parse().unwrap(),
                    rbp_offset: f[2].parse().unwrap(),
                    kinds: f[3].parse().unwrap(),
                }),
                "frames" => r.frames = f.iter().map(|s| hex(s)).collect(),
                "names" => r.names = rest.split(" | ").map(str::to_owned).collect(),
                "stop" => r.stop = *StopReason::ALL.iter().find(|s| s.name() == rest).unwrap(),
                _ => panic!("unknown line {line:?}"),
            }
        }
        r
    }
}
