//! End-to-end: builder input bombs (the security issue's part 7). A base image of a hundred
//! bytes that declares a terabyte, or a gzip/xz file that decompresses to gigabytes of
//! zeros, once filled the disk twice (a scratch copy, then the output). Now holes stay
//! holes, and what inputs may expand to is capped (`SUPERMIN_MAX_INPUT_SIZE`, 4G by
//! default): past it the build fails with one line that names the file, the limit and the
//! variable, exit status 1, and nothing is published.
//!
//! Every bomb is made here, streaming: a compressed block of zeros is written once and
//! repeated (gzip members and xz streams may be concatenated), so no test holds gigabytes.

#![allow(clippy::cast_possible_truncation)]

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use supermin_tests::{assert_e2fsck_clean, supermin_bin, TempDir};

const TIB: u64 = 1 << 40;
const GIB: u64 = 1 << 30;

fn supermin(args: &[&str], d: &Path, out: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(supermin_bin());
    cmd.args(args)
        .arg(d)
        .arg("-o")
        .arg(out)
        .env_remove("SUPERMIN_MAX_INPUT_SIZE")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run supermin")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "supermin failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Exit status 1 and exactly one line on stderr, `supermin: error: ...`, holding each of
/// `needles`.
#[track_caller]
fn fails_with_one_line(out: &Output, needles: &[&str]) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "want one line, got: {err}");
    assert!(err.starts_with("supermin: error: "), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
    err
}

/// Nothing published and no staging debris left beside `out`.
#[track_caller]
fn nothing_left(out: &Path) {
    assert!(!out.exists(), "{} was published", out.display());
    let parent = out.parent().unwrap();
    let debris: Vec<_> = fs::read_dir(parent)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("supermin-tmp"))
        .collect();
    assert!(debris.is_empty(), "left behind: {debris:?}");
}

/// Bytes on disk (`st_blocks` is in 512-byte units).
fn disk_bytes(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// A tar archive holding one GNU sparse member (type `S`) named `name`, `len` bytes long and
/// all hole: its map is a single empty region at `len`, as GNU tar writes for a file that
/// ends in a hole. 512 bytes of header and 1024 of end-of-archive.
fn sparse_hole_tar(name: &str, len: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(0);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(len);
    gnu.sparse[0].set_offset(len);
    gnu.sparse[0].set_length(0);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.resize(512 + 1024, 0);
    out
}

/// The header of a regular member `name` of `len` bytes (its data is the caller's).
fn member_header(name: &str, len: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_mode(0o644);
    h.set_size(len);
    h.set_cksum();
    h
}

#[derive(Clone, Copy)]
enum Codec {
    Gzip,
    Xz,
}

fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
    match codec {
        Codec::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Codec::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
    }
}

/// A compressed tar stream at `path`: `head` (tar headers and data), then `zeros` bytes of
/// zeros, then the end-of-archive blocks. Each MiB of zeros is one gzip member (or xz
/// stream) compressed once and written again and again, so that a bomb of gigabytes is
/// made in moments (even by a debug build) and is a few MB on disk.
fn compressed_tar(path: &Path, codec: Codec, head: &[u8], zeros: u64) {
    const CHUNK: u64 = 1 << 20;
    assert_eq!(zeros % CHUNK, 0);
    let mut f = File::create(path).unwrap();
    f.write_all(&compress(codec, head)).unwrap();
    let chunk = compress(codec, &vec![0u8; CHUNK as usize]);
    for _ in 0..zeros / CHUNK {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(&compress(codec, &[0u8; 1024])).unwrap();
}

/// A supermin.d holding `name` with `bytes`, and a hostfiles list so the appliance has a
/// program in it as a real one would.
fn supermin_d(tmp: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let d = tmp.join("supermin.d");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("hostfiles"), "/usr/bin/true\n").unwrap();
    fs::write(d.join(name), bytes).unwrap();
    d
}

fn debugfs_stat(image: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(image)
        .output()
        .expect("run debugfs");
    text(&out.stdout)
}

#[test]
fn a_137_byte_base_image_declaring_a_tebibyte_is_refused_with_one_line() {
    // Regression: this member was expanded into 1 TiB of zeros in a scratch file (and
    // would have been written again into the output) until the disk was full.
    let tmp = TempDir::new("bomb-sparse-default");
    let gz = compress(Codec::Gzip, &sparse_hole_tar("hole", TIB));
    assert!(gz.len() <= 137, "the bomb is {} bytes", gz.len());
    let d = supermin_d(&tmp, "base.tar.gz", &gz);
    let out = tmp.join("out");
    let o = supermin(&["--build", "-f", "ext2"], &d, &out, &[]);
    fails_with_one_line(
        &o,
        &[
            "base.tar.gz",
            "/hole",
            "1 TiB",
            "4 GiB",
            "SUPERMIN_MAX_INPUT_SIZE=1T",
        ],
    );
    nothing_left(&out);
}

#[test]
fn a_tebibyte_of_holes_allowed_by_the_variable_costs_no_disk_in_ext2_or_chroot() {
    let tmp = TempDir::new("bomb-sparse-allowed");
    let d = supermin_d(
        &tmp,
        "base.tar.gz",
        &compress(Codec::Gzip, &sparse_hole_tar("hole", TIB)),
    );
    let allow = [("SUPERMIN_MAX_INPUT_SIZE", "1T")];

    // The same appliance without the member, to compare the disk usage with.
    let plain = tmp.join("plain.d");
    fs::create_dir(&plain).unwrap();
    fs::copy(d.join("hostfiles"), plain.join("hostfiles")).unwrap();
    let baseline = tmp.join("baseline");
    ok(&supermin(
        &["--build", "-f", "ext2"],
        &plain,
        &baseline,
        &[],
    ));
    assert_e2fsck_clean(&baseline.join("root"));

    let out = tmp.join("ext2");
    ok(&supermin(&["--build", "-f", "ext2"], &d, &out, &allow));
    let root = out.join("root");
    assert_e2fsck_clean(&root);
    let stat = debugfs_stat(&root, "/hole");
    assert!(stat.contains("Size: 1099511627776"), "{stat}");
    assert!(stat.contains("Blockcount: 0"), "{stat}");
    let (with, without) = (disk_bytes(&root), disk_bytes(&baseline.join("root")));
    eprintln!("root on disk: {with} bytes with the member, {without} without");
    assert!(
        with <= without + (64 << 10),
        "the member cost {} bytes of disk",
        with - without
    );

    let out = tmp.join("chroot");
    ok(&supermin(&["--build", "-f", "chroot"], &d, &out, &allow));
    let hole = out.join("hole");
    assert_eq!(fs::metadata(&hole).unwrap().len(), TIB);
    assert_eq!(disk_bytes(&hole), 0);
}

#[test]
fn a_gzip_bomb_stops_at_the_limit_with_one_line() {
    let tmp = TempDir::new("bomb-gzip");
    let d = tmp.join("supermin.d");
    fs::create_dir(&d).unwrap();
    // A valid archive (one small member), then 8 GiB of zeros after its end.
    let mut head = member_header("small", 5).as_bytes().to_vec();
    head.extend_from_slice(b"hello");
    head.resize(1024, 0);
    let bomb = d.join("base.tar.gz");
    compressed_tar(&bomb, Codec::Gzip, &head, 8 * GIB);
    assert!(fs::metadata(&bomb).unwrap().len() < 16 << 20);
    let out = tmp.join("out");
    // A small limit keeps the test quick (a debug build inflates at some 15 MB/s); the
    // default's turn comes in the sparse test above.
    let o = supermin(
        &["--build", "-f", "ext2"],
        &d,
        &out,
        &[("SUPERMIN_MAX_INPUT_SIZE", "32M")],
    );
    fails_with_one_line(
        &o,
        &[
            &bomb.display().to_string(),
            "decompresses to more than 32 MiB",
            "SUPERMIN_MAX_INPUT_SIZE=",
        ],
    );
    nothing_left(&out);
}

#[test]
fn an_xz_bomb_stops_at_the_limit_with_one_line() {
    let tmp = TempDir::new("bomb-xz");
    let d = tmp.join("supermin.d");
    fs::create_dir(&d).unwrap();
    // One member that says it holds 8 GiB, and does.
    let head = member_header("zeros", 8 * GIB).as_bytes().to_vec();
    let bomb = d.join("base.tar.xz");
    compressed_tar(&bomb, Codec::Xz, &head, 8 * GIB);
    assert!(fs::metadata(&bomb).unwrap().len() < 16 << 20);
    let out = tmp.join("out");
    let o = supermin(
        &["--build", "-f", "chroot"],
        &d,
        &out,
        &[("SUPERMIN_MAX_INPUT_SIZE", "256M")],
    );
    fails_with_one_line(
        &o,
        &[
            &bomb.display().to_string(),
            "decompresses to more than 256 MiB",
            "SUPERMIN_MAX_INPUT_SIZE=1G",
        ],
    );
    nothing_left(&out);
}

#[test]
fn a_compressed_list_bomb_stops_at_the_limit_with_one_line() {
    let tmp = TempDir::new("bomb-list");
    let d = tmp.join("supermin.d");
    fs::create_dir(&d).unwrap();
    let list = d.join("packages.gz");
    let mut e =
        flate2::write::GzEncoder::new(File::create(&list).unwrap(), flate2::Compression::fast());
    let lines = b"bash\n".repeat(1 << 16);
    for _ in 0..16 {
        e.write_all(&lines).unwrap(); // 5 MiB of package names
    }
    e.finish().unwrap();
    let out = tmp.join("out");
    let o = supermin(
        &["--build", "-f", "chroot"],
        &d,
        &out,
        &[("SUPERMIN_MAX_INPUT_SIZE", "1M")],
    );
    fails_with_one_line(&o, &["packages.gz", "1 MiB", "SUPERMIN_MAX_INPUT_SIZE="]);
    nothing_left(&out);
}

#[test]
fn zeros_within_a_raised_limit_are_holes_in_the_output() {
    let tmp = TempDir::new("bomb-raised");
    let d = tmp.join("supermin.d");
    fs::create_dir(&d).unwrap();
    let head = member_header("zeros", 64 << 20).as_bytes().to_vec();
    compressed_tar(&d.join("base.tar.gz"), Codec::Gzip, &head, 64 << 20);
    let out = tmp.join("out");
    let o = supermin(
        &["--build", "-f", "chroot"],
        &d,
        &out,
        &[("SUPERMIN_MAX_INPUT_SIZE", "32M")],
    );
    fails_with_one_line(&o, &["32 MiB", "SUPERMIN_MAX_INPUT_SIZE=1G"]);
    nothing_left(&out);
    let o = supermin(
        &["--build", "-f", "chroot"],
        &d,
        &out,
        &[("SUPERMIN_MAX_INPUT_SIZE", "1G")],
    );
    ok(&o);
    let zeros = out.join("zeros");
    assert_eq!(fs::metadata(&zeros).unwrap().len(), 64 << 20);
    // At most the block it shares with the tar header in the decompressed view.
    assert!(disk_bytes(&zeros) <= 4096, "{} bytes", disk_bytes(&zeros));
}

#[test]
fn a_limit_that_is_not_a_size_is_one_line_naming_the_variable() {
    let tmp = TempDir::new("bomb-bad-limit");
    let d = supermin_d(&tmp, "packages", b"bash\n");
    let out = tmp.join("out");
    let o = supermin(
        &["--build", "-f", "chroot"],
        &d,
        &out,
        &[("SUPERMIN_MAX_INPUT_SIZE", "lots")],
    );
    fails_with_one_line(&o, &["SUPERMIN_MAX_INPUT_SIZE=\"lots\"", "16G"]);
    nothing_left(&out);
}
