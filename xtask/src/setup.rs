//! Installs prerequisites, idempotently and with visible progress. `.ci/run` uses this same
//! code, so a fresh machine and a developer's machine go through one path.
use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::util::{output, run, step, workspace_root};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The toolchain that builds the eBPF crate (aya-build runs `rustup run nightly`).
const EBPF_TOOLCHAIN: &str = "nightly";

fn home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
}

/// rust-src for `-Z build-std=core`, and a bpf-linker on the same LLVM major as nightly rustc.
pub fn build_prerequisites() -> Result<()> {
    let toolchains =
        output(Command::new("rustup").args(["toolchain", "list"])).context("rustup is required")?;
    if !toolchains.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) {
        bail!("the `{EBPF_TOOLCHAIN}` toolchain is missing; install it with rustup (this project never runs `rustup update`)");
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .unwrap_or_default();
    if components.lines().any(|l| l.starts_with("rust-src")) {
        step("rust-src (nightly): present");
    } else {
        step("installing rust-src for nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }
    ensure_bpf_linker()
}

/// The libLLVM shipped inside the nightly toolchain, with its major version.
fn rustc_llvm() -> Result<(PathBuf, String, u32)> {
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .args(["--print", "sysroot"]),
    )
    .context("cannot run nightly rustc")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // e.g. libLLVM.so.22.1-rust-1.97.0-nightly
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            let major = rest
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .context("unexpected libLLVM name")?;
            return Ok((lib.join(&name), name, major));
        }
    }
    bail!("no libLLVM.so.* in {}", lib.display())
}

fn ensure_bpf_linker() -> Result<()> {
    let (llvm_file, llvm_name, major) = rustc_llvm()?;
    // bpf-linker bakes this directory into its RUNPATH, so it must outlive the build.
    let prefix = home().join(format!(".local/share/ebpf-profiler/llvm-{major}"));
    let libdir = prefix.join("lib");
    fs::create_dir_all(&libdir)?;
    for link in [libdir.join("libLLVM.so"), libdir.join(&llvm_name)] {
        if fs::read_link(&link).ok().as_deref() != Some(llvm_file.as_path()) {
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&llvm_file, &link)
                .with_context(|| format!("symlinking {}", link.display()))?;
        }
    }
    let working = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if working {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: present"));
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {major} (about a minute)"
    ));
    run(Command::new("cargo").env("LLVM_PREFIX", &prefix).args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
    ]))?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but does not start; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// Reference tools for the tests: gcc, llvm-19, Debian Go 1.19 and PyPI Go toolchains
/// (which also provide `go tool pprof`). One script serves xtask and the test suites.
pub fn test_tools() -> Result<()> {
    step("test tools: gcc, llvm-19, Go toolchains (idempotent)");
    let script = workspace_root().join("symbolizer/tests/support/ensure-tools.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("all")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{} failed", script.display());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        step(&format!("  {line}"));
    }
    Ok(())
}
