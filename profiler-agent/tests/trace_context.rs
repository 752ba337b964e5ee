//! End-to-end: trace context read in the kernel (Go pprof labels, OTel thread-context
//! records) arrives as pprof labels on exactly the samples that ran under it.
mod common;

use std::{collections::BTreeMap, path::Path, process::Command};

use common::*;
use profiler_agent::enrich::go_runtime;

const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B: &str = "0af7651916cd43dd8448eb211c80319c";

/// Runs a gated fixture under the agent; returns its samples.
fn profile(exe: &Path, args: &[&str], dir: &Path) -> Vec<FlatSample> {
    let out = dir.join(format!(
        "profiles-{}",
        exe.file_name().unwrap().to_string_lossy()
    ));
    profile_pid(Gated::start(exe, args), &out, Profiling::default()).samples()
}

/// Per leaf function: how many samples carried which trace id (None = no trace label).
fn traces_by_leaf(samples: &[FlatSample]) -> BTreeMap<String, BTreeMap<Option<String>, i64>> {
    let mut out: BTreeMap<String, BTreeMap<Option<String>, i64>> = BTreeMap::new();
    for s in samples {
        let Some((leaf, _)) = s.frames.iter().find(|(_, m)| m != "[kernel.kallsyms]") else {
            continue;
        };
        *out.entry(leaf.clone())
            .or_default()
            .entry(label(s, "trace_id").map(str::to_string))
            .or_default() += s.count;
    }
    out
}

fn assert_isolated(
    by_leaf: &BTreeMap<String, BTreeMap<Option<String>, i64>>,
    leaf: &str,
    own: &str,
    other: &str,
) {
    let counts = by_leaf
        .get(leaf)
        .unwrap_or_else(|| panic!("no samples with leaf {leaf}: {by_leaf:?}"));
    let total: i64 = counts.values().sum();
    let mine = counts.get(&Some(own.to_string())).copied().unwrap_or(0);
    let wrong = counts.get(&Some(other.to_string())).copied().unwrap_or(0);
    assert!(total >= 30, "too few samples of {leaf}: {counts:?}");
    assert!(
        mine as f64 >= 0.99 * total as f64,
        "{leaf}: only {mine}/{total} carry its trace: {counts:?}"
    );
    assert_eq!(
        wrong, 0,
        "{leaf}: samples carry the other trace: {counts:?}"
    );
}

fn go_two_traces(version: &str) {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_go(version, "labels", dir.path(), &[]);
    let samples = profile(
        &exe,
        &[
            "3",
            TRACE_A,
            "aaaaaaaaaaaaaaaa",
            TRACE_B,
            "bbbbbbbbbbbbbbbb",
        ],
        dir.path(),
    );
    let by_leaf = traces_by_leaf(&samples);
    assert_isolated(&by_leaf, "main.hotA", TRACE_A, TRACE_B);
    assert_isolated(&by_leaf, "main.hotB", TRACE_B, TRACE_A);
    // Span ids and other labels travel with the trace.
    let a = samples
        .iter()
        .find(|s| label(s, "trace_id") == Some(TRACE_A))
        .unwrap();
    assert_eq!(label(a, "span_id"), Some("aaaaaaaaaaaaaaaa"));
    assert_eq!(label(a, "request"), Some("r-aaaa"));
}

#[test]
fn go_1_19_map_labels() {
    go_two_traces("1.19");
}

#[test]
fn go_1_21_map_labels() {
    go_two_traces("1.21.13");
}

#[test]
fn go_1_24_slice_labels() {
    go_two_traces("1.24.11");
}

#[test]
fn go_1_27_slice_labels() {
    go_two_traces("1.27.3");
}

/// The offset table must equal what each compiler's DWARF says about runtime.g and runtime.m.
#[test]
fn go_offset_table_matches_dwarf() {
    let dir = tempfile::tempdir().unwrap();
    for version in ["1.19", "1.21.13", "1.24.11", "1.26.6", "1.27.3"] {
        let tool = build_go(version, "offsets", dir.path(), &[]);
        let labels = build_go(version, "labels", dir.path(), &[]);
        let out = Command::new(&tool).arg(&labels).output().unwrap();
        assert!(out.status.success(), "offsets tool failed for {version}");
        let dwarf: BTreeMap<String, u32> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect();
        let data = std::fs::read(&labels).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let v = go_runtime::go_version(&obj).expect("buildinfo version");
        let (major, minor) = go_runtime::parse_version(&v).unwrap();
        let table =
            go_runtime::offsets_for(major, minor).unwrap_or_else(|| panic!("{v} not in table"));
        assert_eq!(dwarf["g.m"], table.g_m, "{v}");
        assert_eq!(dwarf["m.curg"], table.m_curg, "{v}");
        assert_eq!(dwarf["g.labels"], table.g_labels, "{v}");
        // Stripped binaries keep their buildinfo, so the version is still found.
        let stripped = build_go(
            version,
            "labels",
            &dir.path().join("stripped"),
            &["-ldflags=-s -w"],
        );
        let data = std::fs::read(&stripped).unwrap();
        assert_eq!(
            go_runtime::go_version(&object::File::parse(&*data).unwrap()).as_deref(),
            Some(v.as_str())
        );
    }
}

#[test]
fn native_otel_thread_context() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(
        dir.path(),
        "otel_threads",
        &["-O1", "-g", "-fno-omit-frame-pointer", "-pthread"],
    );
    let out = dir.path().join("profiles-otel_threads");
    let samples = profile(&exe, &["3", TRACE_A, TRACE_B], dir.path());
    let by_leaf = traces_by_leaf(&samples);
    assert_isolated(&by_leaf, "hot_a", TRACE_A, TRACE_B);
    assert_isolated(&by_leaf, "hot_b", TRACE_B, TRACE_A);
    // Thread C's record has the sampled flag clear: its samples carry no trace at all.
    let c = by_leaf.get("hot_c").expect("samples of hot_c");
    assert_eq!(
        c.keys().collect::<Vec<_>>(),
        [&None],
        "unsampled context leaked: {c:?}"
    );
    let a = samples
        .iter()
        .find(|s| label(s, "trace_id") == Some(TRACE_A))
        .unwrap();
    assert_eq!(label(a, "span_id"), Some("a1a1a1a1a1a1a1a1"));

    // go tool pprof -tagfocus selects exactly one trace's CPU.
    let go = go_tool();
    let files: Vec<_> = read_profiles(&out).into_iter().map(|(p, _)| p).collect();
    for (trace, want, not) in [(TRACE_A, "hot_a", "hot_b"), (TRACE_B, "hot_b", "hot_a")] {
        let focus = format!("trace_id={trace}");
        let top = Command::new(&go)
            .args(["tool", "pprof", "-top", "-tagfocus", &focus])
            .args(&files)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&top.stdout);
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("flat"))
            .skip(1)
            .collect();
        assert!(
            rows.iter().any(|r| r.ends_with(&format!(" {want}"))),
            "{want} missing under {focus}:\n{text}"
        );
        assert!(
            !rows.iter().any(|r| r.ends_with(&format!(" {not}"))),
            "{not} leaked into {focus}:\n{text}"
        );
    }
}

#[test]
fn hostile_otel_records_give_counted_misses_never_wrong_labels() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(
        dir.path(),
        "otel_faults",
        &["-O1", "-fno-omit-frame-pointer", "-pthread"],
    );
    let out = dir.path().join("profiles");
    let run = profile_pid(Gated::start(&exe, &["3"]), &out, Profiling::default());
    let t = run.totals();
    assert!(
        t["context_read_error"] > 0,
        "bad pointer not counted: {t:?}"
    );
    assert!(
        t["context_invalid"] > 0,
        "invalid record not counted: {t:?}"
    );
    let samples = run.samples();
    let uniform = ["11".repeat(16), "22".repeat(16)];
    let mut churn = 0;
    for s in &samples {
        if let Some(trace) = label(s, "trace_id") {
            assert!(
                uniform.contains(&trace.to_string()),
                "torn or bogus trace id {trace}"
            );
            let span = label(s, "span_id").unwrap();
            assert_eq!(&trace[..16], span, "trace and span from different writes");
            churn += s.count;
        }
    }
    assert!(churn > 0, "the churning record was never captured");
}

/// A Go release the agent does not know: logged once, and its samples carry no labels.
#[test]
fn unknown_go_version_gives_no_labels_and_a_warning() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_go("1.27.3", "labels", dir.path(), &[]);
    let mut bytes = std::fs::read(&exe).unwrap();
    let hits: Vec<usize> = bytes
        .windows(8)
        .enumerate()
        .filter(|(_, w)| *w == b"go1.27.3")
        .map(|(i, _)| i)
        .collect();
    assert!(!hits.is_empty(), "version string in buildinfo");
    for at in hits {
        bytes[at..at + 8].copy_from_slice(b"go1.99.3");
    }
    let patched = dir.path().join("future-go");
    std::fs::write(&patched, &bytes).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&patched)
        .status()
        .unwrap();

    let out = dir.path().join("profiles");
    let fixture = Gated::start(
        &patched,
        &[
            "2",
            TRACE_A,
            "aaaaaaaaaaaaaaaa",
            TRACE_B,
            "bbbbbbbbbbbbbbbb",
        ],
    );
    let run = profile_pid(fixture, &out, Profiling::default());
    let log = &run.log;
    let warnings = log
        .iter()
        .filter(|l| l.contains("Go version outside the label-offset table"))
        .count();
    assert_eq!(warnings, 1, "expected one warning: {log:?}");
    assert!(log.iter().any(|l| l.contains("go1.99.3")));
    assert_eq!(run.totals()["unknown_go_versions"], 1);
    let samples = run.samples();
    assert!(!samples.is_empty());
    assert!(
        samples.iter().all(|s| label(s, "trace_id").is_none()),
        "labels from an unknown layout"
    );
}
