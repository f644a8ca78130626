//! The `supermin` binary: parse, dispatch, report. Everything else lives in the library.

use std::process::ExitCode;

mod commands;

use supermin::cli::{self, Parsed};

fn main() -> ExitCode {
    // The one read of the environment: commands and libraries get values from it.
    let env = commands::Env::capture();
    let parsed = match cli::parse(std::env::args_os().skip(1).collect()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("supermin: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = match parsed {
        Parsed::Help(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Parsed::Command(c) => c,
    };
    match commands::run(command, &env) {
        Ok(code) => code,
        Err(err) => {
            commands::report(&err);
            ExitCode::from(commands::exit_code(&err))
        }
    }
}
