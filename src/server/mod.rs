//! The server side: releases into chroots, prebuilt closures, accounts and sshd, triggers, rollouts in waves with reboot slots, and the fleet's state read from the reports. Uses `admin` and `core`.

pub mod prebuilt;
pub mod provision;
pub mod publish;
pub mod rollout;
pub mod signing;
pub mod status;
pub mod trigger;
pub mod verify;
