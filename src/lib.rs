//! tiffin: keep a fleet of NixOS machines up to date by pull over per-host SFTP chroots.

pub mod cli;
pub mod durable;
pub mod fleet;
pub mod lab;
pub mod names;
pub mod provision;
pub mod publish;
pub mod pull;
pub mod release;
pub mod report;
pub mod settings;
pub mod status;
