//! `cargo run --release -p supermin-ext2 --example mkfs -- SRC_DIR IMAGE [SIZE]`:
//! writes SRC_DIR as an ext2 image, for manual checks and benchmarks against
//! `mke2fs -d`. Times come from SOURCE_DATE_EPOCH (default 0).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use supermin_ext2::{format_uuid, parse_size, write_image, Options, Tree};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (src, img) = match args.as_slice() {
        [s, i, ..] => (PathBuf::from(s), PathBuf::from(i)),
        _ => return Err("usage: mkfs SRC_DIR IMAGE [SIZE]".into()),
    };
    let size = args.get(2).map(|s| parse_size(s)).transpose()?;
    let t0 = Instant::now();
    let tree = Tree::from_dir(&src)?;
    let t1 = Instant::now();
    let opts = Options {
        size,
        // An example: SOURCE_DATE_EPOCH read here, where a binary reads its environment.
        creation_time: std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        ..Options::default()
    };
    let sum = write_image(&tree, &img, &opts)?;
    let t2 = Instant::now();
    eprintln!(
        "read tree {:.3}s, write {:.3}s; size {} used blocks {} inodes {} uuid {}",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        sum.size,
        sum.blocks_used,
        sum.inodes_used,
        format_uuid(&sum.uuid)
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mkfs: error: {e}");
            let mut src = e.source();
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
