//! `cargo xtask fuzz`: runs the cargo-fuzz targets of every fuzz crate for a time budget each.
use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{cargo, output, run, step, workspace_root};

/// Every fuzz target as (fuzz crate directory, target). Names are unique across crates, so a
/// name alone selects a target. Each crate directory is `<package>/fuzz`, and `<package>` has
/// a `fuzz_seeds` test that generates the binary seeds and replays the corpus.
pub const TARGETS: [(&str, &str); 10] = [
    ("symbolizer/fuzz", "elf"),
    ("symbolizer/fuzz", "dwarf"),
    ("symbolizer/fuzz", "gopclntab"),
    ("symbolizer/fuzz", "kallsyms"),
    ("symbolizer/fuzz", "demangle"),
    ("profiler-unwind/fuzz", "eh_frame"),
    ("profiler-unwind/fuzz", "eh_frame_elf"),
    ("profiler-agent/fuzz", "proc_maps"),
    ("profiler-agent/fuzz", "ring_records"),
    ("profiler-agent/fuzz", "go_runtime"),
];

/// libFuzzer's `-max_len` when the corpus is larger.
const DEFAULT_MAX_LEN: u64 = 1 << 20;

/// The package whose `fuzz_seeds` test feeds the fuzz crate in `dir`.
fn seed_package(dir: &str) -> &str {
    dir.strip_suffix("/fuzz")
        .expect("fuzz crates live in <package>/fuzz")
}

pub fn run_targets(targets: &[String], seconds: u64) -> Result<()> {
    let selected: Vec<(&str, &str)> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        let mut v = Vec::new();
        for t in targets {
            let Some(&pair) = TARGETS.iter().find(|(_, name)| name == t) else {
                let known: Vec<&str> = TARGETS.iter().map(|(_, name)| *name).collect();
                bail!("unknown fuzz target {t}; known: {}", known.join(", "));
            };
            v.push(pair);
        }
        v
    };
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        step("installing cargo-fuzz (once)");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    // The seed tests build binary seeds from fixtures into target/tmp/fuzz-seeds/, once per
    // fuzz crate involved.
    let mut packages: Vec<&str> = Vec::new();
    for (dir, _) in &selected {
        if !packages.contains(&seed_package(dir)) {
            packages.push(seed_package(dir));
        }
    }
    for package in packages {
        cargo(&["test", "-p", package, "--test", "fuzz_seeds"])?;
    }
    let root = workspace_root();
    for (dir, t) in selected {
        let fuzz_dir = root.join(dir);
        // libFuzzer writes new inputs into the first directory: keep that out of the tree and
        // read the committed text seeds and the generated binary seeds from the others.
        let working = root.join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&working)?;
        step(&format!(
            "fuzzing {t} ({dir}) for {seconds} s (new inputs go to {})",
            working.display()
        ));
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", t]).arg(&working);
        let mut largest_seed = 0;
        for seeds in [
            fuzz_dir.join("corpus").join(t),
            root.join("target/tmp/fuzz-seeds").join(t),
        ] {
            if let Ok(files) = std::fs::read_dir(&seeds) {
                for file in files.flatten() {
                    largest_seed = largest_seed.max(file.metadata().map_or(0, |m| m.len()));
                }
                cmd.arg(seeds);
            }
        }
        cmd.args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-rss_limit_mb=2048",
        ]);
        // libFuzzer cuts inputs at 1 MiB unless told otherwise, which would drop the tail of
        // the larger binaries among the seeds (their symbol tables, `.debug_frame`).
        if largest_seed > DEFAULT_MAX_LEN {
            cmd.arg(format!("-max_len={largest_seed}"));
        }
        cmd.current_dir(&fuzz_dir);
        run(&mut cmd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_are_unique_and_declared() {
        let root = workspace_root();
        for (i, (dir, t)) in TARGETS.iter().enumerate() {
            assert!(
                TARGETS[..i].iter().all(|(_, other)| other != t),
                "{t} twice"
            );
            let manifest = std::fs::read_to_string(root.join(dir).join("Cargo.toml")).unwrap();
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{dir}/Cargo.toml has no target {t}"
            );
            assert!(root
                .join(seed_package(dir))
                .join("tests/fuzz_seeds.rs")
                .is_file());
        }
    }
}
