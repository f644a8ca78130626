//! `supermin mkfs SRC -o IMAGE`: the user-facing ext2 writer, through the real binary.
//! (The writer's exhaustive checks, hostile trees and random trees, live in `ext2/tests`;
//! these pin the command: options, the image it leaves, and its errors.)

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use supermin_tests::{assert_e2fsck_clean, supermin_bin, TempDir};

fn mkfs(args: &[&str]) -> Output {
    Command::new(supermin_bin())
        .arg("mkfs")
        .args(args)
        .output()
        .expect("run supermin mkfs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tool(cmd: &str, args: &[&str], image: &Path) -> String {
    let out = Command::new(cmd).args(args).arg(image).output().expect(cmd);
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// A small tree with the kinds a user's directory has.
fn sample_tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("hello.txt"), "hello, ext2\n").unwrap();
    fs::write(src.join("sub/deeper/data.bin"), vec![0xa5u8; 300_000]).unwrap();
    fs::hard_link(src.join("hello.txt"), src.join("sub/hello-again.txt")).unwrap();
    symlink("../hello.txt", src.join("sub/link")).unwrap();
    fs::set_permissions(src.join("hello.txt"), fs::Permissions::from_mode(0o4750)).unwrap();
    src
}

#[test]
fn mkfs_writes_a_clean_image_with_the_given_label_and_uuid() {
    let tmp = TempDir::new("mkfs-cli");
    let src = sample_tree(tmp.path());
    let img = tmp.join("out.img");
    let uuid = "0c0ffee0-1234-4abc-8def-0123456789ab";
    let out = mkfs(&[
        src.to_str().unwrap(),
        "-o",
        img.to_str().unwrap(),
        "--label",
        "sampleroot",
        "--uuid",
        uuid,
        "--size",
        "16M",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fs::metadata(&img).unwrap().len(), 16 << 20);
    assert_e2fsck_clean(&img);

    let header = tool("dumpe2fs", &["-h"], &img);
    assert!(header.contains("sampleroot"), "{header}");
    assert!(header.contains(uuid), "{header}");
    assert!(
        tool("debugfs", &["-R", "cat /hello.txt"], &img).contains("hello, ext2"),
        "file contents"
    );
    let stat = tool("debugfs", &["-R", "stat /hello.txt"], &img);
    assert!(stat.contains("Mode:  04750"), "{stat}");
    assert!(stat.contains("Links: 2"), "hard link kept: {stat}");
    let link = tool("debugfs", &["-R", "stat /sub/link"], &img);
    assert!(link.contains("Fast link dest: \"../hello.txt\""), "{link}");
    let src_uid = fs::metadata(src.join("hello.txt")).unwrap().uid();
    assert!(stat.contains(&format!("User: {src_uid:>5}")), "{stat}");
}

#[test]
fn mkfs_sizes_the_image_from_its_content_when_no_size_is_given() {
    let tmp = TempDir::new("mkfs-auto");
    let src = sample_tree(tmp.path());
    let img = tmp.join("auto.img");
    let out = mkfs(&[src.to_str().unwrap(), "-o", img.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let len = fs::metadata(&img).unwrap().len();
    assert!((300_000..=64 << 20).contains(&len), "auto size {len}");
    assert_e2fsck_clean(&img);
}

#[test]
fn mkfs_errors_are_one_line_with_status_1() {
    let tmp = TempDir::new("mkfs-errors");
    let src = sample_tree(tmp.path());
    let img = tmp.join("x.img");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                src.display().to_string(),
                "-o".into(),
                img.display().to_string(),
                "--size".into(),
                "64K".into(),
            ],
            "too small",
        ),
        (
            vec![
                "/nonexistent-dir".into(),
                "-o".into(),
                img.display().to_string(),
            ],
            "/nonexistent-dir",
        ),
        (
            vec![
                src.display().to_string(),
                "-o".into(),
                img.display().to_string(),
                "--uuid".into(),
                "not-a-uuid".into(),
            ],
            "not-a-uuid",
        ),
        (
            vec![
                src.display().to_string(),
                "-o".into(),
                img.display().to_string(),
                "--size".into(),
                "lots".into(),
            ],
            "lots",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = mkfs(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.contains("hint:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
