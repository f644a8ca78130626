//! The embedded default appliance, built by `supermin --build -f ext2 -o DIR` with no input
//! and by `supermin run`: a shell, coreutils, util-linux, e2fsprogs and kmod from the host,
//! with what they need found by ELF closure (no package manager involved), the kernel's
//! modules, and our daemon as `/init`.
//!
//! The definition is data (`default-appliance/hostfiles`, a supermin.d hostfiles list, one
//! glob a line; names that do not exist on a host simply match nothing), so what the
//! appliance holds can be read in one place.

use supermin_hostfiles::Inputs;

use crate::assemble::{AssembleError, Assembler};

const HOSTFILES: &str = include_str!("../default-appliance/hostfiles");

/// The inputs the default appliance is resolved from.
pub fn inputs() -> Inputs {
    let mut hostfiles = Vec::new();
    for line in HOSTFILES.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        hostfiles.push(line.to_string());
        // The same program on a host without merged /usr lives in /bin or /sbin.
        for (merged, split) in [("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")] {
            if let Some(name) = line.strip_prefix(merged) {
                hostfiles.push(format!("{split}{name}"));
            }
        }
    }
    Inputs {
        hostfiles,
        ..Inputs::default()
    }
}

/// Files no host has: the daemon as `/init`, mount points the daemon needs on a root that
/// may be read-only, and the few `/etc` files programs expect.
pub fn add_generated(asm: &mut Assembler) -> Result<(), AssembleError> {
    asm.add_bytes(b"/init", crate::embedded::daemon_binary(), 0o755)?;
    for (dir, mode) in [
        (&b"/proc"[..], 0o555),
        (b"/sys", 0o555),
        (b"/dev", 0o755),
        (b"/run", 0o755),
        (b"/tmp", 0o1777),
        (b"/root", 0o700),
        (b"/mnt", 0o755),
        (b"/etc", 0o755),
    ] {
        asm.add_dir(dir, mode)?;
    }
    asm.add_bytes(b"/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    asm.add_bytes(b"/etc/group", b"root:x:0:\n", 0o644)?;
    asm.add_symlink(b"/etc/mtab", b"../proc/self/mounts")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_names_a_shell_and_the_promised_tools() {
        let i = inputs();
        for must in [
            "/bin/sh",
            "/usr/bin/ls",
            "/usr/bin/mount",
            "/usr/sbin/mke2fs",
            "/usr/bin/kmod",
            "/usr/sbin/sfdisk",
        ] {
            assert!(i.hostfiles.iter().any(|h| h == must), "{must} missing");
        }
        // Unmerged-/usr spellings are added for every /usr/bin and /usr/sbin entry.
        assert!(i.hostfiles.iter().any(|h| h == "/sbin/mke2fs"));
        assert!(i.packages.is_empty(), "no package manager involved");
    }
}
