//! The static `supermin-init` and `supermin-daemon` executables, built by `build.rs` and
//! carried inside the `supermin` binary, so a built appliance never depends on paths in
//! the build tree (or on the tree existing at all).

/// The initrd's PID 1 (see `init/`), a static x86-64 executable.
pub fn init_binary() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/supermin-init"))
}

/// The default appliance's agent (see `daemon/`), a static x86-64 executable.
pub fn daemon_binary() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/supermin-daemon"))
}

/// The Rust target both were built for: `x86_64-unknown-linux-musl`, or
/// `x86_64-unknown-linux-gnu` (static glibc) where musl was not installed.
pub fn static_target() -> &'static str {
    env!("SUPERMIN_STATIC_TARGET_USED")
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    /// Reads the program header types of a 64-bit little-endian ELF.
    fn program_header_types(elf: &[u8]) -> Vec<u32> {
        let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
        let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
        (0..u16_at(0x38))
            .map(|i| {
                let at = phoff + i * u16_at(0x36);
                u32::from_le_bytes(elf[at..at + 4].try_into().unwrap())
            })
            .collect()
    }

    #[test]
    fn both_binaries_are_static_x86_64_executables() {
        for (name, elf) in [("init", init_binary()), ("daemon", daemon_binary())] {
            assert_eq!(&elf[..4], b"\x7fELF", "{name}");
            assert_eq!(elf[4], 2, "{name}: not ELF64");
            assert_eq!(
                u16::from_le_bytes([elf[0x12], elf[0x13]]),
                62,
                "{name}: not x86-64"
            );
            let types = program_header_types(elf);
            assert!(types.contains(&1), "{name}: no PT_LOAD");
            assert!(!types.contains(&3), "{name}: has PT_INTERP");
        }
    }

    #[test]
    fn the_init_stays_small() {
        // It is copied into every initrd and loaded on every boot: a few hundred kB with
        // musl; static glibc brings more of libc along.
        let limit = match static_target() {
            "x86_64-unknown-linux-musl" => 600 * 1024,
            _ => 2 * 1024 * 1024,
        };
        assert!(init_binary().len() < limit, "{} bytes", init_binary().len());
    }

    #[test]
    fn the_target_is_one_of_the_two_supported() {
        assert!(matches!(
            static_target(),
            "x86_64-unknown-linux-musl" | "x86_64-unknown-linux-gnu"
        ));
    }
}
