//! Kernel version ordering and version-from-file-name.
//!
//! supermin 5 sorted candidates with a generic string/number comparison over
//! file names, so a stray `vmlinuz-3.10.0.old` could outrank the real newest
//! kernel. Here a version is compared as a kernel release: the dotted numeric
//! release first (`6.12.117` > `6.1.0`, `5.10` == `5.10.0`), then an upstream
//! `-rcN`/`~rcN` marks a pre-release that sorts before the release, then the
//! distro suffix piece by piece (numbers numerically, a number newer than a
//! word, like rpmvercmp). Equal-looking strings fall back to byte order so the
//! ordering is total and sorting is deterministic.

use std::cmp::Ordering;

/// Compares two kernel version strings (e.g. `6.1.0-56-amd64`,
/// `5.14.0-362.8.1.el9_3.x86_64`, `6.5.0-rc3`) as kernel releases.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (rel_a, rest_a) = split_release(a);
    let (rel_b, rest_b) = split_release(b);
    compare_release(&rel_a, &rel_b)
        .then_with(|| compare_prerelease(rest_a, rest_b))
        .then_with(|| compare_suffix(rest_a, rest_b))
        .then_with(|| a.cmp(b))
}

/// The leading `N(.N)*` of a version, as digit strings, and what follows.
fn split_release(v: &str) -> (Vec<&str>, &str) {
    let mut parts = Vec::new();
    let mut rest = v;
    loop {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            break;
        }
        parts.push(&rest[..digits]);
        rest = &rest[digits..];
        // A dot continues the release only when a number follows it; `3.10.0.old`
        // has release 3.10.0 and suffix `.old`.
        match rest.strip_prefix('.') {
            Some(after) if after.starts_with(|c: char| c.is_ascii_digit()) => rest = after,
            _ => break,
        }
    }
    (parts, rest)
}

fn compare_release(a: &[&str], b: &[&str]) -> Ordering {
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or("0");
        let y = b.get(i).copied().unwrap_or("0");
        match compare_digits(x, y) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    Ordering::Equal
}

/// Compares digit strings of any length numerically, without overflow.
fn compare_digits(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn is_prerelease(suffix: &str) -> bool {
    let s = suffix.trim_start_matches(['-', '~', '.']);
    suffix.starts_with('~')
        || (s.len() > 2 && s.starts_with("rc") && s.as_bytes()[2].is_ascii_digit())
}

/// A pre-release (`-rc3`, `~rc3`) of a release sorts before every other build
/// of that release.
fn compare_prerelease(a: &str, b: &str) -> Ordering {
    match (is_prerelease(a), is_prerelease(b)) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Num(&'a str),
    Word(&'a str),
}

fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        let digit = bytes[i].is_ascii_digit();
        while i < bytes.len()
            && bytes[i].is_ascii_alphanumeric()
            && bytes[i].is_ascii_digit() == digit
        {
            i += 1;
        }
        let piece = &s[start..i];
        out.push(if digit {
            Piece::Num(piece)
        } else {
            Piece::Word(piece)
        });
    }
    out
}

fn compare_suffix(a: &str, b: &str) -> Ordering {
    let pa = pieces(a);
    let pb = pieces(b);
    for (x, y) in pa.iter().zip(pb.iter()) {
        let ord = match (x, y) {
            (Piece::Num(x), Piece::Num(y)) => compare_digits(x, y),
            (Piece::Word(x), Piece::Word(y)) => x.cmp(y),
            (Piece::Num(_), Piece::Word(_)) => Ordering::Greater,
            (Piece::Word(_), Piece::Num(_)) => Ordering::Less,
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

/// The version a kernel file name carries: `vmlinuz-6.1.0-56-amd64` gives
/// `6.1.0-56-amd64`. Other names (`vmlinuz`, `bzImage`) carry none.
pub fn version_from_file_name(name: &str) -> Option<&str> {
    let v = name
        .strip_prefix("vmlinuz-")
        .or_else(|| name.strip_prefix("vmlinux-"))?;
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newest(mut v: Vec<&str>) -> Vec<&str> {
        v.sort_by(|a, b| compare_versions(b, a));
        v
    }

    #[test]
    fn release_numbers_compare_numerically_not_as_text() {
        assert_eq!(
            compare_versions("6.12.117+deb12-amd64", "6.1.0-56-amd64"),
            Ordering::Greater
        );
        assert_eq!(compare_versions("5.9.0", "5.10.0"), Ordering::Less);
        assert_eq!(
            compare_versions("4.19.0-27-amd64", "4.9.0-19-amd64"),
            Ordering::Greater
        );
    }

    #[test]
    fn a_dot_old_file_name_does_not_outrank_a_newer_build() {
        // supermin 5 picked vmlinuz-3.10.0.old over the real newest kernel.
        assert_eq!(
            compare_versions("3.10.0.old", "3.10.0-229.el7.x86_64"),
            Ordering::Less
        );
        assert_eq!(compare_versions("3.10.0.old", "4.1.0"), Ordering::Less);
    }

    #[test]
    fn release_candidates_sort_before_their_release() {
        assert_eq!(compare_versions("6.5.0-rc3", "6.5.0"), Ordering::Less);
        assert_eq!(
            compare_versions("6.5.0-rc3", "6.5.0-1-amd64"),
            Ordering::Less
        );
        assert_eq!(compare_versions("6.5.0-rc3", "6.4.16"), Ordering::Greater);
        assert_eq!(
            compare_versions("6.5.0-rc10", "6.5.0-rc9"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions("6.5~rc2-amd64", "6.5-1-amd64"),
            Ordering::Less
        );
    }

    #[test]
    fn distro_build_numbers_compare_numerically() {
        assert_eq!(
            compare_versions("6.1.0-56-amd64", "6.1.0-9-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions(
                "5.14.0-362.8.1.el9_3.x86_64",
                "5.14.0-362.24.1.el9_3.x86_64"
            ),
            Ordering::Less
        );
    }

    #[test]
    fn missing_release_components_count_as_zero_but_order_stays_total() {
        assert_ne!(compare_versions("5.10", "5.10.0"), Ordering::Equal);
        assert_eq!(
            compare_release(&["5", "10"], &["5", "10", "0"]),
            Ordering::Equal
        );
        assert_eq!(compare_versions("5.10.1", "5.10"), Ordering::Greater);
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        assert_eq!(
            compare_versions("99999999999999999999999.1", "99999999999999999999998.9"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions("007.1", "7.1"),
            compare_versions("007.1", "7.1")
        );
    }

    #[test]
    fn sorting_candidates_puts_the_newest_first() {
        let sorted = newest(vec![
            "6.1.0-9-amd64",
            "3.10.0.old",
            "6.12.117+deb12-amd64",
            "6.1.0-56-amd64",
            "6.13.0-rc1",
        ]);
        assert_eq!(
            sorted,
            vec![
                "6.13.0-rc1",
                "6.12.117+deb12-amd64",
                "6.1.0-56-amd64",
                "6.1.0-9-amd64",
                "3.10.0.old"
            ]
        );
    }

    #[test]
    fn ordering_is_antisymmetric_on_a_sample() {
        let sample = [
            "",
            "abc",
            "1",
            "1.0",
            "1.0.0",
            "6.1.0-56-amd64",
            "6.1.0-56-amd64+debug",
            "6.5.0-rc3",
            "6.5~rc3",
            "3.10.0.old",
            "5.14.0-362.el9.x86_64",
            "linux",
        ];
        for a in sample {
            for b in sample {
                assert_eq!(
                    compare_versions(a, b),
                    compare_versions(b, a).reverse(),
                    "{a} vs {b}"
                );
                assert_eq!(
                    compare_versions(a, b) == Ordering::Equal,
                    a == b,
                    "{a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn file_names_give_versions_only_after_the_vmlinuz_prefix() {
        assert_eq!(
            version_from_file_name("vmlinuz-6.1.0-56-amd64"),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(version_from_file_name("vmlinux-5.10"), Some("5.10"));
        assert_eq!(version_from_file_name("vmlinuz"), None);
        assert_eq!(version_from_file_name("vmlinuz-"), None);
        assert_eq!(version_from_file_name("bzImage"), None);
    }
}
