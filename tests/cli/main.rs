//! The one integration test binary: the `tiffin` command line, one module per area.

mod provision;
mod pull;
