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
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()).context(
        "building the eBPF program; run `cargo xtask setup` if bpf-linker or rust-src is missing",
    )
}
