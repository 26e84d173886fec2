//! tiffin: keep a fleet of NixOS machines up to date by pull over per-host SFTP chroots.
//!
//! The folders are the layers, bottom to top: `core` (shared by both sides),
//! `admin` (the fleet repository), `server` and `client` (the two sides, which
//! never use each other), then `command` and `cli`. See docs/architecture.md.

pub mod admin;
pub mod cli;
pub mod client;
pub mod command;
pub mod core;
pub mod server;
