//! `tiflow`: the command-line tool for TI-flows (work in progress).

fn main() {
    eprintln!("tiflow: no subcommands are implemented yet");
    std::process::exit(2);
}
