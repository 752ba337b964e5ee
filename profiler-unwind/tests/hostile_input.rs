//! Mutated and truncated `.eh_frame` and ELF input: every result is an error or a well-formed
//! table, never a panic, and never more rows than allowed.

mod common;

use object::{Object, ObjectSection};
use profiler_common::unwind::CFA_NOT_COVERED;
use profiler_unwind::{
    compile_cfi, compile_eh_frame, compile_elf, CfiSection, CompileOptions, CompiledTable, Error,
    SectionAddrs,
};
use test_support::{Mutator, Rng};

/// `.eh_frame` bytes and the addresses its pointers are relative to.
fn eh_frame_of(path: &str) -> (Vec<u8>, SectionAddrs) {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let sec = file.section_by_name(".eh_frame").unwrap();
    let addrs = SectionAddrs {
        eh_frame: sec.address(),
        text: file.section_by_name(".text").map(|s| s.address()),
        got: file.section_by_name(".got").map(|s| s.address()),
        code: None,
    };
    (sec.data().unwrap().to_vec(), addrs)
}

/// Bit flips, interesting bytes and words, truncation, zeroed tails, duplicated chunks and
/// inserted bytes: one to four per case.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    Mutator::default().mutated(rng, input)
}

fn check_table(table: &CompiledTable, opts: &CompileOptions) {
    assert!(table.rows.len() <= opts.max_rows);
    assert!(table.rows.windows(2).all(|w| w[0].pc < w[1].pc));
    if let Some(last) = table.rows.last() {
        assert_eq!(last.cfa_kind(), CFA_NOT_COVERED);
    }
}

fn fuzz_eh_frame(path: &str, iterations: usize, seed: u64) -> (usize, usize) {
    let (data, addrs) = eh_frame_of(path);
    let opts = CompileOptions { max_rows: 5000 };
    let mut rng = Rng::new(seed);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..iterations {
        let input = mutate(&mut rng, &data);
        let mut addrs = addrs.clone();
        if rng.one_in(8) {
            addrs.eh_frame = rng.next_u64();
        }
        match compile_eh_frame(&input, &addrs, &opts) {
            Ok(table) => {
                check_table(&table, &opts);
                ok += 1;
            }
            Err(_) => err += 1,
        }
    }
    (ok, err)
}

#[test]
fn mutated_eh_frame_of_fixture() {
    let exe = common::fixture::build(
        "chain-hostile",
        &[("chain_main.c", &["-O2"]), ("chain_middle.c", &["-O2"])],
    );
    let (ok, err) = fuzz_eh_frame(exe.to_str().unwrap(), 20_000, 1);
    eprintln!("fixture: {ok} ok, {err} errors");
    assert!(ok > 0 && err > 0);
}

#[test]
fn mutated_eh_frame_of_system_binary() {
    let (ok, err) = fuzz_eh_frame("/usr/bin/true", 3000, 2);
    eprintln!("/usr/bin/true: {ok} ok, {err} errors");
}

#[test]
fn mutated_debug_frame() {
    let units: &[(&str, &[&str])] = &[
        ("chain_main.c", common::fixture::DEBUG_FRAME_ONLY),
        ("chain_middle.c", common::fixture::DEBUG_FRAME_ONLY),
    ];
    let exe = common::fixture::build("chain-hostile-debug-frame", units);
    let data = std::fs::read(exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let section = file
        .section_by_name(".debug_frame")
        .unwrap()
        .data()
        .unwrap()
        .to_vec();
    let opts = CompileOptions { max_rows: 5000 };
    let clean = compile_cfi(
        &section,
        CfiSection::DebugFrame,
        &SectionAddrs::default(),
        &opts,
    )
    .unwrap();
    assert!(clean.rows.len() > 5);
    let mut rng = Rng::new(5);
    let mut ok = 0;
    for _ in 0..10_000 {
        if let Ok(table) = compile_cfi(
            &mutate(&mut rng, &section),
            CfiSection::DebugFrame,
            &SectionAddrs::default(),
            &opts,
        ) {
            check_table(&table, &opts);
            ok += 1;
        }
    }
    assert!(ok > 0);
}

#[test]
fn mutated_elf() {
    let exe = common::fixture::build(
        "chain-hostile-elf",
        &[("chain_main.c", &["-O2"]), ("chain_middle.c", &["-O2"])],
    );
    let data = std::fs::read(exe).unwrap();
    let opts = CompileOptions::default();
    let mut rng = Rng::new(3);
    for _ in 0..3000 {
        if let Ok(table) = compile_elf(&mutate(&mut rng, &data), &opts) {
            check_table(&table, &opts);
        }
    }
}

#[test]
fn garbage_and_limits() {
    let mut rng = Rng::new(4);
    let opts = CompileOptions::default();
    for len in [0usize, 1, 4, 7, 8, 64, 4096] {
        let bytes = rng.bytes(len);
        let _ = compile_eh_frame(&bytes, &SectionAddrs::default(), &opts);
        let _ = compile_elf(&bytes, &opts);
    }
    // The row cap holds on real input.
    let (data, addrs) = eh_frame_of("/lib/x86_64-linux-gnu/libc.so.6");
    let small = CompileOptions { max_rows: 1000 };
    assert!(matches!(
        compile_eh_frame(&data, &addrs, &small),
        Err(Error::TooManyRows { limit: 1000 })
    ));
    // An executable range that excludes most FDEs drops them instead of failing.
    let full = compile_eh_frame(&data, &addrs, &opts).unwrap();
    let code = full.pc_base..full.pc_base + 0x10000;
    let part = compile_eh_frame(
        &data,
        &SectionAddrs {
            code: Some(code),
            ..addrs
        },
        &opts,
    )
    .unwrap();
    assert!(part.stats.fdes_outside_code > 0);
    assert!(part.rows.len() < full.rows.len() / 4);
}

/// `.eh_frame` bytes by hand: one CIE padded with `cie_padding` DW_CFA_nops, then `fdes`
/// FDEs of 16 bytes each, back to back from 0x1000.
fn synthetic_eh_frame(cie_padding: usize, fdes: usize) -> Vec<u8> {
    let mut cie = vec![0, 0, 0, 0, 1, 0]; // CIE id 0, version 1, augmentation ""
    cie.extend_from_slice(&[1, 0x78, 16]); // code align 1, data align -8, RA = r16
    cie.extend_from_slice(&[0x0c, 7, 8, 0x90, 1]); // def_cfa rsp+8; r16 at cfa-8
    cie.resize(cie.len() + cie_padding, 0);
    while (cie.len() + 4) % 8 != 0 {
        cie.push(0);
    }
    let mut out = (cie.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&cie);
    for i in 0..fdes {
        let here = out.len();
        let mut fde = ((here + 4) as u32).to_le_bytes().to_vec(); // back to the CIE at 0
        fde.extend_from_slice(&(0x1000 + 16 * i as u64).to_le_bytes());
        fde.extend_from_slice(&16u64.to_le_bytes());
        fde.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&(fde.len() as u32).to_le_bytes());
        out.extend_from_slice(&fde);
    }
    out
}

#[test]
fn oversized_cie_cannot_make_compiling_quadratic() {
    let opts = CompileOptions::default();
    let fine = compile_eh_frame(
        &synthetic_eh_frame(100, 50),
        &SectionAddrs::default(),
        &opts,
    )
    .unwrap();
    assert_eq!((fine.stats.fdes, fine.stats.bad_fdes), (50, 0));
    assert_eq!(fine.rows.len(), 2, "one merged rule and the end sentinel");
    // 20k FDEs sharing a 64 KiB CIE would mean 1.3G instructions evaluated.
    let start = std::time::Instant::now();
    let hostile = compile_eh_frame(
        &synthetic_eh_frame(64 << 10, 20_000),
        &SectionAddrs::default(),
        &opts,
    )
    .unwrap();
    assert_eq!(
        (hostile.stats.fdes, hostile.stats.bad_fdes),
        (20_000, 20_000)
    );
    assert!(hostile.rows.is_empty());
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
