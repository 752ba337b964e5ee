//! Go's pclntab: function names, files, lines and inline chains, read without a Go toolchain.
//! Works on stripped (`-s -w`) and PIE binaries; formats of Go 1.2 through 1.27.

mod locate;
mod memory;
mod pcvalue;
mod read;

use std::cell::RefCell;
use std::sync::Arc;

use crate::cache::AddrMap;
use crate::{Binary, Frame, Miss};
use memory::Memory;
use pcvalue::{decode, Runs};
use read::{cstr_at, i16_at, i32_at, u32_at, u8_at, word_at};

/// The pclntab layout family, told by the header magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GoFamily {
    /// 0xfffffffb: Go 1.2 to 1.15. Names, files and lines; no inline chains.
    Go12,
    /// 0xfffffffa: Go 1.16 and 1.17.
    Go116,
    /// 0xfffffff0: Go 1.18 and 1.19.
    Go118,
    /// 0xfffffff1: Go 1.20 and later.
    Go120,
}

impl GoFamily {
    fn from_magic(m: u32) -> Option<GoFamily> {
        match m {
            0xffff_fffb => Some(GoFamily::Go12),
            0xffff_fffa => Some(GoFamily::Go116),
            0xffff_fff0 => Some(GoFamily::Go118),
            0xffff_fff1 => Some(GoFamily::Go120),
            _ => None,
        }
    }
}

const PCDATA_INL_TREE_INDEX: usize = 2;
const FUNCDATA_INL_TREE: usize = 3;
/// Deeper inline chains than this are treated as corrupt (the Go compiler caps far lower).
const MAX_INLINE_DEPTH: usize = 100;

/// One Go module's pclntab, parsed once per binary.
pub struct GoTable {
    mem: Memory,
    /// File range of the table.
    tab_start: usize,
    tab_end: usize,
    family: GoFamily,
    quantum: u64,
    ptr_size: u8,
    nfunc: usize,
    text_start: u64,
    /// Offsets inside the table (1.16+). For 1.2 all are 0 (everything is table-relative).
    funcnametab: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    /// Where functab and the `_func` records start.
    pclntab: usize,
    /// `moduledata.gofunc` (1.18+): base of funcdata offsets.
    gofunc: Option<u64>,
    /// Decoded pcvalue programs of recently used functions, keyed by funcoff.
    decoded: RefCell<AddrMap<Arc<Decoded>>>,
}

/// One function's pcfile, pcln and inline-index programs, decoded.
struct Decoded {
    file: Runs,
    line: Runs,
    inline: Runs,
}

/// Functions whose decoded tables are kept; past this the cache starts over.
const DECODED_FUNCTIONS: usize = 16_384;

impl std::fmt::Debug for GoTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoTable")
            .field("family", &self.family)
            .field("nfunc", &self.nfunc)
            .field("text_start", &format_args!("{:#x}", self.text_start))
            .field("gofunc", &self.gofunc)
            .finish()
    }
}

/// A function record's fields that lookups need.
struct Func {
    entry: u64,
    name_off: i32,
    pcfile: u32,
    pcln: u32,
    cu_offset: u32,
    /// pcdata[PCDATA_InlTreeIndex] and the inline tree's address, when the function has both.
    inline: Option<(u32, u64)>,
}

impl GoTable {
    /// Finds and parses the pclntab. `None`: not a Go binary, or a table too damaged to use.
    pub fn load(binary: &Binary) -> Option<GoTable> {
        let obj = object::File::parse(binary.bytes()).ok()?;
        let found = locate::find_pclntab(binary, &obj)?;
        let tab = binary.bytes().get(found.start..found.end)?;
        let ptr_size = u8_at(tab, 7)?;
        let mut t =
            Self::parse_header(Memory::new(binary, &obj, ptr_size), found.start, found.end)?;
        let ps = usize::from(ptr_size);
        if t.family >= GoFamily::Go118 {
            let module =
                locate::find_moduledata(binary, &obj, &t.mem, found.vaddr, t.funcnametab as u64);
            if t.text_start == 0 {
                // Go 1.26+ writes 0 here: the text base is `runtime.text`, else moduledata.text.
                t.text_start = locate::symbol_address(&obj, "runtime.text")
                    .or_else(|| module.and_then(|m| t.mem.word(m + 22 * ps as u64)))
                    .or_else(|| locate::section_address(&obj, ".text"))?;
            }
            // moduledata.gofunc moved between releases (word 38 in 1.18/1.19, 40 in 1.20-1.25,
            // 43 in 1.27), so every candidate is checked against real inline-tree entries.
            let mut candidates = vec![
                locate::symbol_address(&obj, "go:func.*"),
                locate::symbol_address(&obj, "go.func.*"),
            ];
            for w in [40u64, 38, 43, 39, 41, 42, 44, 45, 46, 37, 36] {
                candidates.push(module.and_then(|m| t.mem.word(m + w * ps as u64)));
            }
            t.gofunc = t.pick_gofunc(candidates.into_iter().flatten());
        }
        Some(t)
    }

    /// Parses a bare pclntab with no ELF around it (fuzzing, tests): no moduledata, so no
    /// inline trees, and the text base is the header's.
    pub fn from_pclntab(bytes: Vec<u8>) -> Option<GoTable> {
        let ptr_size = u8_at(&bytes, 7)?;
        let len = bytes.len();
        Self::parse_header(
            Memory::bare(crate::binary::Bytes::Owned(bytes), ptr_size),
            0,
            len,
        )
    }

    /// Reads the header at `mem.data[start..end]` and checks that functab fits.
    fn parse_header(mem: Memory, start: usize, end: usize) -> Option<GoTable> {
        let tab = mem.data.get(start..end)?;
        let family = GoFamily::from_magic(u32_at(tab, 0)?)?;
        let quantum = u64::from(u8_at(tab, 6)?);
        let ptr_size = u8_at(tab, 7)?;
        if !matches!(quantum, 1 | 2 | 4)
            || !matches!(ptr_size, 4 | 8)
            || u8_at(tab, 4)? != 0
            || u8_at(tab, 5)? != 0
        {
            return None;
        }
        let ps = usize::from(ptr_size);
        let word = |i: usize| word_at(tab, 8 + i * ps, ptr_size);
        let to_usize = |v: u64| usize::try_from(v).ok().filter(|&v| v < tab.len());
        let nfunc = usize::try_from(word(0)?).ok()?;
        let (mut text_start, mut funcnametab, mut cutab, mut filetab, mut pctab) = (0, 0, 0, 0, 0);
        let pclntab = match family {
            GoFamily::Go12 => 8 + ps,
            GoFamily::Go116 => {
                funcnametab = to_usize(word(2)?)?;
                cutab = to_usize(word(3)?)?;
                filetab = to_usize(word(4)?)?;
                pctab = to_usize(word(5)?)?;
                to_usize(word(6)?)?
            }
            GoFamily::Go118 | GoFamily::Go120 => {
                text_start = word(2)?;
                funcnametab = to_usize(word(3)?)?;
                cutab = to_usize(word(4)?)?;
                filetab = to_usize(word(5)?)?;
                pctab = to_usize(word(6)?)?;
                to_usize(word(7)?)?
            }
        };
        // functab must fit: nfunc+1 entries.
        let entry_size = if family >= GoFamily::Go118 { 8 } else { 2 * ps };
        let functab_end = nfunc
            .checked_add(1)?
            .checked_mul(entry_size)?
            .checked_add(pclntab)?;
        if nfunc == 0 || functab_end > tab.len() {
            return None;
        }
        Some(GoTable {
            mem,
            tab_start: start,
            tab_end: end,
            family,
            quantum,
            ptr_size,
            nfunc,
            text_start,
            funcnametab,
            cutab,
            filetab,
            pctab,
            pclntab,
            gofunc: None,
            decoded: RefCell::default(),
        })
    }

    /// The first candidate under which sampled inline trees look sane: entries whose name offsets
    /// land on the start of a function name. `None` if no function has an inline tree.
    fn pick_gofunc(&mut self, candidates: impl Iterator<Item = u64>) -> Option<u64> {
        let mut samples = Vec::new();
        for i in 0..self.nfunc.min(20_000) {
            if samples.len() >= 8 {
                break;
            }
            // Candidates are tried with gofunc = 0, so the "tree address" is the raw offset.
            self.gofunc = Some(0);
            if let Some(f) = self.functab(i).and_then(|(_, off)| self.func(off)) {
                if let Some((_, off)) = f.inline {
                    samples.push(off);
                }
            }
        }
        self.gofunc = None;
        let mut seen = Vec::new();
        for g in candidates {
            if seen.contains(&g) || self.mem.file_offset(g).is_none() {
                continue;
            }
            seen.push(g);
            let ok = !samples.is_empty()
                && samples.iter().all(|&off| {
                    let Some(tree) = g.checked_add(off) else {
                        return false;
                    };
                    self.inline_entry(tree, 0)
                        .is_some_and(|(name_off, _)| self.is_name_start(name_off))
                });
            if ok {
                return Some(g);
            }
        }
        None
    }

    /// `name_off` points at the first byte of a funcnametab string.
    fn is_name_start(&self, name_off: i32) -> bool {
        let Ok(off) = usize::try_from(name_off) else {
            return false;
        };
        let tab = self.tab();
        let Some(at) = self.funcnametab.checked_add(off) else {
            return false;
        };
        (off == 0 || tab.get(at - 1) == Some(&0))
            && tab.get(at).is_some_and(|&c| c != 0)
            && cstr_at(tab, at).is_some()
    }

    /// The table's layout family.
    pub fn family(&self) -> GoFamily {
        self.family
    }

    /// The text base that functab entry offsets are relative to (1.18+), else 0.
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    /// The number of functions (functab entries).
    pub fn len(&self) -> usize {
        self.nfunc
    }

    /// No functions; a parsed table always has some, so this is false.
    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    fn tab(&self) -> &[u8] {
        self.mem
            .data
            .get(self.tab_start..self.tab_end)
            .unwrap_or(&[])
    }

    /// functab entry `i`: (entry pc, funcoff).
    fn functab(&self, i: usize) -> Option<(u64, usize)> {
        let tab = self.tab();
        if self.family >= GoFamily::Go118 {
            let off = self.pclntab.checked_add(i.checked_mul(8)?)?;
            let entry = self.text_start.checked_add(u64::from(u32_at(tab, off)?))?;
            Some((entry, u32_at(tab, off + 4)? as usize))
        } else {
            let ps = usize::from(self.ptr_size);
            let off = self.pclntab.checked_add(i.checked_mul(2 * ps)?)?;
            Some((
                word_at(tab, off, self.ptr_size)?,
                usize::try_from(word_at(tab, off + ps, self.ptr_size)?).ok()?,
            ))
        }
    }

    /// Every function's entry PC and name, in address order.
    pub fn functions(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        (0..self.nfunc).filter_map(move |i| {
            let (entry, funcoff) = self.functab(i)?;
            let f = self.func(funcoff)?;
            Some((entry, self.func_name(f.name_off)?))
        })
    }

    /// The functab index whose range holds `pc`.
    fn find(&self, pc: u64) -> Option<usize> {
        let (first, _) = self.functab(0)?;
        let (end, _) = self.functab(self.nfunc)?;
        if pc < first || pc >= end {
            return None;
        }
        // Binary search over entries [0, nfunc): last entry <= pc.
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.functab(mid)?.0 <= pc {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    fn func(&self, funcoff: usize) -> Option<Func> {
        let tab = self.tab();
        let ps = usize::from(self.ptr_size);
        let f = self.pclntab.checked_add(funcoff)?;
        // `base`: offset of nameoff; the fields after it are at fixed distances in every family.
        let (entry, base) = match self.family {
            GoFamily::Go118 | GoFamily::Go120 => (
                self.text_start.checked_add(u64::from(u32_at(tab, f)?))?,
                f + 4,
            ),
            _ => (word_at(tab, f, self.ptr_size)?, f + ps),
        };
        let name_off = i32_at(tab, base)?;
        // nameoff, args, deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset, [startLine 1.20+],
        // funcID, flag, pad, nfuncdata, then pcdata[npcdata] and funcdata[nfuncdata].
        let pcfile = u32_at(tab, base + 16)?;
        let pcln = u32_at(tab, base + 20)?;
        let npcdata = u32_at(tab, base + 24)? as usize;
        let (cu_offset, nfuncdata, pcdata) = match self.family {
            GoFamily::Go12 => (0, 0, 0), // no inline support for the old format
            GoFamily::Go116 | GoFamily::Go118 => {
                (u32_at(tab, base + 28)?, u8_at(tab, base + 35)?, base + 36)
            }
            GoFamily::Go120 => (u32_at(tab, base + 28)?, u8_at(tab, base + 39)?, base + 40),
        };
        let mut inline = None;
        if npcdata > PCDATA_INL_TREE_INDEX && usize::from(nfuncdata) > FUNCDATA_INL_TREE {
            let pcdata_off = u32_at(tab, pcdata + 4 * PCDATA_INL_TREE_INDEX)?;
            let funcdata = pcdata.checked_add(npcdata.checked_mul(4)?)?;
            let tree = match self.family {
                GoFamily::Go118 | GoFamily::Go120 => {
                    let off = u32_at(tab, funcdata + 4 * FUNCDATA_INL_TREE)?;
                    (off != u32::MAX)
                        .then(|| self.gofunc.and_then(|g| g.checked_add(u64::from(off))))
                        .flatten()
                }
                _ => {
                    // Absolute pointers, aligned to the pointer size relative to the record.
                    let rel = (funcdata - f).next_multiple_of(ps);
                    let slot = f + rel + FUNCDATA_INL_TREE * ps;
                    let v = word_at(tab, slot, self.ptr_size)?;
                    let v = if v == 0 {
                        self.slot_vaddr(slot)
                            .and_then(|a| self.mem.word(a))
                            .unwrap_or(0)
                    } else {
                        v
                    };
                    (v != 0).then_some(v)
                }
            };
            if let (true, Some(tree)) = (pcdata_off != 0, tree) {
                inline = Some((pcdata_off, tree));
            }
        }
        Some(Func {
            entry,
            name_off,
            pcfile,
            pcln,
            cu_offset,
            inline,
        })
    }

    /// Virtual address of a table offset (for relocated slots in PIE files).
    fn slot_vaddr(&self, off: usize) -> Option<u64> {
        let file_off = (self.tab_start.checked_add(off)?) as u64;
        self.mem.segments().iter().find_map(|s| {
            let rel = file_off.checked_sub(s.p_offset)?;
            (rel < s.p_filesz).then(|| s.p_vaddr + rel)
        })
    }

    fn func_name(&self, name_off: i32) -> Option<&str> {
        let off = self
            .funcnametab
            .checked_add(usize::try_from(name_off).ok()?)?;
        cstr_at(self.tab(), off)
    }

    fn file_name(&self, f: &Func, fileno: i32) -> Option<&str> {
        let tab = self.tab();
        let fileno = usize::try_from(fileno).ok()?;
        match self.family {
            GoFamily::Go12 => {
                // filetab offset follows functab's end PC; entries are table-relative offsets.
                let ps = usize::from(self.ptr_size);
                let ft = u32_at(tab, self.pclntab + self.nfunc * 2 * ps + ps)? as usize;
                let off = u32_at(tab, ft.checked_add(fileno.checked_mul(4)?)?)?;
                cstr_at(tab, off as usize)
            }
            _ => {
                let idx = (f.cu_offset as usize).checked_add(fileno)?;
                let off = u32_at(tab, self.cutab.checked_add(idx.checked_mul(4)?)?)?;
                if off == u32::MAX {
                    return None;
                }
                cstr_at(tab, self.filetab.checked_add(off as usize)?)
            }
        }
    }

    /// Inline tree entry `idx`: (name offset, parent pc offset).
    fn inline_entry(&self, tree: u64, idx: i32) -> Option<(i32, i32)> {
        let idx = u64::try_from(idx).ok()?;
        if self.family == GoFamily::Go120 {
            let bytes = self
                .mem
                .bytes_from(tree.checked_add(idx.checked_mul(16)?)?)?;
            Some((i32_at(bytes, 4)?, i32_at(bytes, 8)?))
        } else {
            let bytes = self
                .mem
                .bytes_from(tree.checked_add(idx.checked_mul(20)?)?)?;
            let _parent = i16_at(bytes, 0)?;
            Some((i32_at(bytes, 12)?, i32_at(bytes, 16)?))
        }
    }

    /// Frames for `pc`, innermost first, walking the inline tree as the runtime does.
    pub fn lookup(&self, pc: u64, inlines: bool) -> Result<Vec<Frame>, Miss> {
        let i = self.find(pc).ok_or(Miss::UnknownAddress)?;
        let (_, funcoff) = self.functab(i).ok_or(Miss::Malformed)?;
        let f = self.func(funcoff).ok_or(Miss::Malformed)?;
        let name = self.func_name(f.name_off).ok_or(Miss::Malformed)?;
        let d = self.decoded(funcoff, &f);
        let file_line = |at: u64| {
            let file = d
                .file
                .value_at(f.entry, at)
                .and_then(|n| self.file_name(&f, n))
                .map(str::to_owned);
            let line = d
                .line
                .value_at(f.entry, at)
                .and_then(|l| u32::try_from(l).ok())
                .filter(|&l| l != 0);
            (file, line)
        };
        let mut frames = Vec::new();
        let mut at = pc;
        if let (true, Some((_, tree))) = (inlines, f.inline) {
            let mut idx = d.inline.value_at(f.entry, at).unwrap_or(-1);
            while idx >= 0 {
                if frames.len() >= MAX_INLINE_DEPTH {
                    return Err(Miss::Malformed);
                }
                let (name_off, parent_pc) = self.inline_entry(tree, idx).ok_or(Miss::Malformed)?;
                let callee = self.func_name(name_off).ok_or(Miss::Malformed)?;
                let (file, line) = file_line(at);
                frames.push(Frame {
                    function: callee.to_owned(),
                    file,
                    line,
                    inlined: true,
                });
                at = f
                    .entry
                    .checked_add_signed(i64::from(parent_pc))
                    .ok_or(Miss::Malformed)?;
                idx = d.inline.value_at(f.entry, at).unwrap_or(-1);
            }
        }
        let (file, line) = file_line(at);
        frames.push(Frame {
            function: name.to_owned(),
            file,
            line,
            inlined: false,
        });
        Ok(frames)
    }

    /// The decoded tables of the function at `funcoff`, from the cache or decoded now.
    fn decoded(&self, funcoff: usize, f: &Func) -> Arc<Decoded> {
        if let Some(d) = self.decoded.borrow().get(&(funcoff as u64)) {
            return d.clone();
        }
        let tab = self.tab();
        let prog = |off: u32| {
            if off == 0 {
                Runs::default()
            } else {
                decode(tab, self.pctab.saturating_add(off as usize), self.quantum)
            }
        };
        let d = Arc::new(Decoded {
            file: prog(f.pcfile),
            line: prog(f.pcln),
            inline: f.inline.map_or_else(Runs::default, |(off, _)| prog(off)),
        });
        let mut cache = self.decoded.borrow_mut();
        if cache.len() >= DECODED_FUNCTIONS {
            cache.clear();
        }
        cache.insert(funcoff as u64, d.clone());
        d
    }

    /// Whether `pc` lies in the range the table describes (Go text, not cgo's C code).
    pub fn covers(&self, pc: u64) -> bool {
        self.find(pc).is_some()
    }
}

/// The Go toolchain version from `.go.buildinfo`, when present (`go1.24.11`).
pub fn go_version(binary: &Binary) -> Option<String> {
    let obj = object::File::parse(binary.bytes()).ok()?;
    let data = locate::section_data(&obj, ".go.buildinfo")?;
    if !data.starts_with(b"\xff Go buildinf:") {
        return None;
    }
    let flags = u8_at(data, 15)?;
    if flags & 2 == 0 {
        return None; // pre-1.18 layout stores pointers; not needed here
    }
    let mut pos = 32;
    let len = usize::try_from(read::uvarint(data, &mut pos)?).ok()?;
    let s = data.get(pos..pos.checked_add(len)?)?;
    std::str::from_utf8(s).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics() {
        assert_eq!(GoFamily::from_magic(0xffff_fff1), Some(GoFamily::Go120));
        assert_eq!(GoFamily::from_magic(0xffff_fff0), Some(GoFamily::Go118));
        assert_eq!(GoFamily::from_magic(0xffff_fffa), Some(GoFamily::Go116));
        assert_eq!(GoFamily::from_magic(0xffff_fffb), Some(GoFamily::Go12));
        assert_eq!(GoFamily::from_magic(0), None);
    }
}
