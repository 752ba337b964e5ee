//! `cargo xtask <command>`: the one entry point for setting up, building, running, testing and
//! benchmarking the profiler on a fresh machine.
mod bench;
mod fuzz;
mod setup;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent): rust-src, bpf-linker, test tools.
    Setup {
        /// Also install the reference tools the tests use (gcc, llvm-19, Go toolchains).
        #[arg(long)]
        test_tools: bool,
    },
    /// Build the agent in release mode (the eBPF program is built by its build.rs).
    Build,
    /// Set up, build in release, and run the agent as root with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up everything and run the whole test suite.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot each kernel of the matrix under qemu with a static agent and workloads, and check
    /// what it profiled there (results in target/vm-matrix).
    VmTest {
        /// Kernels to boot.
        #[arg(long, value_delimiter = ',', default_value = vm::DEFAULT_KERNELS)]
        kernels: Vec<String>,
        /// Only boot and print the per-kernel lines; skip the host-side assertions.
        #[arg(long)]
        no_check: bool,
    },
    /// Run the fuzz targets (cargo-fuzz, nightly) of the symbolizer, the unwind-table compiler
    /// and the agent's parsers for a time budget each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all of elf, dwarf, gopclntab, kallsyms, demangle, eh_frame,
        /// eh_frame_elf, proc_maps, ring_records, go_runtime).
        targets: Vec<String>,
    },
    /// Measure overhead against `perf record` at 19, 99 and 999 Hz.
    Bench {
        /// Seconds of CPU-bound work per measured run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Frequencies to measure.
        #[arg(long, value_delimiter = ',', default_value = "19,99,999")]
        frequencies: Vec<u64>,
        /// Scenarios to run.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "overhead,churn"
        )]
        scenarios: Vec<bench::Scenario>,
        /// Churning host: short-lived processes started a second.
        #[arg(long, default_value_t = 200)]
        churn_rate: u64,
        /// Churning host: long-lived processes running throughout.
        #[arg(long, default_value_t = 200)]
        churn_long_lived: usize,
        /// Churning host: sampling frequency of both profilers.
        #[arg(long, default_value_t = 99)]
        churn_frequency: u64,
    },
}

/// Clippy with warnings as errors, for the host crates and for the eBPF crate on its own
/// target (which `--workspace` cannot build).
fn lint() -> Result<()> {
    util::cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    util::step("cargo +nightly clippy (profiler-ebpf, bpfel-unknown-none)");
    util::run(
        std::process::Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "-p",
                "profiler-ebpf",
                "--release",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            // A target dir of its own: the host build's artifacts are for another toolchain.
            .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
            .current_dir(util::workspace_root())
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "--cfg=bpf_target_arch=\"x86_64\"",
            ),
    )
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup { test_tools } => {
            setup::build_prerequisites()?;
            if test_tools {
                setup::test_tools()?;
            }
            Ok(())
        }
        Cmd::Build => {
            setup::build_prerequisites()?;
            util::cargo(&["build", "--release", "-p", "profiler-agent"])
        }
        Cmd::Run { args } => {
            setup::build_prerequisites()?;
            util::cargo(&["build", "--release", "-p", "profiler-agent"])?;
            util::run_agent(&args)
        }
        Cmd::Test { args } => {
            setup::build_prerequisites()?;
            setup::test_tools()?;
            lint()?;
            // Plain `cargo test` covers the default members; `--workspace` would build the eBPF crate for the host.
            let mut cargo_args = vec!["test"];
            cargo_args.extend(args.iter().map(String::as_str));
            util::cargo(&cargo_args)?;
            let kernels: Vec<String> = vm::DEFAULT_KERNELS.split(',').map(String::from).collect();
            vm::run(&kernels, true)
        }
        Cmd::VmTest { kernels, no_check } => {
            setup::build_prerequisites()?;
            setup::test_tools()?;
            vm::run(&kernels, !no_check)
        }
        Cmd::Fuzz { seconds, targets } => {
            setup::build_prerequisites()?;
            setup::test_tools()?;
            fuzz::run_targets(&targets, seconds)
        }
        Cmd::Bench {
            seconds,
            frequencies,
            scenarios,
            churn_rate,
            churn_long_lived,
            churn_frequency,
        } => {
            setup::build_prerequisites()?;
            setup::test_tools()?;
            util::cargo(&["build", "--release", "-p", "profiler-agent"])?;
            let churn = bench::ChurnShape {
                seconds,
                rate: churn_rate,
                long_lived: churn_long_lived,
                hz: churn_frequency,
            };
            bench::run(&scenarios, seconds, &frequencies, &churn)
        }
    }
}
