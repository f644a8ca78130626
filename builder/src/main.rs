//! The `supermin` binary: parse, dispatch, report. Everything else lives in the library.

use std::process::ExitCode;

mod commands;

use supermin::cli::{self, Parsed};

fn main() -> ExitCode {
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
    match commands::run(command) {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

/// One line: what failed and why (the `#[source]` chain, once), then a hint if there is one.
fn report(err: &anyhow::Error) {
    let mut line = format!("supermin: error: {err}");
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        // Typed errors often repeat their source in their own message; print each cause once.
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    eprintln!("{line}");
    if let Some(hint) = commands::hint_for(err) {
        eprintln!("supermin: hint: {hint}");
    }
}
