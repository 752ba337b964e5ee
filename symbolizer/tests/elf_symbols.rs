//! ELF symbol-table lookups against llvm-symbolizer and binutils addr2line, on gcc/g++ fixtures
//! built without debug info (so both tools fall back to the symbol tables, as we do).

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{fixture_dir, random_text_addrs, run, run_with_input, tool};
use symbolizer::{Binary, Miss, Symbolizer, SymbolizerConfig};
use test_support::{Mutation, Mutator, Rng};

/// C source with many functions of varied sizes, linkage and visibility.
fn c_source() -> String {
    let mut s = String::from("#include <stdio.h>\n#include <stdlib.h>\nvolatile int sink;\n");
    for i in 0..300 {
        let linkage = match i % 4 {
            0 => "static __attribute__((noinline))",
            1 => "__attribute__((noinline))",
            2 => "__attribute__((noinline, weak))",
            _ => "__attribute__((noinline, visibility(\"hidden\")))",
        };
        let _ = writeln!(s, "{linkage} int fn_{i}(int x) {{");
        for k in 0..(i % 7) {
            let _ = writeln!(s, "  for (int j = 0; j < x; j++) sink += j * {k} + x;");
        }
        let next = if i > 0 {
            format!("fn_{}(x - 1)", i - 1)
        } else {
            "0".into()
        };
        let _ = writeln!(s, "  return x > 0 ? {next} + sink : {i};\n}}");
    }
    s.push_str("int main(int argc, char **argv) { (void)argv; printf(\"%d\\n\", fn_299(argc)); return 0; }\n");
    // A zero-size assembler label inside .text, followed by code: it extends to the next symbol.
    s.push_str("__asm__(\".text\\n.globl bare_label\\n.type bare_label,@function\\nbare_label:\\n nop\\n nop\\n ret\\n\");\n");
    s
}

fn cpp_source() -> &'static str {
    r#"
#include <vector>
#include <string>
#include <map>
#include <cstdio>
namespace outer { namespace inner {
template <typename T> struct Box { T v; __attribute__((noinline)) T get(int k) const { return v + T(k); } };
__attribute__((noinline)) int free_fn(const std::string &s, double d) { return int(s.size() + d); }
struct Widget { virtual ~Widget() {} __attribute__((noinline)) virtual int poke(long) const; };
int Widget::poke(long x) const { return int(x * 3); }
} }
__attribute__((noinline)) int overloaded(int a) { return a + 1; }
__attribute__((noinline)) int overloaded(const char *a) { return a[0]; }
int main(int argc, char **argv) {
    std::map<std::string, std::vector<int>> m;
    m[argv[0]].push_back(argc);
    outer::inner::Box<int> b{argc}; outer::inner::Box<double> d{1.5};
    outer::inner::Widget w;
    std::printf("%d %f %d %d %d %d\n", b.get(2), d.get(3), outer::inner::free_fn(argv[0], 2.0),
                w.poke(argc), overloaded(argc), overloaded(argv[0]));
    return int(m.size());
}
"#
}

fn build(
    dir: &Path,
    compiler: &str,
    src_name: &str,
    src: &str,
    out: &str,
    flags: &[&str],
) -> PathBuf {
    let src_path = dir.join(src_name);
    std::fs::write(&src_path, src).unwrap();
    let out_path = dir.join(out);
    run(Command::new(tool(compiler))
        .args(flags)
        .arg("-o")
        .arg(&out_path)
        .arg(&src_path));
    out_path
}

fn ours(path: &Path, addrs: &[u64]) -> Vec<Result<String, Miss>> {
    let bin = Binary::open(path).unwrap();
    let mut s = Symbolizer::new(SymbolizerConfig::default());
    s.symbolize(&bin, addrs)
        .unwrap()
        .into_iter()
        .map(|l| {
            l.map(|frames| {
                assert_eq!(frames.len(), 1, "symbol tables give one frame");
                assert!(!frames[0].inlined && frames[0].file.is_none());
                frames[0].function.clone()
            })
        })
        .collect()
}

/// Spelling differences only: llvm's demangler prints `>>` where libiberty and cpp_demangle
/// print `> >`, and `(.isra.0)` where we print libiberty's ` [clone .isra.0]`.
fn normalize(name: &str) -> String {
    let mut s = name.to_owned();
    while s.contains("> >") {
        s = s.replace("> >", ">>");
    }
    if let Some(i) = s.find(" [clone ") {
        let suffix = s[i + 8..].trim_end_matches(']').to_owned();
        s.truncate(i);
        s = format!("{s} ({suffix})");
    }
    s
}

/// Known disagreement classes, each explained; `None` means a real bug.
fn explain(
    ours: &Option<String>,
    theirs: &Option<String>,
    zero_size_elsewhere: bool,
) -> Option<&'static str> {
    match (ours, theirs) {
        // llvm-symbolizer extends a zero-size symbol (`_init` in .init) to the next symbol even
        // across sections (into .plt); we stop at the section end.
        (None, Some(_)) if zero_size_elsewhere => Some("zero-size symbol across a section end"),
        _ => None,
    }
}

/// Every disagreement with llvm-symbolizer over random text addresses plus all symbol starts.
fn compare_with_llvm(path: &Path, n: usize, seed: u64) -> (usize, Vec<String>) {
    let bin = Binary::open(path).unwrap();
    let mut addrs = random_text_addrs(&bin, n, seed);
    let nm = run(Command::new(tool("NM")).arg("--defined-only").arg(path));
    let nm_dyn = run(Command::new(tool("NM"))
        .arg("-D")
        .arg("--defined-only")
        .arg(path));
    for line in nm.lines().chain(nm_dyn.lines()) {
        let mut parts = line.split_whitespace();
        if let (Some(a), Some("t" | "T")) = (parts.next(), parts.next()) {
            let a = u64::from_str_radix(a, 16).unwrap();
            addrs.extend([a, a + 1]);
        }
    }
    let theirs = support::llvm_symbolize(
        path,
        &addrs,
        &["--functions=linkage", "--no-inlines", "--demangle"],
    );
    let ours = ours(path, &addrs);
    let sections = sections(path);
    let section_of = |a: u64| sections.iter().position(|&(s, e)| s <= a && a < e);
    let zero_size = zero_size_symbols(path);
    let mut bad = Vec::new();
    let mut explained = std::collections::BTreeMap::<&str, usize>::new();
    for ((addr, o), t) in addrs.iter().zip(&ours).zip(&theirs) {
        let t = t.first().map(|f| normalize(&f.function));
        let o = o.as_ref().ok().map(|f| normalize(f));
        if o != t {
            let elsewhere = t
                .as_ref()
                .and_then(|t| zero_size.iter().find(|(n, _)| n == t))
                .is_some_and(|&(_, sym_addr)| section_of(sym_addr) != section_of(*addr));
            match explain(&o, &t, elsewhere) {
                Some(class) => *explained.entry(class).or_default() += 1,
                None => bad.push(format!("0x{addr:x}: ours {o:?} llvm-symbolizer {t:?}")),
            }
        }
    }
    eprintln!(
        "{}: {} addresses, explained disagreements: {explained:?}",
        path.display(),
        addrs.len()
    );
    (addrs.len(), bad)
}

/// Allocated section ranges from readelf.
fn sections(path: &Path) -> Vec<(u64, u64)> {
    let out = run(Command::new("readelf").arg("-SW").arg(path));
    out.lines()
        .filter_map(|l| {
            let l = l.split_once(']')?.1;
            let f: Vec<&str> = l.split_whitespace().collect();
            let addr = u64::from_str_radix(f.get(2)?, 16).ok()?;
            let size = u64::from_str_radix(f.get(4)?, 16).ok()?;
            (addr != 0).then_some((addr, addr + size))
        })
        .collect()
}

/// (name, address) of zero-size function symbols.
fn zero_size_symbols(path: &Path) -> Vec<(String, u64)> {
    let out = run(Command::new("readelf").arg("-sW").arg(path));
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && f[3] == "FUNC" && f[2] == "0")
                .then(|| {
                    Some((
                        f[7].split('@').next()?.to_owned(),
                        u64::from_str_radix(f[1], 16).ok()?,
                    ))
                })
                .flatten()
        })
        .collect()
}

fn assert_agrees(path: &Path, seed: u64) {
    let (n, bad) = compare_with_llvm(path, 2500, seed);
    assert!(n >= 2500);
    assert!(
        bad.is_empty(),
        "{}: {} of {n} disagree:\n{}",
        path.display(),
        bad.len(),
        bad[..bad.len().min(30)].join("\n")
    );
}

#[test]
fn c_executable_matches_llvm_symbolizer() {
    let dir = fixture_dir("elf-c");
    let exe = build(
        &dir,
        "GCC",
        "many.c",
        &c_source(),
        "many",
        &["-O2", "-g0", "-no-pie", "-fno-pie"],
    );
    assert_agrees(&exe, 1);
    let pie = build(
        &dir,
        "GCC",
        "many.c",
        &c_source(),
        "many-pie",
        &["-O2", "-g0", "-pie", "-fPIE"],
    );
    assert_agrees(&pie, 2);
    let bin = Binary::open(&pie).unwrap();
    assert!(bin.is_pie_or_shared());
    assert!(!Binary::open(&exe).unwrap().is_pie_or_shared());
}

#[test]
fn stripped_shared_object_uses_dynsym() {
    let dir = fixture_dir("elf-so");
    let so = build(
        &dir,
        "GCC",
        "many.c",
        &c_source(),
        "libmany.so",
        &["-O2", "-g0", "-shared", "-fPIC"],
    );
    run(Command::new("strip").arg("--strip-all").arg(&so));
    let syms = run(Command::new(tool("NM"))
        .arg(&so)
        .stderr(std::process::Stdio::null()));
    assert!(
        syms.trim().is_empty() || syms.contains("no symbols"),
        "strip left .symtab"
    );
    assert_agrees(&so, 3);
    // Hidden and static functions are gone, so lookups there must miss or name a neighbour
    // exactly as llvm-symbolizer does (checked above); exported ones still resolve.
    let nm = run(Command::new(tool("NM"))
        .arg("-D")
        .arg("--defined-only")
        .arg(&so));
    let fn1 = nm
        .lines()
        .find(|l| l.ends_with(" fn_1"))
        .expect("fn_1 exported");
    let addr = u64::from_str_radix(fn1.split(' ').next().unwrap(), 16).unwrap();
    assert_eq!(ours(&so, &[addr]), vec![Ok("fn_1".to_owned())]);
}

#[test]
fn cpp_names_match_binutils_and_llvm() {
    let dir = fixture_dir("elf-cpp");
    let exe = build(
        &dir,
        "GXX",
        "w.cpp",
        cpp_source(),
        "widgets",
        &["-O2", "-g0"],
    );
    assert_agrees(&exe, 4);
    // binutils addr2line -C uses libiberty, whose spacing cpp_demangle follows exactly.
    let bin = Binary::open(&exe).unwrap();
    let addrs = random_text_addrs(&bin, 2000, 5);
    let input: String = addrs.iter().map(|a| format!("0x{a:x}\n")).collect();
    let out = run_with_input(
        Command::new(tool("ADDR2LINE"))
            .arg("-f")
            .arg("-C")
            .arg("-e")
            .arg(&exe),
        &input,
    );
    let names: Vec<&str> = out.lines().step_by(2).collect();
    assert_eq!(names.len(), addrs.len());
    let ours = ours(&exe, &addrs);
    let mut bad = Vec::new();
    let mut cpp_seen = 0;
    for ((addr, o), t) in addrs.iter().zip(&ours).zip(&names) {
        if let Ok(o) = o {
            cpp_seen += usize::from(o.contains("::"));
            // addr2line has no sizes and names the preceding symbol in gaps; compare only hits.
            if o != t {
                bad.push(format!("0x{addr:x}: ours {o:?} addr2line {t:?}"));
            }
        }
    }
    assert!(
        cpp_seen > 100,
        "fixture should exercise C++ names, saw {cpp_seen}"
    );
    assert!(
        bad.is_empty(),
        "{} disagree:\n{}",
        bad.len(),
        bad[..bad.len().min(30)].join("\n")
    );
}

#[test]
fn load_segments_and_build_id() {
    let dir = fixture_dir("elf-segments");
    let exe = build(
        &dir,
        "GCC",
        "many.c",
        &c_source(),
        "many",
        &["-O2", "-Wl,--build-id=sha1", "-pie", "-fPIE"],
    );
    let bin = Binary::open(&exe).unwrap();
    let readelf = run(Command::new("readelf").arg("-n").arg(&exe));
    let hex = readelf
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("build id note")
        .trim()
        .to_owned();
    let ours: String = bin
        .gnu_build_id()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(ours, hex);
    assert!(matches!(bin.id(), symbolizer::BinaryId::BuildId(b) if b.len() == 20));
    assert_eq!(bin.go_build_id(), None);

    // Every PT_LOAD readelf lists, in order, with the same fields.
    let phdrs = run(Command::new("readelf").arg("-lW").arg(&exe));
    let loads: Vec<Vec<&str>> = phdrs
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(loads.len(), bin.load_segments().len());
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    for (l, s) in loads.iter().zip(bin.load_segments()) {
        assert_eq!(
            (hex(l[1]), hex(l[2]), hex(l[4]), hex(l[5])),
            (s.p_offset, s.p_vaddr, s.p_filesz, s.p_memsz)
        );
        assert_eq!(
            l[6..l.len() - 1].contains(&"E") || l[6].contains('E'),
            s.executable
        );
    }
    let text = bin.load_segments().iter().find(|s| s.executable).unwrap();
    assert_eq!(
        bin.file_offset_to_vaddr(text.p_offset + 0x10),
        Some(text.p_vaddr + 0x10)
    );
    assert_eq!(bin.file_offset_to_vaddr(u64::MAX), None);

    // The binary stays usable after its path disappears: `main` (its address from nm, taken
    // before the file goes) still resolves, from the symbol table (the fixture has no DWARF).
    let nm = run(Command::new(tool("NM")).arg("--defined-only").arg(&exe));
    let main_addr = nm
        .lines()
        .find_map(|l| l.strip_suffix(" T main"))
        .map(|a| u64::from_str_radix(a, 16).unwrap())
        .expect("main in nm");
    std::fs::remove_file(&exe).unwrap();
    let mut s = Symbolizer::new(SymbolizerConfig::default());
    let looked_up = s.symbolize(&bin, &[main_addr, main_addr + 1]).unwrap();
    for (addr, l) in [main_addr, main_addr + 1].iter().zip(looked_up) {
        let frames = l.unwrap_or_else(|m| panic!("{addr:#x}: {m}"));
        assert_eq!(frames.len(), 1, "{addr:#x}: {frames:?}");
        assert_eq!(frames[0].function, "main", "{addr:#x}");
        assert!(!frames[0].inlined && frames[0].file.is_none());
    }
}

#[test]
fn mutated_elf_never_panics() {
    let dir = fixture_dir("elf-mutate");
    let exe = build(&dir, "GCC", "many.c", &c_source(), "many", &["-O1", "-g0"]);
    let orig = std::fs::read(&exe).unwrap();
    let mut rng = Rng::new(7);
    let truncate = Mutator::new(&[Mutation::Truncate]).times(1, 1);
    let flips = Mutator::new(&[Mutation::FlipBit]).times(16, 16);
    // Lies about sizes and offsets in the headers (the first 4 KiB).
    let header_lies = Mutator::new(&[Mutation::RandomU64, Mutation::InterestingU32]).times(8, 8);
    for round in 0..300 {
        let mut bytes = orig.clone();
        match round % 3 {
            0 => truncate.mutate(&mut rng, &mut bytes),
            1 => flips.mutate(&mut rng, &mut bytes),
            _ => header_lies.mutate_in(&mut rng, &mut bytes, 0..4096),
        };
        if let Ok(bin) = Binary::from_bytes(bytes) {
            let addrs = random_text_addrs_or_default(&bin, &mut rng);
            let mut s = Symbolizer::new(SymbolizerConfig::default());
            let _ = s.symbolize(&bin, &addrs);
            let _ = bin.file_offset_to_vaddr(rng.next_u64());
        }
    }
}

fn random_text_addrs_or_default(bin: &Binary, rng: &mut Rng) -> Vec<u64> {
    let mut v: Vec<u64> = (0..64).map(|_| rng.below(0x10000)).collect();
    if bin
        .load_segments()
        .iter()
        .any(|s| s.executable && s.p_filesz > 0)
    {
        v.extend(random_text_addrs(bin, 64, rng.next_u64()));
    }
    v
}
