//! End-to-end: the real eBPF program profiles real workloads with known call chains, and the
//! written pprof files are checked, also through `go tool pprof`.
mod common;

use std::{path::Path, process::Command};

use common::*;

const HZ: i64 = 99;

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Runs a gated fixture under the agent filtered to its pid.
fn profile_fixture(exe: &Path, args: &[&str], out: &Path, hz: i64, extra: &[&str]) -> Run {
    let hz = u32::try_from(hz).unwrap();
    profile_pid(
        Gated::start(exe, args),
        out,
        Profiling {
            hz,
            extra,
            ..Profiling::default()
        },
    )
}

#[test]
fn known_chain_is_profiled_with_the_right_weight_and_opens_in_go_pprof() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(
        dir.path(),
        "chain",
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    );
    let out = dir.path().join("profiles");
    let run = profile_fixture(&exe, &["3"], &out, HZ, &[]);
    let (pid, stdout, log, profiles) = (run.pid, &run.stdout, &run.log, &run.profiles);
    assert!(!profiles.is_empty(), "no profile written");
    let samples = run.samples();
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let with_chain: i64 = samples
        .iter()
        .filter(|s| {
            s.user_frames()
                .starts_with(&["leaf", "middle", "outer", "main"])
        })
        .map(|s| s.count)
        .sum();
    assert!(total > 0, "no samples for the fixture");
    let share = with_chain as f64 / total as f64;
    assert!(
        share >= 0.90,
        "only {with_chain}/{total} samples carry leaf<-middle<-outer<-main: {:?}",
        samples.iter().take(5).collect::<Vec<_>>()
    );

    // Weight: samples must match the CPU time the process really used.
    let ticks: f64 = stdout
        .trim()
        .strip_prefix("cpu_ticks=")
        .expect("fixture prints cpu_ticks")
        .parse()
        .unwrap();
    let expected = ticks / clk_tck() * HZ as f64;
    let ratio = total as f64 / expected;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{total} samples but CPU time implies {expected:.0} (ratio {ratio:.3})"
    );
    for s in &samples {
        assert_eq!(
            s.cpu_ns,
            s.count * (1_000_000_000 / HZ),
            "cpu value is count x period"
        );
        let labels: Vec<&str> = s.str_labels.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            labels.contains(&"comm") && labels.contains(&"thread_name"),
            "{labels:?}"
        );
        assert!(s.str_labels.contains(&("comm".into(), "chain".into())));
    }

    // Nothing was lost: the kernel's count of samples equals what was delivered plus drops.
    let t = totals(log);
    assert_eq!(
        t["samples_taken"],
        t["delivered"] + t["ring_buffer_full"],
        "{t:?}"
    );

    // go tool pprof opens every file without complaint, and sees the same thing.
    let go = go_tool();
    for (path, _) in profiles {
        let top = Command::new(&go)
            .args(["tool", "pprof", "-top"])
            .arg(path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&top.stderr);
        assert!(
            top.status.success(),
            "go tool pprof failed on {}: {stderr}",
            path.display()
        );
        let lowered = stderr.to_lowercase();
        assert!(
            !lowered.contains("warn") && !lowered.contains("error"),
            "go tool pprof complained: {stderr}"
        );
    }
    let path = &profiles.last().unwrap().0;
    let focus = format!("pid={pid}");
    let top = Command::new(&go)
        .args(["tool", "pprof", "-top", "-tagfocus", &focus])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&top.stdout);
    let first_row = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_else(|| panic!("no rows in:\n{text}"));
    assert!(
        first_row.trim_end().ends_with(" leaf"),
        "leaf is not on top for pid {pid}:\n{text}"
    );
    // The header names the profiled executable, not a pseudo mapping.
    let file_line = text
        .lines()
        .find(|l| l.starts_with("File: "))
        .unwrap_or_else(|| panic!("no File: line in:\n{text}"));
    assert_eq!(file_line, "File: chain", "{text}");
    let raw = Command::new(&go)
        .args(["tool", "pprof", "-raw"])
        .arg(path)
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw.stdout);
    for needle in [
        format!("pid:[{pid}]"),
        "comm:[chain]".to_string(),
        "thread_name:[chain]".to_string(),
    ] {
        assert!(
            raw.contains(&needle),
            "-raw lacks {needle}:\n{}",
            &raw[..raw.len().min(3000)]
        );
    }
}

#[test]
fn syscall_heavy_workload_shows_kernel_frames_under_user_frames() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(
        dir.path(),
        "syscall_reader",
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    );
    let out = dir.path().join("profiles");
    let run = profile_fixture(&exe, &["2"], &out, HZ, &[]);
    // Nearly every stack starts in the kernel, yet the first mapping (what `go tool pprof`
    // shows as `File:`) is the profiled executable, not `[kernel.kallsyms]`.
    for (path, p) in &run.profiles {
        let first = &p.string_table[p.mapping[0].filename as usize];
        assert!(
            first.ends_with("/syscall_reader"),
            "{}: first mapping is {first}",
            path.display()
        );
    }
    let samples = run.samples();
    let total: i64 = samples.iter().map(|s| s.count).sum();
    assert!(total > 50, "too few samples: {total}");
    let mut kernel_then_user = 0;
    let mut kernel_names = std::collections::BTreeMap::<String, i64>::new();
    for s in &samples {
        let kernel: Vec<&str> = s
            .frames
            .iter()
            .take_while(|(_, m)| m == "[kernel.kallsyms]")
            .map(|(f, _)| f.as_str())
            .collect();
        let rest = &s.frames[kernel.len()..];
        let symbolized = !kernel.is_empty() && kernel.iter().all(|f| !f.starts_with("[kernel]+"));
        // Kernel frames come first (innermost), then the user frames down to main.
        if symbolized
            && rest.iter().all(|(_, m)| m != "[kernel.kallsyms]")
            && rest.iter().any(|(f, _)| f == "main")
        {
            kernel_then_user += s.count;
            for k in kernel {
                *kernel_names.entry(k.to_string()).or_default() += s.count;
            }
        }
    }
    assert!(
        kernel_then_user as f64 >= 0.5 * total as f64,
        "only {kernel_then_user}/{total} samples have symbolized kernel frames above main"
    );
    let syscall_path = [
        "read_zero",
        "read_iter_zero",
        "iov_iter_zero",
        "vfs_read",
        "ksys_read",
        "__x64_sys_read",
        "do_syscall_64",
    ];
    assert!(
        kernel_names
            .keys()
            .any(|k| syscall_path.iter().any(|want| k == want)),
        "no read(2) path in kernel frames: {kernel_names:?}"
    );
}

#[test]
fn overflow_is_counted_never_hidden() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path(), "chain", &["-O0", "-fno-omit-frame-pointer"]);
    let out = dir.path().join("profiles");
    // A one-page ring at 999 Hz, with the agent stopped (SIGSTOP) for two seconds, as a
    // reader starved of CPU would be, must overflow.
    let run = profile_pid_with(
        Gated::start(&exe, &["3"]),
        &out,
        Profiling {
            hz: 999,
            extra: &["--ring-buffer-bytes", "4096"],
            ..Profiling::default()
        },
        |agent, _| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            // SAFETY: kill(2) on the agent, our own child, which is running.
            unsafe { libc::kill(agent as i32, libc::SIGSTOP) };
            std::thread::sleep(std::time::Duration::from_secs(2));
            // SAFETY: as above.
            unsafe { libc::kill(agent as i32, libc::SIGCONT) };
        },
    );
    let t = run.totals();
    assert!(t["ring_buffer_full"] > 100, "expected drops: {t:?}");
    assert!(t["delivered"] > 0, "{t:?}");
    assert_eq!(
        t["samples_taken"],
        t["delivered"] + t["ring_buffer_full"],
        "{t:?}"
    );
    // The drops are also recorded in the profile itself.
    let comments: Vec<String> = read_profiles(&out)
        .iter()
        .flat_map(|(_, p)| {
            p.comment
                .iter()
                .map(|&c| p.string_table[c as usize].clone())
                .collect::<Vec<_>>()
        })
        .collect();
    let dropped: u64 = comments
        .iter()
        .filter_map(|c| c.strip_prefix("ring_buffer_full=")?.parse::<u64>().ok())
        .sum();
    assert_eq!(dropped, t["ring_buffer_full"], "{comments:?}");
}

#[test]
fn host_wide_profiling_writes_time_sorted_valid_profiles() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profiles");
    let status = Command::new(env!("CARGO_BIN_EXE_profiler-agent"))
        .args([
            "--duration",
            "3",
            "--frequency",
            "99",
            "--profile-interval",
            "1",
            "--output-dir",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let profiles = read_profiles(&out);
    // At least one interval and the last profile. More is not asserted: a tick that falls
    // while the loop builds a big binary's unwind table is delayed, not repeated.
    assert!(
        profiles.len() >= 2,
        "expected an interval's profile plus the last: {}",
        profiles.len()
    );
    let mut last_time = 0;
    for (path, p) in &profiles {
        assert!(
            p.time_nanos >= last_time,
            "{} is out of order",
            path.display()
        );
        last_time = p.time_nanos;
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.period, 1_000_000_000 / HZ);
        let st: Vec<_> = p
            .sample_type
            .iter()
            .map(|v| {
                (
                    p.string_table[v.r#type as usize].as_str(),
                    p.string_table[v.unit as usize].as_str(),
                )
            })
            .collect();
        assert_eq!(st, [("samples", "count"), ("cpu", "nanoseconds")]);
        for (i, m) in p.mapping.iter().enumerate() {
            assert_eq!(m.id, i as u64 + 1);
        }
        for l in &p.location {
            assert!(
                !l.line.is_empty(),
                "location {} has no line (speedscope would drop it)",
                l.id
            );
            let m = &p.mapping[l.mapping_id as usize - 1];
            assert!(
                m.memory_start <= l.address && l.address < m.memory_limit,
                "location {l:?} outside its mapping {m:?} ({})",
                p.string_table[m.filename as usize]
            );
        }
    }
}

/// A stripped binary whose symbols and lines live in a separate file named by
/// `.gnu_debuglink`: the agent finds that file next to the binary's path as the process sees
/// it (through `/proc/PID/root`), not next to `/proc/PID/map_files/…`.
#[test]
fn separate_debug_file_is_found_for_a_running_process() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(
        dir.path(),
        "chain",
        &["-O0", "-g", "-fno-omit-frame-pointer"],
    );
    let run_tool = |tool: &str, args: &[&str]| {
        let status = Command::new(tool)
            .args(args)
            .current_dir(dir.path())
            .status()
            .unwrap_or_else(|e| panic!("{tool} (binutils): {e}"));
        assert!(status.success(), "{tool} {args:?} failed");
    };
    run_tool("objcopy", &["--only-keep-debug", "chain", "chain.debug"]);
    run_tool("strip", &["--strip-all", "chain"]);
    run_tool("objcopy", &["--add-gnu-debuglink=chain.debug", "chain"]);
    let nm = Command::new("nm").arg(&exe).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&nm.stdout).contains(" leaf"),
        "the stripped binary still names leaf"
    );

    let out = dir.path().join("profiles");
    let run = profile_fixture(&exe, &["2"], &out, HZ, &[]);
    let samples = run.samples();
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let with_chain: i64 = samples
        .iter()
        .filter(|s| {
            s.user_frames()
                .starts_with(&["leaf", "middle", "outer", "main"])
        })
        .map(|s| s.count)
        .sum();
    assert!(
        total > 50 && with_chain as f64 >= 0.9 * total as f64,
        "{with_chain}/{total} samples named from the debug file"
    );
    // Lines come from the debug file's DWARF too.
    let (_, p) = run.profiles.last().unwrap();
    let leaf_file = p
        .function
        .iter()
        .find(|f| p.string_table[f.name as usize] == "leaf")
        .map(|f| p.string_table[f.filename as usize].clone())
        .expect("leaf in the profile");
    assert!(leaf_file.ends_with("chain.c"), "{leaf_file}");
}

/// Bad configuration fails at start with a clear message, before anything is profiled.
#[test]
fn an_unwritable_output_dir_stops_the_agent_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_profiler-agent"))
        .args(["--output-dir", "/proc/nope", "--duration", "30"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "exited 0 with an unwritable output dir:\n{stderr}"
    );
    assert!(
        stderr.contains("output directory /proc/nope"),
        "unclear error:\n{stderr}"
    );
    assert!(
        !stderr.contains("profiling started"),
        "profiled before failing:\n{stderr}"
    );
}

#[test]
fn a_pid_without_a_process_is_warned_about() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &dir.path().join("profiles"),
        &["--pid", "999999999", "--profile-interval", "60"],
    );
    let log = agent.stop();
    assert!(
        log.iter()
            .any(|l| l.contains("--pid names no running process") && l.contains("999999999")),
        "{log:?}"
    );
}
