//! Reference check against perf: for the C fixture, the distinct leaf-to-root chains our
//! unwinder recovers match those `perf record --call-graph dwarf` reports. perf comes from
//! Debian's linux-perf, which the setup installs; its absence is a failure, not a skip.

mod common;

use common::capture::{capture, Running};
use common::fixture;
use common::process::Binaries;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const OMIT_FP: &[&str] = &["-O2", "-fomit-frame-pointer"];

/// Function names with runs of the same function (msort's recursion) collapsed, so chains
/// compare by shape rather than by recursion depth.
fn collapse(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if out.last() != Some(&name) {
            out.push(name);
        }
    }
    out
}

/// perf's user callchains as (dso, address) frames, innermost first.
fn perf_chains(pid: u32, dir: &Path) -> Option<Vec<Vec<(String, u64)>>> {
    let data = dir.join("perf.data");
    let rec = Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock:u",
            "--call-graph",
            "dwarf",
            "-o",
        ])
        .arg(&data)
        .args(["-p", &pid.to_string(), "--", "sleep", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !rec.success() {
        return None;
    }
    let out = Command::new("perf")
        .args(["script", "--no-inline", "-F", "ip,dso", "-i"])
        .arg(&data)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut chains = Vec::new();
    for block in text.split("\n\n") {
        let chain: Vec<(String, u64)> = block
            .lines()
            .filter_map(|l| {
                let (ip, dso) = l.trim().split_once(' ')?;
                let dso = dso.trim_start_matches('(').trim_end_matches(')').to_owned();
                Some((dso, u64::from_str_radix(ip, 16).ok()?))
            })
            .collect();
        if !chain.is_empty() {
            chains.push(chain);
        }
    }
    Some(chains)
}

#[test]
fn c_fixture_matches_perf_dwarf() {
    assert!(
        Command::new("perf").arg("--version").output().is_ok(),
        "perf missing: run `cargo xtask setup --test-tools` (Debian linux-perf)"
    );
    let exe = fixture::build(
        "chain-perf",
        &[("chain_main.c", OMIT_FP), ("chain_middle.c", OMIT_FP)],
    );
    // Killed on drop, also when an assertion fails first.
    let child = Running(Command::new(&exe).stdout(Stdio::null()).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(50));
    let pid = child.0.id();
    let mut binaries = Binaries::default();
    let mut ours = BTreeSet::new();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(7));
        let stack = binaries.unwind(&capture(pid as i32).unwrap());
        ours.insert(collapse(stack.names));
    }
    let perf = perf_chains(pid, exe.parent().unwrap());
    drop(child);
    let perf = perf.expect("perf record failed (the tests run as root)");
    // Name perf's frames with the same symbol lookup as ours (return addresses minus one).
    let mut theirs: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for chain in &perf {
        let names = chain.iter().enumerate().map(|(i, (dso, ip))| {
            let ip = if i == 0 { *ip } else { ip - 1 };
            binaries.name_at(dso, ip)
        });
        *theirs.entry(collapse(names)).or_default() += 1;
    }
    let total: usize = theirs.values().sum();
    eprintln!(
        "ours: {} distinct chains from 40 stacks; perf: {} distinct from {total} samples",
        ours.len(),
        theirs.len()
    );
    for (chain, n) in &theirs {
        eprintln!(
            "perf {n:5} {}{}",
            chain.join(" <- "),
            if ours.contains(chain) {
                "  [ours too]"
            } else {
                ""
            }
        );
    }
    // Every chain we found, perf found too.
    for chain in &ours {
        assert!(theirs.contains_key(chain), "not in perf: {chain:?}");
    }
    // And perf's chains that account for 80% of its samples are all ones we produce: those
    // we missed are rare enough to be missed by 40 samples.
    let mut by_count: Vec<_> = theirs.iter().collect();
    by_count.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
    let mut covered = 0;
    for (chain, n) in by_count {
        if covered * 100 >= total * 80 {
            break;
        }
        assert!(
            ours.contains(chain),
            "perf's chain ({n} samples) missing from ours: {chain:?}"
        );
        covered += n;
    }
}
