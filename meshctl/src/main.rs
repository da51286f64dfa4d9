//! The `meshctl` binary: parses the command line and hands it to [`meshctl::run`].

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = meshctl::Cli::parse();
    match meshctl::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
