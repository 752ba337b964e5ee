//! Entry points of the agent's fuzz targets, one per parser of hostile input outside the
//! symbolizer. `cargo fuzz` calls them from `fuzz_targets/`; `profiler-agent/tests/fuzz_seeds.rs`
//! compiles this same file as a module and replays the seeds, their mutations and the saved
//! crash reproducers through them, so the normal test suite needs no nightly.
//!
//! Each must return without panicking on any input. The assertions are the parsers' own
//! promises (sorted, non-overlapping maps; lookups that agree with a linear scan; ...), so a
//! failed one is a bug as much as a crash is.

use std::mem::size_of;
use std::sync::Arc;

use profiler_agent::bpf::{events, ring};
use profiler_agent::enrich::go_runtime;
use profiler_agent::process::{maps, Processes};
use profiler_agent::profile::aggregate::{comm_str, Aggregator};
use profiler_agent::profile::labels::{self, LabelFilter};
use profiler_agent::stats::AgentStats;
use profiler_common::{ProcessEvent, RawSample, GO_LABELS_MAP, GO_LABELS_SLICE, MAX_STACK_DEPTH};

/// Little-endian words of the input, as addresses and numbers to probe with.
fn words(data: &[u8], n: usize) -> impl Iterator<Item = u64> + '_ {
    data.chunks_exact(8)
        .take(n)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
}

/// `/proc/PID/maps` text (lossily decoded), then lookups at the entries' edges and at words
/// of the input, and the LPM blocks the agent would store for each executable mapping.
pub fn proc_maps(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(entries) = maps::parse_maps(&text) else {
        return;
    };
    // Promised: sorted by start, never overlapping, no range ending before it starts.
    assert!(entries.iter().all(|m| m.start <= m.end));
    assert!(entries.windows(2).all(|w| w[0].end <= w[1].start));
    let mut probes: Vec<u64> = words(data, 16).collect();
    for m in entries.iter().take(64) {
        let _ = m.is_file();
        probes.extend([
            m.start,
            m.start.wrapping_sub(1),
            m.end,
            m.end.wrapping_sub(1),
            m.start / 2 + m.end / 2,
        ]);
    }
    for addr in probes {
        let index = maps::find_index(&entries, addr);
        let found = maps::find(&entries, addr);
        assert_eq!(index.map(|i| &entries[i]), found);
        let linear = entries.iter().position(|m| m.contains(addr));
        assert_eq!(index, linear, "find_index({addr:#x})");
    }
    for (pid, m) in entries.iter().filter(|m| m.executable).take(32).enumerate() {
        profiler_unwind::fuzzing::check_lpm_cover(pid as u32, m.start, m.end);
    }
}

/// One ring record after a mode byte: bit 0 clear, a sample record ([`ring::decode`]) that
/// then goes through what the agent does with every sample (labels, aggregation); set, a
/// lifecycle event ([`events::decode`]). Bit 1 restricts the labels kept to two keys.
pub fn ring_records(data: &[u8]) {
    let Some((&mode, record)) = data.split_first() else {
        return;
    };
    if mode & 1 != 0 {
        lifecycle_event(record);
        return;
    }
    let Some(sample) = ring::decode(record) else {
        assert!(record.len() < size_of::<RawSample>());
        return;
    };
    let filter = LabelFilter {
        allow: if mode & 2 != 0 {
            vec!["k".into(), "region".into()]
        } else {
            Vec::new()
        },
    };
    let decoded = labels::decode(&sample.context, &filter);
    assert!(
        decoded.windows(2).all(|w| w[0].0 < w[1].0),
        "labels not sorted by unique key"
    );
    let _ = labels::context_key(&sample.context);
    let _ = comm_str(&sample.comm);
    // Aggregation, with a process table that finds no /proc: every user frame is unmapped.
    let stats = Arc::new(AgentStats::default());
    let mut processes = Processes::new("/nonexistent/fuzz-proc", stats.clone());
    let mut aggregator = Aggregator::new(filter, 4, stats);
    aggregator.add(&sample, &mut processes);
    aggregator.add(&sample, &mut processes);
    let interval = aggregator.take(&mut processes);
    assert_eq!(interval.samples, 2);
    assert_eq!(interval.stacks.len(), 1, "one stack, twice");
    let stack = &interval.stacks[0];
    assert_eq!(stack.count, 2);
    assert!(stack.user.len() <= MAX_STACK_DEPTH && stack.kernel.len() <= MAX_STACK_DEPTH);
}

fn lifecycle_event(record: &[u8]) {
    let word = |at: usize| u32::from_le_bytes(record[at..at + 4].try_into().unwrap());
    match events::decode(record) {
        Ok(event) => {
            let pid = match event {
                events::Lifecycle::Exec { pid, .. }
                | events::Lifecycle::Exit { pid, .. }
                | events::Lifecycle::NewPid { pid }
                | events::Lifecycle::UnwindMiss { pid } => pid,
            };
            assert_eq!(pid, word(12));
        }
        Err(events::DecodeError::Short(n)) => {
            assert_eq!(n, record.len());
            assert!(n < size_of::<ProcessEvent>());
        }
        Err(events::DecodeError::UnknownKind(kind)) => assert_eq!(kind, word(8)),
    }
}

/// An ELF file: the Go version in `.go.buildinfo` (both the agent's reader and the
/// symbolizer's), the runtime offsets for it, and where `g` lives in TLS.
pub fn go_runtime(data: &[u8]) {
    // The version parser and the table also see arbitrary text and numbers.
    let head = String::from_utf8_lossy(data.get(..32).unwrap_or(data));
    if let Some((major, minor)) = go_runtime::parse_version(&head) {
        let _ = go_runtime::offsets_for(major, minor);
    }
    for w in words(data, 2) {
        check_offsets(go_runtime::offsets_for(w as u32, (w >> 32) as u32));
    }
    let Ok(obj) = object::File::parse(data) else {
        return;
    };
    let version = go_runtime::go_version(&obj);
    if let Some((major, minor)) = version.as_deref().and_then(go_runtime::parse_version) {
        check_offsets(go_runtime::offsets_for(major, minor));
    }
    let _ = go_runtime::static_tls_offset(&obj, "runtime.tlsg");
    let _ = go_runtime::g_tls_offset(&obj);
    // The symbolizer reads the same field for its own purposes: where both find a version,
    // they must agree.
    use object::Object as _;
    if obj.section_by_name(".go.buildinfo").is_some() {
        if let Ok(binary) = symbolizer::Binary::from_bytes(data.to_vec()) {
            let theirs = symbolizer::gopclntab::go_version(&binary);
            if let (Some(ours), Some(theirs)) = (&version, &theirs) {
                assert_eq!(ours, theirs, "the agent and the symbolizer disagree");
            }
        }
    }
}

fn check_offsets(offsets: Option<go_runtime::GoOffsets>) {
    if let Some(o) = offsets {
        assert!(o.layout == GO_LABELS_MAP || o.layout == GO_LABELS_SLICE);
    }
}
