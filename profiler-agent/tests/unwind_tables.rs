//! End-to-end: code without frame pointers (C at -O2 through Debian's libc, a Rust release
//! binary) is unwound in the kernel from the agent's .eh_frame tables, down to main.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::*;

const HZ: &str = "199";

/// Runs a gated fixture for `secs` under the agent filtered to its pid; returns its samples
/// and the agent log.
fn profile(exe: &Path, secs: &str, out: &Path, extra: &[&str]) -> (Vec<FlatSample>, Vec<String>) {
    profile_gated(Gated::start(exe, &[secs]), out, extra)
}

fn profile_gated(fixture: Gated, out: &Path, extra: &[&str]) -> (Vec<FlatSample>, Vec<String>) {
    let hz = HZ.parse().unwrap();
    let run = profile_pid(
        fixture,
        out,
        Profiling {
            hz,
            extra,
            ..Profiling::default()
        },
    );
    (run.samples(), run.log)
}

fn check(samples: &[FlatSample], log: &[String], callback: &str, through: Option<&str>) {
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let whole: i64 = samples
        .iter()
        .filter(|s| whole_chain(s, callback, through))
        .map(|s| s.count)
        .sum();
    let t = totals(log);
    let share = whole as f64 / total.max(1) as f64;
    eprintln!(
        "whole chain in {whole}/{total} samples ({:.1}%); totals {t:?}",
        share * 100.0
    );
    assert!(total > 100, "too few samples: {total}");
    let broken: Vec<_> = samples
        .iter()
        .filter(|s| !whole_chain(s, callback, through))
        .take(5)
        .collect();
    assert!(
        share >= 0.95,
        "only {whole}/{total} samples show the whole chain; e.g. {broken:#?}"
    );
    assert!(t["unwind_stacks"] > 0, "{t:?}");
    assert!(t["unwind_tables_built"] > 0, "{t:?}");
    // Not vacuous: most samples are in the callback, deep inside the sort.
    let in_callback: i64 = samples
        .iter()
        .filter(|s| s.frames.iter().any(|(f, _)| is(f, callback)))
        .map(|s| s.count)
        .sum();
    assert!(
        in_callback * 2 > total,
        "only {in_callback}/{total} samples in {callback}"
    );
}

fn build_rust(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chain_nofp.rs");
    let out = dir.join("chain_nofp");
    let status = Command::new("rustc")
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "force-frame-pointers=no",
            "-g",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run rustc");
    assert!(status.success(), "rustc failed on {}", src.display());
    out
}

#[test]
fn c_without_frame_pointers_unwinds_through_libc_to_main() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path(), "qsort_chain", &["-O2", "-fomit-frame-pointer"]);
    let (samples, log) = profile(&exe, "4", &dir.path().join("profiles"), &[]);
    check(&samples, &log, "by_value", Some("libc.so"));
}

#[test]
fn rust_release_without_frame_pointers_unwinds_to_main() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_rust(dir.path());
    let (samples, log) = profile(&exe, "4", &dir.path().join("profiles"), &[]);
    check(&samples, &log, "by_value", None);
}

#[test]
fn disabled_tables_leave_frame_pointer_stacks() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path(), "qsort_chain", &["-O2", "-fomit-frame-pointer"]);
    let (samples, log) = profile(
        &exe,
        "2",
        &dir.path().join("profiles"),
        &["--no-unwind-tables"],
    );
    let t = totals(&log);
    assert_eq!(t["unwind_stacks"], 0, "{t:?}");
    assert_eq!(t["unwind_tables_built"], 0, "{t:?}");
    // Frame pointers alone lose the chain in this fixture: that is what the tables fix.
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let whole: i64 = samples
        .iter()
        .filter(|s| whole_chain(s, "by_value", Some("libc.so")))
        .map(|s| s.count)
        .sum();
    eprintln!("frame pointers only: whole chain in {whole}/{total} samples");
    assert!(total > 50 && whole * 2 < total, "{whole}/{total}");
}

#[test]
fn tables_over_the_row_budget_are_skipped_and_counted() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path(), "qsort_chain", &["-O2", "-fomit-frame-pointer"]);
    // Room for the fixture's own small table, not for libc's (about 23k rows).
    let (samples, log) = profile(
        &exe,
        "2",
        &dir.path().join("profiles"),
        &["--unwind-table-rows", "5000"],
    );
    let t = totals(&log);
    assert!(t["unwind_over_budget"] > 0, "{t:?}");
    assert!(t["unwind_table_bytes_peak"] <= 5000 * 8, "{t:?}");
    assert_eq!(
        t["samples_taken"],
        t["delivered"] + t["ring_buffer_full"],
        "{t:?}"
    );
    assert!(samples.iter().map(|s| s.count).sum::<i64>() > 50);
}

#[test]
fn exec_into_a_new_binary_gets_its_tables() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path(), "qsort_chain", &["-O2", "-fomit-frame-pointer"]);
    // The agent first sees a shell; after the gate the same pid execs the fixture, whose
    // mappings the agent picks up at its next profile interval (1 s here).
    let script = "read gate; exec \"$0\" 5 <<EOF\ngo\nEOF\n";
    let shell = Gated::start(Path::new("/bin/sh"), &["-c", script, exe.to_str().unwrap()]);
    let (samples, log) = profile_gated(
        shell,
        &dir.path().join("profiles"),
        &["--profile-interval", "1"],
    );
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let whole: i64 = samples
        .iter()
        .filter(|s| whole_chain(s, "by_value", Some("libc.so")))
        .map(|s| s.count)
        .sum();
    let t = totals(&log);
    eprintln!("after exec: whole chain in {whole}/{total} samples; totals {t:?}");
    assert!(total > 100, "{total}");
    // Up to one interval of samples may still see the shell's entries.
    assert!(whole as f64 >= 0.6 * total as f64, "{whole}/{total}");
}

#[test]
fn go_calling_c_through_cgo_shows_both_in_one_stack() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_go_cgo("1.27.3", "cgo_chain", dir.path());
    let (samples, log) = profile(&exe, "4", &dir.path().join("profiles"), &[]);
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let chain = ["c_leaf", "c_middle"];
    let go_chain = ["main.goInner", "main.goOuter", "main.main"];
    let mixed = |s: &FlatSample| {
        let names: Vec<&str> = s.frames.iter().map(|(f, _)| f.as_str()).collect();
        let Some(c) = names.iter().position(|f| *f == "c_leaf") else {
            return false;
        };
        let Some(g) = names.iter().position(|f| *f == "main.goInner") else {
            return false;
        };
        names[c..c + 2] == chain && g > c && names.len() >= g + 3 && names[g..g + 3] == go_chain
    };
    let whole: i64 = samples.iter().filter(|s| mixed(s)).map(|s| s.count).sum();
    let t = totals(&log);
    eprintln!("cgo: C and Go frames together in {whole}/{total} samples; totals {t:?}");
    assert!(total > 100, "{total}");
    let broken: Vec<_> = samples.iter().filter(|s| !mixed(s)).take(3).collect();
    assert!(
        whole as f64 >= 0.9 * total as f64,
        "{whole}/{total}; e.g. {broken:#?}"
    );
}

#[test]
fn deep_stacks_fill_all_127_frames() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path(), "deep_stack", &["-O2", "-fomit-frame-pointer"]);
    let fixture = Gated::start(&exe, &["2", "200"]);
    let (samples, log) = profile_gated(fixture, &dir.path().join("profiles"), &[]);
    let t = totals(&log);
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let full: i64 = samples
        .iter()
        .filter(|s| {
            let user = s.user_frames();
            user.len() == profiler_common::MAX_STACK_DEPTH
                && user[1..].iter().all(|f| *f == "recurse")
        })
        .map(|s| s.count)
        .sum();
    eprintln!("127-frame stacks in {full}/{total} samples; totals {t:?}");
    assert!(
        total > 50 && full as f64 >= 0.95 * total as f64,
        "{full}/{total}"
    );
    assert!(t["unwind_stop_depth_limit"] > 0, "{t:?}");
}
