//! Prints what `supermin kernel` would print for this host:
//! `cargo run -p supermin-kernel-probe --example probe [-- --json] [EXTRA_MODULE...]`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut json = false;
    let mut extra = Vec::new();
    for a in std::env::args().skip(1) {
        if a == "--json" {
            json = true;
        } else {
            extra.push(a);
        }
    }
    let env = supermin_kernel_probe::ProbeEnv::from_vars(|n| std::env::var_os(n), None);
    let result = supermin_kernel_probe::probe(&env).and_then(|k| {
        let set = supermin_kernel_probe::module_set(&k, &extra)?;
        Ok((k, set))
    });
    match result {
        Ok((k, set)) => {
            if json {
                println!("{}", supermin_kernel_probe::report_json_set(&k, &set));
            } else {
                print!("{}", supermin_kernel_probe::report_text_set(&k, &set));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("probe: error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("probe:   caused by: {s}");
                src = s.source();
            }
            if let Some(h) = e.hint() {
                eprintln!("probe: hint: {h}");
            }
            ExitCode::FAILURE
        }
    }
}
