//! `tiffin notify` (internal): started by a pull as root to tell every graphical session's user, then once per user with that user's uid.

use crate::client::PullError;
use crate::client::notify::{self, Message, Postpone};
use crate::command::error::{Error, Exit};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show it on this process's own session bus (run with the user's uid), not every session's
    #[arg(long)]
    pub as_user: bool,
    #[arg(long)]
    pub summary: String,
    #[arg(long)]
    pub body: String,
    /// Offer the "Postpone 1 hour" button
    #[arg(long)]
    pub offer_postpone: bool,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    let message = Message {
        summary: args.summary.clone(),
        body: args.body.clone(),
        postpone: match args.offer_postpone {
            true => Postpone::Offered,
            false => Postpone::NotOffered,
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PullError::Runtime)?;
    if args.as_user {
        if let Err(e) = runtime.block_on(notify::show_as_user(&message)) {
            tracing::warn!("no notification on this session bus: {e}");
        }
        return Ok(Exit::Ok);
    }
    let users = runtime.block_on(notify::graphical_users());
    notify::notify_sessions(&users, &message);
    Ok(Exit::Ok)
}
