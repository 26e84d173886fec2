//! `tiffin pause` and `tiffin resume`: hold this client's releases back for a while, or let them through again.

use std::path::PathBuf;

use crate::client::PullError;
use crate::client::config::ClientConfig;
use crate::client::pause::{self, Pause, PauseReason};
use crate::client::state;
use crate::command::error::{Error, Exit};
use crate::core::clock::now;
use crate::core::settings::Interval;

pub const PAUSE_ABOUT: &str = "Hold this host's releases back for a while (root on the client).

While paused, every pull still connects and uploads its report (the server sees the
host alive, and `tiffin status` shows it as paused, with the reason and the end), but
applies nothing: no download, no files/, no rebuild, no reboot. The pause ends by itself
after --for (at most 30 days), or earlier with `tiffin resume`; the next pull then
applies the current release. Pausing again replaces the pause; a pull already under way
finishes what it started.";

pub const RESUME_ABOUT: &str = "End a pause of this host now (root on the client).

The next pull (the timer's, or `tiffin pull`) applies the current release.";

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The client configuration (its state_dir holds the pause)
    #[arg(long, default_value = "/etc/tiffin/client.toml", value_name = "FILE")]
    pub config: PathBuf,
    /// How long the pause lasts, like "2h", "1d" or "90m"
    #[arg(long = "for", default_value = "1d", value_name = "DURATION")]
    pub length: Interval,
    /// Why, one line: shown by `tiffin status` on the server
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<PauseReason>,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The client configuration (its state_dir holds the pause)
    #[arg(long, default_value = "/etc/tiffin/client.toml", value_name = "FILE")]
    pub config: PathBuf,
}

pub fn pause(args: &PauseArgs) -> Result<Exit, Error> {
    let cfg = ClientConfig::load(&args.config).map_err(PullError::from)?;
    let pause = Pause::new(now(), args.length.0, args.reason.clone()).map_err(Error::Usage)?;
    state::prepare_state_dir(&cfg.state_dir).map_err(PullError::from)?;
    pause::save(&cfg.state_dir, &pause).map_err(PullError::from)?;
    crate::client::notify::announce(
        cfg.notify,
        &crate::client::notify::Event::Held {
            why: crate::client::notify::Held::Paused,
        },
    );
    println!(
        "{}: paused until {}{}; pulls report but apply nothing until then (`tiffin resume` ends it early)",
        cfg.host,
        pause.until,
        pause
            .reason
            .map(|r| format!(" ({})", r.as_str()))
            .unwrap_or_default()
    );
    Ok(Exit::Ok)
}

pub fn resume(args: &ResumeArgs) -> Result<Exit, Error> {
    let cfg = ClientConfig::load(&args.config).map_err(PullError::from)?;
    if pause::remove(&cfg.state_dir).map_err(PullError::from)? {
        println!(
            "{}: resumed; the next pull applies the current release",
            cfg.host
        );
    } else {
        println!("{}: not paused; nothing to do", cfg.host);
    }
    Ok(Exit::Ok)
}
