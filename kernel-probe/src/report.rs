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
