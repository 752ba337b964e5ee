//! DWARF frames (function, file, line, inline chain) against llvm-symbolizer from llvm-19, on
//! gcc `-O2 -g` fixtures (DWARF 4 and 5, zlib and zstd compressed, split debug files) and Rust
//! release binaries with full debug info (legacy and v0 mangling). Each side demangles with its
//! own demangler: llvm-symbolizer's `--demangle` against this crate's.

mod support;

use std::collections::{BTreeMap, BTreeSet};
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

/// Spelling only: llvm's demangler prints `>>` where cpp_demangle prints `> >`.
fn normalize(name: &str) -> String {
    let mut s = name.to_owned();
    while s.contains("> >") {
        s = s.replace("> >", ">>");
    }
    s
}

/// llvm's Rust spellings made comparable with rustc-demangle's (`{:#}`), narrowly:
/// - LLVM's clone suffix `.llvm.<digits>` (symbol-table names of internalized functions): llvm
///   prints it as ` (.llvm.<digits>)`, rustc-demangle drops it by design; it is dropped here;
/// - legacy names: see [`undo_legacy_rust_escapes`].
///
/// Then [`normalize`], as for our names.
fn normalize_llvm_rust(name: &str) -> String {
    let name = name
        .strip_suffix(')')
        .and_then(|n| n.rsplit_once(" (.llvm."))
        .filter(|(_, digits)| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .map_or(name, |(n, _)| n);
    normalize(&undo_legacy_rust_escapes(name).unwrap_or_else(|| name.to_owned()))
}

/// llvm's demangler has no scheme for Rust's legacy mangling: it reads `_ZN…17h<hash>E` as a
/// C++ name and prints `path::name::h0123456789abcdef`, with the legacy escapes (`$LT$`, `..`,
/// `_$` before a leading `$`) left in. This undoes exactly that encoding, as the legacy mangler
/// defines it, for names ending in `::h` and 16 hex digits only; `None` for any other name,
/// which llvm demangled itself (C, C++, Rust v0) and is compared as llvm printed it.
fn undo_legacy_rust_escapes(name: &str) -> Option<String> {
    let (path, hash) = name.rsplit_once("::h")?;
    if hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for (i, element) in path.split("::").enumerate() {
        if i > 0 {
            out.push_str("::");
        }
        // An element that starts with an escape gets a `_` in front of it.
        let mut rest = if element.starts_with("_$") {
            &element[1..]
        } else {
            element
        };
        while let Some(c) = rest.chars().next() {
            if let Some(r) = rest.strip_prefix("..") {
                out.push_str("::");
                rest = r;
            } else if c == '$' {
                let end = rest[1..].find('$')? + 1;
                let code = &rest[1..end];
                out.push(match code {
                    "SP" => '@',
                    "BP" => '*',
                    "RF" => '&',
                    "LT" => '<',
                    "GT" => '>',
                    "LP" => '(',
                    "RP" => ')',
                    "C" => ',',
                    _ => char::from_u32(u32::from_str_radix(code.strip_prefix('u')?, 16).ok()?)?,
                });
                rest = &rest[end + 1..];
            } else {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    Some(out)
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

/// Disagreements that only some fixtures may excuse, each for a reason specific to it. Every
/// fixture gets the two symbol-table classes in [`explain`]; a default `Excuses` adds nothing.
#[derive(Debug, Default)]
struct Excuses {
    /// Functions that a separate debug file's `.symtab` names and the stripped binary's tables
    /// do not (crt code without DWARF): we take them from the debug file, llvm-symbolizer reads
    /// only DWARF from debug files.
    debug_file_symbols: BTreeSet<String>,
    /// How many addresses may lie in code that two compile units describe (identical Rust
    /// monomorphizations merged by LLVM): each tool picks a different, equally valid unit, so a
    /// generic argument in a name differs.
    merged_units: usize,
}

/// Compares frame lists; returns (explained classes, unexplained lines).
fn compare(
    addrs: &[u64],
    ours: &[Lookup],
    theirs: &[Vec<RefFrame>],
    excuses: &Excuses,
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
                function: normalize_llvm_rust(&f.function),
                ..f.clone()
            })
            .collect();
        if o == t {
            continue;
        }
        match explain(&o, &t, excuses) {
            Some(class) => *classes.entry(class).or_default() += 1,
            None => bad.push(format!("0x{addr:x}:\n  ours   {o:?}\n  theirs {t:?}")),
        }
    }
    let merged = classes.get(MERGED_UNITS).copied().unwrap_or(0);
    if merged > excuses.merged_units {
        bad.push(format!(
            "{merged} addresses in merged units, more than the {} excused",
            excuses.merged_units
        ));
    }
    (classes, bad)
}

const MERGED_UNITS: &str = "two units describe the same code (merged functions)";

/// Known, explained disagreement classes.
fn explain(o: &[RefFrame], t: &[RefFrame], excuses: &Excuses) -> Option<&'static str> {
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
    if t.is_empty()
        && o.len() == 1
        && o[0].file.is_none()
        && excuses.debug_file_symbols.contains(&o[0].function)
    {
        return Some("symbol from the separate debug file's .symtab");
    }
    // Same places, same function names; only what the names are qualified with (generic
    // arguments, `<T as Trait>`) differs.
    if excuses.merged_units > 0
        && o.len() == t.len()
        && o.iter().zip(t).all(|(a, b)| {
            a.file == b.file
                && a.line == b.line
                && last_segment(&a.function) == last_segment(&b.function)
        })
    {
        return Some(MERGED_UNITS);
    }
    None
}

/// What follows the last `::` outside `<…>`: the function's own name.
fn last_segment(name: &str) -> &str {
    let (mut depth, mut start) = (0i32, 0);
    let b = name.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            b'<' => depth += 1,
            b'>' => depth -= 1,
            b':' if depth == 0 && b.get(i + 1) == Some(&b':') => start = i + 2,
            _ => {}
        }
    }
    &name[start.min(name.len())..]
}

/// Every function in `debug`'s symbol table that `stripped` (its stripped binary) does not name
/// in `.dynsym`.
fn debug_file_only_symbols(debug: &Path, stripped: &Path) -> BTreeSet<String> {
    let functions = |args: &[&str], path: &Path| -> BTreeSet<String> {
        run(Command::new(tool("NM")).args(args).arg(path))
            .lines()
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [_, "t" | "T" | "W", name] => Some(name.to_owned()),
                _ => None,
            })
            .collect()
    };
    let dynamic = functions(&["-D", "--defined-only"], stripped);
    let only: BTreeSet<String> = functions(&["--defined-only"], debug)
        .difference(&dynamic)
        .cloned()
        .collect();
    assert!(
        !only.is_empty(),
        "{} has no symbols of its own",
        debug.display()
    );
    only
}

fn check(exe: &Path, config: SymbolizerConfig, seed: u64) {
    check_with(exe, config, seed, &Excuses::default())
}

/// Our frames against llvm-symbolizer's, both demangled by their own demanglers.
fn check_with(exe: &Path, config: SymbolizerConfig, seed: u64, excuses: &Excuses) {
    let bin = Binary::open(exe).unwrap();
    let addrs = random_text_addrs(&bin, 2500, seed);
    let mut llvm_args = vec!["--functions=linkage", "--inlines", "--demangle"];
    let debug_dir_arg;
    if let Some(d) = config.debug_dirs.first() {
        debug_dir_arg = format!("--debug-file-directory={}", d.display());
        llvm_args.push(&debug_dir_arg);
    }
    let theirs = llvm_symbolize(exe, &addrs, &llvm_args);
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
    let (classes, bad) = compare(&addrs, &ours, &theirs, excuses);
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
    let excuses = Excuses {
        debug_file_symbols: debug_file_only_symbols(&dbg, &exe),
        ..Default::default()
    };
    check_with(&exe, no_debug_dirs(), 31, &excuses);

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
    let excuses = Excuses {
        debug_file_symbols: debug_file_only_symbols(&target, &exe2),
        ..Default::default()
    };
    let config = SymbolizerConfig {
        debug_dirs: vec![root],
        ..Default::default()
    };
    check_with(&exe2, config, 32, &excuses);
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
    let (classes, bad) = compare(&addrs, &ours, &theirs, &Excuses::default());
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
    // The crate's own names in the default (legacy) mangling, which llvm reads as C++, and in
    // v0, which llvm demangles as Rust; the precompiled std is v0 in both.
    for (name, flags, crate_prefix) in [
        ("rustprog-legacy", &[][..], "_ZN4main"),
        (
            "rustprog-v0",
            &["-C", "symbol-mangling-version=v0"][..],
            "_RNvCs",
        ),
    ] {
        let exe = dir.join(name);
        // Same as a Cargo release profile with `debug = 2`.
        run(Command::new("rustc")
            .args(["-C", "opt-level=3", "-C", "debuginfo=2", "--edition=2021"])
            .args(flags)
            .arg("-o")
            .arg(&exe)
            .arg(&src));
        let nm = run(Command::new(tool("NM")).arg(&exe));
        assert!(
            nm.lines()
                .any(|l| l.contains(crate_prefix) && l.contains("4main5build")),
            "{name}: `build` is not mangled as {crate_prefix}…"
        );
        let excuses = Excuses {
            merged_units: 49,
            ..Default::default()
        };
        check_with(&exe, no_debug_dirs(), 51, &excuses);
    }
}

/// (name, file offset, size) of the `.debug_*` sections, from readelf.
fn debug_sections(exe: &Path) -> Vec<(String, usize, usize)> {
    run(Command::new("readelf").arg("-SW").arg(exe))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(']').nth(1)?.split_whitespace().collect();
            f[0].starts_with(".debug_").then_some(())?;
            Some((
                f[0].to_owned(),
                usize::from_str_radix(f[3], 16).ok()?,
                usize::from_str_radix(f[4], 16).ok()?,
            ))
        })
        .collect()
}

/// Unusable DWARF is a typed error: gimli's own error as the source (not a string), or
/// `Malformed` for a compressed section that claims an absurd size. The symbolizer then falls
/// back to the symbol table.
#[test]
fn corrupt_dwarf_is_a_typed_error() {
    use symbolizer::dwarf::DwarfContext;
    use symbolizer::Error;
    let dir = fixture_dir("dwarf-corrupt");
    let exe = build_c(&dir, "prog", &["-gdwarf-5"]);
    let zlib = build_c(&dir, "prog-z", &["-gdwarf-5"]);
    run(Command::new(tool("OBJCOPY"))
        .arg("--compress-debug-sections=zlib")
        .arg(&zlib));
    let info = |exe: &Path| {
        let (_, off, _) = debug_sections(exe)
            .into_iter()
            .find(|(n, _, _)| n == ".debug_info")
            .expect(".debug_info");
        off
    };
    assert!(DwarfContext::from_binary(&Binary::open(&exe).unwrap()).is_ok());

    // A DWARF 5 unit header starts with a 4-byte length and a 2-byte version.
    let mut bytes = std::fs::read(&exe).unwrap();
    let off = info(&exe);
    assert_eq!(&bytes[off + 4..off + 6], &5u16.to_le_bytes());
    bytes[off + 4..off + 6].copy_from_slice(&99u16.to_le_bytes());
    let bin = Binary::from_bytes(bytes).unwrap();
    let err = DwarfContext::from_binary(&bin).unwrap_err();
    assert!(
        matches!(err, Error::Dwarf(gimli::Error::UnknownVersion(99))),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "cannot parse DWARF");
    let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<gimli::Error>());
    assert_eq!(source, Some(&gimli::Error::UnknownVersion(99)));
    let nm = run(Command::new(tool("NM")).arg(&exe));
    let main = nm
        .lines()
        .find_map(|l| l.strip_suffix(" T main"))
        .map(|a| u64::from_str_radix(a, 16).unwrap())
        .expect("main in nm");
    let frames = ours(&bin, &[main], no_debug_dirs()).remove(0).unwrap();
    assert_eq!(
        (frames.len(), frames[0].function.as_str(), &frames[0].file),
        (1, "main", &None),
        "symbol-table fallback"
    );

    // ELF64 compression header: ch_type (4), reserved (4), ch_size (8), ch_addralign (8).
    let mut bytes = std::fs::read(&zlib).unwrap();
    let off = info(&zlib);
    assert_eq!(
        &bytes[off..off + 4],
        &1u32.to_le_bytes(),
        "ELFCOMPRESS_ZLIB"
    );
    bytes[off + 8..off + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = DwarfContext::from_binary(&Binary::from_bytes(bytes).unwrap()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Malformed {
                what: "compressed section size"
            }
        ),
        "{err:?}"
    );
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
        let ranges: Vec<(usize, usize)> = debug_sections(&exe)
            .into_iter()
            .map(|(_, off, size)| (off, size))
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
