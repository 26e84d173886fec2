//! `tiffin check`: every problem of the fleet repository, with its path, and, on the server, the paths provision would refuse.

use std::path::Path;

use super::RepoArgs;
use crate::admin::fleet::{FLEET_FILE, Fleet};
use crate::command::error::{Error, Exit};
use crate::core::diag::Severity;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub fleet: RepoArgs,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    check(&args.fleet.load()?)
}

fn check(fleet: &Fleet) -> Result<Exit, Error> {
    let mut problems = fleet.problems.clone();
    // What provision's plan refuses on this machine too (a drop-in or chroot root that is not
    // tiffin's), judged like provision only once fleet.toml itself is valid.
    let fleet_toml_ok = !problems
        .iter()
        .any(|p| p.severity == Severity::Error && p.path == Path::new(FLEET_FILE));
    if fleet_toml_ok {
        let sys = crate::server::provision::RealSystem::from_env();
        problems.extend(crate::server::provision::ownership::problems(
            &fleet.config.server,
            &sys,
        ));
    }
    for name in fleet.host_dirs() {
        match crate::admin::host_tree::resolve_host_tree(&fleet.root, &name) {
            Err(mut found) => problems.append(&mut found),
            Ok(mut sources) => {
                if let Some(host) = fleet.hosts.get(&name)
                    && let Err(mut found) = crate::admin::host_tree::common::attach_meta(
                        &name,
                        &mut sources,
                        &host.files,
                    )
                {
                    problems.append(&mut found);
                }
            }
        }
    }
    problems.sort_by(|a, b| (a.severity, &a.path).cmp(&(b.severity, &b.path)));
    for p in &problems {
        println!("{p}");
    }
    let errors = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let warnings = problems.len() - errors;
    if errors > 0 {
        return Err(Error::Usage(format!(
            "the fleet repository has {errors} error(s) and {warnings} warning(s)"
        )));
    }
    println!(
        "ok: {} host(s), {warnings} warning(s) in {}",
        fleet.hosts.len(),
        display_root(&fleet.root)
    );
    Ok(Exit::Ok)
}

fn display_root(root: &Path) -> String {
    if root == Path::new(".") {
        "the current directory".into()
    } else {
        root.display().to_string()
    }
}
