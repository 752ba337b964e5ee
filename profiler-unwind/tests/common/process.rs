//! Unwinds a capture offline along the kernel's data path: every binary's rows in one shared
//! array with an `UnwindTableInfo` per binary, the process's mappings in an (emulated) LPM
//! trie of `MappingKey -> UnwindMapping`, and rows found with `lookup_row`. Symbol names for
//! the assertions come from `nm`.

use super::capture::{Capture, Mapping};
use super::replay::Replay;
use object::{Object, ObjectSegment};
use profiler_unwind::{
    compile_elf, load_segments, lookup_row, lpm_blocks, mapping_bias, unwind, CompileOptions,
    CompiledTable, LoadSegment, MappingKey, StopReason, UnwindMapping, UnwindRow, UnwindTableInfo,
    Unwound, NO_TABLE,
};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;

/// One mapped binary: its table (if it has one), PT_LOADs and symbols.
pub struct Binary {
    pub table: Option<CompiledTable>,
    /// (p_offset, p_filesz, p_vaddr) of each PT_LOAD.
    segments: Vec<(u64, u64, u64)>,
    load_segments: Vec<LoadSegment>,
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
        let load_segments = load_segments(&data).unwrap();
        Binary {
            table,
            segments,
            load_segments,
            symbols: nm_symbols(path),
        }
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
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
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

/// Binaries by path, loaded once and shared by every capture, and the kernel-side maps.
#[derive(Default)]
pub struct Binaries {
    by_path: HashMap<String, Binary>,
    /// Table id per path (an index into `infos`).
    table_ids: HashMap<String, u32>,
    /// All rows of all tables: the shared row array map.
    rows: Vec<UnwindRow>,
    infos: Vec<UnwindTableInfo>,
}

/// An LPM trie of one process's mappings: (prefix length, key) -> value.
#[derive(Default)]
struct Trie(HashMap<(u32, MappingKey), UnwindMapping>);

impl Trie {
    fn longest_match(&self, pid: u32, addr: u64) -> Option<UnwindMapping> {
        (32..=MappingKey::BITS).rev().find_map(|prefix| {
            let addr_bits = prefix - 32;
            let mask = if addr_bits == 0 {
                0
            } else {
                u64::MAX << (64 - addr_bits)
            };
            self.0
                .get(&(prefix, MappingKey::new(pid, addr & mask)))
                .copied()
        })
    }
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
        let bin = self
            .by_path
            .entry(path.to_owned())
            .or_insert_with(|| Binary::load(path));
        bin.symbol(vaddr).unwrap_or("??").to_owned()
    }

    /// The path of the binary mapped at `pc` in `maps` and the ELF vaddr `pc` is at in it,
    /// from `/proc/PID/maps` and the file's program headers. The binary must have been loaded
    /// by an earlier [`Binaries::unwind`] or [`Binaries::record`] of the same capture.
    pub fn file_vaddr<'a>(&self, maps: &'a [Mapping], pc: u64) -> Option<(&'a str, u64)> {
        let m = maps
            .iter()
            .find(|m| m.executable && m.start <= pc && pc < m.end)?;
        let path = m.path.as_deref()?;
        let vaddr = self
            .by_path
            .get(path)?
            .file_offset_to_vaddr(pc - m.start + m.offset)?;
        Some((path, vaddr))
    }

    fn locate<'a>(&'a self, maps: &'a [Mapping], pc: u64) -> Option<(&'a Binary, u64)> {
        let m = maps
            .iter()
            .find(|m| m.executable && m.start <= pc && pc < m.end)?;
        let bin = self.by_path.get(m.path.as_ref()?)?;
        Some((bin, bin.file_offset_to_vaddr(pc - m.start + m.offset)?))
    }

    /// Loads `path` once, appending its rows to the shared array.
    fn table_id(&mut self, path: &str) -> u32 {
        if let Some(id) = self.table_ids.get(path) {
            return *id;
        }
        let bin = self
            .by_path
            .entry(path.to_owned())
            .or_insert_with(|| Binary::load(path));
        let id = match &bin.table {
            Some(table) => {
                let info = table.info(self.rows.len() as u32);
                self.rows.extend_from_slice(&table.rows);
                self.infos.push(info);
                self.infos.len() as u32 - 1
            }
            None => NO_TABLE,
        };
        self.table_ids.insert(path.to_owned(), id);
        id
    }

    /// What the agent would put in the LPM trie for this process.
    fn trie(&mut self, pid: u32, maps: &[Mapping]) -> Trie {
        let mut trie = Trie::default();
        for m in maps.iter().filter(|m| m.executable) {
            let Some(path) = &m.path else { continue };
            let table_id = self.table_id(path);
            let bin = &self.by_path[path];
            let Some(bias) = mapping_bias(m.start, m.end - m.start, m.offset, &bin.load_segments)
            else {
                continue;
            };
            let value = UnwindMapping {
                bias,
                table_id,
                _pad: 0,
            };
            for (key, prefix) in lpm_blocks(pid, m.start, m.end) {
                trie.0.insert((prefix, key), value);
            }
        }
        trie
    }

    /// The kernel's per-frame lookup: mapping, then table info, then binary search.
    fn lookup(&self, trie: &Trie, pid: u32, pc: u64) -> Result<Option<UnwindRow>, StopReason> {
        let Some(mapping) = trie.longest_match(pid, pc) else {
            return Ok(None);
        };
        let Some(info) = self.infos.get(mapping.table_id as usize) else {
            return Ok(None);
        };
        lookup_row(info, pc.wrapping_sub(mapping.bias), |i| {
            self.rows.get(i as usize).copied()
        })
        .map(Some)
    }

    /// The capture reduced to what its unwinding touched: the stack bytes read, the mappings
    /// and the table rows looked at. Replaying it needs neither the process nor its binaries.
    pub fn record(&mut self, cap: &Capture, comment: &str) -> Replay {
        const PID: u32 = 4242;
        let trie = self.trie(PID, &cap.maps);
        let stack = self.unwind(cap);
        let touched_rows = RefCell::new(BTreeSet::new());
        let used_maps = RefCell::new(BTreeMap::new());
        let read_end = Cell::new(cap.stack_start);
        let mut frames = [0u64; 128];
        unwind(
            cap.regs,
            |pc| {
                let Some(mapping) = trie.longest_match(PID, pc) else {
                    return Ok(None);
                };
                let m = cap
                    .maps
                    .iter()
                    .find(|m| m.start <= pc && pc < m.end)
                    .unwrap();
                used_maps.borrow_mut().insert(m.start, (m.end, mapping));
                let Some(info) = self.infos.get(mapping.table_id as usize) else {
                    return Ok(None);
                };
                lookup_row(info, pc.wrapping_sub(mapping.bias), |i| {
                    touched_rows.borrow_mut().insert((mapping.table_id, i));
                    self.rows.get(i as usize).copied()
                })
                .map(Some)
            },
            |addr| {
                read_end.set(read_end.get().max(addr + 8));
                cap.read_u64(addr)
            },
            127,
            &mut frames,
        );
        // Renumber the tables that were used, keeping only the rows touched.
        let mut infos = Vec::new();
        let mut rows = Vec::new();
        let mut new_ids = BTreeMap::new();
        for (table_id, index) in touched_rows.into_inner() {
            let id = *new_ids.entry(table_id).or_insert_with(|| {
                let old = self.infos[table_id as usize];
                infos.push(UnwindTableInfo {
                    first_row: rows.len() as u32,
                    row_count: 0,
                    ..old
                });
                infos.len() as u32 - 1
            });
            rows.push(self.rows[index as usize]);
            infos[id as usize].row_count += 1;
        }
        let mappings = used_maps
            .into_inner()
            .into_iter()
            .map(|(start, (end, mut m))| {
                m.table_id = new_ids.get(&m.table_id).copied().unwrap_or(NO_TABLE);
                (start, end, m)
            })
            .collect();
        let len = (read_end.get() - cap.stack_start) as usize;
        Replay {
            comment: comment.to_owned(),
            regs: cap.regs,
            stack_start: cap.stack_start,
            stack: cap.stack[..len].to_vec(),
            mappings,
            infos,
            rows,
            frames: stack.frames,
            names: stack.names,
            stop: stack.outcome.stop,
        }
    }

    pub fn unwind(&mut self, cap: &Capture) -> Stack {
        const PID: u32 = 4242;
        let trie = self.trie(PID, &cap.maps);
        let mut frames = [0u64; 128];
        let outcome = unwind(
            cap.regs,
            |pc| self.lookup(&trie, PID, pc),
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
        Stack {
            frames,
            names,
            outcome,
        }
    }
}
