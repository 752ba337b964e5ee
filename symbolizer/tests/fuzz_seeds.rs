//! Replays each fuzz target's seed corpus (generated from fixtures plus the committed text
//! seeds), mutations of every seed, and saved crash reproducers. Also writes the generated
//! seeds to `target/tmp/fuzz-seeds/<target>/` for `cargo fuzz run`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{fixture_dir, run, tool};
use symbolizer::fuzzing;
use test_support::{Mutation, Mutator, Rng};

type Target = fn(&[u8]);
const TARGETS: [(&str, Target); 5] = [
    ("elf", fuzzing::elf),
    ("dwarf", fuzzing::dwarf),
    ("gopclntab", fuzzing::gopclntab),
    ("kallsyms", fuzzing::kallsyms),
    ("demangle", fuzzing::demangle),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// A section's bytes, via objcopy.
fn section(exe: &Path, name: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("section{name}"));
    run(Command::new(tool("OBJCOPY"))
        .arg("-O")
        .arg("binary")
        .arg(format!("--only-section={name}"))
        .arg(exe)
        .arg(&out));
    std::fs::read(out).unwrap()
}

fn generated_seeds(target: &str, dir: &Path) -> Vec<Vec<u8>> {
    let c_exe = |flags: &[&str], name: &str| -> PathBuf {
        std::fs::write(
            dir.join("s.c"),
            "static inline int sq(int x){return x*x;}\n__attribute__((noinline)) int f(int a){return sq(a)+1;}\nint main(int c,char**v){(void)v;return f(c);}\n",
        )
        .unwrap();
        let exe = dir.join(name);
        run(Command::new(tool("GCC"))
            .current_dir(dir)
            .args(flags)
            .arg("-o")
            .arg(&exe)
            .arg("s.c"));
        exe
    };
    let go_exe = || -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/go-inline");
        let godir = dir.join("go");
        std::fs::create_dir_all(&godir).unwrap();
        for f in ["main.go", "helpers.go", "go.mod"] {
            std::fs::copy(src.join(f), godir.join(f)).unwrap();
        }
        let exe = dir.join("gofix");
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        run(Command::new(tool("GO_1_24"))
            .current_dir(&godir)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOCACHE", tmp.join("go-cache").join("1.24"))
            .env("GOPATH", tmp.join("go-path"))
            .args(["build", "-ldflags=-s -w", "-o"])
            .arg(&exe)
            .arg("."));
        exe
    };
    match target {
        "elf" => {
            let a = c_exe(&["-O2", "-g"], "elf-g");
            let b = c_exe(&["-O2", "-g", "-gz=zlib"], "elf-gz");
            let c = c_exe(&["-O0", "-s"], "elf-stripped");
            vec![
                std::fs::read(a).unwrap(),
                std::fs::read(b).unwrap(),
                std::fs::read(c).unwrap(),
                std::fs::read(go_exe()).unwrap(),
            ]
        }
        "dwarf" => {
            let exe = c_exe(&["-O2", "-g", "-gdwarf-5"], "dw5");
            let parts: Vec<Vec<u8>> = [
                ".debug_info",
                ".debug_abbrev",
                ".debug_line",
                ".debug_str",
                ".debug_rnglists",
                ".debug_addr",
            ]
            .iter()
            .map(|s| section(&exe, s, dir))
            .collect();
            let mut seed = Vec::new();
            for p in &parts {
                seed.extend_from_slice(&(p.len().min(0xffff) as u16).to_le_bytes());
            }
            for p in &parts {
                seed.extend_from_slice(&p[..p.len().min(0xffff)]);
            }
            vec![seed]
        }
        "gopclntab" => vec![section(&go_exe(), ".gopclntab", dir)],
        _ => Vec::new(),
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
    let mut rng = Rng::new(1234);
    // Cheap mutations of every seed: flips, truncations, lying words, and the full mix.
    let mutators = [
        Mutator::new(&[Mutation::FlipBit]).times(8, 8),
        Mutator::new(&[Mutation::Truncate]).times(1, 1),
        Mutator::new(&[Mutation::RandomU64]).times(1, 1),
        Mutator::default(),
    ];
    for (name, target) in TARGETS {
        let dir = fixture_dir(&format!("fuzz-{name}"));
        let generated = generated_seeds(name, &dir);
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("fuzz-seeds")
            .join(name);
        std::fs::create_dir_all(&out).unwrap();
        for (i, s) in generated.iter().enumerate() {
            std::fs::write(out.join(format!("seed-{i}")), s).unwrap();
        }
        let seeds: Vec<Vec<u8>> = generated
            .into_iter()
            .chain(committed("corpus", name))
            .collect();
        assert!(!seeds.is_empty(), "{name}: empty seed corpus");
        for seed in committed("regressions", name).iter().chain(&seeds) {
            target(seed);
        }
        let rounds = if name == "elf" { 40 } else { 200 };
        for seed in &seeds {
            for r in 0..rounds {
                target(&mutators[r % mutators.len()].mutated(&mut rng, seed));
            }
        }
        eprintln!(
            "{name}: {} seeds replayed with {rounds} mutations each",
            seeds.len()
        );
    }
}
