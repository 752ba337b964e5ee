//! Host-side checks of the qemu kernel matrix. `cargo xtask vm-test` boots each kernel with a
//! static agent profiling four workloads (xtask/src/vm/initramfs.rs), brings the agent's log
//! and profiles back into `$PROFILER_VM_RESULTS/<kernel>/`, and then runs this test, which
//! asserts on what each guest wrote. Not part of a plain `cargo test` (`test = false`).
mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use common::*;

/// The trace ids the guest's workloads run under (xtask/src/vm/initramfs.rs).
const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B: &str = "0af7651916cd43dd8448eb211c80319c";

fn results() -> PathBuf {
    PathBuf::from(
        std::env::var_os("PROFILER_VM_RESULTS")
            .expect("PROFILER_VM_RESULTS is unset: run `cargo xtask vm-test`"),
    )
}

struct Guest {
    kernel: String,
    log: Vec<String>,
    samples: Vec<FlatSample>,
}

impl Guest {
    fn load(dir: &Path, kernel: &str) -> Guest {
        let log = std::fs::read_to_string(dir.join("agent.log"))
            .unwrap_or_else(|e| panic!("{kernel}: no agent log: {e}"))
            .lines()
            .map(str::to_string)
            .collect();
        let samples = read_profiles(&dir.join("profiles"))
            .iter()
            .flat_map(|(_, p)| flatten(p))
            .collect();
        Guest {
            kernel: kernel.to_string(),
            log,
            samples,
        }
    }

    fn of(&self, comm: &str) -> Vec<&FlatSample> {
        self.samples
            .iter()
            .filter(|s| label(s, "comm") == Some(comm))
            .collect()
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.iter().any(|l| l.contains(needle))
    }
}

/// At least 90% of `comm`'s samples satisfy `whole`.
fn assert_chain(g: &Guest, comm: &str, whole: impl Fn(&FlatSample) -> bool) {
    let samples = g.of(comm);
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let good: i64 = samples.iter().filter(|s| whole(s)).map(|s| s.count).sum();
    let bad: Vec<_> = samples
        .iter()
        .filter(|s| !whole(s))
        .take(3)
        .map(|s| s.user_frames().join(" <- "))
        .collect();
    eprintln!(
        "{}: {comm}: {good}/{total} samples with the whole chain",
        g.kernel
    );
    assert!(total >= 50, "{}: too few {comm} samples: {total}", g.kernel);
    assert!(
        good as f64 >= 0.9 * total as f64,
        "{}: only {good}/{total} {comm} samples carry the whole chain; e.g. {bad:#?}",
        g.kernel
    );
}

/// Per leaf function of `comm`: samples by trace id.
fn traces(g: &Guest, comm: &str) -> BTreeMap<String, BTreeMap<Option<String>, i64>> {
    let mut out: BTreeMap<String, BTreeMap<Option<String>, i64>> = BTreeMap::new();
    for s in g.of(comm) {
        let Some(leaf) = s.user_frames().first().map(|f| f.to_string()) else {
            continue;
        };
        *out.entry(leaf)
            .or_default()
            .entry(label(s, "trace_id").map(str::to_string))
            .or_default() += s.count;
    }
    out
}

/// `leaf`'s samples carry `own` (at least 99% of them) and never `other`.
fn assert_trace(g: &Guest, comm: &str, leaf: &str, own: &str, other: &str) {
    let by_leaf = traces(g, comm);
    let counts = by_leaf
        .get(leaf)
        .unwrap_or_else(|| panic!("{}: no {comm} samples in {leaf}: {by_leaf:?}", g.kernel));
    let total: i64 = counts.values().sum();
    let mine = counts.get(&Some(own.to_string())).copied().unwrap_or(0);
    let wrong = counts.get(&Some(other.to_string())).copied().unwrap_or(0);
    eprintln!(
        "{}: {comm} {leaf}: {mine}/{total} under its trace",
        g.kernel
    );
    assert!(
        total >= 20,
        "{}: too few samples of {leaf}: {counts:?}",
        g.kernel
    );
    assert!(
        mine as f64 >= 0.99 * total as f64,
        "{}: {leaf}: only {mine}/{total} carry its trace: {counts:?}",
        g.kernel
    );
    assert_eq!(wrong, 0, "{}: {leaf} carries the other trace", g.kernel);
}

/// No sample of `comm` carries a trace id.
fn assert_no_traces(g: &Guest, comm: &str) {
    let labelled = g
        .of(comm)
        .iter()
        .filter(|s| label(s, "trace_id").is_some())
        .count();
    assert_eq!(labelled, 0, "{}: {comm} has trace ids", g.kernel);
}

fn check(g: &Guest) {
    assert!(
        g.logged("profiling started"),
        "{}: the agent did not start: {:#?}",
        g.kernel,
        g.log
    );
    let t = totals(&g.log);
    assert_eq!(
        t["samples_taken"],
        t["delivered"] + t["ring_buffer_full"],
        "{}: samples unaccounted for: {t:?}",
        g.kernel
    );
    assert_eq!(t["ring_buffer_full"], 0, "{}: ring drops: {t:?}", g.kernel);
    assert_eq!(t["malformed_records"], 0, "{}: {t:?}", g.kernel);
    // Frame pointers: main -> outer -> middle -> leaf.
    assert_chain(g, "chain", |s| {
        s.user_frames()
            .starts_with(&["leaf", "middle", "outer", "main"])
    });
    // No frame pointers, through Debian's libc qsort to the callback.
    assert_chain(g, "qsort_chain", |s| {
        whole_chain(s, "by_value", Some("libc.so"))
    });
    if g.logged("trace contexts disabled") {
        // The kernel cannot give them: the reason is logged and nothing is mislabelled.
        assert_no_traces(g, "labels");
        assert_no_traces(g, "otel_threads");
    } else {
        assert_trace(g, "labels", "main.hotA", TRACE_A, TRACE_B);
        assert_trace(g, "labels", "main.hotB", TRACE_B, TRACE_A);
        assert_trace(g, "otel_threads", "hot_a", TRACE_A, TRACE_B);
        assert_trace(g, "otel_threads", "hot_b", TRACE_B, TRACE_A);
    }
}

#[test]
fn every_booted_kernel_profiles_its_workloads() {
    let dir = results();
    let kernels = std::fs::read_to_string(dir.join("kernels")).expect("the matrix's kernel list");
    let mut failed = Vec::new();
    for kernel in kernels.lines().filter(|l| !l.is_empty()) {
        let guest = Guest::load(&dir.join(kernel), kernel);
        if let Err(panic) = std::panic::catch_unwind(|| check(&guest)) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{kernel}: {msg}"));
        }
    }
    assert!(failed.is_empty(), "kernels failed:\n{}", failed.join("\n"));
}
