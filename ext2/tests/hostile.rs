//! A hostile tree made on disk — triple-indirect sparse files, empty files,
//! a 20000-entry directory, deep nesting, fast and slow symlinks, hard
//! links, devices (510:70000 too), FIFOs, sockets, setuid/setgid/sticky,
//! 32-bit owners, times before 1970 and after 2038 with nanoseconds,
//! non-UTF-8 and 255-byte names — read with `Tree::from_dir`, written,
//! checked with `e2fsck -fn`, mounted read-only and compared.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{assert_fsck_clean, is_root, verify_mounted, Mount, Rng, TempDir};
use rustix::fs::{Timespec, Timestamps};
use supermin_ext2::{write_image, Options, Tree};

const GIB: u64 = 1 << 30;

fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        last_modification: Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mknod(p: &Path, kind: rustix::fs::FileType, major: u32, minor: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        kind,
        rustix::fs::Mode::from_raw_mode(0o640),
        rustix::fs::makedev(major, minor),
    )
    .unwrap();
}

/// Builds the tree under `src`; returns paths whose exact metadata the test
/// also checks against what was set here, independent of `from_dir`.
/// Metadata set by hand on one path.
struct Expected {
    path: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
}

fn build_hostile(src: &Path) -> Vec<Expected> {
    let mut rng = Rng::new(7);
    let mut expect = Vec::new();

    // Files of every mapping depth: direct, single, double (dense, random
    // bytes) and triple indirect (sparse, data past 4 GiB).
    fs::write(src.join("small"), b"hello\n").unwrap();
    fs::write(src.join("single"), rng.bytes(200 * 1024)).unwrap();
    fs::write(src.join("double"), rng.bytes(6 << 20)).unwrap();
    let sparse = File::create(src.join("sparse-5g")).unwrap();
    sparse.set_len(5 * GIB).unwrap();
    sparse.write_all_at(b"head", 0).unwrap();
    sparse
        .write_all_at(&rng.bytes(100_000), 2 * GIB + 12345)
        .unwrap();
    sparse
        .write_all_at(&rng.bytes(70_000), 4 * GIB + GIB / 2 + 1)
        .unwrap();
    sparse.write_all_at(b"tail", 5 * GIB - 4).unwrap();
    drop(sparse);
    // A sparse file whose data does not start at 0 and ends in a hole.
    let holes = File::create(src.join("holes")).unwrap();
    holes.set_len(3 << 20).unwrap();
    holes.write_all_at(&rng.bytes(5000), 1 << 20).unwrap();
    drop(holes);
    File::create(src.join("empty")).unwrap();
    File::create(src.join("empty2")).unwrap();

    // 20000 entries, names of every length up to 255.
    let big = src.join("bigdir");
    fs::create_dir(&big).unwrap();
    for i in 0..20_000u32 {
        let len = 1 + (i as usize * 7) % 255;
        let mut name = format!("{i}-").into_bytes();
        name.resize(len.max(name.len()), b'n');
        File::create(big.join(OsStr::from_bytes(&name))).unwrap();
    }

    // Deep nesting.
    let mut deep = src.join("deep");
    for _ in 0..120 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"deep file").unwrap();

    // Symlinks around the 60-byte fast/slow boundary, and a long one.
    let links = src.join("links");
    fs::create_dir(&links).unwrap();
    for n in [1usize, 59, 60, 61, 200, 4000] {
        let target: String = std::iter::repeat_n('t', n).collect();
        std::os::unix::fs::symlink(&target, links.join(format!("len{n}"))).unwrap();
    }
    std::os::unix::fs::symlink("../small", links.join("rel")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/dangling", links.join("dangling")).unwrap();

    // Hard links across directories, of a file, a symlink and a device.
    let hl = src.join("hardlinks");
    fs::create_dir(&hl).unwrap();
    fs::write(hl.join("a"), b"linked contents").unwrap();
    fs::hard_link(hl.join("a"), hl.join("b")).unwrap();
    fs::hard_link(hl.join("a"), src.join("deep/a-too")).unwrap();
    std::os::unix::fs::symlink("a", hl.join("sym")).unwrap();
    fs::hard_link(hl.join("sym"), hl.join("sym2")).unwrap();

    // Devices, FIFO, socket.
    let dev = src.join("dev");
    fs::create_dir(&dev).unwrap();
    mknod(
        &dev.join("null"),
        rustix::fs::FileType::CharacterDevice,
        1,
        3,
    );
    mknod(&dev.join("sda1"), rustix::fs::FileType::BlockDevice, 8, 1);
    mknod(
        &dev.join("big"),
        rustix::fs::FileType::CharacterDevice,
        510,
        70000,
    );
    mknod(
        &dev.join("bigblk"),
        rustix::fs::FileType::BlockDevice,
        4095,
        1_048_575,
    );
    mknod(
        &dev.join("minor256"),
        rustix::fs::FileType::CharacterDevice,
        0,
        256,
    );
    fs::hard_link(dev.join("null"), dev.join("null-link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dev.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(dev.join("socket")).unwrap());

    // Odd names.
    let names = src.join("names");
    fs::create_dir(&names).unwrap();
    for n in [
        &b"\xff\xfe not utf-8"[..],
        b"\x80",
        b"new\nline",
        b" leading space",
        b"-dash",
        "ünïcödé ✓".as_bytes(),
        &[b'x'; 255],
    ] {
        fs::write(names.join(OsStr::from_bytes(n)), n).unwrap();
    }
    let mut long_dir = vec![b'D'; 255];
    long_dir[0] = 0xC0; // invalid UTF-8 too
    fs::create_dir(names.join(OsStr::from_bytes(&long_dir))).unwrap();

    // Modes, owners and times, set last (chown clears setuid).
    let special = src.join("special");
    fs::create_dir(&special).unwrap();
    type Case = (&'static str, bool, u32, u32, u32, (i64, i64), (i64, i64));
    let cases: [Case; 8] = [
        (
            "suid",
            false,
            0o4755,
            0,
            0,
            (-1_000_000_000, 123_456_789),
            (-1, 999_999_999),
        ),
        (
            "sgid-dir",
            true,
            0o2775,
            65534,
            65534,
            (4_000_000_000, 1),
            (4_102_444_800, 987_654_321),
        ),
        (
            "sticky",
            true,
            0o1777,
            70_000,
            4_294_967_294,
            (0, 0),
            (1, 1),
        ),
        (
            "none",
            false,
            0o000,
            1000,
            100,
            (8_000_000_000, 5),
            (-2_147_483_648, 0),
        ),
        (
            "all",
            false,
            0o7777,
            4_000_000_000,
            3,
            (2_147_483_647, 999_999_999),
            (2_147_483_648, 0),
        ),
        (
            "epoch3",
            false,
            0o644,
            1,
            1,
            (13_000_000_000, 7),
            (10_000_000_000, 8),
        ),
        (
            "y2038",
            false,
            0o640,
            2,
            2,
            (2_147_483_647, 0),
            (2_147_483_648, 1),
        ),
        (
            "pre1970",
            true,
            0o755,
            3,
            3,
            (-86_400, 500),
            (-31_536_000, 250_000_000),
        ),
    ];
    for (name, dir, mode, uid, gid, atime, mtime) in cases {
        let p = special.join(name);
        if dir {
            fs::create_dir(&p).unwrap();
        } else {
            fs::write(&p, name).unwrap();
        }
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
        chmod(&p, mode);
        set_times(&p, atime, mtime);
        expect.push(Expected {
            path: p,
            mode,
            uid,
            gid,
            mtime,
        });
    }
    let lnk = special.join("old-symlink");
    std::os::unix::fs::symlink("target", &lnk).unwrap();
    std::os::unix::fs::lchown(&lnk, Some(123_456), Some(654_321)).unwrap();
    set_times(&lnk, (-5, 5), (5_000_000_000, 5));
    expect.push(Expected {
        path: lnk,
        mode: 0o777,
        uid: 123_456,
        gid: 654_321,
        mtime: (5_000_000_000, 5),
    });
    set_times(&special, (1, 2), (3, 4));
    expect
}

#[test]
fn hostile_tree_round_trips_through_from_dir_and_a_mount() {
    if !is_root() {
        println!("SKIPPED hostile_tree_round_trips_through_from_dir_and_a_mount: needs root (mknod, chown, mount)");
        return;
    }
    let tmp = TempDir::new("hostile");
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let expect = build_hostile(&src);

    let tree = Tree::from_dir(&src).unwrap();
    // from_dir saw what was set.
    for Expected {
        path: p,
        mode,
        uid,
        gid,
        mtime,
    } in &expect
    {
        let rel = p.strip_prefix(&src).unwrap();
        let path = [b"/", rel.as_os_str().as_bytes()].concat();
        let meta = tree.meta(tree.lookup(&path).unwrap());
        assert_eq!(
            (
                u32::from(meta.mode),
                meta.uid,
                meta.gid,
                meta.mtime.secs,
                i64::from(meta.mtime.nsec)
            ),
            (*mode, *uid, *gid, mtime.0, mtime.1),
            "{}",
            p.display()
        );
    }

    let img = tmp.path().join("root.img");
    let opts = Options {
        creation_time: 1_700_000_000,
        label: Some("hostile".into()),
        ..Options::default()
    };
    let summary = write_image(&tree, &img, &opts).unwrap();
    // The image is sparse: 5 GiB of holes cost nothing.
    let on_disk = fs::metadata(&img).unwrap().blocks() * 512;
    assert!(on_disk < 64 << 20, "image uses {on_disk} bytes on disk");
    assert!(summary.size < GIB, "derived size {}", summary.size);
    assert_fsck_clean(&img);

    let mnt_dir = tmp.path().join("mnt");
    let mnt = match Mount::new(&img, &mnt_dir) {
        Ok(m) => m,
        Err(why) => {
            println!("SKIPPED the mount comparison: {why}");
            return;
        }
    };
    verify_mounted(&tree, &mnt.0, opts.block_size);
    // And against the source itself, for what reading cannot change.
    let sparse = fs::metadata(mnt.0.join("sparse-5g")).unwrap();
    assert_eq!(sparse.len(), 5 * GIB);
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "sparse file allocated {} bytes",
        sparse.blocks() * 512
    );
    for Expected {
        path: p,
        mode,
        uid,
        gid,
        mtime,
    } in &expect
    {
        let md = fs::symlink_metadata(mnt.0.join(p.strip_prefix(&src).unwrap())).unwrap();
        assert_eq!(
            (
                md.mode() & 0o7777,
                md.uid(),
                md.gid(),
                md.mtime(),
                md.mtime_nsec()
            ),
            (*mode, *uid, *gid, mtime.0, mtime.1),
            "{}",
            p.display()
        );
    }
    let null = fs::metadata(mnt.0.join("dev/null")).unwrap();
    assert_eq!(
        null.ino(),
        fs::metadata(mnt.0.join("dev/null-link")).unwrap().ino()
    );
    assert_eq!(
        common::split_dev(fs::symlink_metadata(mnt.0.join("dev/big")).unwrap().rdev()),
        (510, 70000)
    );
    drop(mnt);
}
