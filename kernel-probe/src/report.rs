//! The `supermin kernel [--json]` report: the chosen kernel, its version and
//! modules directory, the initrd module list, and a line for every candidate
//! saying why it was taken or not. Text for people, JSON for scripts; both
//! from the same values so they never disagree.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::{Kernel, Module, ModuleSet};

/// The text report for a kernel and its initrd module list.
pub fn report_text(k: &Kernel, modules: &[Module]) -> String {
    text(k, modules, &[])
}

/// The text report, also listing wanted modules that are built in or absent.
pub fn report_text_set(k: &Kernel, set: &ModuleSet) -> String {
    text(k, &set.modules, &set.not_loaded)
}

/// The JSON report (one object) for a kernel and its initrd module list.
pub fn report_json(k: &Kernel, modules: &[Module]) -> String {
    json_value(k, modules, &[]).to_string()
}

/// The JSON report, with the `not_loaded` list of a [`ModuleSet`].
pub fn report_json_set(k: &Kernel, set: &ModuleSet) -> String {
    json_value(k, &set.modules, &set.not_loaded).to_string()
}

fn text(k: &Kernel, modules: &[Module], not_loaded: &[crate::NotLoaded]) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(s, "kernel:    {}", k.path.display());
    let _ = writeln!(
        s,
        "version:   {} (from {})",
        k.version,
        k.version_source.as_str()
    );
    let _ = writeln!(s, "modules:   {}", k.modules_dir.display());
    let _ = writeln!(s, "found by:  {}", k.source.as_str());
    let _ = writeln!(s, "initrd modules ({}, in load order):", modules.len());
    let width = modules.iter().map(|m| m.name.len()).max().unwrap_or(0);
    for m in modules {
        let _ = writeln!(s, "  {:width$}  {}", m.name, m.path.display());
    }
    for n in not_loaded {
        let what = if n.builtin {
            "built into the kernel"
        } else {
            "not available"
        };
        let _ = writeln!(s, "  ({} {what}; wanted by {})", n.name, n.wanted_by);
    }
    let _ = writeln!(s, "candidates:");
    for c in &k.candidates {
        let version = c.version.as_deref().unwrap_or("?");
        let _ = writeln!(
            s,
            "  {:7}  {}  [{}]  {}",
            c.verdict.as_str(),
            c.path.display(),
            version,
            c.reason
        );
    }
    s
}

fn json_value(k: &Kernel, modules: &[Module], not_loaded: &[crate::NotLoaded]) -> Value {
    json!({
        "kernel": k.path.to_string_lossy(),
        "version": k.version,
        "version_source": k.version_source.as_str(),
        "modules_dir": k.modules_dir.to_string_lossy(),
        "source": k.source.as_str(),
        "config": k.config.as_ref().map(|p| p.to_string_lossy()),
        "initrd_modules": modules.iter().map(|m| json!({
            "name": m.name,
            "path": m.path.to_string_lossy(),
        })).collect::<Vec<_>>(),
        "not_loaded": not_loaded.iter().map(|n| json!({
            "name": n.name,
            "wanted_by": n.wanted_by,
            "builtin": n.builtin,
        })).collect::<Vec<_>>(),
        "candidates": k.candidates.iter().map(|c| json!({
            "path": c.path.to_string_lossy(),
            "version": c.version,
            "version_source": c.version_source.map(|v| v.as_str()),
            "modules_dir": c.modules_dir.as_ref().map(|p| p.to_string_lossy()),
            "verdict": c.verdict.as_str(),
            "reason": c.reason,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Candidate, KernelSource, NotLoaded, Verdict, VersionSource};
    use std::path::PathBuf;

    fn sample() -> (Kernel, ModuleSet) {
        let k = Kernel {
            path: "/boot/vmlinuz-6.12.117+deb12-amd64".into(),
            version: "6.12.117+deb12-amd64".into(),
            version_source: VersionSource::Header,
            modules_dir: "/lib/modules/6.12.117+deb12-amd64".into(),
            source: KernelSource::Boot,
            config: Some("/boot/config-6.12.117+deb12-amd64".into()),
            candidates: vec![
                Candidate {
                    path: "/boot/vmlinuz-6.1.0-56-amd64".into(),
                    version: Some("6.1.0-56-amd64".into()),
                    version_source: Some(VersionSource::Header),
                    modules_dir: Some("/lib/modules/6.1.0-56-amd64".into()),
                    verdict: Verdict::Passed,
                    reason: "older than 6.12.117+deb12-amd64".into(),
                },
                Candidate {
                    path: "/boot/vmlinuz-6.12.117+deb12-amd64".into(),
                    version: Some("6.12.117+deb12-amd64".into()),
                    version_source: Some(VersionSource::Header),
                    modules_dir: Some("/lib/modules/6.12.117+deb12-amd64".into()),
                    verdict: Verdict::Chosen,
                    reason: "newest usable kernel".into(),
                },
                Candidate {
                    path: "/boot/vmlinuz-6.9.0-xen".into(),
                    version: None,
                    version_source: None,
                    modules_dir: None,
                    verdict: Verdict::Skipped,
                    reason: "Xen domU kernel".into(),
                },
            ],
        };
        let set = ModuleSet {
            modules: vec![
                Module {
                    name: "jbd2".into(),
                    path: PathBuf::from(
                        "/lib/modules/6.12.117+deb12-amd64/kernel/fs/jbd2/jbd2.ko.xz",
                    ),
                },
                Module {
                    name: "ext4".into(),
                    path: PathBuf::from(
                        "/lib/modules/6.12.117+deb12-amd64/kernel/fs/ext4/ext4.ko.xz",
                    ),
                },
            ],
            not_loaded: vec![NotLoaded {
                name: "virtio_pci".into(),
                wanted_by: "boot".into(),
                builtin: true,
            }],
        };
        (k, set)
    }

    #[test]
    fn text_report_names_kernel_version_modules_and_every_candidate() {
        let (k, set) = sample();
        let t = report_text_set(&k, &set);
        assert!(
            t.contains("kernel:    /boot/vmlinuz-6.12.117+deb12-amd64\n"),
            "{t}"
        );
        assert!(
            t.contains("version:   6.12.117+deb12-amd64 (from bzImage header)"),
            "{t}"
        );
        assert!(
            t.contains("modules:   /lib/modules/6.12.117+deb12-amd64\n"),
            "{t}"
        );
        assert!(t.contains("initrd modules (2, in load order)"), "{t}");
        assert!(
            t.find("jbd2").unwrap() < t.find("ext4.ko.xz").unwrap(),
            "load order kept"
        );
        assert!(
            t.contains("(virtio_pci built into the kernel; wanted by boot)"),
            "{t}"
        );
        for c in &k.candidates {
            let line = t
                .lines()
                .find(|l| l.contains(&*c.path.to_string_lossy()) && l.contains(c.verdict.as_str()))
                .unwrap_or_else(|| panic!("no line for {}: {t}", c.path.display()));
            assert!(line.contains(&c.reason), "{line}");
        }
        assert!(
            !report_text(&k, &set.modules).contains("built into"),
            "plain list has no skips"
        );
    }

    #[test]
    fn json_report_parses_and_mirrors_the_values() {
        let (k, set) = sample();
        let v: Value = serde_json::from_str(&report_json_set(&k, &set)).unwrap();
        assert_eq!(v["kernel"], "/boot/vmlinuz-6.12.117+deb12-amd64");
        assert_eq!(v["version"], "6.12.117+deb12-amd64");
        assert_eq!(v["version_source"], "bzImage header");
        assert_eq!(v["modules_dir"], "/lib/modules/6.12.117+deb12-amd64");
        assert_eq!(v["initrd_modules"][0]["name"], "jbd2");
        assert_eq!(v["initrd_modules"][1]["name"], "ext4");
        assert_eq!(v["not_loaded"][0]["builtin"], true);
        assert_eq!(v["candidates"].as_array().unwrap().len(), 3);
        assert_eq!(v["candidates"][1]["verdict"], "chosen");
        assert_eq!(v["candidates"][2]["verdict"], "skipped");
        assert!(v["candidates"][2]["version"].is_null());
        let plain: Value = serde_json::from_str(&report_json(&k, &set.modules)).unwrap();
        assert_eq!(plain["not_loaded"].as_array().unwrap().len(), 0);
    }
}
