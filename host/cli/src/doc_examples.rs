//! Docs cannot rot: every `upshift` command and every fleet or lock file shown in README.md and
//! docs/ is checked against the real parsers.
//!
//! - A concrete command (`upshift plan acme-prod --to 3.0.0`) must parse as the CLI parses it.
//! - A synopsis (`upshift restore INSTANCE BACKUP_ID [--into DB]`, with placeholders in capitals,
//!   `[…]` options and `a|b` alternatives) must name real subcommands and only flags they take.
//! - A TOML block is parsed as a fleet file (or, with `[[adapter]]` entries, as `upshift.lock`).

use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::cli::Cli;

/// A fenced block of a Markdown file: its info string, the line its body starts on, its body.
struct Block {
    lang: String,
    line: usize,
    body: String,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md and every Markdown file under docs/, with their text.
fn documents() -> Vec<(String, String)> {
    let mut paths = vec![repo().join("README.md")];
    let mut dirs = vec![repo().join("docs")];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "md") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let name = p
                .strip_prefix(repo())
                .map_or_else(|_| p.display().to_string(), |r| r.display().to_string());
            (name, text)
        })
        .collect()
}

/// The fenced blocks of `text` (indented fences included, as in lists).
fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            match open.take() {
                Some((lang, line, body)) => out.push(Block { lang, line, body }),
                None => open = Some((info.trim().to_string(), n + 2, String::new())),
            }
        } else if let Some((_, _, body)) = open.as_mut() {
            body.push_str(trimmed);
            body.push('\n');
        }
    }
    out
}

/// The `upshift …` command lines of a block: continuation lines joined, a leading `$ ` and a
/// trailing `# comment` or two-space explanation dropped.
fn command_lines(block: &Block) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in block.body.lines().enumerate() {
        let line = raw.trim();
        let (start, mut text) = match pending.take() {
            Some((start, head)) => (start, format!("{head} {line}")),
            None => (block.line + i, line.to_string()),
        };
        if let Some(head) = text.strip_suffix('\\') {
            pending = Some((start, head.trim_end().to_string()));
            continue;
        }
        if let Some(rest) = text.strip_prefix("$ ") {
            text = rest.to_string();
        }
        if !text.starts_with("upshift ") {
            continue;
        }
        for cut in ["  ", " # "] {
            if let Some(at) = text.find(cut) {
                text.truncate(at);
            }
        }
        // A bare `upshift` (a diagram's label, not a command) is not checked.
        if text.split_whitespace().nth(1).is_some() {
            out.push((start, text.trim_end().to_string()));
        }
    }
    out
}

/// A placeholder word of a synopsis: `INSTANCE`, `V1`, `BACKUP_ID`.
fn is_placeholder(word: &str) -> bool {
    let word = word.trim_matches(|c: char| "[]()<>.,…".contains(c));
    word.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn is_synopsis(line: &str) -> bool {
    line.contains(['[', '|', '…', '<']) || line.split_whitespace().any(is_placeholder)
}

/// The long flags a command takes (its own and the globals it inherits).
fn longs(cmd: &clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .chain(["help".to_string()])
        .collect()
}

/// Check a synopsis line: the subcommands it names exist, and every `--flag` belongs to one of
/// them (or is global). Returns what is wrong.
fn check_synopsis(line: &str) -> Result<(), String> {
    let root = Cli::command();
    let globals = longs(&root);
    let mut current = vec![root.clone()];
    let words = line.split_whitespace().skip(1);
    let mut descended = false;
    for word in words {
        if word.starts_with('-') || word.starts_with('[') {
            break;
        }
        let alternatives: Vec<&str> = word.split('|').collect();
        let all_subcommands = alternatives.iter().all(|alt| {
            current
                .iter()
                .any(|c| c.find_subcommand(alt.trim()).is_some())
        });
        if !all_subcommands {
            if current.iter().any(|c| c.is_subcommand_required_set()) && !is_placeholder(word) {
                return Err(format!("`{word}` is not a subcommand of `{}`", current[0]));
            }
            break;
        }
        current = alternatives
            .iter()
            .filter_map(|alt| {
                current
                    .iter()
                    .find_map(|c| c.find_subcommand(alt.trim()).cloned())
            })
            .collect();
        descended = true;
    }
    if !descended
        && !line
            .split_whitespace()
            .nth(1)
            .is_some_and(|w| w.starts_with("--"))
    {
        return Err("names no subcommand".into());
    }
    let known: Vec<String> = current.iter().flat_map(longs).chain(globals).collect();
    for flag in line
        .split(|c: char| c.is_whitespace() || "[]|(),".contains(c))
        .filter_map(|w| w.strip_prefix("--"))
    {
        let name = flag.split('=').next().unwrap_or_default();
        if !name.is_empty() && !known.iter().any(|k| k == name) {
            return Err(format!("flag `--{name}` is not an option of this command"));
        }
    }
    Ok(())
}

/// Global flags given before the subcommand (`upshift --state URL enqueue …`) are dropped so a
/// synopsis is read from its subcommand.
fn without_leading_globals(line: &str) -> String {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    while words.len() > 2 && words[1].starts_with("--") {
        let takes_value = !words[1].contains('=');
        words.remove(1);
        if takes_value {
            words.remove(1);
        }
    }
    words.join(" ")
}

#[test]
fn every_documented_command_parses() {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (doc, text) in documents() {
        for block in blocks(&text) {
            if ["rust", "toml", "json", "sql"].contains(&block.lang.as_str()) {
                continue;
            }
            for (line, command) in command_lines(&block) {
                checked += 1;
                let problem = if is_synopsis(&command) {
                    check_synopsis(&without_leading_globals(&command)).err()
                } else {
                    match shell_words::split(&command) {
                        Ok(words) => <Cli as clap::Parser>::try_parse_from(words)
                            .err()
                            .map(|e| e.to_string()),
                        Err(e) => Some(format!("not a shell command line: {e}")),
                    }
                };
                if let Some(problem) = problem {
                    wrong.push(format!("{doc}:{line}: `{command}`: {problem}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "documented commands that do not parse:\n{}",
        wrong.join("\n")
    );
    assert!(checked > 40, "found only {checked} documented commands");
}

/// The example as it would be on a configured machine: a URL read from the environment stands
/// in as if the variable were set, and a `<hex public key>` placeholder is a real key (the
/// Ed25519 base point).
fn as_if_configured(example: &str) -> String {
    let mut out = String::new();
    for line in example.lines() {
        if line.trim_start().starts_with("url_env") {
            out.push_str("url = \"postgres://app@127.0.0.1:5432/app\"");
        } else {
            out.push_str(&line.replace(
                "<hex public key>",
                "5866666666666666666666666666666666666666666666666666666666666666",
            ));
        }
        out.push('\n');
    }
    out
}

#[test]
fn every_documented_fleet_and_lock_file_parses() {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (doc, text) in documents() {
        for block in blocks(&text) {
            if block.lang != "toml" {
                continue;
            }
            checked += 1;
            let body = as_if_configured(&block.body);
            let problem = if body.contains("[[adapter]]") {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let path = dir.path().join("upshift.lock");
                std::fs::write(&path, &body).expect("write the example");
                upshift::lockfile::LockFile::load(&path)
                    .err()
                    .map(|e| e.to_string())
            } else {
                upshift::fleet::Fleet::parse(Path::new("/etc/upshift/upshift.toml"), &body)
                    .err()
                    .map(|e| e.to_string())
            };
            if let Some(problem) = problem {
                wrong.push(format!("{doc}:{}: {problem}\n{}", block.line, block.body));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "documented TOML that does not parse:\n{}",
        wrong.join("\n")
    );
    assert!(checked >= 4, "found only {checked} TOML examples");
}

#[test]
fn a_wrong_command_or_flag_is_caught() {
    assert!(check_synopsis("upshift restor INSTANCE").is_err());
    assert!(check_synopsis("upshift restore INSTANCE ID [--intoo DB]").is_err());
    assert!(check_synopsis("upshift plan|aply INSTANCE").is_err());
    assert!(check_synopsis("upshift restore INSTANCE BACKUP_ID [--into DB]").is_ok());
    assert!(check_synopsis("upshift adapter keygen|sign|verify").is_ok());
    let block = Block {
        lang: String::new(),
        line: 1,
        body: "$ upshift plan a \\\n  --to 1.0.0   # comment\n".into(),
    };
    assert_eq!(
        command_lines(&block),
        vec![(1, "upshift plan a --to 1.0.0".to_string())]
    );
}

/// Every subcommand name in `cmd`'s tree.
fn subcommand_names(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
    for sub in cmd.get_subcommands() {
        out.insert(sub.get_name().to_string());
        subcommand_names(sub, out);
    }
}

/// The README's command table: every subcommand and every long flag it shows is passed, as a
/// quoted argument (`"adopt"`, `"--pid"`), by some test under tests/ that runs the binary.
#[test]
fn every_readme_table_command_and_flag_is_run_by_a_test() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let table = blocks(&readme)
        .into_iter()
        .find(|b| b.body.contains("upshift adapter inspect"))
        .expect("README.md has its command table");
    let mut subcommands = std::collections::BTreeSet::new();
    subcommand_names(&Cli::command(), &mut subcommands);
    let mut sources = String::new();
    for dir in ["tests", "tests/common"] {
        let entries = std::fs::read_dir(repo().join(dir)).expect("tests/");
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|x| x == "rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    let mut untested = std::collections::BTreeSet::new();
    let mut checked = 0;
    // Subcommands from the command column; flags from anywhere (the explanations name some).
    let commands = command_lines(&table)
        .into_iter()
        .flat_map(|(_, line)| {
            line.split(|c: char| c.is_whitespace() || "[]|(),".contains(c))
                .skip(1)
                .filter(|w| subcommands.contains(*w))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    let flags = table
        .body
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect::<Vec<_>>();
    for word in commands.iter().chain(&flags) {
        checked += 1;
        if !sources.contains(&format!("\"{word}\"")) {
            untested.insert(word.to_string());
        }
    }
    assert!(checked > 40, "found only {checked} words in the table");
    assert!(
        untested.is_empty(),
        "README commands and flags no test passes to the binary: {untested:?}"
    );
}
