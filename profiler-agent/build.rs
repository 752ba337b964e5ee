//! Builds the eBPF object (with aya-build, on the nightly toolchain) and compiles profile.proto.
use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let protoc =
        protoc_bin_vendored::protoc_bin_path().context("no vendored protoc for this host")?;
    std::env::set_var("PROTOC", protoc);
    prost_build::compile_protos(&["proto/profile.proto"], &["proto/"])
        .context("compiling profile.proto")?;

    // aya-build only watches the eBPF crate's own directory; the no_std crates it links in
    // must trigger a rebuild too, or the embedded object silently goes stale.
    for dep in ["profiler-common", "profiler-unwind"] {
        println!(
            "cargo:rerun-if-changed={}/../{dep}/src",
            env!("CARGO_MANIFEST_DIR")
        );
        println!(
            "cargo:rerun-if-changed={}/../{dep}/Cargo.toml",
            env!("CARGO_MANIFEST_DIR")
        );
    }
    let ebpf = aya_build::Package {
        name: "profiler-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../profiler-ebpf"),
        ..Default::default()
    };
    quietly(|| aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())).context(
        "building the eBPF program; run `cargo xtask setup` if bpf-linker or rust-src is missing",
    )
}

/// Runs `build` with this script's stdout captured. aya-build relays every line of the nested
/// cargo build as a `cargo:warning`, about 40 lines on a first build; they are shown only if
/// the build fails. Every other `cargo:` directive (rerun-if-changed, …) is passed on.
fn quietly(build: impl FnOnce() -> Result<()>) -> Result<()> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::fd::AsRawFd as _;

    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let mut capture = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out_dir.join("ebpf-build.log"))
        .context("creating the eBPF build log")?;
    std::io::stdout().flush()?;
    // SAFETY: dup and dup2 on this process's own stdout and a file it just opened; the saved
    // descriptor is restored below before anything else writes to stdout.
    let saved = unsafe { libc::dup(1) };
    anyhow::ensure!(
        saved >= 0,
        "dup(stdout): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: as above; `capture` stays open until stdout is restored.
    let redirected = unsafe { libc::dup2(capture.as_raw_fd(), 1) };
    anyhow::ensure!(redirected >= 0, "dup2: {}", std::io::Error::last_os_error());
    let result = build();
    std::io::stdout().flush()?;
    // SAFETY: puts the saved stdout back and closes the copy.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    let mut text = String::new();
    capture.rewind()?;
    capture.read_to_string(&mut text)?;
    for line in text.lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(message) if result.is_err() => eprintln!("{message}"),
            Some(_) => {}
            None => println!("{line}"),
        }
    }
    result
}
