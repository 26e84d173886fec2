//! The admin side: the fleet repository (`fleet.toml`, `hosts/`) and how a host's directory becomes a release's files. Uses only `core`.

pub mod fleet;
pub mod host_tree;
pub mod sign;
