//! Builds the two programs the builder copies into appliances, `supermin-init` (PID 1 of
//! the initrd) and `supermin-daemon`, as static executables, so `embedded.rs` can
//! include their bytes and the `supermin` binary depends on no build-tree path at run
//! time.
//!
//! A nested `cargo build --release --target T` does the work, in its own target
//! directory next to the outer one (`<outer target>/static`), so it never waits on the
//! outer build's lock and is shared by every outer profile, `check` and `clippy`.
//! T is x86_64-unknown-linux-musl when rustup installed that target's std; otherwise
//! x86_64-unknown-linux-gnu with `-C target-feature=+crt-static`. The explicit
//! `--target` keeps those flags off build scripts and proc-macros.
//! `SUPERMIN_STATIC_TARGET` forces either choice. The outputs are checked to have no
//! `PT_INTERP` (no dynamic loader), or the build fails saying so.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const MUSL: &str = "x86_64-unknown-linux-musl";
const GNU: &str = "x86_64-unknown-linux-gnu";
/// Set for the nested cargo; seeing it here means the nested build is building the
/// builder again (a dependency cycle), which would recurse forever.
const NESTED_MARKER: &str = "SUPERMIN_NESTED_STATIC_BUILD";

/// (package, binary) pairs built and embedded.
const PROGRAMS: [(&str, &str); 2] = [
    ("supermin-init", "supermin-init"),
    ("supermin-daemon", "supermin-daemon"),
];

fn main() {
    if let Err(message) = run() {
        // Cargo shows a build script's stderr when it fails; one clear paragraph.
        eprintln!("error: building the static init and daemon failed: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    if env::var_os(NESTED_MARKER).is_some() {
        return Err(format!(
            "{NESTED_MARKER} is set: the nested static build is trying to build the builder \
             itself; supermin-init and supermin-daemon must not depend on the `supermin` crate"
        ));
    }
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or("the builder crate has no parent directory")?
        .to_owned();
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);

    for dir in ["init", "daemon", "protocol"] {
        let root = workspace.join(dir);
        println!(
            "cargo:rerun-if-changed={}",
            root.join("Cargo.toml").display()
        );
        println!("cargo:rerun-if-changed={}", root.join("src").display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );
    println!("cargo:rerun-if-env-changed=SUPERMIN_STATIC_TARGET");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let target = choose_target(&rustc)?;
    let static_dir = static_target_dir(&out_dir);

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&workspace)
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg(target)
        .arg("--target-dir")
        .arg(&static_dir)
        // Smaller binaries (they are copied into every initrd and root image): whole-program
        // optimisation. These settings only reach this nested build and its own target dir.
        .args(["--config", "profile.release.lto=true"])
        .args(["--config", "profile.release.codegen-units=1"]);
    for (package, _) in PROGRAMS {
        // Stripping must be set on the per-package override: the workspace's
        // [profile.release.package.*] sections otherwise keep cargo's default.
        cmd.arg("--config").arg(format!(
            "profile.release.package.{package}.strip=\"symbols\""
        ));
        cmd.arg("-p").arg(package);
    }
    // Variables the outer cargo set for us (or the user set for the outer build) that
    // would redirect or reconfigure the nested one: its own flags, target dir, jobserver
    // and clippy's wrapper.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_ENCODED_RUSTFLAGS")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "CARGO_TARGET_DIR"
                    | "CARGO_MAKEFLAGS"
                    | "MAKEFLAGS"
                    | "MFLAGS"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd.env(NESTED_MARKER, "1");
    if target == GNU {
        // glibc fallback: the whole program, libc included, linked in.
        cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }

    let status = cmd
        .status()
        .map_err(|err| format!("cannot run {}: {err}", Path::new(&cargo).display()))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release --target {target}` for {} failed ({status}); its \
             errors are above. That target is not the host's: libc types can differ there \
             (e.g. ioctl's request is c_int on musl); reproduce with \
             `cargo build -p supermin-daemon --target {target}`",
            PROGRAMS.map(|(p, _)| p).join(", ")
        ));
    }

    for (_, bin) in PROGRAMS {
        let built = static_dir.join(target).join("release").join(bin);
        let bytes = fs::read(&built)
            .map_err(|err| format!("cannot read the built {}: {err}", built.display()))?;
        check_static(&bytes).map_err(|why| {
            format!(
                "{} is not a static executable ({why}); with the glibc fallback, \
                 install the musl target instead: `rustup target add {MUSL}`",
                built.display()
            )
        })?;
        // A copy in OUT_DIR: include_bytes! then depends on nothing outside it.
        let dest = out_dir.join(bin);
        fs::write(&dest, &bytes)
            .map_err(|err| format!("cannot write {}: {err}", dest.display()))?;
    }
    println!("cargo:rustc-env=SUPERMIN_STATIC_TARGET_USED={target}");
    println!(
        "cargo:rustc-env=SUPERMIN_SOURCE_ID={:016x}-{target}",
        source_id(&workspace)?
    );
    Ok(())
}

/// The crates whose code decides what a build writes. Their sources, hashed, identify
/// this tool in cache fingerprints: a debug and a release build of the same sources (which
/// write the same appliance) share the cached appliance instead of rebuilding it against
/// each other, and any change to the code rebuilds it.
const SOURCE_DIRS: &[&str] = &[
    "builder",
    "ext2",
    "hostfiles",
    "kernel-probe",
    "cache",
    "init",
    "daemon",
    "protocol",
    "launcher",
];

fn source_id(workspace: &std::path::Path) -> Result<u64, String> {
    use std::hash::{Hash, Hasher};
    let mut files = Vec::new();
    for dir in SOURCE_DIRS {
        let root = workspace.join(dir);
        println!("cargo:rerun-if-changed={}", root.display());
        collect_sources(&root, &mut files)?;
    }
    files.push(workspace.join("Cargo.lock"));
    files.sort();
    // DefaultHasher::new() is deterministic for a given toolchain, which is all an id of
    // one build's sources needs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in &files {
        let rel = f.strip_prefix(workspace).unwrap_or(f);
        rel.hash(&mut h);
        fs::read(f)
            .map_err(|err| format!("cannot read {}: {err}", f.display()))?
            .hash(&mut h);
    }
    Ok(h.finish())
}

fn collect_sources(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries =
        fs::read_dir(dir).map_err(|err| format!("cannot list {}: {err}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|err| format!("cannot list {}: {err}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Tests, benches and examples do not change what a build writes.
        if matches!(
            name.as_ref(),
            "tests" | "benches" | "bench" | "examples" | "testdata"
        ) {
            continue;
        }
        let ft = entry
            .file_type()
            .map_err(|err| format!("cannot stat {}: {err}", path.display()))?;
        if ft.is_dir() {
            collect_sources(&path, out)?;
        } else if ft.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

fn env_var(key: &str) -> Result<String, String> {
    env::var(key).map_err(|_| format!("cargo did not set {key}"))
}

/// musl when its std is installed in the sysroot, else the glibc fallback;
/// `SUPERMIN_STATIC_TARGET` overrides.
fn choose_target(rustc: &OsString) -> Result<&'static str, String> {
    match env::var("SUPERMIN_STATIC_TARGET").ok().as_deref() {
        Some(MUSL) => return Ok(MUSL),
        Some(GNU) => return Ok(GNU),
        Some("") | None => {}
        Some(other) => {
            return Err(format!(
                "SUPERMIN_STATIC_TARGET={other} is not supported; use {MUSL} or {GNU}"
            ))
        }
    }
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|err| format!("cannot run rustc --print sysroot: {err}"))?;
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let musl_std = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(MUSL)
        .join("lib");
    if output.status.success() && musl_std.is_dir() {
        Ok(MUSL)
    } else {
        println!(
            "cargo:warning=the {MUSL} target is not installed; building the init and daemon \
             with static glibc (`rustup target add {MUSL}` gives smaller binaries)"
        );
        Ok(GNU)
    }
}

/// `<outer target dir>/static` when OUT_DIR has the usual
/// `<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out` shape, else a directory in
/// OUT_DIR (correct, only not shared between profiles).
fn static_target_dir(out_dir: &Path) -> PathBuf {
    let build = out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|n| n == "build"));
    match build.and_then(Path::parent).and_then(Path::parent) {
        Some(target_dir) => target_dir.join("static"),
        None => out_dir.join("static"),
    }
}

/// Checks an x86-64 ELF executable has no program interpreter (`PT_INTERP`), i.e. needs
/// no dynamic loader from the machine it runs on.
fn check_static(elf: &[u8]) -> Result<(), String> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u64_at = |at: usize| -> Option<usize> {
        let bytes: [u8; 8] = elf.get(at..at + 8)?.try_into().ok()?;
        usize::try_from(u64::from_le_bytes(bytes)).ok()
    };
    let phoff = u64_at(0x20).ok_or("truncated ELF header")?;
    let phentsize = u16_at(0x36);
    let phnum = u16_at(0x38);
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let header = elf.get(at..at + 4).ok_or("truncated program headers")?;
        let p_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if p_type == PT_INTERP {
            return Err("it has a PT_INTERP program header naming a dynamic loader".into());
        }
    }
    Ok(())
}
