//! `tiffin status`: the fleet's table (or JSON, or Prometheus metrics), one host's story, exit 3 when a host needs attention.

use std::io::IsTerminal;
use std::path::PathBuf;

use super::FleetArgs;
use crate::command::error::{Error, Exit};
use crate::core::clock::now;
use crate::core::layout::ChrootPaths;
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
    let text = match format {
        Format::Json => status::render_json(&rows),
        Format::Prometheus => status::prometheus::render(&rows, now),
        Format::Table { .. } if args.hosts.len() == 1 && rows.len() == 1 => {
            let paths = ChrootPaths::new(&chroot_root, &rows[0].host);
            status::story::render(&rows[0], &paths, now)
        }
        Format::Table { colour } => status::render_table(&rows, now, colour),
    };
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
    Ok(if rows.iter().any(|r| r.state.is_alarming()) {
        Exit::Alarm
    } else {
        Exit::Ok
    })
}
