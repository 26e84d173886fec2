//! `tiffin status`: the fleet's table (or JSON), exit 3 when a host needs attention.

use std::io::IsTerminal;

use super::FleetArgs;
use crate::clock::now;
use crate::error::{Error, Exit};
use crate::status;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Hosts to show [default: all]
    pub hosts: Vec<String>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

/// How `status` prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table { colour: bool },
    Json,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let fleet = args.fleet.load()?;
    let selected = fleet.select(&args.hosts)?;
    let now = now();
    let rows = status::collect(&fleet, &selected, &args.fleet.chroot_root(&fleet), now);
    let format = if args.json {
        Format::Json
    } else {
        Format::Table {
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    };
    match format {
        Format::Json => print!("{}", status::render_json(&rows)),
        Format::Table { colour } => print!("{}", status::render_table(&rows, now, colour)),
    }
    Ok(if rows.iter().any(|r| r.state.is_alarming()) {
        Exit::Alarm
    } else {
        Exit::Ok
    })
}
