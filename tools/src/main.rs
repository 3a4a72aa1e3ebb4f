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

Logging: -v info, -vv debug, -vvv trace, to stderr; RUST_LOG overrides.
`tiflow up` logs at info without -v (connections, resumes, lost flows).";

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

/// The subcommands, each its own module in `ti_tools`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Print a pcap or pcapng file one line per packet, flow options decoded.
    #[command(after_help = EXIT_CODES)]
    Dump(ti_tools::dump::DumpArgs),
    /// Run a TI-flow stack on a TUN device and forward ports through it, so
    /// unmodified programs get TCP connections that survive middlebox failures.
    #[command(after_help = ti_tools::up::UP_HELP)]
    Up(ti_tools::up::UpArgs),
    /// Show the flows of a running `tiflow up` (TIFID, mode, peer, bytes, resumes);
    /// `--watch` redraws it live.
    #[command(after_help = CONTROL_EXIT_CODES)]
    Status(ti_tools::control::StatusArgs),
    /// Abandon the TCP connection of a TI-flow (or all) of a running `tiflow up`,
    /// as if a middlebox had killed it: the flow resumes on a new one.
    #[command(after_help = CONTROL_EXIT_CODES)]
    Fail(ti_tools::control::FailArgs),
    /// Remove what a `tiflow up` that died (SIGKILL, crash) left on the host:
    /// its nftables table, tagged iptables rules, ip_forward as it found it.
    Down(ti_tools::down::DownArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    /// for `tiflow`, e.g. `tiflow completions bash > /etc/bash_completion.d/tiflow`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page of `tiflow` (roff), or with `--dir DIR` write the
    /// pages of `tiflow` and each subcommand there (tiflow.1, tiflow-up.1, ...).
    Man {
        /// Write every page into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Show a TCP conversation surviving a NAT middlebox that loses its state,
    /// next to plain TCP (builds its own network namespaces; needs root).
    #[command(after_help = ti_tools::demo::DEMO_HELP)]
    Demo(ti_tools::demo::DemoArgs),
    /// Measure connect, reconnect and bulk throughput, legacy vs TI, over TUN
    /// devices in network namespaces with emulated RTTs, or recovery after
    /// middlebox faults, TI-flows vs plain TCP (needs root); writes CSV files
    /// and SVG plots.
    #[command(after_help = ti_tools::bench::BENCH_HELP)]
    Bench(ti_tools::bench::BenchArgs),
}

fn main() -> ExitCode {
    // Usage errors exit with 2, --help and --version with 0 (clap's codes).
    let cli = match with_config_file(std::env::args_os().collect()) {
        Ok(argv) => Cli::parse_from(argv),
        Err(message) => usage_error("up", &message),
    };
    // A daemon's operator wants its flows' resumes and losses by default.
    let daemon = matches!(cli.command, Command::Up(_));
    init_tracing(cli.verbose.max(u8::from(daemon)));
    // Before any stack runs: socket buffers commit memory only as traffic
    // touches them, and go back to the system when a connection closes.
    ti_stack::memory::map_large_allocations();
    match &cli.command {
        Command::Dump(args) => finish("dump", ti_tools::dump::run(args, cli.verbose)),
        Command::Up(args) => {
            if let Err(message) = args.validate() {
                usage_error("up", &message);
            }
            finish("up", ti_tools::up::run(args))
        }
        Command::Status(args) => finish("status", ti_tools::control::run_status(args)),
        Command::Fail(args) => finish("fail", ti_tools::control::run_fail(args)),
        Command::Demo(args) => finish("demo", ti_tools::demo::run(args)),
        Command::Down(args) => finish("down", ti_tools::down::run(args)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "tiflow",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man { dir } => finish("man", man_pages(dir.as_deref())),
        Command::Bench(args) => finish("bench", ti_tools::bench::run(args)),
    }
}

const CONTROL_EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  runtime error (no `tiflow up` answers at the control socket, unknown TIFID)
  2  usage error (bad arguments)";

/// The man pages, from the CLI definition: `tiflow`'s on standard output,
/// or every page into `dir`.
fn man_pages(dir: Option<&std::path::Path>) -> std::io::Result<()> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)
        }
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
    }
}

impl BrokenPipe for std::io::Error {
    fn is_broken_pipe(&self) -> bool {
        self.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// `tiflow up --config FILE`: the file's settings as flags before the
/// command line's (see `ti_tools::up::config_file`).
fn with_config_file(argv: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>, String> {
    use clap::CommandFactory;
    let Some(at) = argv.iter().skip(1).position(|a| a == "up").map(|i| i + 2) else {
        return Ok(argv);
    };
    let cmd = Cli::command();
    let Some(up) = cmd.find_subcommand("up") else {
        return Ok(argv);
    };
    let flags: Vec<_> = up
        .get_arguments()
        .filter_map(|arg| {
            let name = arg.get_long()?;
            (name != "config" && !arg.is_hide_set()).then(|| ti_tools::up::config_file::Flag {
                name: name.to_owned(),
                repeats: matches!(arg.get_action(), ArgAction::Append),
                switch: matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse),
            })
        })
        .collect();
    let expanded = ti_tools::up::config_file::expand(&argv[at..], &flags)?;
    Ok(argv[..at].iter().cloned().chain(expanded).collect())
}

/// Reports arguments that do not fit together as clap does (exit code 2).
fn usage_error(subcommand: &str, message: &str) -> ! {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let sub = cmd
        .find_subcommand_mut(subcommand)
        .map(|c| c.clone().bin_name(format!("tiflow {subcommand}")));
    match sub {
        Some(mut sub) => sub
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit(),
        None => cmd
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit(),
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

impl BrokenPipe for ti_tools::up::UpError {
    fn is_broken_pipe(&self) -> bool {
        false
    }
}

impl BrokenPipe for ti_tools::control::ControlError {
    fn is_broken_pipe(&self) -> bool {
        false
    }
}

impl BrokenPipe for ti_tools::bench::BenchError {
    fn is_broken_pipe(&self) -> bool {
        ti_tools::bench::BenchError::is_broken_pipe(self)
    }
}

impl BrokenPipe for ti_tools::down::DownError {
    fn is_broken_pipe(&self) -> bool {
        false
    }
}

impl BrokenPipe for ti_tools::demo::DemoError {
    fn is_broken_pipe(&self) -> bool {
        false
    }
}
