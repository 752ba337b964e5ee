//! Compiles tables for real binaries on this machine and checks their shape.

use profiler_common::unwind::{CFA_END_OF_STACK, CFA_NOT_COVERED, CFA_RSP};
use profiler_unwind::{compile_elf, CompileOptions, CompiledTable};
use std::path::Path;
use std::time::Instant;

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

fn compile_file(path: &str) -> (CompiledTable, std::time::Duration) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let start = Instant::now();
    let table =
        compile_elf(&data, &CompileOptions::default()).unwrap_or_else(|e| panic!("{path}: {e}"));
    let took = start.elapsed();
    eprintln!(
        "{path}: {} bytes of ELF, {} rows = {} bytes, compiled in {:?}; {:?}",
        data.len(),
        table.rows.len(),
        table.size_bytes(),
        took,
        table.stats
    );
    (table, took)
}

fn check_shape(table: &CompiledTable) {
    let rows = &table.rows;
    assert!(rows.len() > 100);
    assert!(
        rows.windows(2).all(|w| w[0].pc < w[1].pc),
        "rows sorted, no duplicate pcs"
    );
    assert!(
        rows.windows(2).all(|w| !w[0].same_rule(&w[1])),
        "equal neighbours merged"
    );
    assert_eq!(
        rows.last().unwrap().cfa_kind(),
        CFA_NOT_COVERED,
        "end sentinel"
    );
    assert_eq!(rows[0].pc, 0);
}

#[test]
fn libc_table() {
    let (table, _) = compile_file(LIBC);
    check_shape(&table);
    // Most rows are plain rsp-based rules; a few are not expressible (signal trampoline).
    let rsp = table
        .rows
        .iter()
        .filter(|r| r.cfa_kind() == CFA_RSP)
        .count();
    assert!(rsp * 2 > table.rows.len());
    assert!(table.stats.unsupported.total() < 100, "{:?}", table.stats);
    assert_eq!(table.stats.bad_fdes, 0);
    // Function entry anywhere: CFA = rsp + 8 (only the return address pushed).
    let sym = symbol_vaddr(LIBC, "qsort_r");
    let row = table.lookup(sym);
    assert_eq!((row.cfa_kind(), row.cfa_offset), (CFA_RSP, 8), "{row:?}");
}

#[test]
fn own_test_binary_table() {
    // This test executable: Rust std without frame pointers, plus the C runtime's _start,
    // whose CFI marks the end of the stack.
    let exe = std::env::current_exe().unwrap();
    let (table, _) = compile_file(exe.to_str().unwrap());
    check_shape(&table);
    let start = symbol_vaddr(exe.to_str().unwrap(), "_start");
    assert_eq!(table.lookup(start + 4).cfa_kind(), CFA_END_OF_STACK);
}

#[test]
fn large_binaries() {
    // Sizes and timings for the report; whichever of these exist, plus any listed in
    // UNWIND_TABLE_BINARIES (colon-separated).
    let extra = std::env::var("UNWIND_TABLE_BINARIES").unwrap_or_default();
    let defaults = [
        "/work/main/target/release/profiler-agent",
        "/usr/bin/perf",
        "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
    ];
    for path in defaults
        .into_iter()
        .chain(extra.split(':').filter(|p| !p.is_empty()))
    {
        if Path::new(path).exists() {
            let (table, _) = compile_file(path);
            check_shape(&table);
        }
    }
}

/// A symbol's address from `nm` (dynamic symbols for shared objects).
fn symbol_vaddr(path: &str, name: &str) -> u64 {
    for args in [&["-D", "--defined-only"][..], &["--defined-only"][..]] {
        let out = std::process::Command::new("nm")
            .args(args)
            .arg(path)
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(_), Some(sym)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if sym == name || sym.starts_with(&format!("{name}@")) {
                return u64::from_str_radix(addr, 16).unwrap();
            }
        }
    }
    panic!("{name} not in {path}");
}
