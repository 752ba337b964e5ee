//! Host-wide profiling of busy hosts: process churn, large binaries, pid floods.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// User frames that no binary explains: outside every mapping, or in anonymous memory.
fn unattributed(mapping: &str) -> bool {
    mapping.is_empty() || mapping == "[unknown]" || mapping == "[anon]"
}

/// Runs `workload` for `secs` while the agent profiles the whole host; returns the agent's
/// log and every sample.
fn profile_host(
    out: &Path,
    extra: &[&str],
    workload: impl FnOnce(),
) -> (Vec<String>, Vec<FlatSample>) {
    let mut args = vec!["--profile-interval", "60"];
    args.extend_from_slice(extra);
    let agent = Agent::start(out, &args);
    workload();
    let log = agent.stop();
    let samples = read_profiles(out)
        .iter()
        .flat_map(|(_, p)| flatten(p))
        .collect();
    (log, samples)
}

/// A small crate built again and again, each build a burst of short-lived cargo, rustc, cc and
/// ld processes.
fn build_loop(dir: &Path, secs: u64) -> Child {
    let krate = dir.join("krate");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::write(
        krate.join("Cargo.toml"),
        "[package]\nname = \"krate\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(
        krate.join("src/main.rs"),
        "use std::collections::BTreeMap;\n\
         fn main() { let mut m = BTreeMap::new(); for i in 0..100u64 { m.insert(i, i * i); }\n\
         println!(\"{}\", m.values().sum::<u64>()); }\n",
    )
    .unwrap();
    let script = format!(
        "end=$(($(date +%s) + {secs})); while [ $(date +%s) -lt $end ]; do \
         cargo build --offline --quiet --release; cargo clean --quiet; done"
    );
    Command::new("sh")
        .args(["-c", &script])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", dir.join("krate-target"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start the build loop")
}

/// The classic shell loop of short-lived tools over system files.
fn shell_loop(secs: u64) -> Child {
    let script = format!(
        "end=$(($(date +%s) + {secs})); while [ $(date +%s) -lt $end ]; do \
         ls -la /usr/bin > /dev/null; cat /etc/services /usr/share/common-licenses/GPL-3 > /dev/null 2>&1; \
         grep -r root /etc > /dev/null 2>&1; done"
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the shell loop")
}

#[test]
fn a_busy_host_has_its_user_frames_in_real_binaries() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (log, samples) = profile_host(&out, &[], || {
        let mut build = build_loop(dir.path(), 8);
        let mut shell = shell_loop(8);
        assert!(build.wait().unwrap().success(), "the build loop failed");
        assert!(shell.wait().unwrap().success(), "the shell loop failed");
    });
    let t = totals(&log);
    let mut user_frames = 0i64;
    let mut lost = 0i64;
    let mut by_comm = std::collections::BTreeMap::<String, i64>::new();
    for s in &samples {
        for (function, mapping) in &s.frames {
            if mapping == "[kernel.kallsyms]" {
                continue;
            }
            user_frames += s.count;
            if unattributed(mapping) {
                lost += s.count;
                let comm = s
                    .str_labels
                    .iter()
                    .find(|(k, _)| k == "comm" || k == "process")
                    .map_or_else(|| format!("pid {}", s.pid), |(_, v)| v.clone());
                *by_comm.entry(comm).or_default() += s.count;
            }
            // A frame-pointer walk through code without frame pointers reads text as
            // addresses; such a frame must never reach the profile.
            if let Some(hex) = function.strip_prefix("[unknown]+0x") {
                let addr = u64::from_str_radix(hex, 16).unwrap_or(0);
                assert!(
                    (0x10000..1 << 47).contains(&addr),
                    "a garbage address in the profile: {function}"
                );
            }
        }
    }
    let lost_share = lost as f64 / user_frames.max(1) as f64;
    let no_table_share = t["unwind_stop_no_table"] as f64 / t["unwind_stacks"].max(1) as f64;
    eprintln!(
        "busy host: {user_frames} user frames, {lost} unattributed ({:.2}%); {} stacks cut outside code, {} non-canonical; no_table stops {:.1}% of {} stacks; {} processes prepared; unattributed by process: {:?}",
        lost_share * 100.0,
        t["user_stacks_outside_code"],
        t["user_stacks_non_canonical"],
        no_table_share * 100.0,
        t["unwind_stacks"],
        t["new_pid_events"],
        by_comm
    );
    assert!(user_frames > 500, "too few user frames: {user_frames}");
    assert!(
        lost_share <= 0.02,
        "{:.2}% of user frames are unattributed (at most 2%)",
        lost_share * 100.0
    );
}

/// The largest binary at hand: rustc's driver library, ~150 MB with a large `.eh_frame`.
fn large_library() -> PathBuf {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc");
    let lib = PathBuf::from(String::from_utf8(sysroot.stdout).unwrap().trim()).join("lib");
    std::fs::read_dir(&lib)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("librustc_driver-") && n.ends_with(".so"))
        })
        .unwrap_or_else(|| panic!("no librustc_driver in {}", lib.display()))
}

#[test]
fn three_hundred_processes_mapping_a_large_binary_lose_no_sample_at_999_hz() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mapper = build_c(dir.path(), "big_mapper", &["-O1"]);
    let busy = build_c(dir.path(), "chain", &["-O1", "-fno-omit-frame-pointer"]);
    let lib = large_library();
    let lib_s = lib.to_str().unwrap();
    let out = dir.path().join("out");
    let (log, _samples) = profile_host(&out, &["--frequency", "999"], || {
        let mut burner = Gated::start(&busy, &["12"]);
        burner.go();
        let started = Instant::now();
        let mut mappers: Vec<Child> = (0..300)
            .map(|_| {
                Command::new(&mapper)
                    .args([lib_s, "30", "4"])
                    .spawn()
                    .expect("start a mapper")
            })
            .collect();
        eprintln!("300 mappers started in {:?}", started.elapsed());
        for m in &mut mappers {
            assert!(m.wait().unwrap().success(), "a mapper failed");
        }
        burner.finish();
    });
    let t = totals(&log);
    eprintln!(
        "300 mappers at 999 Hz: samples {} drops {} ring stall max {} ms (most CPU in one turn {} ms), oldest sample waited {} ms; tables built {}, cache hits {}, build {} ms, processes {}",
        t["samples_taken"],
        t["ring_buffer_full"],
        t["ring_stall_ms_max"],
        t["ring_turn_cpu_ms_max"],
        t["sample_wait_ms_max"],
        t["unwind_tables_built"],
        t["unwind_table_cache_hits"],
        t["unwind_build_ms"],
        t["new_pid_events"]
    );
    assert!(t["samples_taken"] > 5000, "too few samples: {t:?}");
    assert_eq!(t["ring_buffer_full"], 0, "samples were dropped: {t:?}");
    assert_eq!(
        t["enrich_queue_full"], 0,
        "enrichment requests were dropped: {t:?}"
    );
    // Each of the 300 burning children maps the same five files; without sharing, every
    // child would build its own tables.
    assert!(
        t["unwind_table_cache_hits"] >= 250,
        "the large library's table was not shared: {t:?}"
    );
    assert!(
        t["unwind_tables_built"] < 60,
        "tables were built again for files already loaded: {t:?}"
    );
}

/// A cgroup v1 pids controller group with a limit, removed on drop.
struct PidsCgroup {
    path: PathBuf,
}

impl PidsCgroup {
    fn new(max: u32) -> PidsCgroup {
        let path = PathBuf::from(format!(
            "/sys/fs/cgroup/pids/profiler-flood-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("this test needs the cgroup v1 pids controller");
        std::fs::write(path.join("pids.max"), max.to_string()).unwrap();
        PidsCgroup { path }
    }
    fn add(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[test]
fn a_pid_flood_is_survived_with_bounded_state() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let flood = build_c(dir.path(), "fork_flood", &["-O1"]);
    let out = dir.path().join("out");
    let cgroup = PidsCgroup::new(64);
    let mut peak_rss_kib = 0;
    let args = ["--max-processes", "64", "--profile-interval", "2"];
    let agent = Agent::start(&out, &args);
    let mut child = Gated::start(&flood, &["6"]);
    cgroup.add(child.pid());
    let started = Instant::now();
    child.go();
    while started.elapsed() < Duration::from_secs(7) {
        std::thread::sleep(Duration::from_millis(200));
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap();
        peak_rss_kib = peak_rss_kib.max(rss);
    }
    child.finish();
    let log = agent.stop();
    let t = totals(&log);
    eprintln!(
        "pid flood: {} new pids, {} exits, evictions {}, peak agent RSS {} MiB, drops {}, event ring full {}",
        t["new_pid_events"],
        t["process_exits"],
        t["process_evictions"],
        peak_rss_kib / 1024,
        t["ring_buffer_full"],
        t["event_ring_full"]
    );
    assert!(t["process_exits"] > 1000, "the flood was too small: {t:?}");
    assert!(
        t["process_evictions"] > 0,
        "the process table never reached its cap of 64: {t:?}"
    );
    assert!(
        peak_rss_kib < 256 * 1024,
        "agent RSS reached {} MiB under the flood",
        peak_rss_kib / 1024
    );
    assert!(
        t["profiles_written"] >= 3,
        "profiling stopped under the flood: {t:?}"
    );
}
