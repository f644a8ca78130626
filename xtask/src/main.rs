//! Packaging helpers, run when a package is built (`packaging/build-deb`) and never
//! shipped. `xtask docs OUTDIR` writes the man pages and the shell completions, both
//! generated from the CLI definition (`supermin::cli::command_tree`), so that neither can
//! drift from the parser:
//!
//! ```text
//! OUTDIR/man/supermin.1, supermin-run.1, ...   roff, uncompressed
//! OUTDIR/completions/supermin.bash             bash-completion
//! OUTDIR/completions/_supermin                 zsh
//! OUTDIR/completions/supermin.fish             fish
//! ```
//!
//! `xtask static-target` prints the Rust target the embedded init and daemon were built
//! for (`x86_64-unknown-linux-musl`, or `x86_64-unknown-linux-gnu` with static glibc), for
//! the package's copyright file.
//!
//! It is a workspace member of its own rather than a hidden subcommand or a build script:
//! the `supermin` binary stays free of clap_mangen and clap_complete, and its build.rs
//! (which already builds the static init and daemon) does no more.
//!
//! The man pages are dated `SOURCE_DATE_EPOCH` (reproducible builds; `packaging/build-deb`
//! sets it to the last commit's time), or today.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod completions;
mod man;

const USAGE: &str = "usage: cargo run -p xtask -- docs OUTDIR | static-target";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let result = match args.as_slice() {
        [cmd, out] if cmd == "docs" => docs(Path::new(out)),
        [cmd] if cmd == "static-target" => {
            println!("{}", supermin::embedded::static_target());
            Ok(())
        }
        _ => Err(format!("expected a command\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn docs(out: &Path) -> Result<(), String> {
    let secs = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };
    let date = man::iso_date(secs);
    let tree = supermin::cli::command_tree();
    let man_dir = out.join("man");
    for (name, text) in man::pages(&tree, &date)? {
        write(&man_dir.join(name), text.as_bytes())?;
    }
    let completions_dir = out.join("completions");
    for (name, script) in completions::scripts(&tree) {
        write(&completions_dir.join(name), &script)?;
    }
    Ok(())
}

fn write(path: &PathBuf, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
