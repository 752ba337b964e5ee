//! Counts identical samples within one profile interval.
use std::{collections::HashMap, sync::Arc, time::SystemTime};

use profiler_common::{RawSample, COMM_LEN, MAX_STACK_DEPTH};

use crate::{
    processes::{BinaryInfo, BinaryKey, Processes, UserFrame},
    trace_context::{self, LabelFilter, Labels},
};

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
    pub pid: u32,
    pub tid: u32,
    pub thread_name: Arc<str>,
    /// Innermost first.
    pub user: Vec<UserFrame>,
    /// Innermost first, raw kernel addresses.
    pub kernel: Vec<u64>,
    /// Trace context and other labels, sorted by key.
    pub labels: Labels,
    pub count: u64,
}

/// Everything one profile needs, detached from the live process table.
pub struct Interval {
    pub start: SystemTime,
    pub end: SystemTime,
    pub stacks: Vec<StackCount>,
    pub process_names: HashMap<u32, String>,
    pub binaries: HashMap<BinaryKey, BinaryInfo>,
    pub samples: u64,
}

pub struct Aggregator {
    filter: LabelFilter,
    stacks: HashMap<StackKey, StackCount>,
    start: SystemTime,
    samples: u64,
}

/// Bytes up to the first NUL, lossily decoded.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

impl Aggregator {
    pub fn new(filter: LabelFilter) -> Self {
        Aggregator {
            filter,
            stacks: HashMap::new(),
            start: SystemTime::now(),
            samples: 0,
        }
    }

    /// Adds one sample. A new stack is normalized now, while its process is most likely alive.
    pub fn add(&mut self, sample: &RawSample, processes: &mut Processes) {
        self.samples += 1;
        let user_len = (sample.user_len as usize).min(MAX_STACK_DEPTH);
        let kernel_len = (sample.kernel_len as usize).min(MAX_STACK_DEPTH);
        let key = StackKey {
            pid: sample.pid,
            tid: sample.tid,
            comm: sample.comm,
            user: sample.user_stack[..user_len].into(),
            kernel: sample.kernel_stack[..kernel_len].into(),
            context: trace_context::context_key(&sample.context),
        };
        if let Some(entry) = self.stacks.get_mut(&key) {
            entry.count += 1;
            return;
        }
        let user = processes.normalize(sample.pid, &key.user);
        let entry = StackCount {
            pid: sample.pid,
            tid: sample.tid,
            thread_name: Arc::from(comm_str(&sample.comm)),
            user,
            kernel: key.kernel.to_vec(),
            labels: trace_context::decode(&sample.context, &self.filter),
            count: 1,
        };
        self.stacks.insert(key, entry);
    }

    /// Ends the interval: hands out its stacks with the binaries and names they refer to.
    pub fn take(&mut self, processes: &mut Processes) -> Interval {
        let end = SystemTime::now();
        let stacks: Vec<StackCount> = self.stacks.drain().map(|(_, v)| v).collect();
        let mut process_names = HashMap::new();
        let mut binaries = HashMap::new();
        for s in &stacks {
            process_names
                .entry(s.pid)
                .or_insert_with(|| processes.process_name(s.pid).to_string());
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
            process_names,
            binaries,
            samples: self.samples,
        };
        self.start = end;
        self.samples = 0;
        interval
    }
}
