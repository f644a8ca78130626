//! Resolve supermin.d inputs on this host and print the file set (one path per line) and
//! timings on stderr: `cargo run --release -p supermin-hostfiles --example resolve -- DIR...`
//! Set NO_ELF=1 to skip the ELF closure.

use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let paths: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let t0 = Instant::now();
    let inputs =
        supermin_hostfiles::read_inputs(&paths, &supermin_hostfiles::InputBudget::default())?;
    let t1 = Instant::now();
    let opts = supermin_hostfiles::ResolveOptions {
        elf_closure: std::env::var_os("NO_ELF").is_none(),
        ..Default::default()
    };
    let set = supermin_hostfiles::resolve(&inputs, &opts)?;
    let t2 = Instant::now();
    for f in &set.files {
        println!("{}", f.path.display());
    }
    eprintln!(
        "read_inputs {:?}, resolve {:?}: {} packages, {} files, {} warnings",
        t1 - t0,
        t2 - t1,
        set.packages.len(),
        set.files.len(),
        set.warnings.len()
    );
    for w in &set.warnings {
        eprintln!("warning: {w}");
    }
    if std::env::var_os("SHOW_PACKAGES").is_some() {
        for p in &set.packages {
            eprintln!("pkg {p}");
        }
    }
    Ok(())
}
