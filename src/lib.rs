//! tiffin: keep a fleet of NixOS machines up to date by pull over per-host SFTP chroots.

pub mod cli;
pub mod clock;
pub mod command;
pub mod current;
pub mod diag;
pub mod durable;
pub mod error;
pub mod fleet;
pub mod hash;
pub mod host_tree;
pub mod layout;
pub mod names;
pub mod narinfo;
pub mod prebuilt;
pub mod provision;
pub mod publish;
pub mod pull;
pub mod release;
pub mod report;
pub mod settings;
pub mod status;
pub mod trigger;
pub mod verify;
pub mod window;
