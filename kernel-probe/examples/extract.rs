//! Extracts the ELF vmlinux from a bzImage:
//! `cargo run -p supermin-kernel-probe --example extract -- BZIMAGE OUT`.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bz, out] = args.as_slice() else {
        eprintln!("usage: extract BZIMAGE OUT");
        return ExitCode::FAILURE;
    };
    match supermin_kernel_probe::extract_vmlinux(Path::new(bz), Path::new(out)) {
        Ok(info) => {
            println!(
                "{}: {} payload, {} bytes, PVH entry {}",
                out,
                info.compression.as_str(),
                info.size,
                info.pvh_entry
                    .map_or("none".to_string(), |e| format!("{e:#x}"))
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("extract: error: {e}");
            ExitCode::FAILURE
        }
    }
}
