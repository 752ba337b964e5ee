//! The `symbolize` CLI: arguments and stdin, JSON lines, reasons for misses.

mod support;

use std::process::Command;

use support::{fixture_dir, run, run_with_input, tool};

fn fixture(name: &str) -> std::path::PathBuf {
    let dir = fixture_dir(name);
    std::fs::write(
        dir.join("p.c"),
        "static inline __attribute__((always_inline)) int sq(int x) { return x * x; }\n\
         __attribute__((noinline)) int f(int a) { return sq(a) + 1; }\n\
         int main(int c, char **v) { (void)v; return f(c); }\n",
    )
    .unwrap();
    let exe = dir.join("p");
    run(Command::new(tool("GCC"))
        .current_dir(&dir)
        .args(["-O2", "-g", "-o"])
        .arg(&exe)
        .arg("p.c"));
    exe
}

fn symbol_address(exe: &std::path::Path, name: &str) -> u64 {
    let nm = run(Command::new(tool("NM")).arg(exe));
    let line = nm
        .lines()
        .find(|l| l.ends_with(&format!(" {name}")))
        .unwrap();
    u64::from_str_radix(line.split(' ').next().unwrap(), 16).unwrap()
}

#[test]
fn json_lines_from_args_and_stdin() {
    let exe = fixture("cli-json");
    let f = symbol_address(&exe, "f");
    let bin = env!("CARGO_BIN_EXE_symbolize");
    let out = run(Command::new(bin)
        .arg("--exe")
        .arg(&exe)
        .arg(format!("{f:#x}"))
        .arg("0x1"));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["addr"], format!("{f:#x}"));
    let frames = lines[0]["frames"].as_array().unwrap();
    assert_eq!(frames.last().unwrap()["function"], "f");
    assert!(frames.last().unwrap()["file"]
        .as_str()
        .unwrap()
        .ends_with("p.c"));
    assert!(frames.last().unwrap()["line"].as_u64().is_some());
    assert_eq!(lines[1]["frames"].as_array().unwrap().len(), 0);
    assert_eq!(lines[1]["reason"], "unknown_address");

    // stdin, one per line, with and without 0x; a bad line gets a reason, not an abort.
    let input = format!("{:x}\n{:#x}\nnot-hex\n", f + 2, f + 4);
    let out = run_with_input(
        Command::new(bin).arg("--exe").arg(&exe).arg("--no-inlines"),
        &input,
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines[..2] {
        let frames = l["frames"].as_array().unwrap();
        assert_eq!(frames.len(), 1, "--no-inlines gives one frame: {l}");
        assert_eq!(frames[0]["function"], "f");
    }
    assert_eq!(lines[2]["reason"], "bad_address");
}

#[test]
fn missing_file_fails() {
    let st = Command::new(env!("CARGO_BIN_EXE_symbolize"))
        .args(["--exe", "/nonexistent/x", "0x1"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    // What failed and, from the error's source, why.
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "symbolize: cannot read /nonexistent/x: {}",
            std::io::Error::from_raw_os_error(libc::ENOENT)
        ),
    );
    let st = Command::new(env!("CARGO_BIN_EXE_symbolize"))
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(2));
}

#[test]
fn symbolizer_thread_serves_requests() {
    let exe = fixture("cli-thread");
    let f = symbol_address(&exe, "f");
    let bin = symbolizer::Binary::open(&exe).unwrap();
    let t = symbolizer::SymbolizerThread::spawn(symbolizer::SymbolizerConfig::default()).unwrap();
    let a = t.request(bin.clone(), vec![f, 1]);
    let b = t.request(bin, vec![f]);
    let a = a.recv().unwrap().unwrap();
    assert_eq!(a[0].as_ref().unwrap().last().unwrap().function, "f");
    assert_eq!(a[1], Err(symbolizer::Miss::UnknownAddress));
    assert_eq!(b.recv().unwrap().unwrap().len(), 1);
}
