//! Turns one aggregated interval into a symbolized pprof profile.
use crate::error_chain::chain;
use std::{collections::HashMap, time::UNIX_EPOCH};

use symbolizer::{Frame, Lookup, Miss};
use tracing::warn;

use crate::{
    process::{BinaryInfo, BinaryKey, UserFrame},
    profile::{
        aggregate::Interval,
        pprof::{
            builder::{LineSpec, MappingSpec, ProfileBuilder},
            proto::Profile,
        },
        symbols::Symbols,
    },
    stats::AgentCounter,
};

/// What symbolization of one interval found, for its summary and its profile's comments.
#[derive(Debug, Default, Clone, Copy)]
pub struct SymbolStats {
    /// Frames written, user and kernel.
    pub frames: u64,
    /// Frames written as an address.
    pub unsymbolized: u64,
    /// User frames without a symbol, by the symbolizer's reason.
    pub misses: MissCounts,
    /// Binaries the symbolizer could not read.
    pub binary_errors: u64,
    /// Kernel frames without a kallsyms symbol.
    pub kernel_misses: u64,
}

/// User-frame misses by reason.
#[derive(Debug, Default, Clone, Copy)]
pub struct MissCounts {
    /// [`Miss::UnknownAddress`].
    pub unknown_address: u64,
    /// [`Miss::NoSymbols`].
    pub no_symbols: u64,
    /// [`Miss::Unsupported`].
    pub unsupported: u64,
    /// [`Miss::Malformed`].
    pub malformed: u64,
}

impl MissCounts {
    fn add(&mut self, miss: Miss) {
        match miss {
            Miss::UnknownAddress => self.unknown_address += 1,
            Miss::NoSymbols => self.no_symbols += 1,
            Miss::Unsupported => self.unsupported += 1,
            Miss::Malformed => self.malformed += 1,
        }
    }

    fn get(&self, miss: Miss) -> u64 {
        match miss {
            Miss::UnknownAddress => self.unknown_address,
            Miss::NoSymbols => self.no_symbols,
            Miss::Unsupported => self.unsupported,
            Miss::Malformed => self.malformed,
        }
    }
}

impl SymbolStats {
    /// The registry counters this interval's symbolization fills, with their values.
    pub fn counters(&self) -> Vec<(AgentCounter, u64)> {
        let mut out = vec![
            (AgentCounter::Frames, self.frames),
            (AgentCounter::FramesUnsymbolized, self.unsymbolized),
            (AgentCounter::SymbolBinaryErrors, self.binary_errors),
            (AgentCounter::KernelSymbolMiss, self.kernel_misses),
        ];
        for miss in [
            Miss::UnknownAddress,
            Miss::NoSymbols,
            Miss::Unsupported,
            Miss::Malformed,
        ] {
            out.push((AgentCounter::for_miss(miss), self.misses.get(miss)));
        }
        out
    }
}

/// Which symbol information a mapping's locations carry (pprof's `has_*` flags).
#[derive(Debug, Default, Clone, Copy)]
struct MappingFacts {
    functions: bool,
    filenames: bool,
    line_numbers: bool,
    inline_frames: bool,
}

/// Header facts for the profile.
pub struct ProfileMeta<'a> {
    /// CPU nanoseconds one sample stands for.
    pub period_ns: i64,
    /// The profile's comments (the interval's counters).
    pub comments: &'a [String],
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Symbolizes every distinct (binary, address) of the interval in one batch per binary.
fn symbolize_user(
    interval: &Interval,
    symbols: &mut Symbols,
    stats: &mut SymbolStats,
) -> HashMap<(BinaryKey, u64), Lookup> {
    let mut wanted: HashMap<BinaryKey, Vec<u64>> = HashMap::new();
    for s in &interval.stacks {
        for (depth, f) in s.user.iter().enumerate() {
            if let UserFrame::Binary { binary, vaddr } = f {
                wanted
                    .entry(*binary)
                    .or_default()
                    .push(lookup_addr(*vaddr, depth));
            }
        }
    }
    let mut out = HashMap::new();
    for (key, mut addrs) in wanted {
        addrs.sort_unstable();
        addrs.dedup();
        let Some(info) = interval.binaries.get(&key) else {
            continue;
        };
        // The debug file (same addresses, full DWARF) first; the binary itself for what it
        // lacks (a Go pclntab, symbols stripped from the debug file).
        let first = info.debug_file.as_ref().unwrap_or(&info.binary);
        match symbols.symbolizer.symbolize(first, &addrs) {
            Ok(mut results) => {
                if info.debug_file.is_some() {
                    retry_misses(symbols, info, &addrs, &mut results);
                }
                for (addr, r) in addrs.into_iter().zip(results) {
                    out.insert((key, addr), r);
                }
            }
            Err(error) => {
                stats.binary_errors += 1;
                warn!(path = %info.path, error = %chain(&error), "symbolizing this binary failed; its frames keep addresses");
            }
        }
    }
    out
}

/// Looks up in the binary itself what its debug file did not resolve.
fn retry_misses(symbols: &mut Symbols, info: &BinaryInfo, addrs: &[u64], results: &mut [Lookup]) {
    let missed: Vec<usize> = (0..results.len())
        .filter(|&i| !matches!(&results[i], Ok(frames) if !frames.is_empty()))
        .collect();
    if missed.is_empty() {
        return;
    }
    let again: Vec<u64> = missed.iter().map(|&i| addrs[i]).collect();
    if let Ok(found) = symbols.symbolizer.symbolize(&info.binary, &again) {
        for (i, r) in missed.into_iter().zip(found) {
            if matches!(&r, Ok(frames) if !frames.is_empty()) {
                results[i] = r;
            }
        }
    }
}

/// Return addresses point after the call; look up the call instruction itself.
fn lookup_addr(addr: u64, depth: usize) -> u64 {
    if depth == 0 {
        addr
    } else {
        addr.saturating_sub(1)
    }
}

/// The binary the profile should name first (`File:` in `go tool pprof`): the executable of
/// the process with the most samples.
fn main_binary(interval: &Interval) -> Option<BinaryKey> {
    let mut per_pid: HashMap<u32, u64> = HashMap::new();
    for s in &interval.stacks {
        *per_pid.entry(s.pid).or_default() += s.count;
    }
    let (pid, _) = per_pid
        .into_iter()
        .max_by_key(|&(pid, n)| (n, std::cmp::Reverse(pid)))?;
    if let Some(exe) = interval.process_exes.get(&pid) {
        let mut keys: Vec<_> = interval
            .binaries
            .iter()
            .filter(|(_, info)| &info.path == exe)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        if let Some(&key) = keys.first() {
            return Some(key);
        }
    }
    // The executable is not known (or not in any frame): the binary of that process's
    // outermost frames, which is the executable for anything started the usual way.
    let mut outermost: HashMap<BinaryKey, u64> = HashMap::new();
    for s in interval.stacks.iter().filter(|s| s.pid == pid) {
        let last = s.user.iter().rev().find_map(|f| match f {
            UserFrame::Binary { binary, .. } => Some(*binary),
            _ => None,
        });
        if let Some(key) = last {
            *outermost.entry(key).or_default() += s.count;
        }
    }
    outermost
        .into_iter()
        .max_by_key(|&(key, n)| (n, std::cmp::Reverse(key)))
        .map(|(key, _)| key)
}

/// The pprof mapping of a binary: its executable segments, in ELF addresses.
fn binary_mapping(b: &mut ProfileBuilder, info: &BinaryInfo) -> u64 {
    let segs: Vec<_> = info
        .binary
        .load_segments()
        .iter()
        .filter(|s| s.executable)
        .collect();
    let start = segs.iter().map(|s| s.p_vaddr).min().unwrap_or(0);
    let limit = segs
        .iter()
        .map(|s| s.p_vaddr + s.p_memsz)
        .max()
        .unwrap_or(u64::MAX);
    let offset = segs
        .iter()
        .find(|s| s.p_vaddr == start)
        .map(|s| s.p_offset)
        .unwrap_or(0);
    let build_id = match (info.binary.gnu_build_id(), info.binary.go_build_id()) {
        (Some(id), _) => hex(id),
        (None, Some(go)) => go.to_string(),
        (None, None) => String::new(),
    };
    b.add_mapping(MappingSpec {
        memory_start: start,
        memory_limit: limit,
        file_offset: offset,
        filename: &info.path,
        build_id: &build_id,
    })
}

/// Symbolizes one interval and builds its profile.
pub fn build_profile(
    interval: &Interval,
    symbols: &mut Symbols,
    meta: &ProfileMeta<'_>,
) -> (Profile, SymbolStats) {
    let mut stats = SymbolStats::default();
    let user_symbols = symbolize_user(interval, symbols, &mut stats);
    let mut b = ProfileBuilder::new();
    let mut binary_mappings: HashMap<BinaryKey, u64> = HashMap::new();
    let mut region_mappings: HashMap<String, u64> = HashMap::new();
    let mut kernel_mapping = None;
    let mut kernel_range = (u64::MAX, 0u64);
    let mut facts = HashMap::<u64, MappingFacts>::new();
    if let Some(key) = main_binary(interval) {
        if let Some(info) = interval.binaries.get(&key) {
            binary_mappings.insert(key, binary_mapping(&mut b, info));
        }
    }

    for s in &interval.stacks {
        let mut locations = Vec::with_capacity(s.kernel.len() + s.user.len());
        for (depth, &addr) in s.kernel.iter().enumerate() {
            stats.frames += 1;
            let mapping = *kernel_mapping.get_or_insert_with(|| {
                b.add_mapping(MappingSpec {
                    memory_start: 0,
                    memory_limit: 0,
                    file_offset: 0,
                    filename: "[kernel.kallsyms]",
                    build_id: "",
                })
            });
            kernel_range = (kernel_range.0.min(addr), kernel_range.1.max(addr));
            let symbol = symbols
                .kallsyms
                .as_ref()
                .and_then(|k| k.lookup(lookup_addr(addr, depth)).ok());
            let name = match symbol {
                Some(sym) => match sym.module {
                    Some(module) => format!("{} [{}]", sym.name, module),
                    None => sym.name.to_string(),
                },
                None => {
                    stats.unsymbolized += 1;
                    stats.kernel_misses += 1;
                    format!("[kernel]+0x{addr:x}")
                }
            };
            if symbol.is_some() {
                facts.entry(mapping).or_default().functions = true;
            }
            locations.push(b.named_location(mapping, addr, depth == 0, &name, ""));
        }
        for (depth, f) in s.user.iter().enumerate() {
            stats.frames += 1;
            let is_leaf = depth == 0;
            let id = match f {
                UserFrame::Binary { binary, vaddr } => {
                    let Some(info) = interval.binaries.get(binary) else {
                        continue;
                    };
                    let mapping = *binary_mappings
                        .entry(*binary)
                        .or_insert_with(|| binary_mapping(&mut b, info));
                    if let Some(m) = b.mapping_mut(mapping) {
                        m.memory_start = m.memory_start.min(*vaddr);
                        m.memory_limit = m.memory_limit.max(vaddr + 1);
                    }
                    match user_symbols.get(&(*binary, lookup_addr(*vaddr, depth))) {
                        Some(Ok(frames)) if !frames.is_empty() => {
                            let has = facts.entry(mapping).or_default();
                            has.functions = true;
                            has.filenames |= frames.iter().any(|f| f.file.is_some());
                            has.line_numbers |= frames.iter().any(|f| f.line.is_some());
                            has.inline_frames |= frames.len() > 1;
                            let lines = line_specs(frames);
                            b.location(mapping, *vaddr, is_leaf, &lines)
                        }
                        other => {
                            stats.unsymbolized += 1;
                            match other {
                                Some(Err(miss)) => stats.misses.add(*miss),
                                // Found, but with no frames: the symbolizer's "no symbol".
                                Some(Ok(_)) => stats.misses.add(Miss::UnknownAddress),
                                // The whole binary failed; counted once in binary_errors.
                                None => {}
                            }
                            let name = format!("{}+0x{:x}", base_name(&info.path), vaddr);
                            b.named_location(mapping, *vaddr, is_leaf, &name, &info.path)
                        }
                    }
                }
                UserFrame::Region { name, offset } => {
                    stats.unsymbolized += 1;
                    pseudo_region(&mut b, &mut region_mappings, name, *offset, is_leaf)
                }
                UserFrame::Unmapped { addr } => {
                    stats.unsymbolized += 1;
                    pseudo_region(&mut b, &mut region_mappings, "[unknown]", *addr, is_leaf)
                }
            };
            locations.push(id);
        }
        // The name of the process the sample came from, not of whatever has the pid now.
        let process_name: &str = &s.process_name;
        let mut labels = vec![
            b.num_label("pid", i64::from(s.pid)),
            b.num_label("tid", i64::from(s.tid)),
            b.str_label(
                "comm",
                if process_name.is_empty() {
                    &s.thread_name
                } else {
                    process_name
                },
            ),
            b.str_label("thread_name", &s.thread_name),
        ];
        for (k, v) in &s.labels {
            if !matches!(&**k, "pid" | "tid" | "comm" | "thread_name") {
                labels.push(b.str_label(k, v));
            }
        }
        let count = s.count as i64;
        b.add_sample(locations, vec![count, count * meta.period_ns], labels);
    }
    if let Some(m) = kernel_mapping.and_then(|id| b.mapping_mut(id)) {
        m.memory_start = kernel_range.0;
        m.memory_limit = kernel_range.1.saturating_add(1);
    }
    for (id, has) in facts {
        if let Some(m) = b.mapping_mut(id) {
            m.has_functions = has.functions;
            m.has_filenames = has.filenames;
            m.has_line_numbers = has.line_numbers;
            m.has_inline_frames = has.inline_frames;
        }
    }
    let time_nanos = interval
        .start
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let duration_nanos = interval
        .end
        .duration_since(interval.start)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    (
        b.finish(meta.period_ns, time_nanos, duration_nanos, meta.comments),
        stats,
    )
}

/// A frame in memory that is not a readable ELF file (`[vdso]`, anonymous JIT code, or no
/// mapping at all): one pseudo mapping per region name, spanning the offsets seen, and a
/// pseudo function `name+0xoffset` so viewers never see an empty location.
fn pseudo_region(
    b: &mut ProfileBuilder,
    mappings: &mut HashMap<String, u64>,
    name: &str,
    offset: u64,
    is_leaf: bool,
) -> u64 {
    let mapping = *mappings.entry(name.to_string()).or_insert_with(|| {
        b.add_mapping(MappingSpec {
            memory_start: 0,
            memory_limit: 0,
            file_offset: 0,
            filename: name,
            build_id: "",
        })
    });
    if let Some(m) = b.mapping_mut(mapping) {
        m.memory_limit = m.memory_limit.max(offset.saturating_add(1));
    }
    let function = format!("{}+0x{offset:x}", base_name(name));
    b.named_location(mapping, offset, is_leaf, &function, "")
}

fn line_specs(frames: &[Frame]) -> Vec<LineSpec<'_>> {
    frames
        .iter()
        .map(|f| LineSpec {
            function: &f.function,
            filename: f.file.as_deref().unwrap_or(""),
            line: f.line.map(i64::from).unwrap_or(0),
        })
        .collect()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
