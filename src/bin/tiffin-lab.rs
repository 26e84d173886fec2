use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tiffin::lab::LabCli::parse();
    tiffin::cli::init_tracing(cli.verbose);
    match tiffin::lab::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
