//! A builder SIGKILLed at any moment never leaves a torn output: `out` is
//! always absent (before the first publish) or a complete generation, and
//! the next run removes the debris.
//!
//! The builder is this test binary re-executed to run this same test with
//! `SUPERMIN_CACHE_TEST_CHILD_OUT` set, which makes it the publisher: it
//! publishes generation after generation until it is killed at a random
//! moment.

#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use supermin_cache::{
    clean_debris, is_fresh, Durability, Fingerprint, FingerprintBuilder, Staging, APPLIANCE_FILES,
};

const OUT_VAR: &str = "SUPERMIN_CACHE_TEST_CHILD_OUT";
const GEN_VAR: &str = "SUPERMIN_CACHE_TEST_CHILD_GEN";
/// Size of each file of a generation, written in chunks so kills land mid-file.
const FILE_SIZE: usize = 256 * 1024;
const CHUNK: usize = 16 * 1024;

fn fp(generation: u64) -> Fingerprint {
    let mut b = FingerprintBuilder::new("killed-publish-test");
    b.str("generation", &generation.to_string());
    b.finish()
}

/// The bytes of file `name` in `generation`: a header naming both, then a
/// fill pattern, then the header again, so a truncated file is detectable.
fn content(name: &str, generation: u64) -> Vec<u8> {
    let header = format!("{name} generation {generation}\n");
    let mut v = header.clone().into_bytes();
    v.resize(FILE_SIZE - header.len(), (generation % 251) as u8);
    v.extend_from_slice(header.as_bytes());
    v
}

/// The re-executed child: publishes until killed.
fn publisher_child(out: &Path) -> ! {
    let mut generation: u64 = std::env::var(GEN_VAR).unwrap().parse().unwrap();
    loop {
        clean_debris(out).unwrap();
        let s = Staging::new(out).unwrap();
        for name in APPLIANCE_FILES {
            let mut f = fs::File::create(s.path().join(name)).unwrap();
            for chunk in content(name, generation).chunks(CHUNK) {
                f.write_all(chunk).unwrap();
            }
        }
        let durability = if generation % 2 == 0 {
            Durability::Synced
        } else {
            Durability::Unsynced
        };
        s.commit(&fp(generation), "test", durability).unwrap();
        generation += 1;
    }
}

/// xorshift64*: random kill delays without a dependency; seeded from the clock.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Checks that `out` is one whole generation and returns it.
fn whole_generation(out: &Path) -> u64 {
    let kernel = fs::read(out.join("kernel")).unwrap();
    let header =
        String::from_utf8_lossy(&kernel[..kernel.iter().position(|&b| b == b'\n').unwrap()])
            .into_owned();
    let generation: u64 = header.rsplit(' ').next().unwrap().parse().unwrap();
    for name in APPLIANCE_FILES {
        assert!(
            fs::read(out.join(name)).unwrap() == content(name, generation),
            "{name} is torn in {generation}"
        );
    }
    assert!(
        is_fresh(out, &fp(generation), &APPLIANCE_FILES)
            .unwrap()
            .is_fresh(),
        "generation {generation} is not fresh"
    );
    generation
}

#[test]
fn killed_builds_never_leave_a_torn_output() {
    if let Some(out) = std::env::var_os(OUT_VAR) {
        publisher_child(Path::new(&out));
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("appliance.d");
    let exe = std::env::current_exe().unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill-delay seed {seed}");
    let mut rng = Rng(seed);
    let mut last: Option<u64> = None;
    let mut kills_after_publish = 0;
    for _ in 0..40 {
        let next_gen = last.map_or(0, |g| g + 1);
        let mut child = Command::new(&exe)
            .args([
                "killed_builds_never_leave_a_torn_output",
                "--exact",
                "--test-threads=1",
            ])
            .env(OUT_VAR, &out)
            .env(GEN_VAR, next_gen.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.next() % 80_000));
        child.kill().unwrap();
        child.wait().unwrap();

        if out.exists() {
            let g = whole_generation(&out);
            if let Some(prev) = last {
                assert!(g >= prev, "went back from generation {prev} to {g}");
            }
            if last != Some(g) {
                kills_after_publish += 1;
            }
            last = Some(g);
        } else {
            // Only a builder that never published may leave no output: the
            // exchange keeps an old one in place to the last instant.
            assert_eq!(last, None, "the output vanished after generation {last:?}");
        }
    }
    eprintln!("last generation {last:?}, {kills_after_publish} runs published something");

    eprintln!("cleaned {} debris entries", clean_debris(&out).unwrap());
    let left: Vec<_> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let expected: Vec<std::ffi::OsString> = if last.is_some() {
        vec!["appliance.d".into()]
    } else {
        vec![]
    };
    assert_eq!(left, expected, "debris survived the cleanup");
    // And the next build publishes over whatever was there.
    let s = Staging::new(&out).unwrap();
    let g = last.map_or(0, |g| g + 1);
    for name in APPLIANCE_FILES {
        fs::write(s.path().join(name), content(name, g)).unwrap();
    }
    s.commit(&fp(g), "test", Durability::Unsynced).unwrap();
    assert_eq!(whole_generation(&out), g);
}
