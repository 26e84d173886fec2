//! `tiffin status`: the fleet's table (or JSON, or Prometheus metrics), one host's story, exit 3 when a host needs attention.

use std::io::IsTerminal;
use std::path::PathBuf;

use super::FleetArgs;
use crate::command::error::{Error, Exit};
use crate::core::clock::now;
use crate::core::layout::ChrootPaths;
use crate::server::rollout::{self, exec};
use crate::server::status;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Hosts to show [default: all]; one host alone (as a table) tells its whole story
    pub hosts: Vec<String>,
    /// Machine-readable output (the same as --format json)
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// table for people, json for scripts, prometheus for node_exporter's textfile collector
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    pub format: FormatArg,
    /// Write the output to FILE atomically (temporary name, fsync, rename) instead of stdout
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Table,
    Json,
    Prometheus,
}

/// How `status` prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table { colour: bool },
    Json,
    Prometheus,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let fleet = args.fleet.load()?;
    let selected = fleet.select(&args.hosts)?;
    let now = now();
    let chroot_root = args.fleet.chroot_root(&fleet);
    let rows = status::collect(&fleet, &selected, &chroot_root, now);
    let format = match (args.json, args.format) {
        (true, _) | (false, FormatArg::Json) => Format::Json,
        (false, FormatArg::Prometheus) => Format::Prometheus,
        (false, FormatArg::Table) => Format::Table {
            colour: args.output.is_none()
                && std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none(),
        },
    };
    let state_dir = args.fleet.state_dir(&fleet);
    // The hosts' state is shown (and the metrics written) even when the rollout's record is
    // unreadable; that is an alarm of its own, said on stderr.
    let (overview, record_broken) = match exec::overview(&fleet, &chroot_root, &state_dir, now) {
        Ok(o) => (o, false),
        Err(e) => {
            eprintln!("error: the rollout's record cannot be read: {e}");
            (exec::Overview::default(), true)
        }
    };

    let mut text = match format {
        Format::Json => status::render_json(&rows),
        Format::Prometheus => status::prometheus::render(&rows, now),
        Format::Table { .. } if args.hosts.len() == 1 && rows.len() == 1 => {
            let paths = ChrootPaths::new(&chroot_root, &rows[0].host);
            status::story::render(&rows[0], &paths, now)
        }
        Format::Table { colour } => status::render_table(&rows, now, colour),
    };
    text.push_str(&rollout_text(format, &args.hosts, &overview, now));
    match &args.output {
        None => print!("{text}"),
        // World-readable like every textfile node_exporter reads: it holds no secret.
        Some(path) => crate::core::durable::write_atomic(
            path,
            text.as_bytes(),
            0o644,
            crate::core::durable::Owner::Caller,
        )
        .map_err(|e| Error::Failed(format!("cannot write {}: {e}", path.display())))?,
    }
    let halted = record_broken
        || overview
            .rollout
            .as_ref()
            .is_some_and(|r| r.phase.is_alarming());
    Ok(if halted || rows.iter().any(|r| r.state.is_alarming()) {
        Exit::Alarm
    } else {
        Exit::Ok
    })
}

/// The rollout after the hosts: its metrics; under the table, its summary while it holds
/// hosts back or halted; in one host's story, whether the rollout holds it back.
fn rollout_text(
    format: Format,
    hosts: &[String],
    overview: &exec::Overview,
    now: std::time::SystemTime,
) -> String {
    let held = overview.slots.held.len();
    let lines: Vec<String> = match (format, &overview.rollout) {
        (Format::Json, _) => return String::new(),
        (Format::Prometheus, r) => {
            return rollout::metrics::render(r.as_ref(), &overview.views, held, now);
        }
        (Format::Table { .. }, Some(r)) if hosts.len() == 1 => hosts[0]
            .parse()
            .ok()
            .and_then(|h| rollout::held_back(r, &h))
            .into_iter()
            .collect(),
        (Format::Table { .. }, Some(r)) if r.phase.is_open() || r.phase.is_alarming() => {
            let mut lines = vec![String::new()];
            lines.extend(rollout::summary(r, &overview.views, now));
            lines
        }
        _ => Vec::new(),
    };
    let mut text: String = lines
        .iter()
        .map(|l| format!("{}\n", crate::core::untrusted::one_line(l, 4096)))
        .collect();
    if matches!(format, Format::Table { .. }) {
        for (host, slot) in &overview.slots.held {
            if hosts.is_empty() || hosts.iter().any(|h| h == host.as_str()) {
                text.push_str(&format!(
                    "reboot slot: {host} since {}\n",
                    crate::core::settings::format_time(slot.granted.0)
                ));
            }
        }
    }
    text
}
