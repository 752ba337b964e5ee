//! End-to-end: processes that live 30 ms of CPU each, started back to back two at a time,
//! are profiled host-wide with their whole call chain. The agent learns of each at its exec
//! (a tracepoint), reads its mappings and opens its binaries while it lives, and has its
//! unwind table loaded before most of its samples are taken.
mod common;

use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use common::*;

const CHAIN: [&str; 4] = ["leaf", "middle", "outer", "main"];

/// Keeps two processes made by `spawn` running at any time for `secs`; returns how many ran.
fn churn(secs: u64, spawn: impl Fn() -> Child) -> usize {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut running: Vec<Child> = (0..2).map(|_| spawn()).collect();
    let mut started = 2;
    while Instant::now() < end {
        for slot in running.iter_mut() {
            if let Some(status) = slot.try_wait().unwrap() {
                assert!(status.success(), "fixture failed: {status:?}");
                *slot = spawn();
                started += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for mut c in running {
        c.wait().unwrap();
    }
    started
}

/// Profiles the host while `spawn` churns; returns the samples whose `comm` is `comm`.
fn profile_churn(dir: &Path, comm: &str, spawn: impl Fn() -> Child) -> (Vec<FlatSample>, usize) {
    let out = dir.join("profiles");
    let agent = Agent::start(&out, &["--frequency", "99", "--profile-interval", "60"]);
    let started = churn(8, spawn);
    let log = agent.stop();
    let t = totals(&log);
    assert_eq!(
        t["samples_taken"],
        t["delivered"] + t["ring_buffer_full"],
        "{t:?}"
    );
    assert!(t["process_execs"] as usize >= started, "{t:?}");
    let samples = read_profiles(&out)
        .iter()
        .flat_map(|(_, p)| flatten(p))
        .filter(|s| s.str_labels.iter().any(|(k, v)| k == "comm" && v == comm))
        .collect();
    (samples, started)
}

/// Asserts that at least `share` of the samples carry the whole chain, and prints what the
/// others are: the loader's own start-up, frames no mapping was known for, single frames
/// (a table not loaded yet), or something else.
fn check(samples: &[FlatSample], started: usize, share: f64) {
    let chain = CHAIN;
    let total: i64 = samples.iter().map(|s| s.count).sum();
    let mut whole = 0;
    let mut rest = std::collections::BTreeMap::<&str, i64>::new();
    let mut examples = Vec::new();
    for s in samples {
        let u = s.user_frames();
        let kind = if u.starts_with(&chain) || in_the_clock_read(&u) {
            whole += s.count;
            continue;
        } else if u.iter().any(|f| f.starts_with("[unknown]")) {
            "unattributed"
        } else if u
            .iter()
            .any(|f| f.starts_with("_dl_") || f.starts_with("ld-linux"))
        {
            "loader"
        } else if u.len() <= 1 {
            "one frame"
        } else {
            if examples.len() < 6 {
                examples.push(u.join(" <- "));
            }
            "other"
        };
        *rest.entry(kind).or_default() += s.count;
    }
    eprintln!(
        "{started} processes, {whole}/{total} samples with the whole chain; the rest: {rest:?}, \
         e.g. {examples:?}"
    );
    assert!(
        total >= 300,
        "too few samples of the short-lived processes: {total}"
    );
    assert!(
        whole as f64 >= share * total as f64,
        "only {whole}/{total} samples carry leaf <- middle <- outer <- main; the rest: {rest:?}"
    );
}

/// `outer` reads the CPU clock between calls to `middle`: a sample there is the fixture's
/// other known chain, `[vdso] <- clock_gettime <- outer <- main`.
fn in_the_clock_read(u: &[&str]) -> bool {
    let inner = u
        .iter()
        .take_while(|f| f.starts_with("[vdso]") || f.contains("clock_gettime"))
        .count();
    inner > 0 && u[inner..].starts_with(&CHAIN[2..])
}

const NOFP: [&str; 3] = ["-O2", "-fomit-frame-pointer", "-fno-optimize-sibling-calls"];

/// Builds the short-lived fixture as `name`, churns it (through `sh -c 'exec …'` when
/// `through_shell`) while the host is profiled, and checks its chains.
fn short_lived(name: &str, flags: &[&str], through_shell: bool, share: f64) {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c_as(dir.path(), "short_chain", name, flags);
    let script = format!("exec {} 30", exe.display());
    let (samples, started) = profile_churn(dir.path(), name, || {
        if through_shell {
            Command::new("/bin/sh")
                .args(["-c", &script])
                .spawn()
                .unwrap()
        } else {
            Command::new(&exe).arg("30").spawn().unwrap()
        }
    });
    check(&samples, started, share);
}

#[test]
fn short_lived_processes_with_frame_pointers_keep_their_chain() {
    short_lived("shortfp", &["-O1", "-fno-omit-frame-pointer"], false, 0.9);
}

#[test]
fn short_lived_processes_without_frame_pointers_keep_their_chain() {
    short_lived("shortnofp", &NOFP, false, 0.9);
}

/// `sh -c 'exec ./fixture'`: the pid first runs the shell, then the fixture's image.
#[test]
fn short_lived_processes_that_exec_keep_their_chain() {
    // 93.5-94.5% measured here; without lifecycle events it is about 5%.
    short_lived("shortexec", &NOFP, true, 0.9);
}

/// A program without frame pointers `dlopen`s a library without frame pointers and burns CPU
/// in it: the walk ends at the unknown library, the kernel asks for the maps to be re-read,
/// and the library's table follows within milliseconds, so the stacks reach `main`.
#[test]
fn dlopened_library_is_unwound_through_to_main() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let lib_flags = [&NOFP[..], &["-shared", "-fPIC"]].concat();
    build_c_as(dir.path(), "libburn", "libburn.so", &lib_flags);
    let exe = build_c_as(dir.path(), "dlopen_main", "dlopen_main", &NOFP);

    let out = dir.path().join("profiles");
    let run = profile_pid(Gated::start(&exe, &["4"]), &out, Profiling::default());
    let t = run.totals();
    assert!(t["unwind_miss_events"] > 0, "{t:?}");
    // One 60 s interval: the per-interval re-sync never runs, so only the miss request can
    // bring the library's table in time.
    let later = run.samples();
    let chain = ["lib_leaf", "lib_outer", "run", "main"];
    let total: i64 = later.iter().map(|s| s.count).sum();
    let whole: i64 = later
        .iter()
        .filter(|s| s.user_frames().starts_with(&chain))
        .map(|s| s.count)
        .sum();
    eprintln!("{whole}/{total} samples through the library to main; totals {t:?}");
    assert!(total >= 100, "too few samples: {total}");
    assert!(
        whole as f64 >= 0.9 * total as f64,
        "only {whole}/{total} samples unwind lib_leaf <- lib_outer <- run <- main"
    );
}

/// Spawns `exe ms` as the given pid, by setting the kernel's last-allocated pid just below
/// it (the init namespace's: the kernel program sees init-namespace pids, so that is where a
/// reuse matters). Retries while something else on the host takes the pid first.
fn spawn_as_pid(pid: u32, exe: &Path, ms: &str) -> Child {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("writing ns_last_pid needs root");
        let child = Command::new(exe).arg(ms).spawn().unwrap();
        if child.id() == pid {
            return child;
        }
        let mut child = child;
        child.kill().ok();
        child.wait().ok();
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("could not get pid {pid} for {}", exe.display());
}

/// Two different programs run one after the other under the same pid: their samples never
/// share mappings or symbols.
#[test]
fn a_reused_pid_is_a_new_process() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let flags = NOFP;
    let a = build_c_as(dir.path(), "short_chain", "reuse_a", &flags);
    let b_flags = [
        &flags[..],
        &["-Dleaf=b_leaf", "-Dmiddle=b_middle", "-Douter=b_outer"],
    ]
    .concat();
    let b = build_c_as(dir.path(), "short_chain", "reuse_b", &b_flags);
    let out = dir.path().join("profiles");
    let agent = Agent::start(&out, &["--frequency", "99", "--profile-interval", "60"]);
    // A pid no process has now, away from where the host is handing them out.
    let read = |f: &str| -> u32 { std::fs::read_to_string(f).unwrap().trim().parse().unwrap() };
    let (last, max) = (
        read("/proc/sys/kernel/ns_last_pid"),
        read("/proc/sys/kernel/pid_max"),
    );
    let pid = (1..max / 2)
        .map(|i| (last + max / 4 + i) % (max - 400) + 300)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid");
    for exe in [&a, &b, &a, &b] {
        let mut child = spawn_as_pid(pid, exe, "300");
        assert!(child.wait().unwrap().success());
    }
    let log = agent.stop();
    let t = totals(&log);
    assert!(t["process_exits"] >= 4, "{t:?}");
    let samples: Vec<FlatSample> = read_profiles(&out)
        .iter()
        .flat_map(|(_, p)| flatten(p))
        .filter(|s| s.pid == pid as i64)
        .collect();
    let comm = |s: &FlatSample| {
        s.str_labels
            .iter()
            .find(|(k, _)| k == "comm")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut per_program = std::collections::BTreeMap::<String, (i64, i64)>::new();
    for s in &samples {
        let c = comm(s);
        let (own, other, own_chain) = match c.as_str() {
            "reuse_a" => ("reuse_a", "reuse_b", ["leaf", "middle", "outer", "main"]),
            "reuse_b" => (
                "reuse_b",
                "reuse_a",
                ["b_leaf", "b_middle", "b_outer", "main"],
            ),
            _ => continue,
        };
        for (function, mapping) in &s.frames {
            assert!(
                !mapping.ends_with(other),
                "a {own} sample has a frame in the other program's binary: {function} in {mapping}: {:?}",
                s.frames
            );
            let foreign = if own == "reuse_a" {
                function.starts_with("b_")
            } else {
                ["leaf", "middle", "outer"].contains(&function.as_str())
            };
            assert!(
                !foreign,
                "a {own} sample has the other program's symbol {function}: {:?}",
                s.frames
            );
        }
        let user = s.user_frames();
        let e = per_program.entry(c).or_default();
        e.0 += s.count;
        if user.starts_with(&own_chain) {
            e.1 += s.count;
        }
    }
    eprintln!("pid {pid}: (samples, whole chain) per program {per_program:?}");
    for name in ["reuse_a", "reuse_b"] {
        let (total, whole) = per_program.get(name).copied().unwrap_or_default();
        assert!(total >= 20, "{name}: {total} samples");
        assert!(
            whole as f64 >= 0.8 * total as f64,
            "{name}: {whole}/{total} whole chains"
        );
    }
}
