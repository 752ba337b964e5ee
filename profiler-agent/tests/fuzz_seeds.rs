//! Replays each of the agent's fuzz targets (`profiler-agent/fuzz`) over its seeds, a few
//! hundred deterministic mutations of every seed, and the crash reproducers saved in
//! `fuzz/regressions/<target>/`, through the very entry points the fuzz targets call (the
//! fuzz crate's `src/lib.rs`, compiled here as a module). Also writes the generated binary
//! seeds to `target/tmp/fuzz-seeds/<target>/` for `cargo fuzz run`; they are never committed.
//! Needs no root and no nightly.

mod common;
#[path = "../fuzz/src/lib.rs"]
mod fuzzing;

use std::collections::HashSet;
use std::mem::size_of;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection};
use profiler_agent::bpf::ring;
use profiler_agent::enrich::go_runtime;
use profiler_agent::process::maps;
use profiler_common::{
    ProcessEvent, RawSample, CONTEXT_FLAG_IDS, CONTEXT_FLAG_TRUNCATED, CONTEXT_SOURCE_GO,
    CONTEXT_SOURCE_OTEL, EVENT_EXEC, EVENT_EXIT, EVENT_NEW_PID, EVENT_UNWIND_MISS, MAX_LABELS,
    MAX_STACK_DEPTH, SAMPLE_FLAG_USER_STACK_TRUNCATED,
};
use test_support::{Mutation, Mutator, Rng};

type Target = fn(&[u8]);

/// (name, entry point, mutations per seed).
const TARGETS: [(&str, Target, usize); 3] = [
    ("proc_maps", fuzzing::proc_maps, 200),
    ("ring_records", fuzzing::ring_records, 300),
    ("go_runtime", fuzzing::go_runtime, 60),
];

/// Live `/proc/*/maps` files taken as seeds, besides our own.
const LIVE_MAPS: usize = 12;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// This process's maps and those of a few others (distinct texts only).
fn live_maps() -> Vec<Vec<u8>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for path in std::iter::once(PathBuf::from("/proc/self/maps")).chain(
        pids.iter()
            .map(|p| PathBuf::from(format!("/proc/{p}/maps"))),
    ) {
        if out.len() > LIVE_MAPS {
            break;
        }
        // Kernel threads have empty maps; exited processes none.
        match std::fs::read(&path) {
            Ok(text) if !text.is_empty() && seen.insert(text.clone()) => out.push(text),
            _ => {}
        }
    }
    out
}

/// A sample record laid out the way the eBPF program writes it: field by field, in
/// declaration order, little-endian.
struct Sample<'a> {
    user: &'a [u64],
    kernel: &'a [u64],
    /// Lengths as written, which need not match the stacks.
    lens: Option<(u32, u32)>,
    flags: u32,
    comm: &'a [u8],
    source: u8,
    context_flags: u8,
    n_labels: Option<u8>,
    labels: &'a [(&'a [u8], &'a [u8])],
}

impl Sample<'_> {
    fn plain(user: &[u64]) -> Sample<'_> {
        Sample {
            user,
            kernel: &[0xffff_ffff_8100_1234, 0xffff_ffff_8100_5678],
            lens: None,
            flags: 0,
            comm: b"worker-1",
            source: 0,
            context_flags: 0,
            n_labels: None,
            labels: &[],
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0x0000_1234_5678_9abcu64.to_le_bytes()); // time_ns
        let (user_len, kernel_len) = self
            .lens
            .unwrap_or((self.user.len() as u32, self.kernel.len() as u32));
        for v in [4242u32, 4243, 1, user_len, kernel_len, self.flags] {
            b.extend_from_slice(&v.to_le_bytes()); // pid tid cpu user_len kernel_len flags
        }
        let mut comm = [0u8; 16];
        comm[..self.comm.len()].copy_from_slice(self.comm);
        b.extend_from_slice(&comm);
        for stack in [self.user, self.kernel] {
            for i in 0..MAX_STACK_DEPTH {
                b.extend_from_slice(&stack.get(i).copied().unwrap_or(0).to_le_bytes());
            }
        }
        let n_labels = self.n_labels.unwrap_or(self.labels.len() as u8);
        b.extend_from_slice(&[self.source, self.context_flags, 1, n_labels, 0, 0, 0, 0]);
        b.extend((0..16).map(|i| 0xa0 + i)); // trace_id
        b.extend((0..8).map(|i| 0xb0 + i)); // span_id
        for i in 0..MAX_LABELS {
            let (key, value) = self.labels.get(i).copied().unwrap_or((b"", b""));
            let (mut k, mut v) = ([0u8; 16], [0u8; 48]);
            k[..key.len().min(16)].copy_from_slice(&key[..key.len().min(16)]);
            v[..value.len().min(48)].copy_from_slice(&value[..value.len().min(48)]);
            b.extend_from_slice(&[key.len() as u8, value.len() as u8, 0, 0, 0, 0, 0, 0]);
            b.extend_from_slice(&k);
            b.extend_from_slice(&v);
        }
        assert_eq!(b.len(), size_of::<RawSample>(), "sample layout out of date");
        b
    }
}

fn event(kind: u32, pid: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    for v in [kind, pid, pid + 1, 0] {
        b.extend_from_slice(&v.to_le_bytes()); // kind pid tid pad
    }
    assert_eq!(
        b.len(),
        size_of::<ProcessEvent>(),
        "event layout out of date"
    );
    b
}

/// Mode byte (see `fuzzing::ring_records`) plus record.
fn ring_seeds() -> Vec<Vec<u8>> {
    let user = [0x5555_5555_1234u64, 0x5555_5555_2345, 0x7f00_0000_1000];
    let go_labels: &[(&[u8], &[u8])] = &[(b"region", b"eu-west-1"), (b"k", b"v"), (b"k", b"dup")];
    let samples = [
        Sample::plain(&user),
        Sample {
            source: CONTEXT_SOURCE_GO,
            labels: go_labels,
            ..Sample::plain(&user)
        },
        Sample {
            source: CONTEXT_SOURCE_OTEL,
            context_flags: CONTEXT_FLAG_IDS,
            ..Sample::plain(&user)
        },
        // Lengths and counts past every array, a non-canonical user address, a full comm.
        Sample {
            user: &[0x5555_5555_1234, 0xffff_8000_0000_0000, 0x10],
            lens: Some((1000, u32::MAX)),
            flags: SAMPLE_FLAG_USER_STACK_TRUNCATED,
            comm: b"0123456789abcdef",
            source: CONTEXT_SOURCE_GO,
            context_flags: CONTEXT_FLAG_TRUNCATED,
            n_labels: Some(200),
            labels: &[(&[0xff; 20], &[0xc3; 60])],
            ..Sample::plain(&[])
        },
    ];
    let mut seeds = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let mut record = vec![(i as u8 & 1) << 1];
        record.extend(s.bytes());
        // Ring records are padded to 8 bytes; decoding must ignore the padding.
        record.extend([0xee; 4]);
        seeds.push(record);
    }
    for kind in [EVENT_EXEC, EVENT_EXIT, EVENT_NEW_PID, EVENT_UNWIND_MISS, 99] {
        seeds.push([&[1u8][..], &event(kind, 4242)].concat());
    }
    for s in &seeds[..samples.len()] {
        assert!(ring::decode(&s[1..]).is_some());
    }
    seeds
}

/// C binaries shaped like Go ones where the agent looks: a 1.18+ `.go.buildinfo` (version
/// inline) with a static-TLS `runtime.tlsg`; and a pre-1.18 one (version behind pointers).
fn synthetic_go_elves(dir: &Path) -> Vec<PathBuf> {
    const INLINE: &str = r#"
__attribute__((section(".go.buildinfo"), used, aligned(16)))
static const unsigned char buildinfo[64] =
    "\xff Go buildinf:\x08\x02" "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
    "\x09" "go1.21.13" "\x00";
__thread long tlsg __asm__("runtime.tlsg");
__thread char tls_block[200] __attribute__((aligned(64)));
int main(void) { tlsg = 1; tls_block[3] = 2; return (int)tlsg + tls_block[3] - 3; }
"#;
    const POINTERS: &str = r#"
struct gostring { const char *p; unsigned long n; };
static const char version[] = "go1.16.15";
static const struct gostring header = { version, sizeof version - 1 };
struct buildinfo {
    unsigned char magic[14], ptr_size, flags;
    const struct gostring *version, *modinfo;
    unsigned char pad[16];
};
__attribute__((section(".go.buildinfo"), used))
static const struct buildinfo bi = { "\xff Go buildinf:", 8, 0, &header, 0, {0} };
int main(void) { return 0; }
"#;
    [
        ("inline", INLINE, "-pie"),
        ("pointers", POINTERS, "-no-pie"),
    ]
    .iter()
    .map(|(name, source, link)| {
        let src = dir.join(format!("{name}.c"));
        std::fs::write(&src, source).unwrap();
        let exe = dir.join(name);
        let out = Command::new("gcc")
            .args(["-O0", "-w", link, "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .expect("gcc must be installed (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "gcc {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    })
    .collect()
}

fn go_seeds() -> Vec<Vec<u8>> {
    let dir = tmp().join("fuzz-go-runtime");
    std::fs::create_dir_all(&dir).unwrap();
    let mut exes = synthetic_go_elves(&dir);
    // Real Go: the oldest toolchain (map labels) and the newest with cgo (static TLS).
    exes.push(common::build_go("1.19", "offsets", &dir, &[]));
    exes.push(common::build_go_cgo("1.27.3", "cgo_chain", &dir));
    exes.push("/usr/bin/true".into());
    let seeds: Vec<Vec<u8>> = exes.iter().map(|p| std::fs::read(p).unwrap()).collect();
    // The seeds reach the paths they are for.
    let read = |seed: &[u8]| {
        let obj = object::File::parse(seed).unwrap();
        (
            go_runtime::go_version(&obj),
            go_runtime::static_tls_offset(&obj, "runtime.tlsg"),
        )
    };
    let (inline, tls) = read(&seeds[0]);
    assert_eq!(inline.as_deref(), Some("go1.21.13"));
    assert!(tls.is_some_and(|o| o < 0), "runtime.tlsg at {tls:?}");
    assert_eq!(read(&seeds[1]).0.as_deref(), Some("go1.16.15"));
    assert!(read(&seeds[2]).0.is_some_and(|v| v.starts_with("go1.19")));
    let (cgo, cgo_tls) = read(&seeds[3]);
    assert!(cgo.is_some_and(|v| v.starts_with("go1.27")));
    assert!(cgo_tls.is_some(), "cgo binary without static TLS");
    seeds
}

/// Regions of an ELF seed worth most of the mutations: the program headers (PT_TLS) and
/// `.go.buildinfo`.
fn hot_regions(target: &str, seed: &[u8]) -> Vec<Range<usize>> {
    if target != "go_runtime" {
        return Vec::new();
    }
    let mut out = Vec::new();
    out.push(0..seed.len().min(1024));
    if let Ok(obj) = object::File::parse(seed) {
        if let Some((start, len)) = obj
            .section_by_name(".go.buildinfo")
            .and_then(|s| s.file_range())
        {
            out.push(start as usize..(start + len.min(256)) as usize);
        }
    }
    out
}

fn committed(sub: &str, target: &str) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(fuzz_dir().join(sub).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".keep"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn seed_corpora_and_regressions_replay() {
    let mut rng = Rng::new(2718);
    // Cheap mutations of every seed: flips, truncations, lying words, and the full mix.
    let mutators = [
        Mutator::new(&[Mutation::FlipBit]).times(8, 8),
        Mutator::new(&[Mutation::Truncate]).times(1, 1),
        Mutator::new(&[Mutation::InterestingU32, Mutation::RandomU64]).word_align(4),
        Mutator::default(),
    ];
    for (name, target, rounds) in TARGETS {
        let generated = match name {
            "proc_maps" => live_maps(),
            "ring_records" => ring_seeds(),
            "go_runtime" => go_seeds(),
            _ => unreachable!(),
        };
        let out = tmp().join("fuzz-seeds").join(name);
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
        if name == "proc_maps" {
            // The live maps parse, and so do the committed edge cases (all but the malformed).
            let parsed = seeds
                .iter()
                .filter(|s| maps::parse_maps(&String::from_utf8_lossy(s)).is_ok())
                .count();
            assert!(
                parsed > seeds.len() / 2,
                "{parsed} of {} parse",
                seeds.len()
            );
        }
        let regressions = committed("regressions", name);
        for seed in regressions.iter().chain(&seeds) {
            target(seed);
        }
        for seed in &seeds {
            let hot = hot_regions(name, seed);
            for r in 0..rounds {
                let mutator = &mutators[r % mutators.len()];
                let mut input = seed.clone();
                if (r / mutators.len()) % 3 != 2 && !hot.is_empty() {
                    let region = hot[r % hot.len()].clone();
                    mutator.mutate_in(&mut rng, &mut input, region);
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
