//! Shell patterns as supermin uses them: `fnmatch(3)` with `FNM_NOESCAPE` and without
//! `FNM_PATHNAME` for excludefiles (so `*` crosses `/`), and `glob(3)` with `GLOB_NOESCAPE`
//! for hostfiles (per path component, a leading `.` only matched literally, results sorted).
//! Written here rather than taken from a crate because both must match libc exactly and the
//! glob must run against an alternative root for tests and `--prepare`.

use std::fs;
use std::path::{Path, PathBuf};

/// `fnmatch(pattern, name, FNM_NOESCAPE)`: `*` and `?` match any byte, `/` included.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    match_bytes(pattern.as_bytes(), name.as_bytes(), false)
}

fn has_magic(s: &[u8]) -> bool {
    s.iter().any(|&c| c == b'*' || c == b'?' || c == b'[')
}

/// Iterative wildcard matcher with single-star backtracking (linear in practice).
/// `period`: a leading `.` in `name` must be matched by a literal `.` (glob's rule).
fn match_bytes(pat: &[u8], name: &[u8], period: bool) -> bool {
    if period && name.first() == Some(&b'.') && pat.first() != Some(&b'.') {
        return false;
    }
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, len)) = match_bracket(&pat[p..], name[n]) {
                        if matched {
                            p += len;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        // An unterminated bracket is a literal '['.
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Match one byte against the bracket expression at the start of `pat`.
/// Returns (matched, length of the expression), or None if it is not terminated.
fn match_bracket(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pat.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *pat.get(i)?;
        if ch == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if ch == b'[' && pat.get(i + 1) == Some(&b':') {
            if let Some(end) = pat[i + 2..].windows(2).position(|w| w == b":]") {
                let class = &pat[i + 2..i + 2 + end];
                matched |= match class {
                    b"alpha" => c.is_ascii_alphabetic(),
                    b"digit" => c.is_ascii_digit(),
                    b"alnum" => c.is_ascii_alphanumeric(),
                    b"upper" => c.is_ascii_uppercase(),
                    b"lower" => c.is_ascii_lowercase(),
                    b"space" => c.is_ascii_whitespace(),
                    b"punct" => c.is_ascii_punctuation(),
                    b"xdigit" => c.is_ascii_hexdigit(),
                    _ => false,
                };
                i += end + 4;
                continue;
            }
        }
        if pat.get(i + 1) == Some(&b'-') && pat.get(i + 2).is_some_and(|&e| e != b']') {
            let hi = pat[i + 2];
            matched |= ch <= c && c <= hi;
            i += 3;
        } else {
            matched |= ch == c;
            i += 1;
        }
    }
}

/// Expand an absolute glob pattern against `root` (the pattern's `/` is `root`).
/// Returns absolute in-root paths, sorted; a pattern matching nothing yields nothing.
pub fn glob(pattern: &str, root: &Path) -> Vec<PathBuf> {
    let Some(rel) = pattern.strip_prefix('/') else {
        return Vec::new();
    };
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let mut current = vec![PathBuf::from("/")];
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        for base in &current {
            let host_base = join_root(root, base);
            if has_magic(comp.as_bytes()) {
                let Ok(rd) = fs::read_dir(&host_base) else {
                    continue;
                };
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| match_bytes(comp.as_bytes(), n.as_bytes(), true))
                    .collect();
                names.sort();
                for n in names {
                    let p = base.join(&n);
                    if last || fs::metadata(join_root(root, &p)).is_ok_and(|m| m.is_dir()) {
                        next.push(p);
                    }
                }
            } else {
                let p = base.join(comp);
                let host = join_root(root, &p);
                let ok = if last {
                    fs::symlink_metadata(&host).is_ok()
                } else {
                    fs::metadata(&host).is_ok_and(|m| m.is_dir())
                };
                if ok {
                    next.push(p);
                }
            }
        }
        current = next;
        if current.is_empty() {
            break;
        }
    }
    if comps.is_empty() {
        return Vec::new();
    }
    current.sort();
    current
}

/// Host location of an absolute in-root path.
pub(crate) fn join_root(root: &Path, p: &Path) -> PathBuf {
    match p.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => root.join(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_crosses_slashes_in_excludes() {
        assert!(fnmatch("/usr/share/doc/*", "/usr/share/doc/bash/copyright"));
        assert!(!fnmatch("/usr/share/doc/*", "/usr/share/doc"));
        assert!(fnmatch("/var/log/*/*.log*", "/var/log/a/b/c.log.1"));
    }

    #[test]
    fn question_mark_and_brackets_follow_fnmatch() {
        assert!(fnmatch("/var/log/?tmp", "/var/log/wtmp"));
        assert!(!fnmatch("/var/log/?tmp", "/var/log/tmp"));
        assert!(fnmatch("/a/[abc]x", "/a/bx"));
        assert!(!fnmatch("/a/[!abc]x", "/a/bx"));
        assert!(fnmatch("/a/[a-c]x", "/a/cx"));
        assert!(fnmatch("/a/[[:digit:]]", "/a/7"));
        assert!(fnmatch("/a/[", "/a/["));
        assert!(fnmatch("/a/[]]", "/a/]"));
    }

    #[test]
    fn backslash_is_literal_with_noescape() {
        assert!(fnmatch("/a\\*", "/a\\xyz"));
        assert!(!fnmatch("/a\\*", "/a*"));
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        assert!(fnmatch("/etc/ld.so.cache", "/etc/ld.so.cache"));
        assert!(!fnmatch("/etc/ld.so.cache", "/etc/ld.so.cache2"));
    }

    #[test]
    fn glob_expands_sorted_and_skips_dotfiles() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("lib/lsb")).unwrap();
        for n in ["b", "a", ".hidden"] {
            fs::write(d.path().join("lib/lsb").join(n), "").unwrap();
        }
        let got = glob("/lib/lsb/*", d.path());
        assert_eq!(
            got,
            vec![PathBuf::from("/lib/lsb/a"), PathBuf::from("/lib/lsb/b")]
        );
        assert_eq!(
            glob("/lib/lsb/.h*", d.path()),
            vec![PathBuf::from("/lib/lsb/.hidden")]
        );
    }

    #[test]
    fn glob_without_match_gives_nothing() {
        let d = tempfile::tempdir().unwrap();
        assert!(glob("/nope/*", d.path()).is_empty());
        assert!(glob("/nope", d.path()).is_empty());
    }

    #[test]
    fn glob_with_magic_in_middle_component_only_descends_directories() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("x/one")).unwrap();
        fs::write(d.path().join("x/one/f"), "").unwrap();
        fs::write(d.path().join("x/file"), "").unwrap();
        assert_eq!(glob("/x/*/f", d.path()), vec![PathBuf::from("/x/one/f")]);
    }
}
