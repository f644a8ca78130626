//! Modules the appliance's own boot loads from its root anyway, which the initrd then
//! loads first.
//!
//! libguestfs's appliance loads two modules from its root at every launch: its `/init`
//! runs `modprobe dm_mod`, and udev (Debian's `80-debian-compat.rules`) loads `sg` for
//! every SCSI device. From the root each costs more than its load: kmod decompresses it
//! (`.ko.xz` on Debian's 6.12), and the kernel checks its signature (SHA-256 and ECDSA,
//! in C, under emulation): about 0.1 s of a TCG launch for the two. Loaded by our init
//! from the initrd, stored uncompressed and (where the kernel does not enforce signing)
//! handed over without the signature, they cost only their load, and the root's later
//! `modprobe`s find them loaded (a no-op).
//!
//! Found in the assembled root, never assumed:
//!
//! - every `modprobe NAME` that the root's `/init` script runs unconditionally: a top-level
//!   command (not inside `if`/`case`/a loop/a function), with literal names only;
//! - every module that a udev rule in the root loads for each SCSI device, and nothing
//!   more: a rule matching only `SUBSYSTEM=="scsi"`, `ENV{DEVTYPE}=="scsi_device"` (and
//!   the "not loaded yet" test `TEST!="[module/NAME]"`) whose only action is
//!   `RUN{builtin}+="kmod load NAMES"`. The init loads these only when the VM has a SCSI
//!   device (`when=scsi-device` in the initrd's module list).
//!
//! A name the kernel lacks or has built in is dropped; the root's own `modprobe` then does
//! what it always did.

use std::path::Path;

use supermin_ext2::Tree;

use crate::check;

/// What the root's boot loads, by name, in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preloads {
    /// Modules the root's `/init` loads at every boot (`dm_mod`), with the reason.
    pub always: Vec<(String, String)>,
    /// Modules the root's udev loads for every SCSI device (`sg`), with the reason.
    pub scsi_device: Vec<(String, String)>,
    /// Modules found but left to the root, with the reason (its `modprobe.d` sets options,
    /// an install command or a blacklist for them, which only kmod applies).
    pub left_to_root: Vec<(String, String)>,
}

impl Preloads {
    /// Every name, `always` first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.always
            .iter()
            .chain(&self.scsi_device)
            .map(|(name, _)| name.as_str())
    }
}

/// The longest `/init` script or rules file read (libguestfs's `/init` is 7 KB).
const READ_LIMIT: usize = 1 << 20;

/// Where udev reads rules, later directories overridden by earlier ones with a file of the
/// same name (`/etc` first).
const RULES_DIRS: &[&str] = &[
    "/etc/udev/rules.d",
    "/usr/lib/udev/rules.d",
    "/lib/udev/rules.d",
];

/// The modules the assembled `tree` loads at boot (see the module docs).
pub fn find(tree: &Tree) -> Preloads {
    let mut found = Preloads::default();
    if let Some(script) = check::read_tree_file(tree, Path::new("/init"), READ_LIMIT) {
        if is_shell_script(&script) {
            for name in modprobes_in_script(&String::from_utf8_lossy(&script)) {
                let why = format!("the root's /init runs `modprobe {name}`");
                push_new(&mut found.always, name, why);
            }
        }
    }
    for (file, text) in config_files(tree, RULES_DIRS, b".rules") {
        for name in scsi_device_loads(&text) {
            let why = format!("udev loads it for every SCSI device ({file})");
            push_new(&mut found.scsi_device, name, why);
        }
    }
    // Loaded on every boot already: no need to wait for a SCSI device.
    let always: Vec<String> = found.always.iter().map(|(n, _)| n.clone()).collect();
    found.scsi_device.retain(|(n, _)| !always.contains(n));
    // What the root's modprobe.d says of a module, only kmod applies.
    let configured = modprobe_configured(tree);
    for list in [&mut found.always, &mut found.scsi_device] {
        let (left, kept): (Vec<_>, Vec<_>) = std::mem::take(list)
            .into_iter()
            .partition(|(n, _)| configured.iter().any(|(c, _)| c == n));
        *list = kept;
        for (name, _) in left {
            let file = configured
                .iter()
                .find(|(c, _)| *c == name)
                .map(|(_, f)| f.clone())
                .unwrap_or_default();
            let why = format!("the root's modprobe.d configures it ({file})");
            found.left_to_root.push((name, why));
        }
    }
    found
}

/// Where kmod reads its configuration, earlier directories overriding later ones.
const MODPROBE_DIRS: &[&str] = &["/etc/modprobe.d", "/usr/lib/modprobe.d", "/lib/modprobe.d"];

/// The modules that the root's modprobe.d names in an `options`, `install`, `remove`,
/// `blacklist` or `softdep` line, with the file that does.
fn modprobe_configured(tree: &Tree) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, text) in config_files(tree, MODPROBE_DIRS, b".conf") {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if let (Some("options" | "install" | "remove" | "blacklist" | "softdep"), Some(name)) =
                (words.next(), words.next())
            {
                out.push((name.replace('-', "_"), file.clone()));
            }
        }
    }
    out
}

/// The files named `*SUFFIX` in `dirs` of `tree`, as their tools read them: a name in an
/// earlier directory hides the same name in later ones (an empty or unreadable file, such
/// as a link to /dev/null, then counts as empty). Each is (file name, text).
fn config_files(tree: &Tree, dirs: &[&str], suffix: &[u8]) -> Vec<(String, String)> {
    let mut seen: Vec<std::ffi::OsString> = Vec::new();
    let mut out = Vec::new();
    for dir in dirs {
        for file in check::list_tree_dir(tree, Path::new(dir)) {
            if !file.as_encoded_bytes().ends_with(suffix) || seen.contains(&file) {
                continue;
            }
            seen.push(file.clone());
            if let Some(text) = check::read_tree_file(tree, &Path::new(dir).join(&file), READ_LIMIT)
            {
                let name = Path::new(&file).display().to_string();
                out.push((name, String::from_utf8_lossy(&text).into_owned()));
            }
        }
    }
    out
}

/// Whether `script` starts with a `#!` line naming a Bourne-family shell (what
/// [`modprobes_in_script`] reads).
fn is_shell_script(script: &[u8]) -> bool {
    let Some(line) = script.strip_prefix(b"#!") else {
        return false;
    };
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let Some(interp) = words.next() else {
        return false;
    };
    let base = interp.rsplit('/').next().unwrap_or(interp);
    let base = if base == "env" || base == "busybox" {
        words.next().unwrap_or_default()
    } else {
        base
    };
    matches!(base, "sh" | "bash" | "dash" | "ash" | "ksh" | "mksh")
}

fn push_new(list: &mut Vec<(String, String)>, name: String, why: String) {
    if !list.iter().any(|(n, _)| *n == name) {
        list.push((name, why));
    }
}

/// A module name as modprobe takes it, with nothing for the shell to expand.
fn is_literal_module_name(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The modules named by `modprobe` commands that `script` (a shell script) runs at its top
/// level, unconditionally. Deliberately narrow, since a wrong guess loads a module the root
/// would not:
///
/// - a command inside `if`/`case`/`for`/`while`/`until`/`{}`, or after `&&`/`||` (it may
///   not run), one with an expansion, a quote or a module parameter (the init loads modules
///   without parameters), and `modprobe -r` or the query options are left out;
/// - reading stops at anything not modelled here, since what follows may not run as read:
///   a here-document, a backquote, an unbalanced quote, a `(` (a subshell or a function
///   body), or `exit`/`exec`/`return` at the top level.
pub fn modprobes_in_script(script: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut depth: usize = 0;
    let mut logical = String::new();
    for raw in script.lines() {
        let code = strip_comment(raw).trim_end();
        // A trailing backslash, `&&`, `||` or `|` continues the command on the next line.
        if let Some(head) = code.strip_suffix('\\') {
            logical.push_str(head);
            logical.push(' ');
            continue;
        }
        logical.push_str(code);
        if code.ends_with("&&") || code.ends_with('|') {
            logical.push(' ');
            continue;
        }
        let line = std::mem::take(&mut logical);
        if line.contains("<<")
            || line.contains('`')
            || line.replace("$(", "").contains('(')
            || line.matches('"').count() % 2 == 1
            || line.matches('\'').count() % 2 == 1
        {
            break;
        }
        for list in split_lists(&line) {
            // An and-or list: only its first pipeline always runs; of a pipeline, every
            // command runs, but only the first is taken (the simplest reading).
            for (k, command) in split_and_or(list).into_iter().enumerate() {
                let command = command.split('|').next().unwrap_or("");
                let words: Vec<&str> = command.split_whitespace().collect();
                let Some(&first) = words.first() else {
                    continue;
                };
                match first {
                    "if" | "case" | "for" | "while" | "until" | "select" => depth += 1,
                    "fi" | "esac" | "done" | "}" => depth = depth.saturating_sub(1),
                    "exit" | "exec" | "return" if depth == 0 => return names,
                    // A group (`{ ...; }` or `function f {`).
                    _ if words.contains(&"{") || first.ends_with('{') => depth += 1,
                    _ if k == 0 && depth == 0 && is_modprobe(first) => {
                        for name in modprobe_loads(&words[1..]) {
                            if !names.contains(&name) {
                                names.push(name);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    names
}

/// The lists of a line: split at `;` and at a lone `&` (not `&&`, not a `>&` redirection).
fn split_lists(line: &str) -> Vec<&str> {
    let bytes = line.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' => {
                out.push(&line[start..i]);
                start = i + 1;
            }
            b'&' if bytes.get(i + 1) == Some(&b'&') => i += 1,
            b'&' if i > 0 && matches!(bytes[i - 1], b'>' | b'<') => {}
            b'&' => {
                out.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&line[start..]);
    out
}

/// The commands of an and-or list, split at `&&` and `||`.
fn split_and_or(list: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = list;
    while let Some(at) = [rest.find("&&"), rest.find("||")]
        .into_iter()
        .flatten()
        .min()
    {
        out.push(&rest[..at]);
        rest = &rest[at + 2..];
    }
    out.push(rest);
    out
}

/// The line without a `#` comment (a `#` that starts a word).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn is_modprobe(word: &str) -> bool {
    matches!(
        word,
        "modprobe"
            | "/sbin/modprobe"
            | "/usr/sbin/modprobe"
            | "/bin/modprobe"
            | "/usr/bin/modprobe"
    )
}

/// What `modprobe ARGS` loads: its first name (the rest are parameters), or every name with
/// `-a`; nothing when it removes, only shows, or names something not literal.
fn modprobe_loads(args: &[&str]) -> Vec<String> {
    let mut all = false;
    let mut operands: Vec<&str> = Vec::new();
    let mut options_done = false;
    for &arg in args {
        if !options_done && arg == "--" {
            options_done = true;
        } else if !options_done && arg.starts_with("--") {
            match arg {
                "--all" => all = true,
                "--quiet" | "--verbose" | "--use-blacklist" | "--ignore-install" => {}
                // --remove, --dry-run, --show-*, --resolve-alias, --config=...: not a load,
                // or one whose effect depends on more than the name.
                _ => return Vec::new(),
            }
        } else if !options_done && arg.len() > 1 && arg.starts_with('-') {
            for flag in arg[1..].chars() {
                match flag {
                    'a' => all = true,
                    'q' | 'v' | 'b' | 'i' => {}
                    _ => return Vec::new(),
                }
            }
        } else {
            operands.push(arg);
        }
    }
    // Without -a the words after the name are its parameters, which the init would not
    // pass: then the root's own modprobe must load it.
    if !all && operands.len() > 1 {
        return Vec::new();
    }
    let names = &operands[..];
    if names.iter().all(|n| is_literal_module_name(n)) {
        names.iter().map(|n| n.replace('-', "_")).collect()
    } else {
        Vec::new()
    }
}

/// The modules that the udev rules in `rules` load for every SCSI device (see the module
/// docs for what counts).
pub fn scsi_device_loads(rules: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut logical = String::new();
    for raw in rules.lines() {
        if let Some(head) = raw.strip_suffix('\\') {
            logical.push_str(head);
            continue;
        }
        logical.push_str(raw);
        let rule = std::mem::take(&mut logical);
        let rule = rule.trim();
        if rule.is_empty() || rule.starts_with('#') {
            continue;
        }
        for name in rule_loads_for_scsi_devices(rule).unwrap_or_default() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// One rule's `kmod load` names, when it matches exactly every SCSI device.
fn rule_loads_for_scsi_devices(rule: &str) -> Option<Vec<String>> {
    let mut subsystem = false;
    let mut devtype = false;
    let mut loads: Vec<String> = Vec::new();
    let mut tested: Vec<String> = Vec::new();
    for (key, op, value) in rule_items(rule)? {
        match (key, op, value) {
            ("SUBSYSTEM", "==", "scsi") => subsystem = true,
            ("ENV{DEVTYPE}", "==", "scsi_device") => devtype = true,
            ("TEST", "!=", test) if test.starts_with("[module/") && test.ends_with(']') => {
                tested.push(test["[module/".len()..test.len() - 1].replace('-', "_"));
            }
            ("RUN{builtin}", "+=", action) => {
                let mut words = action.split_whitespace();
                if (words.next(), words.next()) != (Some("kmod"), Some("load")) {
                    return None;
                }
                for name in words {
                    if !is_literal_module_name(name) {
                        return None;
                    }
                    loads.push(name.replace('-', "_"));
                }
            }
            // Any other match narrows the devices; any other action is not ours to judge.
            _ => return None,
        }
    }
    // "Not loaded yet" may only test a module the rule loads: another one is a condition.
    let only_own_tests = tested.iter().all(|t| loads.contains(t));
    (subsystem && devtype && !loads.is_empty() && only_own_tests).then_some(loads)
}

/// The `KEY OP "VALUE"` items of a rule line, or `None` when it does not parse.
fn rule_items(rule: &str) -> Option<Vec<(&str, &str, &str)>> {
    let mut items = Vec::new();
    let mut rest = rule.trim_start();
    while !rest.is_empty() {
        let op_at = rest.find(['=', '!', '+', '-', ':'])?;
        let key = rest[..op_at].trim();
        let after_key = &rest[op_at..];
        let op = ["==", "!=", "+=", "-=", ":=", "="]
            .into_iter()
            .find(|op| after_key.starts_with(op))?;
        let value_part = after_key[op.len()..].trim_start().strip_prefix('"')?;
        let close = value_part.find('"')?;
        items.push((key, op, &value_part[..close]));
        rest = value_part[close + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of libguestfs 1.48's appliance/init that load or touch modules, in context.
    const LIBGUESTFS_INIT: &str = r#"#!/bin/bash -
echo Starting /init script ...
PATH=/sbin:/usr/sbin:/bin:/usr/bin
export PATH
# Set up kmod static-nodes (RHBZ#1011907).
mkdir -p /run/tmpfiles.d
kmod static-nodes --format=tmpfiles --output=/run/tmpfiles.d/kmod.conf
if test "$guestfs_network" = 1; then
    iface=$(ls -I all -I default -I lo /proc/sys/net/ipv4/conf)
    modprobe virtio_net
fi
# Scan for LVM.
modprobe dm_mod ||:
lvm pvscan --cache --activate ay
"#;

    #[test]
    fn libguestfs_init_loads_dm_mod_at_every_boot_and_virtio_net_only_with_a_network() {
        assert_eq!(modprobes_in_script(LIBGUESTFS_INIT), vec!["dm_mod"]);
    }

    #[test]
    fn only_top_level_unconditional_literal_loads_count() {
        let script = "#!/bin/sh\n\
            modprobe -q loop && echo ok\n\
            /sbin/modprobe -a fuse virtio-rng\n\
            modprobe nbd max_part=16\n\
            modprobe $EXTRA\n\
            modprobe \"quoted\"\n\
            modprobe -r floppy\n\
            modprobe --show-depends ext4\n\
            modprobe --config=/x.conf zram\n\
            # modprobe commented\n\
            echo modprobe notacommand\n\
            test -e /x && modprobe after_and\n\
            false || modprobe after_or\n\
            modprobe first || modprobe fallback\n\
            test -e /y &&\n  modprobe continued_and\n\
            case $x in a) modprobe inside_case ;; esac\n\
            for m in a b; do\n  modprobe looped\ndone\n\
            function other {\n  modprobe in_other\n}\n\
            while true; do modprobe in_while; done\n\
            modprobe \\\n  continued\n\
            modprobe after # a comment\n\
            modprobe bg & modprobe also_bg\n";
        assert_eq!(
            modprobes_in_script(script),
            [
                "loop",
                "fuse",
                "virtio_rng",
                "first",
                "continued",
                "after",
                "bg",
                "also_bg"
            ]
        );
    }

    #[test]
    fn reading_stops_where_the_script_is_not_modelled() {
        for (script, before) in [
            (
                "modprobe a\ncat > f <<EOF\nmodprobe heredoc\nEOF\nmodprobe b\n",
                "a",
            ),
            (
                "modprobe a\necho \"multi\nmodprobe in_string\n\"\nmodprobe b\n",
                "a",
            ),
            ("modprobe a\nf() (\n modprobe x\n)\nmodprobe b\n", "a"),
            ("modprobe a\nf() {\n modprobe x\n}\nmodprobe b\n", "a"),
            ("modprobe a\nx=`uname`\nmodprobe b\n", "a"),
            ("modprobe a\nexec /sbin/init\nmodprobe b\n", "a"),
            ("modprobe a\nexit 0\nmodprobe b\n", "a"),
        ] {
            assert_eq!(modprobes_in_script(script), [before], "{script:?}");
        }
        // `$(...)` is an expansion, not a subshell, and a quoted `#` is not a comment cut
        // that could hide an `if`.
        assert_eq!(
            modprobes_in_script("x=$(cat /proc/cmdline)\nmodprobe a\n"),
            ["a"]
        );
        assert!(modprobes_in_script("echo \" # \"; if true; then\n modprobe x\nfi\n").is_empty());
    }

    #[test]
    fn only_a_bourne_shell_init_is_read() {
        for ok in [
            "#!/bin/sh\n",
            "#!/bin/bash -\n",
            "#!/usr/bin/env bash\n",
            "#!/bin/busybox sh\n",
        ] {
            assert!(is_shell_script(ok.as_bytes()), "{ok}");
        }
        for no in [
            "#!/usr/bin/perl\n",
            "#!/usr/bin/python3\n",
            "\x7fELF",
            "modprobe x\n",
        ] {
            assert!(!is_shell_script(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn a_script_without_modprobe_or_an_unbalanced_one_yields_nothing_wrong() {
        assert!(modprobes_in_script("#!/bin/sh\nexec /bin/daemon\n").is_empty());
        // An `if` never closed: everything after it is conditional.
        assert!(modprobes_in_script("if true; then\nmodprobe x\n").is_empty());
        // A stray `fi` does not make later commands "more" top-level.
        assert_eq!(modprobes_in_script("fi\nfi\nmodprobe y\n"), vec!["y"]);
    }

    #[test]
    fn debians_scsi_generic_rule_loads_sg_for_every_scsi_device() {
        let rules = r#"# do not edit this file, it will be overwritten on update

SUBSYSTEM=="scsi", ENV{DEVTYPE}=="scsi_device", TEST!="[module/sg]", RUN{builtin}+="kmod load sg"

SUBSYSTEM=="net", ENV{INTERFACE}=="eth*", RUN+="/bin/true"
"#;
        assert_eq!(scsi_device_loads(rules), vec!["sg"]);
    }

    #[test]
    fn narrower_or_other_rules_load_nothing_here() {
        for rule in [
            // Only some SCSI devices.
            r#"SUBSYSTEM=="scsi", ENV{DEVTYPE}=="scsi_device", ATTR{type}=="8", RUN{builtin}+="kmod load ch""#,
            // Not SCSI devices.
            r#"SUBSYSTEM=="memstick", RUN{builtin}+="kmod load ms_block mspro_block""#,
            r#"ENV{MODALIAS}=="?*", RUN{builtin}+="kmod load""#,
            // Another action beside the load.
            r#"SUBSYSTEM=="scsi", ENV{DEVTYPE}=="scsi_device", RUN{builtin}+="kmod load sg", RUN+="/bin/x""#,
            // Not a literal name, or not a load.
            r#"SUBSYSTEM=="scsi", ENV{DEVTYPE}=="scsi_device", RUN{builtin}+="kmod load $env{X}""#,
            r#"SUBSYSTEM=="scsi", ENV{DEVTYPE}=="scsi_device", RUN{builtin}+="path_id""#,
            // "Not loaded yet" of another module is a condition.
            r#"SUBSYSTEM=="scsi", ENV{DEVTYPE}=="scsi_device", TEST!="[module/other]", RUN{builtin}+="kmod load sg""#,
            // Unparseable.
            r#"SUBSYSTEM=="scsi", ENV{DEVTYPE}=="scsi_device", RUN{builtin}+="kmod load sg"#,
            "SUBSYSTEM",
        ] {
            assert!(scsi_device_loads(rule).is_empty(), "{rule}");
        }
    }

    fn tree(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Tree {
        use std::sync::Arc;
        use supermin_ext2::{FileData, Meta, NodeKind};
        let meta = |mode| Meta {
            mode,
            ..Meta::default()
        };
        let mut t = Tree::new(meta(0o40755));
        for (path, target) in links {
            t.ensure_parents(path.as_bytes(), meta(0o40755)).unwrap();
            t.insert(
                path.as_bytes(),
                NodeKind::Symlink(target.as_bytes().to_vec()),
                meta(0o120777),
            )
            .unwrap();
        }
        for (path, bytes) in files {
            t.ensure_parents(path.as_bytes(), meta(0o40755)).unwrap();
            t.insert(
                path.as_bytes(),
                NodeKind::File(FileData::Bytes(Arc::from(*bytes))),
                meta(0o100755),
            )
            .unwrap();
        }
        t
    }

    const SG_RULE: &[u8] = br#"SUBSYSTEM=="scsi", ENV{DEVTYPE}=="scsi_device", TEST!="[module/sg]", RUN{builtin}+="kmod load sg""#;

    /// libguestfs's /init and Debian's sg rule, and `extra` files.
    fn libguestfs_root(extra: &[(&str, &[u8])], links: &[(&str, &str)]) -> Tree {
        let mut files: Vec<(&str, &[u8])> = vec![
            ("/init", LIBGUESTFS_INIT.as_bytes()),
            ("/usr/lib/udev/rules.d/80-debian-compat.rules", SG_RULE),
        ];
        files.extend_from_slice(extra);
        tree(&files, links)
    }

    #[test]
    fn the_root_is_read_through_its_symlinks_and_etc_masks_a_rules_file() {
        let t = libguestfs_root(
            &[(
                "/usr/lib/udev/rules.d/99-other.rules",
                b"KERNEL==\"x\", RUN+=\"/bin/y\"",
            )],
            &[("/lib", "usr/lib")],
        );
        let found = find(&t);
        assert_eq!(found.names().collect::<Vec<_>>(), ["dm_mod", "sg"]);
        assert!(found.always[0].1.contains("modprobe dm_mod"));
        assert!(found.scsi_device[0].1.contains("80-debian-compat.rules"));

        // A file of the same name in /etc replaces it (here: an empty one).
        let masked = libguestfs_root(&[("/etc/udev/rules.d/80-debian-compat.rules", b"")], &[]);
        assert_eq!(find(&masked).names().collect::<Vec<_>>(), ["dm_mod"]);
    }

    #[test]
    fn a_module_the_roots_modprobe_d_configures_is_left_to_the_root() {
        let t = libguestfs_root(
            &[(
                "/etc/modprobe.d/dm.conf",
                b"# tuning\noptions dm-mod use_blk_mq=1\n",
            )],
            &[],
        );
        let found = find(&t);
        assert_eq!(found.names().collect::<Vec<_>>(), ["sg"]);
        assert_eq!(found.left_to_root.len(), 1);
        assert_eq!(found.left_to_root[0].0, "dm_mod");
        assert!(found.left_to_root[0].1.contains("dm.conf"));
    }

    #[test]
    fn an_elf_init_or_no_init_loads_nothing_and_a_module_loaded_always_is_not_scsi_only() {
        let elf = tree(&[("/init", b"\x7fELF\x02modprobe dm_mod\n")], &[]);
        assert_eq!(find(&elf), Preloads::default());
        assert_eq!(find(&tree(&[], &[])), Preloads::default());
        let both = tree(
            &[
                ("/init", b"#!/bin/sh\nmodprobe sg\n"),
                ("/usr/lib/udev/rules.d/80-debian-compat.rules", SG_RULE),
            ],
            &[],
        );
        let found = find(&both);
        assert_eq!(found.always.len(), 1);
        assert!(found.scsi_device.is_empty());
    }

    #[test]
    fn a_continued_rule_is_one_rule() {
        let rules = "SUBSYSTEM==\"scsi\", ENV{DEVTYPE}==\"scsi_device\", \\\n RUN{builtin}+=\"kmod load sg ch\"\n";
        assert_eq!(scsi_device_loads(rules), vec!["sg", "ch"]);
    }
}
