//! `tiffin`: parse the arguments, set up logging, run the command, turn its error into an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tiffin::cli::Cli::parse();
    tiffin::cli::init_tracing(cli.verbose);
    match tiffin::cli::run(cli) {
        Ok(code) => code.into(),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(err.exit_code())
        }
    }
}
