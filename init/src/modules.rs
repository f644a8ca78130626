//! Loading the kernel modules listed in the initrd's `/modules`, in that order.
//!
//! The builder put them there decompressed and already sorted by dependency, so each is
//! one `finit_module(fd, "", 0)`; kernels without that syscall get `init_module` from a
//! buffer. A module that fails is reported and skipped, as supermin does: a driver for
//! hardware that is absent, or a CPU-specific crypto module under TCG, fails harmlessly,
//! and if something needed is missing, the root device never appears and that failure
//! says what to look at.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::io::Errno;

use crate::{say, verbose};

/// The list of module paths in load order: one per line, blank lines and `#` comments
/// ignored.
pub fn parse_list(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// What became of one module.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Loaded,
    AlreadyLoaded,
    Failed(Errno),
    Missing(io::ErrorKind),
}

/// Loads every module in `list_path`; returns how many loaded. A missing list means no
/// modules (a kernel with every driver built in needs none).
pub fn load_all(list_path: &Path, verbose: bool) -> usize {
    let text = match std::fs::read_to_string(list_path) {
        Ok(text) => text,
        Err(err) => {
            say!(
                "warning: cannot read the module list {}: {err}; loading no modules",
                list_path.display()
            );
            return 0;
        }
    };
    let mut loaded = 0;
    for path in parse_list(&text) {
        verbose!(verbose, "loading module {path}");
        match load_one(Path::new(path)) {
            Outcome::Loaded => loaded += 1,
            Outcome::AlreadyLoaded => verbose!(verbose, "module {path} is already loaded"),
            Outcome::Missing(kind) => say!(
                "warning: module {path} is listed in /modules but cannot be opened ({kind}); skipped"
            ),
            // No such device: a driver for hardware this VM does not have (e.g. a CPU
            // crypto accelerator under TCG). Expected; only worth a word when verbose.
            Outcome::Failed(Errno::NODEV) => {
                verbose!(verbose, "module {path}: {}; skipped", explain(Errno::NODEV))
            }
            Outcome::Failed(errno) => {
                say!("warning: module {path} failed to load: {}; skipped", explain(errno))
            }
        }
    }
    loaded
}

fn load_one(path: &Path) -> Outcome {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) => return Outcome::Missing(err.kind()),
    };
    match rustix::system::finit_module(&file, c"", 0) {
        Ok(()) => Outcome::Loaded,
        Err(Errno::EXIST) => Outcome::AlreadyLoaded,
        Err(Errno::NOSYS) => load_from_buffer(path),
        Err(errno) => Outcome::Failed(errno),
    }
}

fn load_from_buffer(path: &Path) -> Outcome {
    let image = match std::fs::read(path) {
        Ok(image) => image,
        Err(err) => return Outcome::Missing(err.kind()),
    };
    match rustix::system::init_module(&image, c"") {
        Ok(()) => Outcome::Loaded,
        Err(Errno::EXIST) => Outcome::AlreadyLoaded,
        Err(errno) => Outcome::Failed(errno),
    }
}

/// What a module loading errno means here (after module-init-tools' `moderror()`).
pub fn explain(errno: Errno) -> String {
    let meaning = match errno {
        Errno::NOEXEC => "invalid module format (built for another kernel, or still compressed)",
        Errno::NOENT => "unknown symbol in module (a dependency is missing or listed after it)",
        Errno::SRCH => "module has wrong symbol version",
        Errno::INVAL => "invalid parameters or module format",
        Errno::NODEV => "no such device (the hardware it drives is absent)",
        Errno::KEYREJECTED | Errno::KEYEXPIRED | Errno::NOKEY => {
            "signature rejected (the kernel enforces module signing)"
        }
        Errno::PERM => "operation not permitted (module loading is disabled or locked down)",
        _ => "",
    };
    if meaning.is_empty() {
        io::Error::from(errno).to_string()
    } else {
        format!("{meaning} [{}]", io::Error::from(errno))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keeps_order_and_skips_blanks_and_comments() {
        let text = "/lib/modules/a.ko\n\n# comment\n  /lib/modules/b.ko  \n/lib/modules/c.ko";
        assert_eq!(
            parse_list(text),
            [
                "/lib/modules/a.ko",
                "/lib/modules/b.ko",
                "/lib/modules/c.ko"
            ]
        );
    }

    #[test]
    fn empty_list_means_no_modules() {
        assert!(parse_list("").is_empty());
        assert!(parse_list("\n\n").is_empty());
    }

    #[test]
    fn a_missing_module_file_is_reported_not_loaded() {
        assert_eq!(
            load_one(Path::new("/nonexistent/supermin-test.ko")),
            Outcome::Missing(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_missing_list_loads_nothing() {
        assert_eq!(load_all(Path::new("/nonexistent/modules"), false), 0);
    }

    #[test]
    fn errno_explanations_name_the_likely_cause() {
        assert!(explain(Errno::NOEXEC).contains("compressed"));
        assert!(explain(Errno::NOENT).contains("dependency"));
        // Unknown errnos fall back to the system's text.
        assert_eq!(
            explain(Errno::NOSPC),
            io::Error::from(Errno::NOSPC).to_string()
        );
    }
}
