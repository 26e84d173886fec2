//! `alejandra-check [--write] PATH…`: alejandra's formatting check for the Nix static checks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use alejandra::format::{in_memory, Status};

const USAGE: &str = "usage: alejandra-check [--write] PATH...

Checks that every .nix file under the PATHs (files or directories) is formatted
the way alejandra 3.1 formats it. Exits 0 when all are, 2 when some are not
(each listed), 1 when a file cannot be read or parsed. With --write, rewrites
the files that are not formatted instead.";

fn nix_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            // Build outputs and VCS metadata are never ours to format.
            if matches!(name.to_str(), Some(".git" | "target" | "result")) {
                continue;
            }
            nix_files(&entry.path(), out)?;
        }
    } else if path.extension().is_some_and(|e| e == "nix") {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut write = false;
    let mut roots = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--write" => write = true,
            "--check" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => roots.push(PathBuf::from(arg)),
        }
    }
    if roots.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(1);
    }
    let mut files = Vec::new();
    for root in &roots {
        if let Err(e) = nix_files(root, &mut files) {
            eprintln!("error: cannot list {}: {e}", root.display());
            return ExitCode::from(1);
        }
    }
    let (mut unformatted, mut broken) = (0, 0);
    for file in &files {
        let before = match std::fs::read_to_string(file) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", file.display());
                broken += 1;
                continue;
            }
        };
        match in_memory(file.display().to_string(), before) {
            (Status::Error(e), _) => {
                eprintln!("error: cannot parse {}: {e}", file.display());
                broken += 1;
            }
            (Status::Changed(false), _) => {}
            (Status::Changed(true), after) if write => {
                if let Err(e) = std::fs::write(file, after) {
                    eprintln!("error: cannot write {}: {e}", file.display());
                    broken += 1;
                } else {
                    println!("formatted {}", file.display());
                }
            }
            (Status::Changed(true), _) => {
                println!("not formatted: {}", file.display());
                unformatted += 1;
            }
        }
    }
    println!(
        "alejandra-check: {} file(s), {unformatted} not formatted, {broken} unreadable",
        files.len()
    );
    if broken > 0 {
        ExitCode::from(1)
    } else if unformatted > 0 && !write {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
