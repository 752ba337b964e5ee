//! Live stacks of a C program built without frame pointers, captured with ptrace at random
//! moments and unwound with the crate's tables and walker: the whole chain down to `main`,
//! through libc's `qsort`, must come back.

mod common;

use common::capture::sample_process;
use common::fixture::{self, DEBUG_FRAME_ONLY, FP_NO_CFI, OMIT_FP, RUST_NO_FP};
use common::process::{Binaries, Stack};
use profiler_unwind::StopReason;

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

fn sample(exe: &std::path::Path, samples: usize) -> Vec<Stack> {
    let mut binaries = Binaries::default();
    sample_process(exe, samples)
        .iter()
        .map(|cap| binaries.unwind(cap))
        .collect()
}

/// Every stack ends normally, in `main` and libc's start code, and the fixture's frames in it
/// are an unbroken suffix of `compare -> leaf -> middle -> outer -> main`.
fn check(stacks: &[Stack], chain: &[&str], fp_frames: u32) {
    let mut through_lib = 0;
    let (leaf, main) = (chain[1], chain[chain.len() - 1]);
    for stack in stacks {
        let ctx = || format!("{:?} {:x?} {:?}", stack.names, stack.frames, stack.outcome);
        assert_eq!(stack.outcome.stop, StopReason::EndOfStack, "{}", ctx());
        assert_eq!(stack.outcome.fp_frames, fp_frames, "{}", ctx());
        let ours: Vec<&str> = stack
            .names
            .iter()
            .map(String::as_str)
            .filter(|n| chain.contains(n))
            .collect();
        assert!(!ours.is_empty(), "{}", ctx());
        let suffix = &chain[chain.len() - ours.len()..];
        assert_eq!(ours, suffix, "{}", ctx());
        let main_at = stack.names.iter().position(|n| n == main).unwrap();
        assert!(
            stack.names[main_at + 1..]
                .iter()
                .any(|n| n.contains("libc_start")),
            "libc start code below main: {}",
            ctx()
        );
        // Sampled inside the sort or the comparator: library frames (libc's qsort, std's
        // sort) sit between them and leaf.
        let leaf_at = stack.names.iter().position(|n| n == leaf);
        if leaf_at.is_some_and(|i| {
            i > 0
                && stack.names[..i]
                    .iter()
                    .any(|n| !chain.contains(&n.as_str()))
        }) {
            through_lib += 1;
        }
    }
    // The comparator and the sort take nearly all the time.
    assert!(
        through_lib * 2 >= stacks.len(),
        "{through_lib} of {} stacks crossed the sort",
        stacks.len()
    );
    eprintln!(
        "{} stacks ok, {through_lib} through the sort; e.g. {:?}",
        stacks.len(),
        stacks[0].names
    );
}

#[test]
fn c_without_frame_pointers() {
    let exe = fixture::build(
        "chain-nofp",
        &[("chain_main.c", OMIT_FP), ("chain_middle.c", OMIT_FP)],
    );
    check(&sample(&exe, 40), C_CHAIN, 0);
}

#[test]
fn c_mixed_tables_and_frame_pointers() {
    // `middle` has no CFI; leaf and outer have CFI but no frame pointers.
    let exe = fixture::build(
        "chain-mixed",
        &[("chain_main.c", OMIT_FP), ("chain_middle.c", FP_NO_CFI)],
    );
    // Exactly one frame, middle's, comes from the rbp chain.
    check(&sample(&exe, 40), C_CHAIN, 1);
}

#[test]
fn c_non_pie_and_static() {
    // Fixed addresses (bias 0), and libc's own CFI inside the executable.
    let units: &[(&str, &[&str])] = &[("chain_main.c", OMIT_FP), ("chain_middle.c", OMIT_FP)];
    let exe = fixture::build_linked("chain-nopie", units, &["-no-pie"]);
    check(&sample(&exe, 20), C_CHAIN, 0);
    let exe = fixture::build_linked("chain-static", units, &["-static"]);
    check(&sample(&exe, 20), C_CHAIN, 0);
}

#[test]
fn c_with_debug_frame_only() {
    let units: &[(&str, &[&str])] = &[
        ("chain_main.c", DEBUG_FRAME_ONLY),
        ("chain_middle.c", DEBUG_FRAME_ONLY),
    ];
    let exe = fixture::build("chain-debug-frame", units);
    check(&sample(&exe, 20), C_CHAIN, 0);
}

#[test]
fn c_through_signal_frames() {
    const FLAGS: &[&str] = &["-O2", "-g", "-fomit-frame-pointer", "-DWITH_SIGNAL"];
    let exe = fixture::build(
        "chain-signal",
        &[("chain_main.c", FLAGS), ("chain_middle.c", OMIT_FP)],
    );
    let stacks = sample(&exe, 60);
    check(&stacks, C_CHAIN, 0);
    // The handler runs about a fifth of the time; its stacks go on below the signal frame.
    let in_handler: Vec<_> = stacks
        .iter()
        .filter(|s| s.names[0] == "on_signal_work")
        .collect();
    assert!(!in_handler.is_empty(), "no sample in the signal handler");
    eprintln!(
        "{} in the handler, e.g. {:?}",
        in_handler.len(),
        in_handler[0].names
    );
    for s in in_handler {
        assert_eq!(s.names[1], "on_signal", "{:?}", s.names);
        let main_at = s.names.iter().position(|n| n == "main").unwrap();
        assert!(main_at > 3, "{:?}", s.names);
    }
}

#[test]
fn rust_without_frame_pointers() {
    let exe = fixture::build_rust("chain-rust", "chain.rs", RUST_NO_FP);
    check(&sample(&exe, 40), RUST_CHAIN, 0);
}
