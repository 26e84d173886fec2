//! `tiffin pull`: one poll of a client (connect, fetch, verify, deploy, rebuild, report).

pub mod config;
pub mod connect;
pub mod deploy;
pub mod fetch;
#[cfg(test)]
mod mem_remote;
pub mod reboot;
pub mod rebuild;
pub mod state;
pub mod transport;
pub mod verify;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::layout::{CURRENT_FILE, RELEASES_DIR, REPORTS_DIR};
use crate::names::ReleaseId;
use crate::release::{CONFIG_DIR, MANIFEST_FILE, Manifest};
use crate::report::{PullResult, REBUILD_LOG_FILE, Report, STATUS_FILE};
use crate::settings::format_time;

use config::{ClientConfig, ConfigError};
use connect::ConnectError;
use deploy::{DeployError, DeployOptions};
use fetch::{FetchError, FetchStats, Store};
use state::{Applied, State, StateError};
use transport::{Remote, RemoteError};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("reading /{CURRENT_FILE}: {0}")]
    Current(String),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(
        "release {id} has seq {seq}, not newer than the applied release #{applied_seq} ({applied}): refusing a downgrade. If this is intended (the server was restored from a backup), run `tiffin pull --allow-downgrade` once"
    )]
    Downgrade {
        id: ReleaseId,
        seq: u64,
        applied: String,
        applied_seq: u64,
    },
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error("release {id}: the rebuild failed: {message}; the previous system keeps running")]
    Rebuild { id: ReleaseId, message: String },
    #[error("release {id}: the health check failed: {message}; {rolled}")]
    Health {
        id: ReleaseId,
        message: String,
        rolled: String,
    },
    #[error(
        "release {id} failed {failures} time(s), last: {error}; next retry at {next_retry} (or run `tiffin pull --now`)"
    )]
    BackingOff {
        id: ReleaseId,
        failures: u32,
        error: String,
        next_retry: String,
    },
    #[error("uploading the report: {0}")]
    Report(RemoteError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "the release is applied and reported, but the reboot it needs failed: {message} (reboot by hand, or fix reboot_command in the client configuration)"
    )]
    Reboot { message: String },
}

impl PullError {
    pub fn exit_code(&self) -> u8 {
        match self {
            PullError::Config(ConfigError::Invalid { .. }) => 2,
            _ => 1,
        }
    }
}

/// How a successful poll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    Unchanged {
        id: ReleaseId,
        seq: u64,
    },
    Applied {
        id: ReleaseId,
        seq: u64,
        fetch: FetchStats,
        deployed: deploy::DeployStats,
        /// `reboot = "if-needed"` and the new kernel, initrd or modules differ from the booted ones.
        reboot: bool,
    },
}

/// Everything a poll needs besides the transport.
#[derive(Debug, Clone)]
pub struct PollOptions {
    pub retry_now: bool,
    pub allow_downgrade: bool,
    /// Who owns deployed files: root:root in real use, the caller in tests run as a user.
    pub owner: crate::durable::Owner,
    /// `/run/current-system`, reported as `system`.
    pub system_link: PathBuf,
    /// `/run/booted-system` and `/nix/var/nix/profiles/system`, compared for `reboot = "if-needed"`.
    pub booted_system: PathBuf,
    pub system_profile: PathBuf,
    pub now: fn() -> SystemTime,
}

impl Default for PollOptions {
    fn default() -> Self {
        PollOptions {
            retry_now: false,
            allow_downgrade: false,
            owner: if nix::unistd::geteuid().is_root() {
                crate::durable::Owner::Root
            } else {
                crate::durable::Owner::Caller
            },
            system_link: "/run/current-system".into(),
            booted_system: "/run/booted-system".into(),
            system_profile: "/nix/var/nix/profiles/system".into(),
            now: crate::clock::now,
        }
    }
}

/// The largest MANIFEST a client accepts (about 300,000 files).
const MANIFEST_LIMIT: u64 = 64 << 20;
const CURRENT_LIMIT: u64 = 256;
pub const CURRENT_LINK: &str = "current";

fn remote_path(parts: &[&str]) -> String {
    format!("/{}", parts.join("/"))
}

/// One poll against `remote`. State is updated and a report uploaded in every case that reached `/CURRENT`.
pub async fn poll<R: Remote>(
    remote: &mut R,
    cfg: &ClientConfig,
    opts: &PollOptions,
) -> Result<Polled, PullError> {
    let started = (opts.now)();
    let mut state = State::load(&cfg.state_dir)?;
    let text = remote
        .read(&remote_path(&[CURRENT_FILE]), CURRENT_LIMIT)
        .await
        .map_err(|e| PullError::Current(e.to_string()))?;
    let id: ReleaseId = String::from_utf8_lossy(&text)
        .trim()
        .parse()
        .map_err(|e: crate::names::NameError| PullError::Current(e.to_string()))?;
    state.last_poll = Some(format_time(started));
    let mut report = Report {
        host: cfg.host.to_string(),
        release: Some(id.to_string()),
        seq: None,
        result: PullResult::Unchanged,
        applied: state.applied.as_ref().map(|a| a.id.to_string()),
        started: Some(format_time(started)),
        finished: None,
        last_seen: String::new(),
        system: None,
        error: None,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };

    if let Some(applied) = state.applied.clone().filter(|a| a.id == id) {
        state.failure = None;
        state.save(&cfg.state_dir)?;
        report.seq = Some(applied.seq);
        upload_report(remote, &mut report, opts, None).await?;
        return Ok(Polled::Unchanged {
            id,
            seq: applied.seq,
        });
    }

    if !(opts.retry_now || opts.allow_downgrade)
        && let Some(f) = state.backing_off(&id, started).cloned()
    {
        state.save(&cfg.state_dir)?;
        let err = PullError::BackingOff {
            id: id.clone(),
            failures: f.failures,
            error: f.error.clone(),
            next_retry: f.next_retry.clone(),
        };
        report.seq = f.seq;
        report.result = PullResult::Failed;
        report.error = Some(f.error);
        upload_report(remote, &mut report, opts, None).await?;
        return Err(err);
    }

    let mut log = None;
    let mut seq = None;
    let result = apply(remote, cfg, opts, &state, &id, &mut seq, &mut log).await;
    report.seq = seq;
    match result {
        Ok((fetch, deployed, result)) => {
            let seq = seq.unwrap_or_default();
            match result {
                Ok(reboot) => {
                    state.applied = Some(Applied {
                        id: id.clone(),
                        seq,
                        at: format_time((opts.now)()),
                    });
                    state.failure = None;
                    state.save(&cfg.state_dir)?;
                    report.result = PullResult::Ok;
                    report.applied = Some(id.to_string());
                    upload_report(remote, &mut report, opts, log.as_deref()).await?;
                    let keep: Vec<&ReleaseId> = vec![&id];
                    Store::new(&cfg.state_dir).prune(&keep);
                    Ok(Polled::Applied {
                        id,
                        seq,
                        fetch,
                        deployed,
                        reboot,
                    })
                }
                Err((result, e)) => {
                    fail(remote, cfg, opts, &mut state, &mut report, result, e, log).await
                }
            }
        }
        // A transport failure says nothing about the release: no backoff, and no report (the link is likely gone).
        Err(e @ (PullError::Remote(_) | PullError::Fetch(FetchError::Remote { .. }))) => {
            state.save(&cfg.state_dir)?;
            Err(e)
        }
        Err(e) => {
            fail(
                remote,
                cfg,
                opts,
                &mut state,
                &mut report,
                PullResult::Failed,
                e,
                log,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)] // the pieces of one poll, threaded through once
async fn fail<R: Remote>(
    remote: &mut R,
    cfg: &ClientConfig,
    opts: &PollOptions,
    state: &mut State,
    report: &mut Report,
    result: PullResult,
    e: PullError,
    log: Option<Vec<u8>>,
) -> Result<Polled, PullError> {
    let id: ReleaseId = report
        .release
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("the report names the release being applied");
    state.record_failure(
        &id,
        report.seq,
        &e.to_string(),
        (opts.now)(),
        (cfg.backoff_initial.0, cfg.backoff_max.0),
    );
    state.save(&cfg.state_dir)?;
    report.result = result;
    report.error = Some(e.to_string());
    if let Err(upload) = upload_report(remote, report, opts, log.as_deref()).await {
        tracing::warn!("{upload}");
    }
    Err(e)
}

type Applying = (
    FetchStats,
    deploy::DeployStats,
    // Ok(true): applied, and `reboot = "if-needed"` found that it takes a reboot.
    Result<bool, (PullResult, PullError)>,
);

/// Fetch, verify, deploy, rebuild. An `Err` means nothing changed on this machine; the
/// inner `Err` that files were deployed but the rebuild or health check failed.
async fn apply<R: Remote>(
    remote: &mut R,
    cfg: &ClientConfig,
    opts: &PollOptions,
    state: &State,
    id: &ReleaseId,
    seq_out: &mut Option<u64>,
    log_out: &mut Option<Vec<u8>>,
) -> Result<Applying, PullError> {
    let bytes = remote
        .read(
            &remote_path(&[RELEASES_DIR, id.as_str(), MANIFEST_FILE]),
            MANIFEST_LIMIT,
        )
        .await?;
    let manifest: Manifest =
        verify::manifest(&bytes, id, &cfg.host).map_err(|source| FetchError::Verify {
            id: id.clone(),
            source,
        })?;
    *seq_out = Some(manifest.seq);
    if let Some(applied) = &state.applied
        && manifest.seq <= applied.seq
        && !opts.allow_downgrade
    {
        return Err(PullError::Downgrade {
            id: id.clone(),
            seq: manifest.seq,
            applied: applied.id.to_string(),
            applied_seq: applied.seq,
        });
    }
    let store = Store::new(&cfg.state_dir);
    let fetch = fetch::fetch_release(remote, &store, id, &manifest, &bytes).await?;
    let release_dir = store.release(id);
    let deployed = deploy::deploy(
        &manifest,
        &DeployOptions {
            root: &cfg.root,
            release_dir: &release_dir,
            state_dir: &cfg.state_dir,
            owner: opts.owner,
        },
    )?;

    let previous = state.applied.as_ref().map(|a| a.id.clone());
    point_current(&cfg.state_dir, id).map_err(|e| StateError::Io {
        path: cfg.state_dir.join(CURRENT_LINK),
        source: e,
    })?;
    let config_dir = cfg.state_dir.join(CURRENT_LINK).join(CONFIG_DIR);
    let log_path = cfg.state_dir.join(REBUILD_LOG_FILE);
    let argv = rebuild::argv(
        &cfg.rebuild.0,
        manifest.apply.action,
        &config_dir,
        &cfg.host,
    );
    tracing::info!("running {}", argv.join(" "));
    let outcome = rebuild::run(&argv, &log_path, cfg.rebuild_timeout.0);
    *log_out = Some(outcome.log_tail);
    if let rebuild::Ended::Failed(message) = outcome.ended {
        restore_current(&cfg.state_dir, previous.as_ref());
        return Ok((
            fetch,
            deployed,
            Err((
                PullResult::Failed,
                PullError::Rebuild {
                    id: id.clone(),
                    message,
                },
            )),
        ));
    }
    if !manifest.apply.health_check.is_empty() {
        let check = rebuild::run(
            &manifest.apply.health_check,
            &cfg.state_dir.join("health.log"),
            cfg.rebuild_timeout.0,
        );
        if let rebuild::Ended::Failed(message) = check.ended {
            if let Some(log) = log_out.as_mut() {
                log.extend_from_slice(b"\n--- health check ---\n");
                log.extend_from_slice(&check.log_tail);
            }
            let (result, rolled) = roll_back(cfg, opts, previous.as_ref(), manifest.apply.action);
            return Ok((
                fetch,
                deployed,
                Err((
                    result,
                    PullError::Health {
                        id: id.clone(),
                        message,
                        rolled,
                    },
                )),
            ));
        }
    }
    let reboot = manifest.apply.reboot == crate::settings::Reboot::IfNeeded
        && matches!(
            manifest.apply.action,
            crate::settings::Action::Switch | crate::settings::Action::Boot
        )
        && reboot::needed(&opts.booted_system, &opts.system_profile);
    Ok((fetch, deployed, Ok(reboot)))
}

/// After a failed health check: deploy the previous release's `files/` again and rebuild
/// it, if there is one, so a rolled-back host runs the old configuration with the old files.
fn roll_back(
    cfg: &ClientConfig,
    opts: &PollOptions,
    previous: Option<&ReleaseId>,
    action: crate::settings::Action,
) -> (PullResult, String) {
    let Some(prev) = previous else {
        return (
            PullResult::Failed,
            "there is no previous release to roll back to".into(),
        );
    };
    let store = Store::new(&cfg.state_dir);
    let redeployed = std::fs::read(store.release(prev).join(MANIFEST_FILE))
        .map_err(|e| e.to_string())
        .and_then(|bytes| Manifest::parse_verified(&bytes, prev).map_err(|e| e.to_string()))
        .and_then(|old| {
            deploy::deploy(
                &old,
                &DeployOptions {
                    root: &cfg.root,
                    release_dir: &store.release(prev),
                    state_dir: &cfg.state_dir,
                    owner: opts.owner,
                },
            )
            .map_err(|e| e.to_string())
        });
    if let Err(e) = redeployed {
        return (
            PullResult::Failed,
            format!(
                "rolling back to release {}: its files/ could not be deployed again: {e}",
                prev.short()
            ),
        );
    }
    restore_current(&cfg.state_dir, Some(prev));
    let config_dir = cfg.state_dir.join(CURRENT_LINK).join(CONFIG_DIR);
    let argv = rebuild::argv(&cfg.rebuild.0, action, &config_dir, &cfg.host);
    let back = rebuild::run(
        &argv,
        &cfg.state_dir.join("rollback.log"),
        cfg.rebuild_timeout.0,
    );
    match back.ended {
        rebuild::Ended::Success => (
            PullResult::RolledBack,
            format!("rolled back to release {}", prev.short()),
        ),
        rebuild::Ended::Failed(m) => (
            PullResult::Failed,
            format!("rolling back to release {} failed too: {m}", prev.short()),
        ),
    }
}

/// `state_dir/current` → `releases/<id>`, swapped by rename.
fn point_current(state_dir: &Path, id: &ReleaseId) -> std::io::Result<()> {
    let tmp = state_dir.join(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new(RELEASES_DIR).join(id.as_str()), &tmp)?;
    std::fs::rename(&tmp, state_dir.join(CURRENT_LINK))?;
    state::fsync_dir(state_dir)
}

fn restore_current(state_dir: &Path, previous: Option<&ReleaseId>) {
    let result = match previous {
        Some(prev) => point_current(state_dir, prev),
        None => std::fs::remove_file(state_dir.join(CURRENT_LINK)),
    };
    if let Err(e) = result {
        tracing::warn!("cannot point {CURRENT_LINK} back to the previous release: {e}");
    }
}

async fn upload_report<R: Remote>(
    remote: &mut R,
    report: &mut Report,
    opts: &PollOptions,
    log: Option<&[u8]>,
) -> Result<(), PullError> {
    let finished = format_time((opts.now)());
    // Read at the end: the rebuild may just have switched it.
    report.system = std::fs::read_link(&opts.system_link)
        .ok()
        .map(|p| p.display().to_string());
    report.finished = Some(finished.clone());
    report.last_seen = finished;
    if let Some(log) = log {
        remote
            .write_atomic(&remote_path(&[REPORTS_DIR, REBUILD_LOG_FILE]), log)
            .await
            .map_err(PullError::Report)?;
    }
    remote
        .write_atomic(
            &remote_path(&[REPORTS_DIR, STATUS_FILE]),
            report.render().as_bytes(),
        )
        .await
        .map_err(PullError::Report)
}

#[cfg(test)]
mod tests;
