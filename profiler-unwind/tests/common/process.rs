//! Unwinds a capture offline: tables per mapped binary, as the agent would load them, and
//! symbol names from `nm` for the assertions.

use super::capture::{Capture, Mapping};
use object::{Object, ObjectSegment};
use profiler_unwind::{compile_elf, unwind, CompileOptions, CompiledTable, StopReason, UnwindRow, Unwound};
use std::collections::HashMap;
use std::process::Command;

/// One mapped binary: its table (if it has one), PT_LOADs and symbols.
pub struct Binary {
    pub table: Option<CompiledTable>,
    /// (p_offset, p_filesz, p_vaddr) of each PT_LOAD.
    segments: Vec<(u64, u64, u64)>,
    /// (vaddr, name), sorted.
    symbols: Vec<(u64, String)>,
}

impl Binary {
    pub fn load(path: &str) -> Binary {
        let data = std::fs::read(path).unwrap();
        let table = compile_elf(&data, &CompileOptions::default()).ok();
        let file = object::File::parse(&*data).unwrap();
        let segments = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off, size, s.address())
            })
            .collect();
        Binary { table, segments, symbols: nm_symbols(path) }
    }

    fn file_offset_to_vaddr(&self, off: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(p_off, size, _)| (*p_off..p_off + size).contains(&off))
            .map(|(p_off, _, vaddr)| off - p_off + vaddr)
    }

    pub fn symbol(&self, vaddr: u64) -> Option<&str> {
        let i = self.symbols.partition_point(|(a, _)| *a <= vaddr);
        self.symbols.get(i.checked_sub(1)?).map(|(_, n)| n.as_str())
    }
}

fn nm_symbols(path: &str) -> Vec<(u64, String)> {
    let mut symbols = Vec::new();
    for dynamic in [false, true] {
        let mut cmd = Command::new("nm");
        cmd.args(["--defined-only", "--demangle"]);
        if dynamic {
            cmd.arg("-D");
        }
        let out = cmd.arg(path).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else { continue };
            if !matches!(kind, "t" | "T" | "W" | "i") {
                continue;
            }
            if let Ok(addr) = u64::from_str_radix(addr, 16) {
                symbols.push((addr, name.split('@').next().unwrap_or(name).to_owned()));
            }
        }
    }
    symbols.sort();
    symbols.dedup_by_key(|s| s.0);
    symbols
}

/// Binaries by path, loaded once and shared by every capture.
#[derive(Default)]
pub struct Binaries {
    by_path: HashMap<String, Binary>,
}

/// A stack walked from a capture, with a name per frame.
#[derive(Debug)]
pub struct Stack {
    pub frames: Vec<u64>,
    pub names: Vec<String>,
    pub outcome: Unwound,
}

impl Binaries {
    /// The function containing `vaddr` in the binary at `path` (loaded on first use).
    pub fn name_at(&mut self, path: &str, vaddr: u64) -> String {
        let bin = self.by_path.entry(path.to_owned()).or_insert_with(|| Binary::load(path));
        bin.symbol(vaddr).unwrap_or("??").to_owned()
    }

    fn locate<'a>(&'a self, maps: &'a [Mapping], pc: u64) -> Option<(&'a Binary, u64)> {
        let m = maps.iter().find(|m| m.executable && m.start <= pc && pc < m.end)?;
        let bin = self.by_path.get(m.path.as_ref()?)?;
        Some((bin, bin.file_offset_to_vaddr(pc - m.start + m.offset)?))
    }

    /// The row for an absolute pc, or `None` where there is no table (frame-pointer fallback).
    fn lookup(&self, maps: &[Mapping], pc: u64) -> Option<UnwindRow> {
        let (bin, vaddr) = self.locate(maps, pc)?;
        Some(bin.table.as_ref()?.lookup(vaddr))
    }

    pub fn unwind(&mut self, cap: &Capture) -> Stack {
        for m in cap.maps.iter().filter(|m| m.executable) {
            if let Some(path) = &m.path {
                self.by_path.entry(path.clone()).or_insert_with(|| Binary::load(path));
            }
        }
        let mut frames = [0u64; 128];
        let outcome = unwind(
            cap.regs,
            |pc| Ok::<_, StopReason>(self.lookup(&cap.maps, pc)),
            |addr| cap.read_u64(addr),
            127,
            &mut frames,
        );
        let frames = frames[..outcome.depth as usize].to_vec();
        let names = frames
            .iter()
            .enumerate()
            .map(|(i, &pc)| {
                let pc = if i == 0 { pc } else { pc - 1 };
                match self.locate(&cap.maps, pc) {
                    Some((bin, vaddr)) => bin.symbol(vaddr).unwrap_or("??").to_owned(),
                    None => format!("{pc:#x}"),
                }
            })
            .collect();
        Stack { frames, names, outcome }
    }
}
