//! Unit tests on captured stacks: each `tests/data/*.stack` holds the registers, stack bytes,
//! mappings and table rows of one real sample (see `common::replay`), replayed through the
//! walker with no process or binary involved. `record_captured_stacks` (ignored) refreshes
//! them from the fixtures.

mod common;

use common::capture::sample_process;
use common::fixture::{self, FP_NO_CFI, OMIT_FP, RUST_NO_FP};
use common::process::Binaries;
use common::replay::Replay;
use profiler_unwind::StopReason;
use std::path::Path;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

#[test]
fn replay_captured_stacks() {
    let mut seen = 0;
    for entry in std::fs::read_dir(DATA).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "stack") {
            continue;
        }
        let replay = Replay::parse(&std::fs::read_to_string(&path).unwrap());
        let (frames, outcome) = replay.unwind();
        assert_eq!(
            frames,
            replay.frames,
            "{}: {:?}",
            path.display(),
            replay.names
        );
        assert_eq!(outcome.stop, replay.stop, "{}", path.display());
        assert_eq!(outcome.stop, StopReason::EndOfStack, "{}", path.display());
        assert!(
            replay.names.iter().any(|n| n.ends_with("main")),
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} captured stacks in {DATA}");
}

/// The replay drops everything the walk did not touch; losing a stack byte it did touch must
/// change the result (a read failure), never panic.
#[test]
fn truncated_captures_fail_cleanly() {
    let text = std::fs::read_to_string(Path::new(DATA).join("c-nofp.stack")).unwrap();
    let replay = Replay::parse(&text);
    for keep in (0..replay.stack.len()).step_by(8) {
        let mut cut = Replay::parse(&text);
        cut.stack.truncate(keep);
        let (frames, outcome) = cut.unwind();
        assert_eq!(outcome.stop, StopReason::ReadFailure);
        assert!(frames.len() < replay.frames.len());
        assert_eq!(frames[..], replay.frames[..frames.len()]);
    }
}

#[test]
#[ignore = "rewrites tests/data from live fixtures; run by hand"]
fn record_captured_stacks() {
    const SIGNAL: &[&str] = &["-O2", "-g", "-fomit-frame-pointer", "-DWITH_SIGNAL"];
    let fixtures = [
        (
            "c-nofp",
            fixture::build(
                "chain-nofp",
                &[("chain_main.c", OMIT_FP), ("chain_middle.c", OMIT_FP)],
            ),
            "C, -O2 -fomit-frame-pointer",
            "",
        ),
        (
            "c-mixed",
            fixture::build(
                "chain-mixed",
                &[("chain_main.c", OMIT_FP), ("chain_middle.c", FP_NO_CFI)],
            ),
            "C, middle() without CFI but with frame pointers",
            "",
        ),
        (
            "c-signal",
            fixture::build(
                "chain-signal",
                &[("chain_main.c", SIGNAL), ("chain_middle.c", OMIT_FP)],
            ),
            "C, in a SIGPROF handler",
            "on_signal_work",
        ),
        (
            "rust-nofp",
            fixture::build_rust("chain-rust", "chain.rs", RUST_NO_FP),
            "Rust, opt-level=2, force-frame-pointers=no",
            "",
        ),
    ];
    let libc = std::process::Command::new("ldd")
        .arg("--version")
        .output()
        .unwrap();
    let libc = String::from_utf8_lossy(&libc.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    for (name, exe, what, innermost) in fixtures {
        let mut binaries = Binaries::default();
        // The deepest of some samples (through the sort, into the comparator) whose innermost
        // function is `innermost`, if given.
        let best = sample_process(&exe, 40)
            .iter()
            .map(|cap| binaries.record(cap, &format!("{what}; libc: {libc}")))
            .filter(|r| innermost.is_empty() || r.names[0] == innermost)
            .max_by_key(|r| r.frames.len())
            .unwrap();
        assert_eq!(best.stop, StopReason::EndOfStack);
        std::fs::write(
            Path::new(DATA).join(format!("{name}.stack")),
            best.to_text(),
        )
        .unwrap();
    }
}
