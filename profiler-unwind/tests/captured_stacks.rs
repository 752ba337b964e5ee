//! Regression snapshots of captured stacks, and an independent check of the path they take.
//!
//! Each `tests/data/*.stack` holds the registers, stack bytes, mappings and table rows of one
//! real sample (see `common::replay`), together with the frames this crate's walker recovered
//! when the file was recorded. The `snapshot_*` tests replay them with no process or binary
//! involved: they catch any change in what the walker makes of that input, but since the
//! expected frames are the walker's own earlier output they cannot show those frames were
//! right. `record_snapshots` (ignored) rewrites the files from the fixtures.
//!
//! `fresh_walks_follow_the_call_chain_binutils_shows` is the independent check: new captures of
//! the same fixtures go through the same record-and-replay path, and every frame recovered is
//! held against binutils rather than against the walker: each return address must follow a
//! call instruction (`objdump -d`), the functions that `nm -S` places the frames in must be the
//! fixture's known call chain from the leaf to `main` in that order, each link a direct call
//! to the frame below, and the walk must end in the binary's `_start`.

mod common;

use common::binutils::CallSites;
use common::capture::{sample_process, Capture};
use common::fixture::{self, FP_NO_CFI, OMIT_FP, RUST_NO_FP};
use common::process::Binaries;
use common::replay::Replay;
use profiler_unwind::StopReason;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// The C fixture's own functions, innermost first.
const C_CHAIN: &[&str] = &["compare", "leaf", "middle", "outer", "main"];
/// The Rust fixture's, as `nm --demangle` names them.
const RUST_CHAIN: &[&str] = &[
    "chain::compare",
    "chain::leaf",
    "chain::middle",
    "chain::outer",
    "chain::main",
];

/// The fixture a snapshot is recorded from.
struct Fixture {
    exe: PathBuf,
    /// For the snapshot's comment line.
    what: &'static str,
    /// If not empty, the snapshot is a sample whose innermost function is this one.
    innermost: &'static str,
    /// The fixture's own call chain, innermost first.
    chain: &'static [&'static str],
}

/// Builds the fixture behind snapshot `name` (`tests/data/<name>.stack`), in a directory of
/// its own (other test binaries build the same sources).
fn fixture(name: &str) -> Fixture {
    const SIGNAL: &[&str] = &["-O2", "-g", "-fomit-frame-pointer", "-DWITH_SIGNAL"];
    let c = |dir: &str, main: &[&str], middle: &[&str]| {
        fixture::build(dir, &[("chain_main.c", main), ("chain_middle.c", middle)])
    };
    let (exe, what, innermost, chain) = match name {
        "c-nofp" => (
            c("snapshot-c-nofp", OMIT_FP, OMIT_FP),
            "C, -O2 -fomit-frame-pointer",
            "",
            C_CHAIN,
        ),
        "c-mixed" => (
            c("snapshot-c-mixed", OMIT_FP, FP_NO_CFI),
            "C, middle() without CFI but with frame pointers",
            "",
            C_CHAIN,
        ),
        "c-signal" => (
            c("snapshot-c-signal", SIGNAL, OMIT_FP),
            "C, in a SIGPROF handler",
            "on_signal_work",
            C_CHAIN,
        ),
        "rust-nofp" => (
            fixture::build_rust("snapshot-rust-nofp", "chain.rs", RUST_NO_FP),
            "Rust, opt-level=2, force-frame-pointers=no",
            "",
            RUST_CHAIN,
        ),
        _ => panic!("no fixture for snapshot {name}"),
    };
    Fixture {
        exe,
        what,
        innermost,
        chain,
    }
}

#[test]
fn snapshot_replays_as_recorded() {
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
fn snapshot_truncated_fails_cleanly() {
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

/// One frame as binutils sees it.
struct Frame {
    path: String,
    /// ELF vaddr of the frame's pc (the sampled pc, or the return address).
    vaddr: u64,
    /// The sized function symbol containing the pc (the call, for a return address).
    function: Option<String>,
}

/// Checks one walk against binutils; true when it holds the whole chain, leaf included.
fn check_walk(
    cap: &Capture,
    frames: &[u64],
    binaries: &Binaries,
    sites: &mut HashMap<String, CallSites>,
    exe: &str,
    chain: &[&str],
) -> bool {
    let mut seen = Vec::new();
    for (i, &pc) in frames.iter().enumerate() {
        // A return address belongs with the call before it.
        let at = if i == 0 { pc } else { pc - 1 };
        let (path, at_vaddr) = binaries
            .file_vaddr(&cap.maps, at)
            .unwrap_or_else(|| panic!("frame {i} at {pc:#x} is in no mapped file: {frames:x?}"));
        let calls = sites
            .entry(path.to_owned())
            .or_insert_with(|| CallSites::load(path));
        let vaddr = at_vaddr + (pc - at);
        if i > 0 {
            assert!(
                calls.call_before(vaddr).is_some(),
                "frame {i} ({pc:#x}, {path} {vaddr:#x}) is not a return address: no call \
                 instruction ends there; walk {frames:x?}"
            );
        }
        seen.push(Frame {
            path: path.to_owned(),
            vaddr,
            function: calls.function_at(at_vaddr).map(str::to_owned),
        });
    }
    let names: Vec<&str> = seen
        .iter()
        .map(|f| f.function.as_deref().unwrap_or("?"))
        .collect();
    let ctx = || format!("{names:?} {frames:x?}");
    // The fixture's frames, innermost first: an unbroken suffix of its chain.
    let in_chain: Vec<usize> = (0..seen.len())
        .filter(|&i| seen[i].path == exe && chain.contains(&names[i]))
        .collect();
    let got: Vec<&str> = in_chain.iter().map(|&i| names[i]).collect();
    assert!(
        !got.is_empty() && got[..] == chain[chain.len() - got.len()..],
        "not a suffix of {chain:?} ending in main: {}",
        ctx()
    );
    // From leaf on each caller is the very next frame, and calls its callee by name. (Between
    // compare and leaf sit the sort's frames, in libc or std.)
    for pair in in_chain.windows(2) {
        let (callee, caller) = (pair[0], pair[1]);
        if names[callee] == chain[0] {
            continue;
        }
        assert_eq!(caller, callee + 1, "frames between {}", ctx());
        let target = sites[&seen[caller].path].call_before(seen[caller].vaddr);
        assert_eq!(
            target,
            Some(Some(names[callee])),
            "{} does not call {} at {:#x}: {}",
            names[caller],
            names[callee],
            seen[caller].vaddr,
            ctx()
        );
    }
    let last = seen.last().unwrap();
    assert_eq!(
        (last.path.as_str(), names[seen.len() - 1]),
        (exe, "_start"),
        "the walk ends elsewhere than the program's entry: {}",
        ctx()
    );
    got.len() == chain.len()
}

#[test]
fn fresh_walks_follow_the_call_chain_binutils_shows() {
    // c-signal is left out: the frame below its signal frame is an interrupted pc, not a
    // return address.
    for name in ["c-nofp", "c-mixed", "rust-nofp"] {
        let fixture = fixture(name);
        let exe = fixture.exe.to_str().unwrap();
        let mut binaries = Binaries::default();
        let mut sites = HashMap::new();
        let mut whole = 0;
        let caps = sample_process(&fixture.exe, 20);
        for cap in &caps {
            // As a snapshot is made and replayed.
            let replay = Replay::parse(&binaries.record(cap, "").to_text());
            let (frames, outcome) = replay.unwind();
            assert_eq!(outcome.stop, StopReason::EndOfStack, "{name}: {frames:x?}");
            if check_walk(cap, &frames, &binaries, &mut sites, exe, fixture.chain) {
                whole += 1;
            }
        }
        // Nearly all the time goes to the comparator, so most samples hold the whole chain.
        assert!(
            whole * 2 >= caps.len(),
            "{name}: only {whole} of {} walks reach from {} to main",
            caps.len(),
            fixture.chain[0]
        );
        eprintln!(
            "{name}: {} walks ok, {whole} with the whole chain",
            caps.len()
        );
    }
}

#[test]
#[ignore = "rewrites tests/data from live fixtures; run by hand"]
fn record_snapshots() {
    let libc = std::process::Command::new("ldd")
        .arg("--version")
        .output()
        .unwrap();
    let libc = String::from_utf8_lossy(&libc.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    for name in ["c-nofp", "c-mixed", "c-signal", "rust-nofp"] {
        let Fixture {
            exe,
            what,
            innermost,
            ..
        } = fixture(name);
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
