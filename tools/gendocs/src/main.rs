//! `xenmaint-gendocs OUT`: xenmaint's man pages (section 8: `xenmaint.8`
//! and `xenmaint-VERB.8` for each verb) into OUT/man8, and its completions
//! for bash, zsh and fish into OUT/completions, all from the clap
//! definitions the binary parses with, so that they never say something
//! else than `--help`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

fn main() {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: xenmaint-gendocs OUT_DIR");
        std::process::exit(2);
    };
    if let Err(e) = generate(&out) {
        eprintln!("xenmaint-gendocs: {}: {e}", out.display());
        std::process::exit(1);
    }
}

fn generate(out: &Path) -> std::io::Result<()> {
    // The version is xenmaint's (its `#[command(version)]`), not this tool's.
    let cmd = xenmaint::cli::Args::command();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let man = out.join("man8");
    std::fs::create_dir_all(&man)?;
    let verbs: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| format!("xenmaint-{}", s.get_name()))
        .collect();
    // The exit codes are the top command's after-help; every page gets them
    // as EXIT STATUS, and a SEE ALSO naming the others.
    let exit_codes = cmd
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    let see_also = |me: &str| {
        std::iter::once("xenmaint".to_string())
            .chain(verbs.iter().cloned())
            .filter(|n| n != me)
            .map(|n| format!("\\fB{n}\\fR(8)"))
            .chain(["\\fBxl\\fR(1)".to_string()])
            .collect::<Vec<_>>()
            .join(", ")
    };
    let page = |cmd: clap::Command, name: &str| -> std::io::Result<()> {
        // Section 8: an administrator's command, as xl's dom0 peers are.
        let man = clap_mangen::Man::new(cmd.clone()).section("8");
        let mut text = Vec::new();
        man.render_title(&mut text)?;
        man.render_name_section(&mut text)?;
        man.render_synopsis_section(&mut text)?;
        man.render_description_section(&mut text)?;
        if cmd.get_arguments().any(|a| !a.is_hide_set()) {
            man.render_options_section(&mut text)?;
        }
        if cmd.has_subcommands() {
            man.render_subcommands_section(&mut text)?;
        }
        let codes = exit_codes.lines().skip(1).collect::<Vec<_>>().join("\n");
        text.extend(format!(".SH \"EXIT STATUS\"\n.nf\n{codes}\n.fi\n").bytes());
        text.extend(format!(".SH \"SEE ALSO\"\n{}\n", see_also(name)).bytes());
        man.render_version_section(&mut text)?;
        std::fs::write(out.join("man8").join(format!("{name}.8")), text)
    };
    page(cmd.clone().after_help(""), "xenmaint")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("xenmaint-{}", sub.get_name());
        let sub = sub.clone().name(name.clone()).version(version.clone());
        page(sub, &name)?;
    }
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, "xenmaint", &completions)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every verb `--help` knows has its page, naming the verb and its
    /// options, with the exit codes; every completion script offers every
    /// verb.
    #[test]
    fn every_verb_has_a_page_and_a_completion() {
        let out = std::env::temp_dir().join(format!("xenmaint-gendocs-{}", std::process::id()));
        generate(&out).unwrap();
        let cmd = xenmaint::cli::Args::command();
        let verbs: Vec<&str> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name())
            .collect();
        assert!(
            verbs.contains(&"run") && verbs.contains(&"resume"),
            "{verbs:?}"
        );
        let top = std::fs::read_to_string(out.join("man8/xenmaint.8")).unwrap();
        assert!(
            top.contains(".SH \"EXIT STATUS\"") && top.contains("refused"),
            "{top}"
        );
        for verb in &verbs {
            let page = std::fs::read_to_string(out.join(format!("man8/xenmaint-{verb}.8")))
                .unwrap_or_else(|e| panic!("{verb}: {e}"));
            assert!(
                page.contains(&format!("xenmaint\\-{verb}")),
                "{verb}: {page}"
            );
            assert!(page.contains(".SH \"EXIT STATUS\""), "{verb}");
            assert!(top.contains(verb), "xenmaint(8) names {verb}");
        }
        let run = std::fs::read_to_string(out.join("man8/xenmaint-run.8")).unwrap();
        assert!(run.contains("patch\\-cmd"), "{run}");
        for file in ["xenmaint.bash", "_xenmaint", "xenmaint.fish"] {
            let text = std::fs::read_to_string(out.join("completions").join(file)).unwrap();
            for verb in &verbs {
                assert!(text.contains(verb), "{file} offers {verb}");
            }
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}
