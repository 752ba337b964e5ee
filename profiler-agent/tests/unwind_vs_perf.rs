//! Reference check for the in-kernel unwinder: on C built without frame pointers, the
//! distinct leaf-to-main chains in the agent's profile match those `perf record
//! --call-graph dwarf` reports for the same process over the same run.
mod common;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use common::*;
use profiler_agent::profile::pprof::proto::Profile;
use symbolizer::{Binary, Symbolizer, SymbolizerConfig};

type Chain = Vec<String>;

/// Collapses runs of one function (msort's recursion) and cuts below `main`, where the libc
/// start code differs only in how far each tool follows it.
fn normalize(names: impl IntoIterator<Item = String>) -> Chain {
    let mut out: Chain = Vec::new();
    for name in names {
        if out.last() != Some(&name) {
            out.push(name.clone());
        }
        if name == "main" {
            break;
        }
    }
    out
}

/// Our chains: each location's physical (last) frame, user frames only.
fn agent_chains(profiles: &[(PathBuf, Profile)], pid: u32) -> BTreeMap<Chain, i64> {
    let mut out = BTreeMap::new();
    for (_, p) in profiles {
        let s = |i: i64| p.string_table[i as usize].clone();
        for sample in &p.sample {
            let is_pid = sample
                .label
                .iter()
                .any(|l| s(l.key) == "pid" && l.num == i64::from(pid));
            if !is_pid {
                continue;
            }
            let names = sample.location_id.iter().filter_map(|id| {
                let loc = &p.location[*id as usize - 1];
                let mapping = &p.mapping[loc.mapping_id as usize - 1];
                if s(mapping.filename) == "[kernel.kallsyms]" {
                    return None;
                }
                let f = &p.function[loc.line.last()?.function_id as usize - 1];
                Some(s(f.name))
            });
            *out.entry(normalize(names)).or_default() += sample.value[0];
        }
    }
    out
}

/// perf's user callchains, symbolized with the same symbolizer. `perf script` prints each
/// callchain address relative to its DSO, i.e. as the ELF address in that file.
fn perf_chains(data: &std::path::Path) -> BTreeMap<Chain, i64> {
    let out = Command::new("perf")
        .args(["script", "--no-inline", "-F", "ip,dso", "-i"])
        .arg(data)
        .output()
        .expect("perf script");
    assert!(
        out.status.success(),
        "perf script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut symbolizer = Symbolizer::new(SymbolizerConfig {
        inlines: false,
        ..Default::default()
    });
    let mut binaries: HashMap<String, Option<Arc<Binary>>> = HashMap::new();
    let mut name_at = |dso: &str, vaddr: u64, leaf: bool| -> String {
        let binary = binaries
            .entry(dso.to_string())
            .or_insert_with(|| Binary::open(dso.as_ref()).ok());
        let Some(binary) = binary else {
            return format!("[{dso}]");
        };
        let lookup = if leaf { vaddr } else { vaddr.saturating_sub(1) };
        match symbolizer
            .symbolize(binary, &[lookup])
            .ok()
            .and_then(|mut r| r.pop())
        {
            Some(Ok(frames)) if !frames.is_empty() => frames.last().unwrap().function.clone(),
            _ => format!("{dso}+{vaddr:x}"),
        }
    };
    let mut chains = BTreeMap::new();
    for block in String::from_utf8_lossy(&out.stdout).split("\n\n") {
        let frames: Vec<(u64, String)> = block
            .lines()
            .filter_map(|l| {
                let (ip, dso) = l.trim().split_once(' ')?;
                Some((
                    u64::from_str_radix(ip, 16).ok()?,
                    dso.trim_start_matches('(')
                        .trim_end_matches(')')
                        .to_string(),
                ))
            })
            .collect();
        if frames.is_empty() {
            continue;
        }
        let names: Vec<String> = frames
            .iter()
            .enumerate()
            .map(|(i, (ip, dso))| name_at(dso, *ip, i == 0))
            .collect();
        *chains.entry(normalize(names)).or_default() += 1;
    }
    chains
}

fn show(chains: &BTreeMap<Chain, i64>) -> String {
    chains
        .iter()
        .map(|(c, n)| format!("{n:5} {}", c.join(" <- ")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn kernel_unwound_chains_match_perf_dwarf() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path(), "qsort_chain", &["-O2", "-fomit-frame-pointer"]);
    let out = dir.path().join("profiles");
    let data = dir.path().join("perf.data");
    let run = profile_pid_with(
        Gated::start(&exe, &["3"]),
        &out,
        Profiling::default(),
        |_, pid| {
            std::thread::sleep(Duration::from_millis(200));
            let perf = Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-e",
                    "cpu-clock:u",
                    "-F",
                    "99",
                    "--call-graph",
                    "dwarf",
                    "-o",
                ])
                .arg(&data)
                .args(["-p", &pid.to_string(), "--", "sleep", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("perf (linux-perf) is installed by the setup");
            assert!(perf.success(), "perf record failed: {perf:?}");
        },
    );
    let ours = agent_chains(&run.profiles, run.pid);
    let theirs = perf_chains(&data);
    let (our_total, their_total): (i64, i64) = (ours.values().sum(), theirs.values().sum());
    eprintln!(
        "ours ({our_total} samples):\n{}\nperf ({their_total} samples):\n{}",
        show(&ours),
        show(&theirs)
    );
    assert!(
        our_total > 100 && their_total > 50,
        "too few samples: ours {our_total}, perf {their_total}"
    );
    // Every chain that carries a real share of our samples, perf reports too.
    for (chain, n) in &ours {
        if n * 50 >= our_total {
            assert!(
                theirs.contains_key(chain),
                "our chain ({n} samples) is not in perf's: {chain:?}"
            );
        }
    }
    // And perf's chains that make up 90% of its samples are all ours.
    let mut by_count: Vec<_> = theirs.iter().collect();
    by_count.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
    let mut covered = 0;
    for (chain, n) in by_count {
        if covered * 10 >= their_total * 9 {
            break;
        }
        assert!(
            ours.contains_key(chain),
            "perf's chain ({n} samples) is missing from ours: {chain:?}"
        );
        covered += n;
    }
}
