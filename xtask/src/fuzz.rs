//! `cargo xtask fuzz`: runs the symbolizer's cargo-fuzz targets for a time budget each.
use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{cargo, output, run, step, workspace_root};

pub const TARGETS: [&str; 5] = ["elf", "dwarf", "gopclntab", "kallsyms", "demangle"];

pub fn run_targets(targets: &[String], seconds: u64) -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        step("installing cargo-fuzz (once)");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let targets: Vec<String> = if targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        targets.to_vec()
    };
    for t in &targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("unknown fuzz target {t}; known: {}", TARGETS.join(", "));
        }
    }
    // The seed test builds binary seeds from fixtures into target/tmp/fuzz-seeds/.
    cargo(&["test", "-p", "symbolizer", "--test", "fuzz_seeds"])?;
    let root = workspace_root();
    let fuzz_dir = root.join("symbolizer/fuzz");
    for t in targets {
        // libFuzzer writes new inputs into the first directory: keep that out of the tree and
        // read the committed text seeds and the generated binary seeds from the others.
        let working = root.join("target/fuzz-corpus").join(&t);
        std::fs::create_dir_all(&working)?;
        step(&format!(
            "fuzzing {t} for {seconds} s (new inputs go to {})",
            working.display()
        ));
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", &t]).arg(&working);
        for seeds in [
            fuzz_dir.join("corpus").join(&t),
            root.join("target/tmp/fuzz-seeds").join(&t),
        ] {
            if seeds.is_dir() {
                cmd.arg(seeds);
            }
        }
        cmd.args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-rss_limit_mb=2048",
        ])
        .current_dir(&fuzz_dir);
        run(&mut cmd)?;
    }
    Ok(())
}
