//! Compiles tables for real binaries on this machine and checks their shape, and for a large
//! generated binary whose every CFI rule is known checks each rule.

mod common;

use common::{binutils, fixture};
use profiler_common::unwind::{
    CFA_END_OF_STACK, CFA_NOT_COVERED, CFA_RSP, RBP_AT_CFA, RBP_UNCHANGED,
};
use profiler_unwind::{compile_elf, CompileOptions, CompiledTable};
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

fn compile_file(path: &str) -> (CompiledTable, std::time::Duration) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let start = Instant::now();
    let table = compile_elf(&data, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("{path}: {}", error_chain(&e)));
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

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        write!(text, ": {cause}").unwrap();
        source = cause.source();
    }
    text
}

/// The libc this test process runs with, as `/proc/self/maps` names it.
fn mapped_libc() -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            std::path::Path::new(p)
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("libc.so"))
        })
        .unwrap_or_else(|| panic!("no libc.so in /proc/self/maps:\n{maps}"))
        .to_owned()
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
    let libc = mapped_libc();
    let (table, _) = compile_file(&libc);
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
    let sym = symbol_vaddr(&libc, "qsort_r");
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

/// Functions in the generated binary.
const GENERATED_FUNCTIONS: usize = 40_000;

/// Frame size (bytes below the saved rbp) of generated function `i`: multiples of 16 up to
/// 4800, and every 1000th a 256 KiB frame, beyond what a row stores unscaled.
fn generated_frame(i: usize) -> u64 {
    if i % 1000 == 999 {
        256 << 10
    } else {
        16 * (1 + i as u64 % 300)
    }
}

/// Assembly for `GENERATED_FUNCTIONS` functions `f<i>`, each `push %rbp; sub $frame, %rsp;
/// call f<i-1>; add $frame, %rsp; pop %rbp; ret` with hand-written CFI, and a label
/// `f<i>.<point>` (a local symbol) wherever the CFA rule changes.
fn generated_assembly() -> String {
    let mut asm = String::from("\t.text\n");
    for i in 0..GENERATED_FUNCTIONS {
        let frame = generated_frame(i);
        let call = if i == 0 {
            String::new()
        } else {
            format!("\tcall f{}\n", i - 1)
        };
        write!(
            asm,
            "\t.globl f{i}\n\t.type f{i}, @function\nf{i}:\n\t.cfi_startproc\n\
             \tpushq %rbp\nf{i}.pushed:\n\t.cfi_def_cfa_offset 16\n\t.cfi_offset %rbp, -16\n\
             \tsubq ${frame}, %rsp\nf{i}.framed:\n\t.cfi_def_cfa_offset {cfa}\n\
             {call}\taddq ${frame}, %rsp\nf{i}.unframed:\n\t.cfi_def_cfa_offset 16\n\
             \tpopq %rbp\nf{i}.popped:\n\t.cfi_def_cfa_offset 8\n\t.cfi_restore %rbp\n\
             \tret\n\t.cfi_endproc\n\t.size f{i}, .-f{i}\n",
            cfa = 16 + frame,
        )
        .unwrap();
    }
    // main calls the last one, so the chain is a real program.
    write!(
        asm,
        "\t.globl main\n\t.type main, @function\nmain:\n\t.cfi_startproc\n\
         \tsubq $8, %rsp\n\t.cfi_def_cfa_offset 16\n\tcall f{}\n\
         \txorl %eax, %eax\n\taddq $8, %rsp\n\t.cfi_def_cfa_offset 8\n\tret\n\
         \t.cfi_endproc\n\t.size main, .-main\n\t.section .note.GNU-stack,\"\",@progbits\n",
        GENERATED_FUNCTIONS - 1
    )
    .unwrap();
    asm
}

/// The generated binary, assembled and linked once per test process (the tests using it run
/// in parallel).
fn generated_binary() -> &'static str {
    static EXE: OnceLock<String> = OnceLock::new();
    EXE.get_or_init(|| {
        let asm = generated_assembly();
        let exe = fixture::build_generated("tables-generated", "generated.s", &asm, &[]);
        exe.to_str().unwrap().to_owned()
    })
}

#[test]
fn generated_binary_rules_match_its_cfi() {
    let exe = generated_binary();
    let (table, _) = compile_file(exe);
    check_shape(&table);
    assert!(table.stats.fdes >= GENERATED_FUNCTIONS, "{:?}", table.stats);
    assert_eq!(table.stats.bad_fdes, 0);
    assert_eq!(table.stats.unsupported.total(), 0, "{:?}", table.stats);
    // Entry, after the push (and the sub's first byte), after the sub, after the add, the
    // pop's byte, after the pop.
    let sym = binutils::symbol_addresses(exe);
    let at =
        |name: String| -> u64 { *sym.get(&name).unwrap_or_else(|| panic!("{name} not in nm")) };
    let mut checked = 0;
    for i in 0..GENERATED_FUNCTIONS {
        let framed = 16 + generated_frame(i);
        let expect = [
            (at(format!("f{i}")), 8, RBP_UNCHANGED, 0),
            (at(format!("f{i}.pushed")), 16, RBP_AT_CFA, -2),
            (at(format!("f{i}.framed")) - 1, 16, RBP_AT_CFA, -2),
            (at(format!("f{i}.framed")), framed, RBP_AT_CFA, -2),
            (at(format!("f{i}.unframed")) - 1, framed, RBP_AT_CFA, -2),
            (at(format!("f{i}.unframed")), 16, RBP_AT_CFA, -2),
            (at(format!("f{i}.popped")) - 1, 16, RBP_AT_CFA, -2),
            (at(format!("f{i}.popped")), 8, RBP_UNCHANGED, 0),
        ];
        for (vaddr, cfa, rbp_kind, rbp_offset) in expect {
            let row = table.lookup(vaddr);
            let got = (
                row.cfa_kind(),
                row.cfa_offset_bytes(),
                row.rbp_kind(),
                row.rbp_offset,
            );
            assert_eq!(
                got,
                (CFA_RSP, cfa, rbp_kind, rbp_offset),
                "f{i} at {vaddr:#x}: {row:?}"
            );
            checked += 1;
        }
    }
    // ~4 rows per function (the entry rule merges with the previous function's last).
    assert!(
        table.rows.len() >= 4 * GENERATED_FUNCTIONS,
        "{} rows",
        table.rows.len()
    );
    eprintln!("{checked} addresses checked");
}

#[test]
fn large_binaries() {
    // Sizes and timings for the report: the generated binary, libc, this test executable,
    // plus any listed in UNWIND_TABLE_BINARIES (colon-separated; each must exist).
    let exe = std::env::current_exe().unwrap();
    let mut paths = vec![
        generated_binary().to_owned(),
        mapped_libc(),
        exe.to_str().unwrap().to_owned(),
    ];
    let extra = std::env::var("UNWIND_TABLE_BINARIES").unwrap_or_default();
    for path in extra.split(':').filter(|p| !p.is_empty()) {
        assert!(
            std::path::Path::new(path).is_file(),
            "{path}, listed in UNWIND_TABLE_BINARIES, is not a file"
        );
        paths.push(path.to_owned());
    }
    for path in &paths {
        let (table, _) = compile_file(path);
        check_shape(&table);
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
