//! What both sides share: the vocabulary (names, hashes, settings, time), the formats on the wire and on disk, and durable storage. Uses nothing above it.

pub mod clock;
pub mod current;
pub mod diag;
pub mod durable;
pub mod hash;
pub mod layout;
pub mod names;
pub mod narinfo;
pub mod release;
pub mod report;
pub mod settings;
pub mod trust;
pub mod untrusted;
pub mod window;
