//! DWARF frames (function, file, line, inline chain) against llvm-symbolizer from llvm-19, on
//! gcc `-O2 -g` fixtures (DWARF 4 and 5, zlib and zstd compressed, split debug files) and a
//! Rust release binary with full debug info.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{fixture_dir, llvm_symbolize, random_text_addrs, run, tool, RefFrame};
use symbolizer::{Binary, Frame, Lookup, Symbolizer, SymbolizerConfig};
use test_support::{Mutation, Mutator, Rng};

const HEADER: &str = r#"
static inline __attribute__((always_inline)) int mix(int a, int b) {
    int r = a * 31 + b;
    if (r & 1) r ^= 0x5bd1e995;
    return r;
}
static inline int step(int x) {
    for (int i = 0; i < (x & 7); i++) x = mix(x, i);
    return x;
}
"#;

fn c_source(n: usize) -> String {
    use std::fmt::Write;
    let mut s = String::from("#include <stdio.h>\n#include \"mix.h\"\nvolatile int sink;\n");
    for i in 0..n {
        let _ = writeln!(
            s,
            "static inline int helper_{i}(int x) {{ return step(x + {i}) ^ mix(x, {i}); }}"
        );
        let _ = writeln!(s, "__attribute__((noinline)) int work_{i}(int x) {{");
        let _ = writeln!(s, "    int acc = helper_{i}(x);");
        let _ = writeln!(
            s,
            "    for (int j = 0; j < x % 5; j++) acc += helper_{i}(acc + j);"
        );
        if i > 0 {
            let _ = writeln!(s, "    if (x > 3) acc += work_{}(x - 1);", i - 1);
        }
        let _ = writeln!(s, "    sink = acc;\n    return acc;\n}}");
    }
    let _ = writeln!(s, "int main(int argc, char **argv) {{ (void)argv; printf(\"%d\\n\", work_{}(argc)); return 0; }}", n - 1);
    s
}

fn build_c(dir: &Path, out: &str, flags: &[&str]) -> PathBuf {
    std::fs::write(dir.join("mix.h"), HEADER).unwrap();
    std::fs::write(dir.join("prog.c"), c_source(120)).unwrap();
    let exe = dir.join(out);
    run(Command::new(tool("GCC"))
        .current_dir(dir)
        .args(["-O2", "-Wl,--build-id=sha1"])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg("prog.c"));
    exe
}

fn normalize(name: &str) -> String {
    let mut s = name.to_owned();
    while s.contains("> >") {
        s = s.replace("> >", ">>");
    }
    s
}

fn ours(bin: &Binary, addrs: &[u64], config: SymbolizerConfig) -> Vec<Lookup> {
    Symbolizer::new(config).symbolize(bin, addrs).unwrap()
}

fn as_ref(f: &Frame) -> RefFrame {
    RefFrame {
        function: normalize(&f.function),
        file: f.file.clone(),
        line: f.line,
    }
}

/// Compares frame lists; returns (explained classes, unexplained lines).
fn compare(
    addrs: &[u64],
    ours: &[Lookup],
    theirs: &[Vec<RefFrame>],
) -> (BTreeMap<&'static str, usize>, Vec<String>) {
    let mut classes = BTreeMap::new();
    let mut bad = Vec::new();
    for ((addr, o), t) in addrs.iter().zip(ours).zip(theirs) {
        let o: Vec<RefFrame> = o
            .as_ref()
            .map(|f| f.iter().map(as_ref).collect())
            .unwrap_or_default();
        let t: Vec<RefFrame> = t
            .iter()
            .map(|f| RefFrame {
                function: normalize(&f.function),
                ..f.clone()
            })
            .collect();
        if o == t {
            continue;
        }
        match explain(&o, &t) {
            Some(class) => *classes.entry(class).or_default() += 1,
            None => bad.push(format!("0x{addr:x}:\n  ours   {o:?}\n  theirs {t:?}")),
        }
    }
    (classes, bad)
}

/// Known, explained disagreement classes.
fn explain(o: &[RefFrame], t: &[RefFrame]) -> Option<&'static str> {
    // llvm-symbolizer extends zero-size symbols (`_init`) into the next section (.plt).
    if o.is_empty() && t.len() == 1 && matches!(t[0].function.as_str(), "_init" | "_fini") {
        return Some("zero-size symbol across a section end");
    }
    // For functions known only from .symtab, llvm-symbolizer reports the preceding STT_FILE
    // symbol's name (e.g. `crtstuff.c`) as the file; we report no file.
    if o.len() == 1
        && t.len() == 1
        && o[0].function == t[0].function
        && o[0].file.is_none()
        && o[0].line.is_none()
        && t[0].line.is_none()
    {
        return Some("STT_FILE name as file for symbol-table frames");
    }
    // A stripped binary whose separate debug file keeps .symtab: we also take symbol-table-only
    // functions (crt code) from it; llvm-symbolizer reads only DWARF from debug files.
    if t.is_empty() && o.len() == 1 && o[0].file.is_none() {
        return Some("symbol from the separate debug file's .symtab");
    }
    // Two compile units cover the same address (identical monomorphizations merged by LLVM);
    // each tool picks a different, equally valid unit, so one generic argument differs.
    if o.len() == t.len()
        && o.iter()
            .zip(t)
            .all(|(a, b)| a.file == b.file && a.line == b.line)
    {
        return Some("two units describe the same code (merged functions)");
    }
    None
}

fn check(exe: &Path, config: SymbolizerConfig, seed: u64) {
    check_with(exe, config, seed, false)
}

/// `rust`: llvm-symbolizer's demangler treats Rust legacy names as C++ (keeping `::h<hash>`
/// and `$LT$` escapes), so ask it for raw linkage names and demangle them the same way.
fn check_with(exe: &Path, config: SymbolizerConfig, seed: u64, rust: bool) {
    let bin = Binary::open(exe).unwrap();
    let addrs = random_text_addrs(&bin, 2500, seed);
    let mut llvm_args = vec![
        "--functions=linkage",
        "--inlines",
        if rust { "--no-demangle" } else { "--demangle" },
    ];
    let debug_dir_arg;
    if let Some(d) = config.debug_dirs.first() {
        debug_dir_arg = format!("--debug-file-directory={}", d.display());
        llvm_args.push(&debug_dir_arg);
    }
    let mut theirs = llvm_symbolize(exe, &addrs, &llvm_args);
    if rust {
        for f in theirs.iter_mut().flatten() {
            f.function = symbolizer::demangle::demangle(&f.function);
        }
    }
    let ours = ours(&bin, &addrs, config);
    let inline_frames: usize = ours
        .iter()
        .filter_map(|l| l.as_ref().ok())
        .map(|f| f.len() - 1)
        .sum();
    let with_line = ours
        .iter()
        .filter_map(|l| l.as_ref().ok())
        .filter(|f| f[0].line.is_some())
        .count();
    let (classes, bad) = compare(&addrs, &ours, &theirs);
    eprintln!(
        "{}: {} addrs, {inline_frames} inline frames, {with_line} with lines, explained: {classes:?}",
        exe.display(),
        addrs.len()
    );
    assert!(
        bad.is_empty(),
        "{}: {} of {} disagree:\n{}",
        exe.display(),
        bad.len(),
        addrs.len(),
        bad[..bad.len().min(12)].join("\n")
    );
    let merged = classes
        .get("two units describe the same code (merged functions)")
        .copied()
        .unwrap_or(0);
    assert!(
        merged * 50 < addrs.len(),
        "too many ambiguous-unit disagreements: {merged}"
    );
    assert!(
        inline_frames > 200,
        "fixture should have inline frames, got {inline_frames}"
    );
    assert!(
        with_line > 1000,
        "most addresses should have lines, got {with_line}"
    );
}

fn no_debug_dirs() -> SymbolizerConfig {
    SymbolizerConfig {
        debug_dirs: vec![],
        ..Default::default()
    }
}

#[test]
fn dwarf4_and_dwarf5() {
    let dir = fixture_dir("dwarf-versions");
    check(
        &build_c(&dir, "prog-dwarf4", &["-gdwarf-4"]),
        no_debug_dirs(),
        11,
    );
    check(
        &build_c(&dir, "prog-dwarf5", &["-gdwarf-5"]),
        no_debug_dirs(),
        12,
    );
    check(
        &build_c(&dir, "prog-dwarf5-pie", &["-gdwarf-5", "-fPIE", "-pie"]),
        no_debug_dirs(),
        13,
    );
}

#[test]
fn compressed_sections() {
    let dir = fixture_dir("dwarf-compressed");
    for (name, how) in [("prog-zlib", "zlib"), ("prog-zstd", "zstd")] {
        let exe = build_c(&dir, name, &["-g"]);
        run(Command::new(tool("OBJCOPY"))
            .arg(format!("--compress-debug-sections={how}"))
            .arg(&exe));
        let sections = run(Command::new("readelf").arg("-SW").arg(&exe));
        let info = sections
            .lines()
            .find(|l| l.contains(" .debug_info"))
            .expect(".debug_info");
        assert!(
            info.contains(" C ") || info.split_whitespace().any(|w| w.contains('C')),
            "{how}: not compressed: {info}"
        );
        let header = run(Command::new("readelf").arg("-t").arg(&exe));
        assert!(
            header.to_uppercase().contains(&how.to_uppercase()),
            "{how} compression header missing"
        );
        check(&exe, no_debug_dirs(), 21);
    }
}

#[test]
fn separate_debug_file_via_debuglink_and_build_id() {
    let dir = fixture_dir("dwarf-split");
    let exe = build_c(&dir, "prog", &["-g"]);
    let dbg = dir.join("prog.debug");
    run(Command::new(tool("OBJCOPY"))
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(&dbg));
    run(Command::new(tool("OBJCOPY"))
        .arg("--strip-all")
        .arg(format!("--add-gnu-debuglink={}", dbg.display()))
        .arg(&exe));
    assert!(!run(Command::new("readelf").arg("-SW").arg(&exe)).contains(".debug_info"));
    check(&exe, no_debug_dirs(), 31);

    // Opened through another path (as the agent opens /proc/PID/map_files/...): the debuglink
    // is searched next to the original path given to open_as.
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(&exe, elsewhere.join("copy")).unwrap();
    let copy = Binary::open(&elsewhere.join("copy")).unwrap();
    let via = Binary::open_as(&elsewhere.join("copy"), &exe).unwrap();
    let probe = random_text_addrs(&copy, 300, 2);
    let lines = |b: &Binary| {
        ours(b, &probe, no_debug_dirs())
            .iter()
            .filter(|l| l.as_ref().is_ok_and(|f| f[0].line.is_some()))
            .count()
    };
    assert_eq!(lines(&copy), 0, "no debug file next to the copy");
    assert!(
        lines(&via) > 200,
        "open_as finds the debuglink next to the original path"
    );

    // A debuglink whose CRC does not match is ignored.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(&exe, bad.join("prog")).unwrap();
    let mut other = std::fs::read(&dbg).unwrap();
    let last = other.len() - 1;
    other[last] ^= 0xff;
    std::fs::write(bad.join("prog.debug"), other).unwrap();
    let bin = Binary::open(&bad.join("prog")).unwrap();
    let main = random_text_addrs(&bin, 200, 1);
    let res = ours(&bin, &main, no_debug_dirs());
    assert!(
        res.iter()
            .all(|l| l.as_ref().map_or(true, |f| f[0].line.is_none())),
        "used a debug file with a bad CRC"
    );

    // Build-id layout in a debug dir, with no debuglink.
    let exe2 = build_c(&dir, "prog2", &["-g"]);
    let id = Binary::open(&exe2)
        .unwrap()
        .gnu_build_id()
        .unwrap()
        .to_vec();
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let root = dir.join("debugroot");
    let target = root
        .join(".build-id")
        .join(&hex[..2])
        .join(format!("{}.debug", &hex[2..]));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    run(Command::new(tool("OBJCOPY"))
        .arg("--only-keep-debug")
        .arg(&exe2)
        .arg(&target));
    run(Command::new(tool("OBJCOPY")).arg("--strip-all").arg(&exe2));
    let config = SymbolizerConfig {
        debug_dirs: vec![root],
        ..Default::default()
    };
    check(&exe2, config, 32);
}

#[test]
fn no_inlines_gives_one_frame() {
    let dir = fixture_dir("dwarf-noinline");
    let exe = build_c(&dir, "prog", &["-g"]);
    let bin = Binary::open(&exe).unwrap();
    let addrs = random_text_addrs(&bin, 2000, 41);
    let theirs = llvm_symbolize(
        &exe,
        &addrs,
        &["--functions=linkage", "--no-inlines", "--demangle"],
    );
    let config = SymbolizerConfig {
        inlines: false,
        ..no_debug_dirs()
    };
    let ours = ours(&bin, &addrs, config);
    assert!(ours
        .iter()
        .filter_map(|l| l.as_ref().ok())
        .all(|f| f.len() == 1 && !f[0].inlined));
    // Extreme addresses are misses, not panics (addr2line adds 1 to the probe unchecked).
    let edge = Symbolizer::new(no_debug_dirs())
        .symbolize(&bin, &[u64::MAX, 0])
        .unwrap();
    assert!(edge.iter().all(|l| l.is_err()));
    let (classes, bad) = compare(&addrs, &ours, &theirs);
    eprintln!("no-inlines explained: {classes:?}");
    assert!(
        bad.is_empty(),
        "{} disagree:\n{}",
        bad.len(),
        bad[..bad.len().min(12)].join("\n")
    );
}

#[test]
fn rust_release_binary_with_debug_info() {
    let dir = fixture_dir("dwarf-rust");
    let src = dir.join("main.rs");
    std::fs::write(
        &src,
        r#"
use std::collections::HashMap;
#[inline(always)] fn mix(a: u64, b: u64) -> u64 { a.rotate_left(5) ^ b.wrapping_mul(0x9e3779b97f4a7c15) }
#[inline] fn fold(v: &[u64]) -> u64 { v.iter().fold(0, |acc, &x| mix(acc, x)) }
#[inline(never)] fn build(n: u64) -> HashMap<String, Vec<u64>> {
    (0..n).map(|i| (format!("k{i}"), (0..i % 7).map(|j| mix(i, j)).collect())).collect()
}
fn main() {
    let n = std::env::args().count() as u64 * 1000;
    let m = build(n);
    let mut keys: Vec<_> = m.keys().cloned().collect();
    keys.sort();
    println!("{} {}", keys.len(), m.values().map(|v| fold(v)).fold(0, mix));
}
"#,
    )
    .unwrap();
    let exe = dir.join("rustprog");
    // Same as a Cargo release profile with `debug = 2`.
    run(Command::new("rustc")
        .args([
            "-C",
            "opt-level=3",
            "-C",
            "debuginfo=2",
            "--edition=2021",
            "-o",
        ])
        .arg(&exe)
        .arg(&src));
    check_with(&exe, no_debug_dirs(), 51, true);
}

/// Peak resident memory of this test process, from /proc/self/status.
fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Bit flips, truncations and lying sizes in the DWARF sections (plain and zlib-compressed)
/// give misses or errors, never a panic, and memory stays bounded.
#[test]
fn mutated_dwarf_never_panics() {
    let dir = fixture_dir("dwarf-mutate");
    let plain = build_c(&dir, "prog", &["-g"]);
    let zlib = build_c(&dir, "prog-z", &["-g"]);
    run(Command::new(tool("OBJCOPY"))
        .arg("--compress-debug-sections=zlib")
        .arg(&zlib));
    let mut rng = Rng::new(77);
    let flips = Mutator::new(&[Mutation::FlipBit]).times(32, 32);
    // Lies in a length field or compression header (a section's first 24 bytes).
    let header_lies = Mutator::new(&[Mutation::RandomU64, Mutation::InterestingU32]).times(1, 2);
    // A section whose tail is zeroed, as a truncated download leaves it.
    let zero_tail = Mutator::new(&[Mutation::ZeroTail]).times(1, 1);
    for exe in [plain, zlib] {
        let orig = std::fs::read(&exe).unwrap();
        let sections = run(Command::new("readelf").arg("-SW").arg(&exe));
        let ranges: Vec<(usize, usize)> = sections
            .lines()
            .filter(|l| l.contains(".debug_"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(']').nth(1)?.split_whitespace().collect();
                Some((
                    usize::from_str_radix(f[3], 16).ok()?,
                    usize::from_str_radix(f[4], 16).ok()?,
                ))
            })
            .filter(|r| r.1 > 8)
            .collect();
        assert!(ranges.len() >= 4);
        let text = Binary::open(&exe).unwrap();
        let addrs = random_text_addrs(&text, 300, 3);
        for round in 0..120 {
            let mut bytes = orig.clone();
            let (off, size) = *rng.pick(&ranges);
            let (mutator, region) = match round % 3 {
                0 => (&flips, off..off + size),
                1 => (&header_lies, off..off + size.min(24)),
                _ => (&zero_tail, off..off + size),
            };
            mutator.mutate_in(&mut rng, &mut bytes, region);
            if let Ok(bin) = Binary::from_bytes(bytes) {
                let _ = Symbolizer::new(no_debug_dirs()).symbolize(&bin, &addrs);
            }
        }
    }
    let peak = peak_rss_kib();
    assert!(peak < 2 * 1024 * 1024, "peak RSS {peak} KiB");
}
