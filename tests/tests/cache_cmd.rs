//! End-to-end tests of `supermin cache list|gc|clean` through the real binary, on caches
//! of the test's own (`LIBGUESTFS_CACHEDIR` and `TMPDIR` point into its scratch directory;
//! `/var/tmp` is then not looked at).

use std::path::{Path, PathBuf};

use supermin_tests::{assert_e2fsck_clean, output_of, supermin_in, TempDir};

/// The per-user directory under `base`, as libguestfs and `supermin run` name it.
fn user_dir(base: &Path) -> PathBuf {
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    base.join(format!(".guestfs-{}", uid.unwrap()))
}

/// An `appliance.d` as supermin 5 leaves it (no stamp), whose `kernel` link points at a
/// kernel that was removed since.
fn supermin5_appliance_with_removed_kernel(user: &Path) -> PathBuf {
    let dir = user.join("appliance.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink("/boot/vmlinuz-0.0.0-removed", dir.join("kernel")).unwrap();
    std::fs::write(dir.join("initrd"), vec![7u8; 64 << 10]).unwrap();
    let root = std::fs::File::create(dir.join("root")).unwrap();
    root.set_len(4 << 30).unwrap(); // sparse: costs nothing on disk
    dir
}

fn entries(json: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON object");
    v["cache_dirs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["entries"].as_array().unwrap().clone())
        .collect()
}

#[test]
fn cache_list_gc_clean_on_a_fresh_a_stale_and_a_locked_entry() {
    let s = TempDir::new("cache-cmd");
    let (a, b) = (s.join("a"), s.join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let cmd = |args: &[&str]| supermin_in(&a, &b, args);

    // Fresh: the default appliance, built by `supermin run` itself in A.
    let (code, out, err) = output_of(&mut cmd(&["run", "--accel", "auto", "--", "true"]));
    assert_eq!(code, 0, "supermin run failed:\n{out}\n{err}");
    let (ua, ub) = (user_dir(&a), user_dir(&b));
    let default = ua.join("supermin-rs-default.d");
    assert_e2fsck_clean(&default.join("root"));
    // Stale: libguestfs's appliance.d in A whose kernel was removed.
    let stale = supermin5_appliance_with_removed_kernel(&ua);
    // Locked: libguestfs's appliance.d in B (TMPDIR), whose builder holds B's lock.
    std::fs::create_dir_all(&ub).unwrap();
    let locked = supermin5_appliance_with_removed_kernel(&ub);
    let held = supermin_cache::lock(&ub.join("lock")).unwrap();

    let (code, out, err) = output_of(&mut cmd(&["cache", "list", "--json"]));
    assert_eq!(code, 0, "{err}");
    let list = entries(&out);
    assert_eq!(list.len(), 3, "{out}");
    let find = |p: &Path| {
        list.iter()
            .find(|e| e["path"] == p.to_string_lossy().as_ref())
            .unwrap_or_else(|| panic!("{} not listed: {out}", p.display()))
            .clone()
    };
    let (f, st, lk) = (find(&default), find(&stale), find(&locked));
    assert_eq!(f["fresh"], true, "{f}");
    assert_eq!(f["in_use"], false);
    assert!(f["bytes_on_disk"].as_u64().unwrap() > 1 << 20, "{f}");
    assert!(
        f["bytes_on_disk"].as_u64().unwrap() < 1 << 30,
        "sparse-aware: {f}"
    );
    assert_eq!(st["fresh"], false, "{st}");
    assert!(
        st["why"]
            .as_str()
            .unwrap()
            .contains("vmlinuz-0.0.0-removed"),
        "{st}"
    );
    // A sparse 4 GiB root costs what it holds.
    assert!(st["bytes_on_disk"].as_u64().unwrap() < 1 << 20, "{st}");
    assert_eq!(lk["in_use"], true, "{lk}");

    let (code, text, _) = output_of(&mut cmd(&["cache", "list"]));
    assert_eq!(code, 0);
    assert!(text.contains("in use"), "{text}");
    assert!(text.contains("fresh"), "{text}");

    // gc --dry-run removes nothing.
    let (code, out, _) = output_of(&mut cmd(&["cache", "gc", "--dry-run"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("would remove") && out.contains("would free"),
        "{out}"
    );
    assert!(stale.exists() && locked.exists());

    // gc: the stale entry goes, the fresh one stays, the locked one is kept.
    let (code, out, err) = output_of(&mut cmd(&["cache", "gc"]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!stale.exists(), "{out}");
    assert!(default.join("root").exists(), "{out}");
    assert!(locked.exists(), "{out}");
    assert!(out.contains("kept") && out.contains("in use"), "{out}");
    assert!(out.lines().last().unwrap().starts_with("freed "), "{out}");

    // clean: everything of ours but what a builder holds.
    let (code, out, _) = output_of(&mut cmd(&["cache", "clean"]));
    assert_eq!(code, 0);
    assert!(!default.exists(), "{out}");
    assert!(locked.exists(), "{out}");
    let freed = out.lines().last().unwrap();
    assert!(
        freed.starts_with("freed ") && !freed.starts_with("freed 0 B"),
        "{out}"
    );

    // Once the builder is done, clean takes it too.
    drop(held);
    let (code, out, _) = output_of(&mut cmd(&["cache", "clean"]));
    assert_eq!(code, 0);
    assert!(!locked.exists(), "{out}");
    let (_, out, _) = output_of(&mut cmd(&["cache", "list", "--json"]));
    assert!(entries(&out).is_empty(), "{out}");
}
