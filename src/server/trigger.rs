//! `tiffin trigger` on the server: a new trigger line in a host's `CURRENT`, written atomically.
//!
//! The caller holds the publish lock, so a trigger and a publish never interleave; publish
//! keeps the trigger line when it replaces line 1. The id is `<unix seconds>-<counter>`,
//! the counter one more than the trigger it replaces, so it is new even within one second
//! and after a server whose clock went back.

use std::fs;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::core::current::{self, Trigger, TriggerKind};
use crate::core::durable;
use crate::core::layout::{ChrootPaths, SERVER_DIR_MODE, SERVER_FILE_MODE};
use crate::core::names::{HostName, ReleaseId};

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("host {host}: nothing is published yet (no CURRENT in {}): run `tiffin publish {host}` first", path.display())]
    NothingPublished { host: HostName, path: PathBuf },
    #[error("host {host}: {} does not name a release ({message}); run `tiffin publish {host}` to repair it", path.display())]
    Invalid {
        host: HostName,
        path: PathBuf,
        message: String,
    },
    #[error("host {host}: {step} {}: {source}", path.display())]
    Io {
        host: HostName,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes a new trigger of `kind` into the host's `CURRENT`, keeping line 1; returns it.
pub fn trigger_host(
    host: &HostName,
    paths: &ChrootPaths,
    kind: TriggerKind,
    now: SystemTime,
    group: Option<u32>,
) -> Result<Trigger, TriggerError> {
    let path = paths.current();
    let io = |step: &'static str, path: &std::path::Path| {
        let (host, path) = (host.clone(), path.to_owned());
        move |source| TriggerError::Io {
            host,
            step,
            path,
            source,
        }
    };
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TriggerError::NothingPublished {
                host: host.clone(),
                path,
            });
        }
        Err(e) => return Err(io("reading", &path)(e)),
    };
    let release = current::first_line(&bytes);
    if let Err(e) = release.parse::<ReleaseId>() {
        return Err(TriggerError::Invalid {
            host: host.clone(),
            path,
            message: e.to_string(),
        });
    }
    let counter = current::trigger(&bytes).map_or(0, |t| t.counter()) + 1;
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let trigger = Trigger {
        id: format!("{secs}-{counter}"),
        kind,
    };
    let owner = group.map_or(durable::Owner::Caller, durable::Owner::RootGroup);
    let staging = paths.staging();
    crate::server::publish::ensure_dir(&staging, SERVER_DIR_MODE, group)
        .map_err(io("creating", &staging))?;
    let tmp = staging.join("CURRENT.trigger");
    // A crash between writing and renaming leaves it behind; it was never visible to anyone.
    let _ = fs::remove_file(&tmp);
    // The statement line (signed fleets) stays: it goes with the release, not the trigger.
    let statement = current::statement(&bytes);
    let text = current::render(&release, Some(&trigger), statement.as_deref());
    durable::create_synced(&tmp, text.as_bytes(), SERVER_FILE_MODE, owner)
        .map_err(io("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("swapping", &path))?;
    durable::sync_dir(&paths.root).map_err(io("syncing", &paths.root))?;
    Ok(trigger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_keeps_the_release_and_counts_on() {
        let dir = tempfile::tempdir().unwrap();
        let host: HostName = "web-1".parse().unwrap();
        let paths = ChrootPaths::new(dir.path(), &host);
        let err = trigger_host(
            &host,
            &paths,
            TriggerKind::Pull,
            SystemTime::UNIX_EPOCH,
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("run `tiffin publish web-1` first"),
            "{err}"
        );
        fs::create_dir_all(&paths.root).unwrap();
        let id = "a".repeat(64);
        fs::write(paths.current(), format!("{id}\n")).unwrap();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let first = trigger_host(&host, &paths, TriggerKind::Pull, at, None).unwrap();
        let second = trigger_host(&host, &paths, TriggerKind::Reapply, at, None).unwrap();
        assert_eq!(first.id, "1800000000-1");
        assert_eq!(second.id, "1800000000-2");
        let text = fs::read_to_string(paths.current()).unwrap();
        assert_eq!(text, format!("{id}\ntrigger 1800000000-2 reapply\n"));
        assert_eq!(paths.read_current().unwrap().unwrap().as_str(), id);
    }
}
