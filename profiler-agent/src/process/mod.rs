//! The process tracker: each process's mappings from `/proc/PID/maps`, the binaries behind
//! them (opened once per file identity), and the normalization of user addresses into
//! (binary, ELF virtual address) while the process is still alive.
pub mod file_id;
pub mod mapped_file;
pub mod maps;

use crate::error_chain::chain;
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use symbolizer::Binary;
use tracing::{debug, info};

use crate::stats::{AgentCounter, AgentStats};
use file_id::FileIdentity;
use mapped_file::{open_error_counter, open_in_root, open_mapped};
use maps::MapEntry;

/// A process's maps are read again for a missing address at most this often: a process that
/// keeps mapping code (a JIT) costs one read per interval of this length, not one per sample.
const MISS_REREAD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// The host's directory of separate debug files, searched after the process's own.
const DEBUG_DIR: &str = "/usr/lib/debug";

/// Stable handle of an opened binary; never reused within one agent run.
pub type BinaryKey = u32;

/// A binary as the pprof writer needs it.
#[derive(Clone)]
pub struct BinaryInfo {
    /// The path as the process saw it.
    pub path: String,
    /// The opened file.
    pub binary: Arc<Binary>,
    /// Its separate debug file (`.gnu_debuglink` or build id), found while the process was
    /// alive: the search runs next to the binary's path inside the process's mount
    /// namespace, which is gone once the process exits.
    pub debug_file: Option<Arc<Binary>>,
}

/// A user address after normalization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserFrame {
    /// Inside an ELF file: `vaddr` is the address in the file's own address space.
    Binary {
        /// Which binary.
        binary: BinaryKey,
        /// The ELF virtual address.
        vaddr: u64,
    },
    /// Inside a mapping that could not be tied to a readable ELF file (`[vdso]`, anonymous
    /// JIT memory, a binary that vanished): keep the region's name and the offset into it.
    Region {
        /// The mapping's path or pseudo name (`[anon]` for anonymous memory).
        name: Arc<str>,
        /// File offset for file mappings, else the offset from the mapping's start.
        offset: u64,
    },
    /// No mapping contains the address.
    Unmapped {
        /// The raw address.
        addr: u64,
    },
}

/// Which image of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Current,
    Previous,
}

/// What became of one map entry's binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opened {
    /// No address in it was normalized yet.
    NotYet,
    /// Opening failed; not retried for this entry.
    Failed,
    /// Opened as this binary.
    Binary(BinaryKey),
}

/// What a process ran between two `exec`s: its mappings and the binaries behind them.
struct Image {
    /// Kernel time (`bpf_ktime_get_ns`) of the exec that started it; 0 if not seen.
    since_ns: u64,
    /// The process's `comm` while it ran this image.
    name: String,
    /// `/proc/PID/exe` as the process saw it, to name the profile's main binary.
    exe: Option<String>,
    maps: Vec<MapEntry>,
    /// Per entry of `maps`.
    opened: Vec<Opened>,
}

struct Process {
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot): with the pid, the identity of
    /// the process, so a reused pid is never taken for the process that had it before.
    start_time: Option<u64>,
    image: Image,
    /// The image before the last exec, for samples taken before it and read after.
    previous: Option<Image>,
    /// Kernel time of the exit, once the kernel reported it.
    exited_ns: Option<u64>,
    last_seen: u64,
    /// When an address missing from the maps last made us read them again.
    last_miss_reread: Option<std::time::Instant>,
    /// A fault (a binary that could not be opened) was logged already.
    fault_logged: bool,
}

/// Every process seen in recent intervals.
pub struct Processes {
    proc_root: PathBuf,
    procs: HashMap<u32, Process>,
    by_file: HashMap<FileIdentity, BinaryKey>,
    binaries: HashMap<BinaryKey, BinaryInfo>,
    next_key: BinaryKey,
    generation: u64,
    new_pids: Vec<u32>,
    max_processes: usize,
    stats: Arc<AgentStats>,
}

/// Processes tracked at most by default: a few hundred bytes plus the maps of each.
pub const DEFAULT_MAX_PROCESSES: usize = 16384;

/// The processes to prepare for at start: `filter` when profiling only those, else every
/// pid under `proc_root`. Read once and shared by every stage that prepares processes.
pub fn initial_pids(proc_root: &Path, filter: &[u32]) -> Vec<u32> {
    if !filter.is_empty() {
        return filter.to_vec();
    }
    std::fs::read_dir(proc_root)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Image {
    fn empty() -> Image {
        Image {
            since_ns: 0,
            name: String::new(),
            exe: None,
            maps: Vec::new(),
            opened: Vec::new(),
        }
    }
}

impl Process {
    fn empty() -> Process {
        Process {
            start_time: None,
            image: Image::empty(),
            previous: None,
            exited_ns: None,
            last_seen: 0,
            last_miss_reread: None,
            fault_logged: false,
        }
    }
}

/// Field 22 of `/proc/PID/stat`, the process's start time.
pub fn read_start_time(dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

impl Processes {
    /// `proc_root` is `/proc` in production; tests pass a fake tree.
    pub fn new(proc_root: impl Into<PathBuf>, stats: Arc<AgentStats>) -> Self {
        Processes {
            proc_root: proc_root.into(),
            procs: HashMap::new(),
            by_file: HashMap::new(),
            binaries: HashMap::new(),
            next_key: 1,
            generation: 0,
            new_pids: Vec::new(),
            max_processes: DEFAULT_MAX_PROCESSES,
            stats,
        }
    }

    /// Tracks at most `max` processes (at least 8); past it the least recently sampled are
    /// forgotten, exited ones first, and counted (`process_evictions`).
    pub fn with_max_processes(mut self, max: usize) -> Self {
        self.max_processes = max.max(8);
        self
    }

    /// Makes room for one more process: drops an eighth of the table, exited and least
    /// recently sampled first, so a pid flood costs one sort per many new processes.
    fn make_room(&mut self) {
        if self.procs.len() < self.max_processes {
            return;
        }
        let mut order: Vec<(bool, u64, u32)> = self
            .procs
            .iter()
            .map(|(&pid, p)| (p.exited_ns.is_none(), p.last_seen, pid))
            .collect();
        order.sort_unstable();
        let drop = (self.max_processes / 8).max(1);
        for &(_, _, pid) in order.iter().take(drop) {
            self.procs.remove(&pid);
        }
        self.stats.add(AgentCounter::ProcessEvictions, drop as u64);
    }

    /// An opened binary.
    pub fn binary(&self, key: BinaryKey) -> Option<&BinaryInfo> {
        self.binaries.get(&key)
    }

    /// The process's `comm` ("" if it could not be read).
    pub fn process_name(&mut self, pid: u32) -> &str {
        &self.process(pid, u64::MAX).image.name
    }

    /// The `comm` of the process a sample taken at `time_ns` came from.
    pub fn name_at(&mut self, pid: u32, time_ns: u64) -> &str {
        let p = self.process(pid, time_ns);
        match &p.previous {
            Some(prev) if time_ns < p.image.since_ns => &prev.name,
            _ => &p.image.name,
        }
    }

    /// The executable's path as the process saw it, if known.
    pub fn exe_path(&mut self, pid: u32) -> Option<&str> {
        self.process(pid, u64::MAX).image.exe.as_deref()
    }

    /// Processes seen for the first time since the last call, and processes that exec'd.
    pub fn take_new_pids(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.new_pids)
    }

    /// Processes tracked right now.
    pub fn tracked_processes(&self) -> usize {
        self.procs.len()
    }

    /// The kernel reported an exec at `time_ns`: the new image's mappings are read and its
    /// binaries opened now, while the process certainly lives; samples taken before the exec
    /// keep the old image.
    pub fn on_exec(&mut self, pid: u32, time_ns: u64) {
        let dir = self.proc_root.join(pid.to_string());
        let start_time = read_start_time(&dir);
        let same = self
            .procs
            .get(&pid)
            .is_some_and(|p| p.exited_ns.is_none() && p.start_time == start_time);
        if same {
            let mut image = self.read_image(pid, time_ns);
            if let Some(p) = self.procs.get_mut(&pid) {
                std::mem::swap(&mut p.image, &mut image);
                p.previous = Some(image);
                // The new image gets its own look when an address misses its maps.
                p.last_miss_reread = None;
            }
        } else {
            self.replace_process(pid, Some(time_ns));
        }
        self.new_pids.push(pid);
        self.touch(pid);
        self.open_executables(pid);
    }

    /// A new process under `pid` from `since_ns` on (without one: from just after the old
    /// process's exit). The one that had the pid before keeps serving its own samples (taken
    /// before, read after) until the interval ends.
    fn replace_process(&mut self, pid: u32, since_ns: Option<u64>) {
        let after_exit = self
            .procs
            .get(&pid)
            .and_then(|p| p.exited_ns)
            .map(|t| t + 1);
        let mut fresh = self.read_process(pid);
        fresh.image.since_ns = since_ns.or(after_exit).unwrap_or(0);
        if let Some(old) = self.procs.remove(&pid) {
            if old.exited_ns.is_some() {
                fresh.previous = Some(old.image);
            }
        }
        self.make_room();
        self.procs.insert(pid, fresh);
    }

    /// The kernel reported a pid it had not reported before (a fork, or a process older than
    /// the agent): read it now. A pid whose process exited is a new process.
    pub fn on_new_pid(&mut self, pid: u32) {
        let now_start = read_start_time(&self.proc_root.join(pid.to_string()));
        // A start time that cannot be read (the process is already gone) proves nothing.
        let known_alive = self.procs.get(&pid).is_some_and(|p| {
            p.exited_ns.is_none() && (now_start.is_none() || p.start_time == now_start)
        });
        if !known_alive {
            self.replace_process(pid, None);
            self.new_pids.push(pid);
        }
        self.touch(pid);
        self.open_executables(pid);
    }

    /// The kernel reported the exit at `time_ns`. The state stays until the profile holding
    /// the process's samples is written (see [`Processes::end_interval`]).
    pub fn on_exit(&mut self, pid: u32, time_ns: u64) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.exited_ns = Some(time_ns);
        }
    }

    /// Re-reads the mappings of a live process (a `dlopen`, or libraries the loader mapped
    /// after the exec the image was read at).
    pub fn reread(&mut self, pid: u32) {
        let Some(since) = self.procs.get(&pid).map(|p| p.image.since_ns) else {
            return;
        };
        let image = self.read_image(pid, since);
        if image.maps.is_empty() {
            return; // gone: keep what we had
        }
        self.stats.inc(AgentCounter::MapsRereads);
        if let Some(p) = self.procs.get_mut(&pid) {
            p.image = image;
        }
        self.open_executables(pid);
    }

    /// Opens the binary of every executable file mapping of the current image.
    fn open_executables(&mut self, pid: u32) {
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        let wanted: Vec<usize> = (0..p.image.maps.len())
            .filter(|&i| p.image.maps[i].executable && p.image.maps[i].is_file())
            .collect();
        for idx in wanted {
            self.open_binary(pid, Which::Current, idx);
        }
    }

    fn touch(&mut self, pid: u32) {
        let generation = self.generation;
        if let Some(p) = self.procs.get_mut(&pid) {
            p.last_seen = generation;
        }
    }

    /// The process a sample taken at `time_ns` came from, read now if it is new. A sample
    /// taken after the exit of the process we know under this pid comes from a new one.
    fn process(&mut self, pid: u32, time_ns: u64) -> &mut Process {
        let reused = self
            .procs
            .get(&pid)
            .and_then(|p| p.exited_ns)
            .is_some_and(|exit| time_ns != u64::MAX && time_ns > exit);
        if reused || !self.procs.contains_key(&pid) {
            self.new_pids.push(pid);
            self.replace_process(pid, None);
        }
        let generation = self.generation;
        let p = self.procs.entry(pid).or_insert_with(Process::empty);
        p.last_seen = generation;
        p
    }

    fn read_name(&self, pid: u32) -> String {
        std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default()
    }

    fn read_process(&mut self, pid: u32) -> Process {
        let dir = self.proc_root.join(pid.to_string());
        Process {
            start_time: read_start_time(&dir),
            image: self.read_image(pid, 0),
            previous: None,
            exited_ns: None,
            last_seen: self.generation,
            last_miss_reread: None,
            fault_logged: false,
        }
    }

    fn read_image(&mut self, pid: u32, since_ns: u64) -> Image {
        let dir = self.proc_root.join(pid.to_string());
        let exe = std::fs::read_link(dir.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let maps = self.read_maps(pid);
        Image {
            since_ns,
            name: self.read_name(pid),
            exe,
            opened: vec![Opened::NotYet; maps.len()],
            maps,
        }
    }

    fn read_maps(&mut self, pid: u32) -> Vec<MapEntry> {
        let path = self.proc_root.join(pid.to_string()).join("maps");
        match maps::read_maps(&path) {
            Ok(read) => {
                self.stats
                    .add(AgentCounter::MapsTornReads, u64::from(read.torn_reads));
                read.entries
            }
            Err(error) => {
                self.stats.inc(AgentCounter::MapsUnreadable);
                debug!(pid, error = %chain(&error), "maps unreadable (process exited?); its frames stay unsymbolized");
                Vec::new()
            }
        }
    }

    /// Normalizes a user stack taken at `time_ns` (kernel clock), innermost first.
    ///
    /// The stack ends before the first return address outside every executable mapping
    /// (heap, stack, data, or nothing at all): no real call returns there, so it and what a
    /// frame-pointer walk found beyond it are garbage. Such cuts are counted in
    /// `user_stacks_outside_code`. The innermost address, the sampled PC, is always kept.
    pub fn normalize(&mut self, pid: u32, time_ns: u64, addrs: &[u64]) -> Vec<UserFrame> {
        let mut frames = Vec::with_capacity(addrs.len());
        for (depth, &addr) in addrs.iter().enumerate() {
            let (frame, in_code) = self.normalize_one(pid, time_ns, addr);
            if depth > 0 && !in_code {
                self.stats.inc(AgentCounter::UserStacksOutsideCode);
                break;
            }
            frames.push(frame);
        }
        frames
    }

    /// The frame for `addr`, and whether it lies in an executable mapping.
    fn normalize_one(&mut self, pid: u32, time_ns: u64, addr: u64) -> (UserFrame, bool) {
        let which = {
            let p = self.process(pid, time_ns);
            match &p.previous {
                Some(_) if time_ns < p.image.since_ns => Which::Previous,
                _ => Which::Current,
            }
        };
        let mut idx = self.find_entry(pid, which, addr);
        if idx.is_none() && which == Which::Current {
            // The process may have mapped something new since we read its maps (dlopen).
            let p = self.process(pid, time_ns);
            let due = p
                .last_miss_reread
                .is_none_or(|t| t.elapsed() >= MISS_REREAD_INTERVAL);
            if due && !p.image.maps.is_empty() {
                p.last_miss_reread = Some(std::time::Instant::now());
                self.reread(pid);
                idx = self.find_entry(pid, which, addr);
            }
        }
        let Some(idx) = idx else {
            self.stats.inc(AgentCounter::UnmappedAddresses);
            return (UserFrame::Unmapped { addr }, false);
        };
        let Some(e) = self
            .image(pid, which)
            .and_then(|i| i.maps.get(idx))
            .cloned()
        else {
            return (UserFrame::Unmapped { addr }, false);
        };
        let in_code = e.executable;
        let file_offset = addr - e.start + e.offset;
        if e.is_file() {
            if let Some(key) = self.open_binary(pid, which, idx) {
                let info = self.binaries.get(&key);
                if let Some(vaddr) = info.and_then(|i| i.binary.file_offset_to_vaddr(file_offset)) {
                    return (UserFrame::Binary { binary: key, vaddr }, in_code);
                }
            }
        }
        let name: Arc<str> = if e.path.is_empty() {
            Arc::from("[anon]")
        } else {
            Arc::from(e.path.as_str())
        };
        let region = UserFrame::Region {
            name,
            offset: if e.is_file() {
                file_offset
            } else {
                addr - e.start
            },
        };
        (region, in_code)
    }

    fn image(&self, pid: u32, which: Which) -> Option<&Image> {
        let p = self.procs.get(&pid)?;
        match which {
            Which::Current => Some(&p.image),
            Which::Previous => p.previous.as_ref(),
        }
    }

    fn image_mut(&mut self, pid: u32, which: Which) -> Option<&mut Image> {
        let p = self.procs.get_mut(&pid)?;
        match which {
            Which::Current => Some(&mut p.image),
            Which::Previous => p.previous.as_mut(),
        }
    }

    fn find_entry(&self, pid: u32, which: Which, addr: u64) -> Option<usize> {
        maps::find_index(&self.image(pid, which)?.maps, addr)
    }

    /// The binary behind map entry `idx`, opened the first time any of its addresses is seen.
    fn open_binary(&mut self, pid: u32, which: Which, idx: usize) -> Option<BinaryKey> {
        let entry = {
            let image = self.image(pid, which)?;
            match image.opened.get(idx)? {
                Opened::Binary(key) => return Some(*key),
                Opened::Failed => return None,
                Opened::NotYet => image.maps.get(idx)?.clone(),
            }
        };
        let opened = match self.open_file(pid, &entry) {
            Some(key) => Opened::Binary(key),
            None => {
                self.stats.inc(AgentCounter::BinaryOpenFailed);
                Opened::Failed
            }
        };
        if let Some(slot) = self
            .image_mut(pid, which)
            .and_then(|i| i.opened.get_mut(idx))
        {
            *slot = opened;
        }
        match opened {
            Opened::Binary(key) => Some(key),
            _ => None,
        }
    }

    /// Finds the mapped file, reuses the binary already opened for its identity, or opens it.
    fn open_file(&mut self, pid: u32, entry: &MapEntry) -> Option<BinaryKey> {
        let pid_dir = self.proc_root.join(pid.to_string());
        let opened = match open_mapped(&pid_dir, entry, &self.stats) {
            Ok(opened) => opened,
            Err(error) => {
                self.stats.inc(open_error_counter(&error));
                if self.first_fault(pid) {
                    info!(pid, path = %entry.path, error = %chain(&error), "cannot open a mapped binary; its frames stay unsymbolized (logged once per process)");
                }
                return None;
            }
        };
        if let Some(&key) = self.by_file.get(&opened.identity) {
            return Some(key);
        }
        // The path inside the process's mount namespace: `.gnu_debuglink` and build-id
        // lookups search next to it, never under `map_files/`.
        let in_root = pid_dir
            .join("root")
            .join(entry.path.trim_start_matches('/'));
        match Binary::from_file(opened.file, &in_root) {
            Ok(binary) => {
                let key = self.next_key;
                self.next_key += 1;
                let root = pid_dir.join("root");
                let debug_dirs = [root.join("usr/lib/debug"), DEBUG_DIR.into()];
                // Candidates inside the process's root are resolved inside it.
                let open = |path: &Path| match path.strip_prefix(&root) {
                    Ok(inside) => open_in_root(&root, inside),
                    Err(_) => std::fs::File::open(path),
                };
                let debug_file =
                    symbolizer::dwarf::find_debug_file_with(&binary, &debug_dirs, &open);
                self.binaries.insert(
                    key,
                    BinaryInfo {
                        path: entry.path.clone(),
                        binary,
                        debug_file,
                    },
                );
                self.by_file.insert(opened.identity, key);
                Some(key)
            }
            Err(error) => {
                if self.first_fault(pid) {
                    info!(pid, path = %entry.path, error = %chain(&error), "cannot read a mapped binary; its frames stay unsymbolized (logged once per process)");
                }
                None
            }
        }
    }

    /// True the first time a fault is reported for this process: faults are counted every
    /// time but logged once per process.
    fn first_fault(&mut self, pid: u32) -> bool {
        match self.procs.get_mut(&pid) {
            Some(p) => !std::mem::replace(&mut p.fault_logged, true),
            None => true,
        }
    }

    /// Called after each profile is handed off: forgets processes and binaries not seen for
    /// two intervals, so memory stays bounded by what is live.
    pub fn end_interval(&mut self) {
        self.generation += 1;
        let keep_after = self.generation.saturating_sub(2);
        self.procs.retain(|_, p| p.last_seen >= keep_after);
        let mut live = HashSet::new();
        for p in self.procs.values_mut() {
            // An image replaced by exec served the interval just written; it is not needed
            // for the next one.
            p.previous = None;
            live.extend(p.image.opened.iter().filter_map(|o| match o {
                Opened::Binary(key) => Some(*key),
                _ => None,
            }));
        }
        self.binaries.retain(|key, _| live.contains(key));
        self.by_file.retain(|_, key| live.contains(key));
    }
}
