//! Measures the two costs the cache design rests on, and prints them:
//!
//! 1. the `--if-newer` up-to-date check when nothing changed: a fingerprint
//!    of libguestfs's supermin.d by contents, plus what the builder records
//!    by identity (kernel, modules dir, dpkg database), plus `is_fresh`;
//! 2. what `Durability::Synced` costs over `Unsynced` for a 4 GiB sparse
//!    appliance root holding various amounts of real data.
//!
//! Run: `cargo run --release -p supermin-cache --example measure [SUPERMIN_D] [SCRATCH_DIR]`

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use supermin_cache::{
    is_fresh, Durability, Fingerprint, FingerprintBuilder, HashMode, Staging, APPLIANCE_FILES,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let supermin_d = PathBuf::from(
        args.get(1)
            .map(String::as_str)
            .unwrap_or("/usr/lib/x86_64-linux-gnu/guestfs/supermin.d"),
    );
    let scratch = PathBuf::from(args.get(2).map(String::as_str).unwrap_or("/var/tmp"));
    up_to_date_check(&supermin_d, &scratch)?;
    fsync_cost(&scratch)?;
    Ok(())
}

fn input_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The fingerprint the builder would compute for libguestfs's call.
fn fingerprint(supermin_d: &Path) -> Result<Fingerprint, supermin_cache::CacheError> {
    let mut b = FingerprintBuilder::new("supermin-rs 0.1.0");
    b.tree(supermin_d, HashMode::Contents)?;
    for var in [
        "SUPERMIN_KERNEL",
        "SUPERMIN_KERNEL_VERSION",
        "SUPERMIN_MODULES",
        "SOURCE_DATE_EPOCH",
    ] {
        b.env_value(var, std::env::var_os(var).as_deref());
    }
    for (k, v) in [
        ("format", "ext2"),
        ("copy-kernel", "yes"),
        ("host-cpu", "x86_64"),
        ("size", "default"),
    ] {
        b.str(k, v);
    }
    b.file_identity(Path::new("/boot/vmlinuz-6.1.0-56-amd64"))?;
    b.file_identity(Path::new("/lib/modules/6.1.0-56-amd64"))?;
    b.file_identity(Path::new("/lib/modules/6.1.0-56-amd64/modules.dep"))?;
    b.file_identity(Path::new("/var/lib/dpkg/status"))?;
    b.file_identity(Path::new("/var/lib/dpkg/info"))?;
    Ok(b.finish())
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.2} ms, min {:.2} ms, max {:.2} ms ({} runs)",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn up_to_date_check(supermin_d: &Path, scratch: &Path) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "== up-to-date check ({}: {} bytes of inputs)",
        supermin_d.display(),
        input_bytes(supermin_d)
    );
    let d = tempfile::tempdir_in(scratch)?;
    let out = d.path().join("appliance.d");
    let fp = fingerprint(supermin_d)?;
    let s = Staging::new(&out)?;
    for name in APPLIANCE_FILES {
        fs::write(s.path().join(name), name)?;
    }
    s.commit(&fp, "supermin-rs 0.1.0", Durability::Unsynced)?;

    let mut fp_times = Vec::new();
    let mut total = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let again = fingerprint(supermin_d)?;
        let t_fp = t.elapsed();
        let fresh = is_fresh(&out, &again, &APPLIANCE_FILES)?;
        total.push(t.elapsed());
        fp_times.push(t_fp);
        assert!(fresh.is_fresh(), "{fresh:?}");
    }
    println!("fingerprint:              {}", summary(fp_times));
    println!("fingerprint + is_fresh:   {}", summary(total));
    Ok(())
}

/// A sparse 4 GiB root with `data_mib` MiB written in 1 MiB extents spread
/// over the image, as an ext2 writer spreads block groups.
fn write_root(path: &Path, data_mib: u64) -> std::io::Result<()> {
    const SIZE: u64 = 4 << 30;
    let mut f = File::create(path)?;
    f.set_len(SIZE)?;
    let chunk = vec![0x5au8; 1 << 20];
    if let Some(stride) = SIZE.checked_div(data_mib) {
        for i in 0..data_mib {
            f.seek(SeekFrom::Start(i * stride))?;
            f.write_all(&chunk)?;
        }
    }
    Ok(())
}

fn fsync_cost(scratch: &Path) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "== publish of a 4 GiB sparse root (in {})",
        scratch.display()
    );
    let d = tempfile::tempdir_in(scratch)?;
    let out = d.path().join("appliance.d");
    for data_mib in [0u64, 64, 512] {
        for durability in [Durability::Unsynced, Durability::Synced] {
            // The old output's removal and earlier runs' writeback are
            // not what is measured: get them out of the way first.
            if out.exists() {
                fs::remove_dir_all(&out)?;
            }
            rustix::fs::syncfs(File::open(d.path())?)?;
            let t = Instant::now();
            let s = Staging::new(&out)?;
            write_root(&s.path().join("root"), data_mib)?;
            fs::write(s.path().join("initrd"), vec![1u8; 4 << 20])?;
            fs::write(s.path().join("kernel"), vec![2u8; 8 << 20])?;
            let written = t.elapsed();
            let t = Instant::now();
            s.commit(&Fingerprint([0; 32]), "measure", durability)?;
            let commit = t.elapsed();
            println!(
                "{data_mib:>4} MiB data, {durability:?}: write {:.1} ms, commit {:.1} ms",
                written.as_secs_f64() * 1000.0,
                commit.as_secs_f64() * 1000.0
            );
        }
    }
    Ok(())
}
