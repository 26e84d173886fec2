//! `tiffin init`: scaffold a fleet repository.

use std::path::PathBuf;

use crate::admin::fleet;
use crate::command::error::{Error, Exit};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to create it
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

pub fn run(args: &Args) -> Result<Exit, Error> {
    fleet::init(&args.dir)?;
    println!(
        "Created a fleet repository in {}.\nNext: `tiffin host add NAME --key KEY`, edit hosts/NAME/configuration.nix, then `tiffin check`.",
        args.dir.display()
    );
    Ok(Exit::Ok)
}
