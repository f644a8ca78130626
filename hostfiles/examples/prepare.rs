//! `supermin --prepare` through the library: `prepare [--use-installed] -o DIR PKG...`
//! (SOURCE_DATE_EPOCH is honoured). For trying the download path by hand.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let use_installed = args.iter().any(|a| a == "--use-installed");
    args.retain(|a| a != "--use-installed");
    let pos = args
        .iter()
        .position(|a| a == "-o")
        .ok_or("missing -o DIR")?;
    let out = PathBuf::from(args.get(pos + 1).ok_or("missing DIR after -o")?);
    args.drain(pos..pos + 2);
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok());
    let t = std::time::Instant::now();
    supermin_hostfiles::prepare(&supermin_hostfiles::PrepareOptions {
        packages: args,
        use_installed,
        packager_config: None,
        out_dir: out,
        source_date_epoch: epoch,
        root: PathBuf::from("/"),
    })?;
    eprintln!("prepare took {:?}", t.elapsed());
    Ok(())
}
