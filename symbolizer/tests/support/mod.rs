//! Shared test helpers: reference tools (installed through `ensure-tools.sh`), fixture dirs,
//! random text addresses and a reader for `llvm-symbolizer`'s JSON output. The seeded RNG and
//! the mutators come from the workspace's `test-support` crate.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Runs `ensure-tools.sh` once per test binary and returns NAME -> path. Panics (failing the
/// test loudly) if the script fails: a missing reference tool must never pass silently.
pub fn tools() -> &'static HashMap<String, PathBuf> {
    static TOOLS: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ensure-tools.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("all")
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): reference tools are missing",
            script.display(),
            out.status
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), PathBuf::from(v)))
            .collect()
    })
}

/// The path of a reference tool; fails the test if it is not installed.
pub fn tool(name: &str) -> PathBuf {
    let p = tools()
        .get(name)
        .unwrap_or_else(|| panic!("ensure-tools.sh did not report {name}"))
        .clone();
    assert!(
        p.exists(),
        "reference tool {name} not found at {} after ensure-tools.sh",
        p.display()
    );
    p
}

/// A fresh directory for one test's fixtures.
pub fn fixture_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("symbolizer-fixtures")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a command, panicking with its stderr on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command with `input` on stdin; returns stdout.
pub fn run_with_input(cmd: &mut Command, input: &str) -> String {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `n` random addresses inside the binary's executable PT_LOADs (p_filesz part).
pub fn random_text_addrs(bin: &symbolizer::Binary, n: usize, seed: u64) -> Vec<u64> {
    let segs: Vec<_> = bin
        .load_segments()
        .iter()
        .filter(|s| s.executable && s.p_filesz > 0)
        .copied()
        .collect();
    assert!(!segs.is_empty(), "no executable segment");
    let total: u64 = segs.iter().map(|s| s.p_filesz).sum();
    let mut rng = test_support::Rng::new(seed);
    (0..n)
        .map(|_| {
            let mut r = rng.below(total);
            for s in &segs {
                if r < s.p_filesz {
                    return s.p_vaddr + r;
                }
                r -= s.p_filesz;
            }
            unreachable!()
        })
        .collect()
}

/// One frame as a reference tool reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefFrame {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// Runs llvm-symbolizer (JSON output) over `addrs`; one frame list per address, innermost first.
/// An unknown address gives an empty list.
pub fn llvm_symbolize(exe: &Path, addrs: &[u64], extra: &[&str]) -> Vec<Vec<RefFrame>> {
    let input: String = addrs.iter().map(|a| format!("0x{a:x}\n")).collect();
    let mut cmd = Command::new(tool("LLVM_SYMBOLIZER"));
    cmd.arg(format!("--obj={}", exe.display()))
        .arg("--output-style=JSON")
        .args(extra);
    let out = run_with_input(&mut cmd, &input);
    let mut result = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line}: {e}"));
        for entry in v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]) {
            let frames = entry["Symbol"]
                .as_array()
                .map(|syms| {
                    syms.iter()
                        .filter(|s| !s["FunctionName"].as_str().unwrap_or("").is_empty())
                        .map(|s| {
                            let file = s["FileName"]
                                .as_str()
                                .filter(|f| !f.is_empty())
                                .map(str::to_owned);
                            let line = s["Line"].as_u64().filter(|&l| l != 0).map(|l| l as u32);
                            RefFrame {
                                function: s["FunctionName"].as_str().unwrap().to_owned(),
                                file,
                                line,
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            result.push(frames);
        }
    }
    assert_eq!(
        result.len(),
        addrs.len(),
        "llvm-symbolizer answered {} of {} addresses",
        result.len(),
        addrs.len()
    );
    result
}
