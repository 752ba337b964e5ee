//! The churning-host scenario: short-lived processes started at a fixed rate among a crowd of
//! long-lived ones, profiled host-wide by the agent and then by `perf record -a -g`, on the
//! same schedule. What it costs each, and what the agent had to do to keep up.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{or_na, run_agent_around, sigint, wait_with_usage, AgentRun, Crowd, Usage};
use crate::util::{self, step, workspace_root};

/// The scenario's shape: `rate` short processes a second for `seconds`, among `long_lived`.
pub struct Shape {
    pub seconds: u64,
    pub rate: u64,
    pub long_lived: usize,
    pub hz: u64,
}

/// The two builds of `xtask/bench/churn.c`.
struct Binaries {
    frame_pointers: PathBuf,
    no_frame_pointers: PathBuf,
}

fn build(dir: &Path) -> Result<Binaries> {
    let src = workspace_root().join("xtask/bench/churn.c");
    let compile = |name: &str, flags: &[&str]| -> Result<PathBuf> {
        let exe = dir.join(name);
        util::run(
            Command::new("gcc")
                .args(flags)
                .arg("-o")
                .arg(&exe)
                .arg(&src),
        )?;
        Ok(exe)
    };
    Ok(Binaries {
        frame_pointers: compile("churn-fp", &["-O1", "-fno-omit-frame-pointer"])?,
        no_frame_pointers: compile(
            "churn-nofp",
            &["-O2", "-fomit-frame-pointer", "-fno-optimize-sibling-calls"],
        )?,
    })
}

/// Long-lived processes that each burn 200 µs every 200 ms (10% of one core for 200).
fn start_long_lived(bins: &Binaries, n: usize) -> Result<Crowd> {
    let mut children = Vec::with_capacity(n);
    for i in 0..n {
        let exe = if i % 2 == 0 {
            &bins.frame_pointers
        } else {
            &bins.no_frame_pointers
        };
        let child = Command::new(exe)
            .args(["long", "200", "200"])
            .stdin(Stdio::null())
            .spawn()
            .context("start a long-lived process")?;
        children.push(child);
    }
    // Let them load their libraries before anything is measured.
    std::thread::sleep(Duration::from_millis(500));
    Ok(Crowd(children))
}

/// What the short-lived side of one run achieved.
struct Churned {
    started: u64,
    /// Spawns that started more than 10 ms after their slot (the driver fell behind).
    late: u64,
}

/// Starts short-lived processes at a fixed rate for `seconds`: 2 ms of CPU each, without
/// frame pointers; every second one through `sh -c 'exec …'`, so the pid execs twice.
/// Returns once every one has been reaped.
fn churn(bins: &Binaries, shape: &Shape) -> Result<Churned> {
    let period = Duration::from_secs_f64(1.0 / shape.rate as f64);
    let total = shape.seconds * shape.rate;
    let script = format!("exec {} short 2", bins.no_frame_pointers.display());
    let start = Instant::now();
    let mut running: Vec<Child> = Vec::new();
    let mut late = 0;
    for i in 0..total {
        let slot = start + period * i as u32;
        let now = Instant::now();
        if slot > now {
            std::thread::sleep(slot - now);
        } else if now - slot > Duration::from_millis(10) {
            late += 1;
        }
        let child = if i % 2 == 0 {
            Command::new(&bins.no_frame_pointers)
                .args(["short", "2"])
                .spawn()
        } else {
            Command::new("/bin/sh").args(["-c", &script]).spawn()
        }
        .context("start a short-lived process")?;
        running.push(child);
        running.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }
    for mut c in running {
        c.wait()?;
    }
    Ok(Churned {
        started: total,
        late,
    })
}

/// Bytes of BPF maps the process holds (each map fd's `memlock` in fdinfo).
pub(super) fn bpf_map_memlock(pid: u32) -> Option<u64> {
    let mut total = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let fd = fd.ok()?;
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .ok()?;
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// Bytes of perf ring buffers the process has mapped (`anon_inode:[perf_event]` mappings).
fn perf_buffer_bytes(pid: u32) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    Some(
        maps.lines()
            .filter(|l| l.ends_with("anon_inode:[perf_event]"))
            .filter_map(|l| {
                let (range, _) = l.split_once(' ')?;
                let (lo, hi) = range.split_once('-')?;
                Some(u64::from_str_radix(hi, 16).ok()? - u64::from_str_radix(lo, 16).ok()?)
            })
            .sum(),
    )
}

struct PerfRun {
    usage: Usage,
    buffer_bytes: Option<u64>,
    samples: Option<u64>,
    lost: Option<u64>,
}

fn with_perf(bins: &Binaries, shape: &Shape, data: &Path) -> Result<(PerfRun, Churned)> {
    let mut child = Command::new("perf")
        .args([
            "record",
            "-a",
            "-g",
            "-F",
            &shape.hz.to_string(),
            "-q",
            "-o",
        ])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("perf (linux-perf) is needed for the comparison")?;
    // perf has no readiness signal; give it time to open its events.
    std::thread::sleep(Duration::from_millis(500));
    let churned = churn(bins, shape)?;
    let buffer_bytes = perf_buffer_bytes(child.id());
    sigint(&child);
    let usage = wait_with_usage(&mut child)?;
    let stats = util::output(
        Command::new("perf")
            .args(["report", "--stats", "-i"])
            .arg(data),
    );
    // `perf report --stats` lists an event type only when it occurred.
    let count = |name: &str| {
        stats.as_deref().map(|s| {
            s.lines()
                .filter_map(|l| l.trim().strip_prefix(name))
                .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        })
    };
    let lost = match (count("LOST events:"), count("LOST_SAMPLES events:")) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    };
    Ok((
        PerfRun {
            usage,
            buffer_bytes,
            samples: count("SAMPLE events:"),
            lost,
        },
        churned,
    ))
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// Runs the scenario under the agent, then under perf, and prints a Markdown table.
pub fn run(dir: &Path, shape: &Shape) -> Result<()> {
    let bins = build(dir)?;
    step(&format!(
        "churning host: {} long-lived processes, {} short-lived a second for {} s, {} Hz",
        shape.long_lived, shape.rate, shape.seconds, shape.hz
    ));
    let crowd = start_long_lived(&bins, shape.long_lived)?;
    step("churning host: agent");
    let profiles = dir.join("profiles-churn");
    let _ = std::fs::remove_dir_all(&profiles);
    let mut agent_churn = None;
    let agent = run_agent_around(
        || {
            let started = Instant::now();
            agent_churn = Some(churn(&bins, shape)?);
            Ok(started.elapsed().as_secs_f64())
        },
        &["--frequency", &shape.hz.to_string()],
        &profiles,
    )?;
    step("churning host: perf record -a -g");
    let (perf, perf_churn) = with_perf(&bins, shape, &dir.join("perf-churn.data"))?;
    drop(crowd);
    let agent_churn = agent_churn.context("the agent run did not churn")?;
    print_table(shape, &agent, &agent_churn, &perf, &perf_churn);
    Ok(())
}

fn print_table(shape: &Shape, agent: &AgentRun, ac: &Churned, perf: &PerfRun, pc: &Churned) {
    let t = |key: &str| agent.field(&[" totals "], &format!("{key}="));
    let a_ms = agent.usage.cpu.as_secs_f64() * 1e3;
    let p_ms = perf.usage.cpu.as_secs_f64() * 1e3;
    println!(
        "\nChurning host, {} Hz: {} long-lived processes (200 µs of CPU every 200 ms each), {} short-lived a second for {} s (2 ms of CPU each, no frame pointers, every second one through `sh -c 'exec …'`).\n",
        shape.hz, shape.long_lived, shape.rate, shape.seconds
    );
    println!("| | agent | perf record -a -g | agent/perf |");
    println!("|---|---:|---:|---:|");
    println!(
        "| short-lived started (late by > 10 ms) | {} ({}) | {} ({}) | |",
        ac.started, ac.late, pc.started, pc.late
    );
    println!(
        "| CPU (ms), start to exit | {a_ms:.0} | {p_ms:.0} | {:.2} |",
        a_ms / p_ms
    );
    println!(
        "| of which before ready (ms) | {} | | |",
        agent.startup_cpu.as_millis()
    );
    let a_rss = agent.usage.max_rss_kib as f64 / 1024.0;
    let p_rss = perf.usage.max_rss_kib as f64 / 1024.0;
    println!(
        "| peak RSS (MiB) | {a_rss:.1} | {p_rss:.1} | {:.2} |",
        a_rss / p_rss
    );
    println!(
        "| kernel memory (MiB): BPF maps' memlock / perf ring buffers | {} | {} | |",
        agent.bpf_memlock.map(mib).unwrap_or_else(|| "n/a".into()),
        perf.buffer_bytes.map(mib).unwrap_or_else(|| "n/a".into()),
    );
    println!(
        "| samples | {} | {} | |",
        or_na(t("samples_taken")),
        or_na(perf.samples)
    );
    println!(
        "| dropped: samples (ring full) / lifecycle events / enrichment requests | {} / {} / {} | {} lost | |",
        or_na(t("ring_buffer_full")),
        or_na(t("event_ring_full")),
        or_na(t("enrich_queue_full")),
        or_na(perf.lost)
    );
    println!(
        "| exec / exit events | {} / {} | | |",
        or_na(t("process_execs")),
        or_na(t("process_exits"))
    );
    println!(
        "| unwind tables compiled / cache hits | {} / {} | | |",
        or_na(t("unwind_tables_built")),
        or_na(t("unwind_table_cache_hits"))
    );
    println!(
        "| table build time (ms) | {} | | |",
        or_na(t("unwind_build_ms"))
    );
    println!(
        "| ring-thread stall max (its CPU in that turn at most) / oldest sample's wait (ms) | {} ({}) / {} | | |",
        or_na(t("ring_stall_ms_max")),
        or_na(t("ring_turn_cpu_ms_max")),
        or_na(t("sample_wait_ms_max"))
    );
    println!(
        "| processes evicted / maps re-reads | {} / {} | | |",
        or_na(t("process_evictions")),
        or_na(t("maps_rereads"))
    );
}
