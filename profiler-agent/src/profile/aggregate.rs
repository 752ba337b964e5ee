//! Counts identical samples within one profile interval, with a cap on distinct stacks.
use std::{collections::HashMap, sync::Arc, time::SystemTime};

use profiler_common::{RawSample, COMM_LEN, MAX_STACK_DEPTH};

use crate::{
    process::{BinaryInfo, BinaryKey, Processes, UserFrame},
    profile::labels::{self, LabelFilter, Labels},
    stats::{AgentCounter, AgentStats},
};

/// User space ends below this on x86-64 (47-bit addresses, 4-level paging; 5-level paging
/// user space is opt-in per mapping and unused by the runtimes we profile). A return address
/// at or above it is garbage: text read as a pointer during a frame-pointer walk.
pub const USER_ADDRESS_LIMIT: u64 = 0x0000_8000_0000_0000;

/// No code lives below this address (the kernel's default `vm.mmap_min_addr`): a frame
/// there, most often 0 from a frame-pointer walk that ran off its stack, is garbage.
pub const USER_ADDRESS_FLOOR: u64 = 0x1_0000;

/// The pseudo frame that stands for the stacks folded away by the distinct-stack cap.
pub const STACK_LIMIT_FRAME: &str = "[stack limit reached]";

#[derive(PartialEq, Eq, Hash)]
struct StackKey {
    pid: u32,
    tid: u32,
    comm: [u8; COMM_LEN],
    user: Box<[u64]>,
    kernel: Box<[u64]>,
    /// Samples that differ only in trace context stay apart.
    context: Box<[u8]>,
}

/// One distinct (process, thread, stacks) with its sample count.
#[derive(Debug, Clone)]
pub struct StackCount {
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// The thread's `comm`.
    pub thread_name: Arc<str>,
    /// The process's `comm` when the sample was taken ("" if unknown).
    pub process_name: Arc<str>,
    /// Innermost first.
    pub user: Vec<UserFrame>,
    /// Innermost first, raw kernel addresses.
    pub kernel: Vec<u64>,
    /// Trace context and other labels, sorted by key.
    pub labels: Labels,
    /// Samples with exactly this stack and labels.
    pub count: u64,
}

/// Everything one profile needs, detached from the live process table.
pub struct Interval {
    /// When the interval began.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its distinct stacks.
    pub stacks: Vec<StackCount>,
    /// Executable paths by pid (as the process saw them), where known.
    pub process_exes: HashMap<u32, String>,
    /// Every binary the stacks refer to.
    pub binaries: HashMap<BinaryKey, BinaryInfo>,
    /// Samples in the interval.
    pub samples: u64,
}

/// The stacks of the running interval.
pub struct Aggregator {
    filter: LabelFilter,
    max_stacks: usize,
    stacks: HashMap<StackKey, StackCount>,
    /// Per process, the samples of new stacks that arrived after the cap was reached.
    over_limit: HashMap<u32, StackCount>,
    start: SystemTime,
    samples: u64,
    stats: Arc<AgentStats>,
}

/// Bytes up to the first NUL, lossily decoded.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// The user stack up to (not including) its first address that cannot be user code.
fn canonical_prefix(stack: &[u64]) -> &[u64] {
    let end = stack
        .iter()
        .position(|&a| !(USER_ADDRESS_FLOOR..USER_ADDRESS_LIMIT).contains(&a))
        .unwrap_or(stack.len());
    &stack[..end]
}

impl Aggregator {
    /// At most `max_stacks` distinct stacks per interval (at least one).
    pub fn new(filter: LabelFilter, max_stacks: usize, stats: Arc<AgentStats>) -> Self {
        Aggregator {
            filter,
            max_stacks: max_stacks.max(1),
            stacks: HashMap::new(),
            over_limit: HashMap::new(),
            start: SystemTime::now(),
            samples: 0,
            stats,
        }
    }

    /// Distinct stacks in the running interval.
    pub fn distinct_stacks(&self) -> usize {
        self.stacks.len()
    }

    /// Adds one sample. A new stack is normalized now, while its process is most likely alive.
    pub fn add(&mut self, sample: &RawSample, processes: &mut Processes) {
        self.samples += 1;
        let user_len = (sample.user_len as usize).min(MAX_STACK_DEPTH);
        let kernel_len = (sample.kernel_len as usize).min(MAX_STACK_DEPTH);
        let user = canonical_prefix(&sample.user_stack[..user_len]);
        if user.len() < user_len {
            self.stats.inc(AgentCounter::UserStacksNonCanonical);
        }
        let key = StackKey {
            pid: sample.pid,
            tid: sample.tid,
            comm: sample.comm,
            user: user.into(),
            kernel: sample.kernel_stack[..kernel_len].into(),
            context: labels::context_key(&sample.context),
        };
        if let Some(entry) = self.stacks.get_mut(&key) {
            entry.count += 1;
            return;
        }
        if self.stacks.len() >= self.max_stacks {
            self.stats.inc(AgentCounter::StackLimitSamples);
            self.over_limit
                .entry(sample.pid)
                .or_insert_with(|| StackCount {
                    pid: sample.pid,
                    tid: sample.tid,
                    thread_name: Arc::from(comm_str(&sample.comm)),
                    process_name: Arc::from(processes.name_at(sample.pid, sample.time_ns)),
                    user: vec![UserFrame::Region {
                        name: Arc::from(STACK_LIMIT_FRAME),
                        offset: 0,
                    }],
                    kernel: Vec::new(),
                    labels: Labels::new(),
                    count: 0,
                })
                .count += 1;
            return;
        }
        let user = processes.normalize(sample.pid, sample.time_ns, &key.user);
        let process_name = Arc::from(processes.name_at(sample.pid, sample.time_ns));
        let entry = StackCount {
            pid: sample.pid,
            tid: sample.tid,
            thread_name: Arc::from(comm_str(&sample.comm)),
            process_name,
            user,
            kernel: key.kernel.to_vec(),
            labels: labels::decode(&sample.context, &self.filter),
            count: 1,
        };
        self.stacks.insert(key, entry);
    }

    /// Ends the interval: hands out its stacks with the binaries and names they refer to.
    pub fn take(&mut self, processes: &mut Processes) -> Interval {
        let end = SystemTime::now();
        let stacks: Vec<StackCount> = self
            .stacks
            .drain()
            .map(|(_, v)| v)
            .chain(self.over_limit.drain().map(|(_, v)| v))
            .collect();
        let mut process_exes = HashMap::new();
        let mut binaries = HashMap::new();
        for s in &stacks {
            if let std::collections::hash_map::Entry::Vacant(v) = process_exes.entry(s.pid) {
                if let Some(exe) = processes.exe_path(s.pid) {
                    v.insert(exe.to_string());
                }
            }
            for f in &s.user {
                if let UserFrame::Binary { binary, .. } = f {
                    if let Some(info) = processes.binary(*binary) {
                        binaries.entry(*binary).or_insert_with(|| info.clone());
                    }
                }
            }
        }
        let interval = Interval {
            start: self.start,
            end,
            stacks,
            process_exes,
            binaries,
            samples: self.samples,
        };
        self.start = end;
        self.samples = 0;
        interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stat;

    fn sample(pid: u32, user: &[u64]) -> RawSample {
        // SAFETY: RawSample is plain integers; all-zero is a valid empty sample.
        let mut s: RawSample = unsafe { std::mem::zeroed() };
        s.pid = pid;
        s.tid = pid;
        s.comm[..4].copy_from_slice(b"test");
        s.user_stack[..user.len()].copy_from_slice(user);
        s.user_len = user.len() as u32;
        s
    }

    fn setup(max_stacks: usize) -> (Aggregator, Processes, Arc<AgentStats>, tempfile::TempDir) {
        let stats = Arc::new(AgentStats::default());
        let root = tempfile::tempdir().unwrap();
        let procs = Processes::new(root.path(), stats.clone());
        let agg = Aggregator::new(LabelFilter::default(), max_stacks, stats.clone());
        (agg, procs, stats, root)
    }

    #[test]
    fn the_stack_cap_folds_overflow_into_one_counted_stack_per_process() {
        let (mut agg, mut procs, stats, _root) = setup(3);
        for i in 0..3 {
            agg.add(&sample(10, &[0x40_1000 + i]), &mut procs);
        }
        // Known stacks still count after the cap; new ones are folded, per process.
        agg.add(&sample(10, &[0x40_1000]), &mut procs);
        for i in 0..5 {
            agg.add(&sample(10, &[0x40_2000 + i]), &mut procs);
        }
        agg.add(&sample(11, &[0x40_3000]), &mut procs);
        assert_eq!(agg.distinct_stacks(), 3);
        assert_eq!(stats.get(AgentCounter::StackLimitSamples), 6);
        let interval = agg.take(&mut procs);
        assert_eq!(interval.samples, 10);
        assert_eq!(interval.stacks.iter().map(|s| s.count).sum::<u64>(), 10);
        let folded: Vec<_> = interval
            .stacks
            .iter()
            .filter(|s| {
                matches!(&s.user[..], [UserFrame::Region { name, .. }] if &**name == STACK_LIMIT_FRAME)
            })
            .map(|s| (s.pid, s.count))
            .collect();
        assert_eq!(folded.len(), 2, "{folded:?}");
        assert!(folded.contains(&(10, 5)) && folded.contains(&(11, 1)));
        // The next interval starts empty, with room again.
        agg.add(&sample(10, &[0x40_2000]), &mut procs);
        assert_eq!(agg.distinct_stacks(), 1);
        assert_eq!(
            stats
                .snapshot([0; crate::stats::KernelCounter::COUNT as usize])
                .get(Stat::Agent(AgentCounter::StackLimitSamples)),
            6
        );
    }

    #[test]
    fn user_stacks_end_at_the_first_non_canonical_address() {
        let (mut agg, mut procs, stats, root) = setup(100);
        // Executable anonymous memory (a JIT, say) under every canonical address below, so
        // only the non-canonical cut applies.
        let dir = root.path().join("10");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("maps"),
            "555500000000-555500010000 r-xp 0 00:00 0\n",
        )
        .unwrap();
        // "ysis for" read as a return address, then more garbage.
        agg.add(
            &sample(
                10,
                &[0x5555_0000_1000, 0x726f_6620_7369_7379, 0x5555_0000_2000],
            ),
            &mut procs,
        );
        agg.add(
            &sample(10, &[0x5555_0000_1000, 0x5555_0000_2000]),
            &mut procs,
        );
        assert_eq!(stats.get(AgentCounter::UserStacksNonCanonical), 1);
        let interval = agg.take(&mut procs);
        let lens: Vec<_> = interval.stacks.iter().map(|s| s.user.len()).collect();
        assert!(lens.contains(&1) && lens.contains(&2), "{lens:?}");
        assert_eq!(canonical_prefix(&[u64::MAX]), &[] as &[u64]);
        assert_eq!(canonical_prefix(&[USER_ADDRESS_LIMIT - 1]).len(), 1);
        assert_eq!(
            canonical_prefix(&[0x5555_0000_1000, 0, 0x5555_0000_2000]).len(),
            1
        );
        assert_eq!(canonical_prefix(&[USER_ADDRESS_FLOOR - 1]).len(), 0);
    }
}
