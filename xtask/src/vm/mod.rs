//! `cargo xtask vm-test`: boots each kernel of the matrix under qemu (TCG) with an initramfs
//! holding a static agent and the workloads, brings the agent's log and profiles back over
//! the serial console into `target/vm-matrix/<kernel>/`, prints one line per kernel, and
//! runs the host-side assertions (`profiler-agent/tests/kernel_matrix.rs`) on them.
mod apt;
mod initramfs;
mod kernels;
mod qemu;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, step, workspace_root};

/// The kernels `vm-test` (and so `cargo xtask test`) boots when none are named. 5.10 is not
/// among them yet: it lacks bpf_loop and other helpers the one program variant uses
/// (`--kernels 5.10 --no-check` shows it failing to load).
pub const DEFAULT_KERNELS: &str = "6.1,6.12,7";

fn cache_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/ebpf-profiler/vm")
}

/// What one guest printed, split at its markers.
struct Guest {
    kernel_release: Option<String>,
    agent_log: Vec<String>,
    profiles: Vec<(String, String)>,
    done: bool,
}

fn parse_console(console: &str) -> Guest {
    let mut guest = Guest {
        kernel_release: None,
        agent_log: Vec::new(),
        profiles: Vec::new(),
        done: false,
    };
    let mut in_log = false;
    let mut profile: Option<(String, String)> = None;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        // The first marker may follow the firmware's escape sequences on the same line.
        if let Some(rest) = line.find("@@VM ").map(|at| &line[at + 5..]) {
            if let Some(release) = rest.strip_prefix("kernel ") {
                guest.kernel_release = Some(release.to_string());
            } else if rest == "log-begin" {
                in_log = true;
            } else if rest == "log-end" {
                in_log = false;
            } else if let Some(name) = rest.strip_prefix("profile-begin ") {
                profile = Some((name.to_string(), String::new()));
            } else if rest == "profile-end" {
                guest.profiles.extend(profile.take());
            } else if rest == "done" {
                guest.done = true;
            }
            continue;
        }
        if in_log {
            guest.agent_log.push(line.to_string());
        } else if let Some((_, b64)) = profile.as_mut() {
            b64.push_str(line.trim());
        }
    }
    guest
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("base64 (coreutils)")?;
    child
        .stdin
        .take()
        .context("base64 stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("base64 -d failed");
    }
    Ok(out.stdout)
}

/// The number after `key=` in the agent's totals line.
fn total(log: &[String], key: &str) -> Option<u64> {
    let line = log.iter().rev().find(|l| l.contains(" totals "))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Saves one guest's output under `dir` and returns its one-line summary.
fn save(dir: &Path, kernel: &str, package: &str, console: &str, secs: f64) -> Result<String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("profiles"))?;
    std::fs::write(dir.join("console.txt"), console)?;
    let guest = parse_console(console);
    std::fs::write(dir.join("agent.log"), guest.agent_log.join("\n"))?;
    std::fs::write(dir.join("package"), package)?;
    for (name, b64) in &guest.profiles {
        std::fs::write(dir.join("profiles").join(name), base64_decode(b64)?)?;
    }
    let log = &guest.agent_log;
    let loaded = log.iter().any(|l| l.contains("profiling started"));
    let warnings = log.iter().filter(|l| l.contains(" WARN ")).count();
    let first_error = log
        .iter()
        .find(|l| l.contains("Error") || l.contains(" ERROR "))
        .map(|l| l.chars().take(160).collect::<String>());
    let or_na = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "n/a".into());
    Ok(format!(
        "{kernel:>5} {:<28} {:.0} s: agent {}, samples {}, ring drops {}, profiles {}, warnings {}{}",
        guest
            .kernel_release
            .as_deref()
            .unwrap_or("(no userspace)"),
        secs,
        if loaded { "loaded" } else { "did not load" },
        or_na(total(log, "samples_taken")),
        or_na(total(log, "ring_buffer_full")),
        guest.profiles.len(),
        warnings,
        first_error
            .map(|e| format!("; {e}"))
            .unwrap_or_default(),
    ))
}

/// Boots every kernel in `names`, then (if `check`) runs the host-side test on the results.
pub fn run(names: &[String], check: bool) -> Result<()> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)?;
    let results = workspace_root().join("target/vm-matrix");
    std::fs::create_dir_all(&results)?;
    let kernels = names
        .iter()
        .map(|n| kernels::by_name(n))
        .collect::<Result<Vec<_>>>()?;
    let qemu = qemu::Qemu::prepare(&cache)?;
    let agent = initramfs::build_static_agent()?;
    let initrd = initramfs::build(&cache, &results.join("initramfs"), &agent)?;
    let mut lines = Vec::new();
    for kernel in &kernels {
        let image = kernels::fetch(&cache, kernel)?;
        step(&format!("booting {} ({})", kernel.name, image.package));
        let started = Instant::now();
        let console = qemu.boot(&image.vmlinuz, &initrd, Duration::from_secs(240))?;
        let line = save(
            &results.join(kernel.name),
            kernel.name,
            &image.package,
            &console,
            started.elapsed().as_secs_f64(),
        )?;
        step(&line);
        lines.push(line);
    }
    std::fs::write(
        results.join("kernels"),
        kernels
            .iter()
            .map(|k| k.name)
            .collect::<Vec<_>>()
            .join("\n"),
    )?;
    println!("\nKernel matrix (results in {}):", results.display());
    for line in &lines {
        println!("{line}");
    }
    if check {
        util::cargo_with_env(
            &[
                "test",
                "-p",
                "profiler-agent",
                "--test",
                "kernel_matrix",
                "--",
                "--nocapture",
            ],
            &[("PROFILER_VM_RESULTS", results.as_os_str())],
        )?;
    }
    Ok(())
}
