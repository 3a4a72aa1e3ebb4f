//! `tiflow`: the command-line tool for TI-flows.
//!
//! This file owns argument parsing, logging setup and exit codes only. Each
//! subcommand lives in its own module of the `ti_tools` library as an `Args`
//! struct and a `run` function; adding one is a variant in [`Command`] and an
//! arm in `main`.

use std::fmt::Display;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  runtime error (unreadable or malformed file, I/O failure)
  2  usage error (bad arguments)

Logging: -v info, -vv debug, -vvv trace, to stderr; RUST_LOG overrides.";

/// The tiflow command line.
#[derive(Debug, Parser)]
#[command(
    name = "tiflow",
    version,
    about = "TCP connections that survive middlebox failures (TI-flows)",
    after_help = EXIT_CODES,
    propagate_version = true
)]
struct Cli {
    /// More output: logs on stderr (-v info, -vv debug, -vvv trace); for
    /// `dump`, a hex dump of each packet too.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands. `up`, `status`, `fail`, `demo` and `bench` come later,
/// each as its own module in `ti_tools`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Print a pcap or pcapng file one line per packet, flow options decoded.
    #[command(after_help = EXIT_CODES)]
    Dump(ti_tools::dump::DumpArgs),
}

fn main() -> ExitCode {
    // Usage errors exit with 2, --help and --version with 0 (clap's codes).
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match &cli.command {
        Command::Dump(args) => finish("dump", ti_tools::dump::run(args, cli.verbose)),
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Reports a subcommand's failure as `tiflow NAME: error` and maps it to
/// exit code 1. A closed stdout (`| head`) is not a failure.
fn finish<T, E: Display + BrokenPipe>(name: &str, result: Result<T, E>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tiflow {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors that can say "the reader of our output went away".
trait BrokenPipe {
    fn is_broken_pipe(&self) -> bool;
}

impl BrokenPipe for ti_tools::DumpError {
    fn is_broken_pipe(&self) -> bool {
        ti_tools::DumpError::is_broken_pipe(self)
    }
}
