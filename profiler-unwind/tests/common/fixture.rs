//! Builds the C fixtures with gcc.

use std::path::{Path, PathBuf};
use std::process::Command;

/// C without frame pointers (gcc's -O2 default, spelled out).
pub const OMIT_FP: &[&str] = &["-O2", "-g", "-fomit-frame-pointer"];
/// No CFI at all, but frame pointers: the walker must bridge such code with the rbp chain.
pub const FP_NO_CFI: &[&str] = &[
    "-O2",
    "-fno-omit-frame-pointer",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
];
/// CFI only in `.debug_frame` (the C runtime still brings some `.eh_frame`).
pub const DEBUG_FRAME_ONLY: &[&str] = &[
    "-O2",
    "-g",
    "-fomit-frame-pointer",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
];
/// A Rust release build without frame pointers.
pub const RUST_NO_FP: &[&str] = &["-C", "opt-level=2", "-C", "force-frame-pointers=no"];

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Compiles each `(source, flags)` to an object and links them into `name`, in a directory of
/// its own under the target's test tmpdir.
pub fn build(name: &str, units: &[(&str, &[&str])]) -> PathBuf {
    build_linked(name, units, &[])
}

/// [`build`] with extra link flags (`-no-pie`, `-static`).
pub fn build_linked(name: &str, units: &[(&str, &[&str])], link_flags: &[&str]) -> PathBuf {
    let sources: Vec<(PathBuf, &[&str])> = units
        .iter()
        .map(|(source, flags)| (Path::new(FIXTURES).join(source), *flags))
        .collect();
    compile_and_link(&fixture_dir(name), name, &sources, link_flags)
}

/// Writes a source that a test generated (C, or assembly ending in `.s`) as `file_name` into
/// the directory of fixture `name` and builds it like [`build`].
pub fn build_generated(name: &str, file_name: &str, text: &str, flags: &[&str]) -> PathBuf {
    let dir = fixture_dir(name);
    let source = dir.join(file_name);
    std::fs::write(&source, text).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    compile_and_link(&dir, name, &[(source, flags)], &[])
}

fn fixture_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("unwind-fixtures")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn compile_and_link(
    dir: &Path,
    name: &str,
    sources: &[(PathBuf, &[&str])],
    link_flags: &[&str],
) -> PathBuf {
    let mut objects = Vec::new();
    for (source, flags) in sources {
        let obj = dir.join(source.with_extension("o").file_name().unwrap());
        run(Command::new("gcc")
            .args(*flags)
            .arg("-c")
            .arg(source)
            .arg("-o")
            .arg(&obj));
        objects.push(obj);
    }
    let exe = dir.join(name);
    run(Command::new("gcc")
        .args(&objects)
        .args(link_flags)
        .arg("-o")
        .arg(&exe));
    exe
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles a single-file Rust program with rustc (the one cargo uses).
pub fn build_rust(name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let dir = fixture_dir(name);
    let exe = dir.join(name);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    run(Command::new(rustc)
        .args(flags)
        .arg(Path::new(FIXTURES).join(source))
        .arg("-o")
        .arg(&exe));
    exe
}
