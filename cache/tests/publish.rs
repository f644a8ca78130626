//! Publishing, freshness and debris: an output is replaced whole, its stamp
//! decides whether it is reused, and what killed builds leave is cleaned.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use supermin_cache::{
    clean_debris, is_fresh, is_fresh_in_boot, Durability, Fingerprint, FingerprintBuilder,
    Freshness, Staging, StaleReason, APPLIANCE_FILES, STAMP_NAME,
};

fn fp(tag: &str) -> Fingerprint {
    let mut b = FingerprintBuilder::new("test");
    b.str("generation", tag);
    b.finish()
}

/// Builds an appliance-shaped output whose files all say `tag`.
fn publish(out: &Path, tag: &str, durability: Durability) -> supermin_cache::Published {
    let s = Staging::new(out).unwrap();
    for name in APPLIANCE_FILES {
        fs::write(s.path().join(name), format!("{name} {tag}")).unwrap();
    }
    s.commit(&fp(tag), "test", durability).unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn stale(reason: StaleReason) -> Freshness {
    Freshness::Stale(reason)
}

#[test]
fn a_committed_output_is_fresh_for_its_fingerprint_only() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("appliance.d");
    assert_eq!(
        is_fresh(&out, &fp("1"), &APPLIANCE_FILES).unwrap(),
        stale(StaleReason::NoOutput)
    );
    let p = publish(&out, "1", Durability::Unsynced);
    assert!(!p.replaced);
    assert!(p.leftover.is_none());
    assert_eq!(
        is_fresh(&out, &fp("1"), &APPLIANCE_FILES).unwrap(),
        Freshness::Fresh
    );
    assert_eq!(
        is_fresh(&out, &fp("2"), &APPLIANCE_FILES).unwrap(),
        stale(StaleReason::FingerprintChanged)
    );
    // Nothing but the output is left beside it.
    assert_eq!(entries(d.path()), ["appliance.d"]);
}

#[test]
fn a_new_commit_replaces_the_old_output_whole() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("appliance.d");
    publish(&out, "1", Durability::Unsynced);
    fs::write(out.join("only-in-old"), "x").unwrap();
    let p = publish(&out, "2", Durability::Synced);
    assert!(p.replaced);
    assert!(p.leftover.is_none());
    assert_eq!(fs::read_to_string(out.join("root")).unwrap(), "root 2");
    assert!(!out.join("only-in-old").exists());
    assert_eq!(
        is_fresh(&out, &fp("2"), &APPLIANCE_FILES).unwrap(),
        Freshness::Fresh
    );
    assert_eq!(entries(d.path()), ["appliance.d"]);
}

#[test]
fn removing_kernel_initrd_or_root_makes_it_stale() {
    for name in APPLIANCE_FILES {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("appliance.d");
        publish(&out, "1", Durability::Unsynced);
        fs::remove_file(out.join(name)).unwrap();
        assert_eq!(
            is_fresh(&out, &fp("1"), &APPLIANCE_FILES).unwrap(),
            stale(StaleReason::MissingFile(name.to_string()))
        );
    }
}

#[test]
fn a_dangling_kernel_symlink_makes_it_stale() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("appliance.d");
    let s = Staging::new(&out).unwrap();
    let vmlinuz = d.path().join("vmlinuz");
    fs::write(&vmlinuz, "k").unwrap();
    std::os::unix::fs::symlink(&vmlinuz, s.path().join("kernel")).unwrap();
    fs::write(s.path().join("initrd"), "i").unwrap();
    fs::write(s.path().join("root"), "r").unwrap();
    s.commit(&fp("1"), "test", Durability::Synced).unwrap();
    assert!(is_fresh(&out, &fp("1"), &APPLIANCE_FILES)
        .unwrap()
        .is_fresh());
    fs::remove_file(&vmlinuz).unwrap();
    assert_eq!(
        is_fresh(&out, &fp("1"), &APPLIANCE_FILES).unwrap(),
        stale(StaleReason::MissingFile("kernel".into()))
    );
}

#[test]
fn a_missing_or_corrupt_stamp_makes_it_stale_never_an_error() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("appliance.d");
    publish(&out, "1", Durability::Unsynced);
    let stamp = out.join(STAMP_NAME);
    let good = fs::read(&stamp).unwrap();
    let garbage: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0u8; 4096],
        vec![0xffu8; 100],
        vec![b'a'; 1 << 20],
        good[..good.len() / 2].to_vec(),
        String::from_utf8_lossy(&good)
            .replace("synced=no", "synced=")
            .into_bytes(),
    ];
    for g in garbage {
        fs::write(&stamp, &g).unwrap();
        match is_fresh(&out, &fp("1"), &APPLIANCE_FILES).unwrap() {
            Freshness::Stale(StaleReason::CorruptStamp(_)) => {}
            other => panic!(
                "{other:?} for {:?}",
                String::from_utf8_lossy(&g[..g.len().min(40)])
            ),
        }
    }
    fs::remove_file(&stamp).unwrap();
    assert_eq!(
        is_fresh(&out, &fp("1"), &APPLIANCE_FILES).unwrap(),
        stale(StaleReason::NoStamp)
    );
    // A stamp that is a directory cannot be read either; that is an error
    // worth reporting, not a reason to rebuild silently.
    fs::create_dir(&stamp).unwrap();
    assert!(is_fresh(&out, &fp("1"), &APPLIANCE_FILES).is_err());
}

#[test]
fn an_unsynced_output_from_another_boot_is_stale_and_a_synced_one_is_not() {
    let d = tempfile::tempdir().unwrap();
    let unsynced = d.path().join("cache");
    let synced = d.path().join("fixed");
    publish(&unsynced, "1", Durability::Unsynced);
    publish(&synced, "1", Durability::Synced);
    let this_boot = supermin_cache::current_boot_id();
    let other = Some("00000000-0000-0000-0000-000000000000");
    for boot in [other, None] {
        assert_eq!(
            is_fresh_in_boot(&unsynced, &fp("1"), &APPLIANCE_FILES, boot).unwrap(),
            stale(StaleReason::UnsyncedFromAnotherBoot)
        );
        assert!(is_fresh_in_boot(&synced, &fp("1"), &APPLIANCE_FILES, boot)
            .unwrap()
            .is_fresh());
    }
    if this_boot.is_some() {
        assert!(
            is_fresh_in_boot(&unsynced, &fp("1"), &APPLIANCE_FILES, this_boot.as_deref())
                .unwrap()
                .is_fresh()
        );
    }
}

#[test]
fn dropping_an_uncommitted_staging_leaves_the_old_output_and_no_debris() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("appliance.d");
    publish(&out, "1", Durability::Unsynced);
    {
        let s = Staging::new(&out).unwrap();
        fs::write(s.path().join("root"), "half-written").unwrap();
        assert!(s.path().starts_with(d.path()));
        assert_ne!(s.path(), out);
    }
    assert_eq!(entries(d.path()), ["appliance.d"]);
    assert_eq!(fs::read_to_string(out.join("root")).unwrap(), "root 1");
    assert!(is_fresh(&out, &fp("1"), &APPLIANCE_FILES)
        .unwrap()
        .is_fresh());
}

fn set_old(p: &Path) {
    let t = SystemTime::now() - Duration::from_secs(7200);
    File::open(p).unwrap().set_modified(t).unwrap();
}

fn debris(d: &Path, pid: u32, n: u32) -> PathBuf {
    let p = d.join(format!(".appliance.d.supermin-tmp-{pid}-{n}"));
    fs::create_dir_all(p.join("sub")).unwrap();
    fs::write(p.join("root"), "torn").unwrap();
    fs::write(p.join("sub/f"), "torn").unwrap();
    p
}

#[test]
fn clean_debris_removes_dead_builders_leftovers_only() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("appliance.d");
    publish(&out, "1", Durability::Unsynced);
    // A pid above any pid_max: its builder is certainly gone.
    let dead_tmp = debris(d.path(), 2_000_000_000, 0);
    let dead_old = d.path().join(".appliance.d.supermin-old-2000000000-1");
    fs::create_dir(&dead_old).unwrap();
    // Our own pid, unlocked, just created: could be a builder between its
    // mkdir and its flock. Kept.
    let young = debris(d.path(), std::process::id(), 999_999);
    // Our own pid, unlocked, two hours old: a reused pid's leftovers.
    let old = debris(d.path(), std::process::id(), 999_998);
    set_old(&old);
    // A live staging of this process: locked. Kept.
    let live = Staging::new(&out).unwrap();
    set_old(live.path());
    // Lookalikes that are not ours to touch.
    let others = [
        d.path().join(".other.supermin-tmp-2000000000-0"),
        d.path().join("appliance.d.abcdefgh"),
        d.path().join(".appliance.d.supermin-tmp-x-0"),
    ];
    for o in &others {
        fs::create_dir(o).unwrap();
    }
    // A symlink named like debris, pointing at something precious.
    let precious = d.path().join("precious");
    fs::create_dir(&precious).unwrap();
    fs::write(precious.join("keep"), "k").unwrap();
    let link = d.path().join(".appliance.d.supermin-tmp-2000000000-7");
    std::os::unix::fs::symlink(&precious, &link).unwrap();

    let removed = clean_debris(&out).unwrap();
    assert_eq!(removed, 4, "{:?}", entries(d.path()));
    for gone in [&dead_tmp, &dead_old, &old, &link] {
        assert!(
            fs::symlink_metadata(gone).is_err(),
            "{} survived",
            gone.display()
        );
    }
    for kept in [
        &young,
        &live.path().to_path_buf(),
        &out,
        &precious.join("keep"),
    ] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
    for o in &others {
        assert!(o.exists(), "{} was removed", o.display());
    }
    // Once the live staging is dropped, nothing of it remains.
    drop(live);
    assert_eq!(clean_debris(&out).unwrap(), 0);
    assert!(is_fresh(&out, &fp("1"), &APPLIANCE_FILES)
        .unwrap()
        .is_fresh());
}

#[test]
fn clean_debris_without_a_parent_directory_is_a_no_op() {
    assert_eq!(
        clean_debris(Path::new("/nonexistent-supermin-test/appliance.d")).unwrap(),
        0
    );
}

#[test]
fn staging_in_a_missing_directory_is_a_clear_error() {
    let err = Staging::new(Path::new("/nonexistent-supermin-test/appliance.d")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent-supermin-test"), "{msg}");
    // The cause is the source, not repeated in the message; the way out is the hint.
    assert!(std::error::Error::source(&err).is_some());
    assert!(
        err.hint().is_some_and(|h| h.contains("must exist")),
        "{msg}"
    );
}

#[test]
fn an_output_path_with_dot_components_publishes_beside_its_target() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("./appliance.d");
    publish(&out, "1", Durability::Unsynced);
    assert!(
        is_fresh(&d.path().join("appliance.d"), &fp("1"), &APPLIANCE_FILES)
            .unwrap()
            .is_fresh()
    );
}
