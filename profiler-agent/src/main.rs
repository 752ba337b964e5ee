//! profiler-agent: parses the flags, sets up logging and the runtime, and hands over to
//! [`profiler_agent::agent::run`].
use std::process::ExitCode;

use clap::Parser as _;
use tracing::error;

use profiler_agent::config::{Args, Config};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config: Config = Args::parse().into();
    // One thread is plenty for draining the ring; symbolization has its own thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(profiler_agent::agent::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "profiler-agent failed");
            ExitCode::FAILURE
        }
    }
}
