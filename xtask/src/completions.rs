//! Shell completions from the CLI definition (`clap_complete`). The tree they are made
//! from holds both grammars (supermin 5's options and inputs, and our subcommands), so
//! `supermin r<TAB>` offers `run` and `supermin --b<TAB>` offers `--build`.

use clap_complete::Shell;

/// `(file name, script)` for bash, zsh and fish, named as each shell's completion
/// directory expects (`supermin` for bash is given the `.bash` suffix here; the package
/// installs it without).
pub fn scripts(tree: &clap::Command) -> Vec<(&'static str, Vec<u8>)> {
    [
        (Shell::Bash, "supermin.bash"),
        (Shell::Zsh, "_supermin"),
        (Shell::Fish, "supermin.fish"),
    ]
    .into_iter()
    .map(|(shell, name)| {
        let mut cmd = tree.clone();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, "supermin", &mut script);
        (name, script)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn script(name: &str) -> String {
        let (_, bytes) = scripts(&supermin::cli::command_tree())
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("script generated");
        String::from_utf8(bytes).expect("UTF-8 script")
    }

    /// What bash offers for the words typed so far (the last one being completed), the
    /// way bash itself calls the function on <TAB>.
    fn bash_complete(words: &[&str]) -> Vec<String> {
        let program = format!(
            "{}\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n\
             _supermin supermin \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            script("supermin.bash"),
            words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" "),
            words.len() - 1
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(program)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "bash: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn bash_offers_run_for_r() {
        assert_eq!(bash_complete(&["supermin", "r"]), ["run"]);
    }

    #[test]
    fn bash_offers_supermin_5_options_and_subcommands_at_the_top() {
        let offered = bash_complete(&["supermin", ""]);
        for word in [
            "--build",
            "--prepare",
            "--if-newer",
            "run",
            "mkfs",
            "update-appliance",
        ] {
            assert!(
                offered.iter().any(|o| o == word),
                "{word} not in {offered:?}"
            );
        }
        // Hidden compatibility refusals are not advertised.
        assert!(!offered.iter().any(|o| o == "--dtb" || o == "--names"));
    }

    #[test]
    fn bash_completes_subcommand_options() {
        let offered = bash_complete(&["supermin", "run", "--acc"]);
        assert_eq!(offered, ["--accel"]);
    }

    #[test]
    fn zsh_and_fish_know_the_subcommands() {
        let zsh = script("_supermin");
        assert!(zsh.starts_with("#compdef supermin"), "{zsh}");
        let fish = script("supermin.fish");
        for sub in ["run", "mkfs", "kernel", "update-appliance"] {
            assert!(zsh.contains(&format!("'{sub}:")), "zsh lacks {sub}");
            assert!(fish.contains(&format!("-a \"{sub}\"")), "fish lacks {sub}");
        }
    }
}
