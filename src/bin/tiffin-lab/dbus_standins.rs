//! Stand-ins for a workstation's D-Bus services (NetworkManager's `Metered`, UPower's `OnBattery` and `Percentage`, logind's sessions, a notification server that records what it shows), with their real names, paths and property types.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedValue;

/// Which service to stand in for, and what it says.
#[derive(Debug, Clone, clap::Args)]
pub struct StandinArgs {
    /// network-manager, upower, logind or notifications
    #[arg(value_enum)]
    pub service: Service,
    /// The bus to serve on [default: the system bus; notifications: the session bus]
    #[arg(long, value_name = "ADDRESS")]
    pub address: Option<String>,
    /// NetworkManager's `Metered` (NMMetered: 0 unknown, 1 yes, 2 no, 3 guess-yes, 4 guess-no)
    #[arg(long, default_value_t = 2)]
    pub metered: u32,
    /// UPower's `OnBattery`
    #[arg(long)]
    pub on_battery: bool,
    /// UPower's display device `Percentage`
    #[arg(long, default_value_t = 100.0)]
    pub percentage: f64,
    /// notifications: append each shown notification to this file, one line
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// notifications: press the action with this key on every notification that offers it
    #[arg(long, value_name = "KEY")]
    pub press: Option<String>,
    /// logind: a session, as UID:TYPE:CLASS (e.g. 1000:wayland:user); repeatable
    #[arg(long, value_name = "UID:TYPE:CLASS")]
    pub session: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Service {
    NetworkManager,
    Upower,
    Logind,
    Notifications,
}

/// A session logind lists: `ListSessions`' (id, uid, user, seat, path) and the session
/// object's `Type` and `Class`.
#[derive(Debug, Clone)]
struct SessionSpec {
    id: String,
    uid: u32,
    kind: String,
    class: String,
}

fn sessions(specs: &[String]) -> Result<Vec<SessionSpec>, String> {
    specs
        .iter()
        .enumerate()
        .map(|(n, spec)| {
            let parts: Vec<&str> = spec.split(':').collect();
            let [uid, kind, class] = parts[..] else {
                return Err(format!("--session {spec}: expected UID:TYPE:CLASS"));
            };
            let uid = uid
                .parse()
                .map_err(|_| format!("--session {spec}: {uid} is not a uid"))?;
            Ok(SessionSpec {
                id: (n + 1).to_string(),
                uid,
                kind: kind.to_owned(),
                class: class.to_owned(),
            })
        })
        .collect()
}

fn session_path(id: &str) -> String {
    format!("/org/freedesktop/login1/session/_3{id}")
}

type ListedSession = (String, u32, String, String, zbus::zvariant::OwnedObjectPath);

struct Login1 {
    sessions: Vec<SessionSpec>,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Login1 {
    fn list_sessions(&self) -> zbus::fdo::Result<Vec<ListedSession>> {
        self.sessions
            .iter()
            .map(|s| {
                let path = zbus::zvariant::OwnedObjectPath::try_from(session_path(&s.id))
                    .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
                Ok((
                    s.id.clone(),
                    s.uid,
                    format!("uid{}", s.uid),
                    "seat0".into(),
                    path,
                ))
            })
            .collect()
    }
}

struct Session {
    spec: SessionSpec,
}

#[zbus::interface(name = "org.freedesktop.login1.Session")]
impl Session {
    #[zbus(property)]
    fn id(&self) -> String {
        self.spec.id.clone()
    }
    #[zbus(property, name = "Type")]
    fn kind(&self) -> String {
        self.spec.kind.clone()
    }
    #[zbus(property)]
    fn class(&self) -> String {
        self.spec.class.clone()
    }
    #[zbus(property)]
    fn active(&self) -> bool {
        true
    }
}

struct NetworkManager {
    metered: u32,
}

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl NetworkManager {
    #[zbus(property)]
    fn metered(&self) -> u32 {
        self.metered
    }
}

struct UPower {
    on_battery: bool,
}

#[zbus::interface(name = "org.freedesktop.UPower")]
impl UPower {
    #[zbus(property)]
    fn on_battery(&self) -> bool {
        self.on_battery
    }
}

struct Device {
    percentage: f64,
}

#[zbus::interface(name = "org.freedesktop.UPower.Device")]
impl Device {
    #[zbus(property)]
    fn percentage(&self) -> f64 {
        self.percentage
    }
}

struct Notifications {
    record: Option<PathBuf>,
    press: Option<String>,
    next: u32,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Notifications {
    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &mut self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        _hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        self.next += 1;
        let id = self.next;
        let line = format!(
            "{app_name} | {summary} | {body} | actions={}\n",
            actions.join(",")
        );
        if let Some(path) = &self.record {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path);
            if let Ok(mut f) = file {
                let _ = f.write_all(line.as_bytes());
            }
        }
        if let Some(key) = self.press.clone().filter(|k| actions.contains(k)) {
            // After the reply: the client listens for the signal once Notify has returned.
            let emitter = emitter.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                let _ = Self::action_invoked(&emitter, id, &key).await;
            });
        }
        id
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["actions".into(), "body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "tiffin-lab".into(),
            "tiffin".into(),
            "1".into(),
            "1.2".into(),
        )
    }

    #[zbus(signal)]
    async fn action_invoked(
        emitter: &SignalEmitter<'_>,
        id: u32,
        action_key: &str,
    ) -> zbus::Result<()>;
}

/// Serves the stand-in until killed.
pub fn main(args: &StandinArgs) -> Result<u8, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(serve(args))
        .map_err(|e| format!("{:?}: {e}", args.service))?;
    Ok(0)
}

async fn serve(args: &StandinArgs) -> zbus::Result<()> {
    let listed = sessions(&args.session).map_err(zbus::Error::Failure)?;
    let builder = match (&args.address, args.service) {
        (Some(a), _) => zbus::connection::Builder::address(a.as_str())?,
        (None, Service::Notifications) => zbus::connection::Builder::session()?,
        (None, _) => zbus::connection::Builder::system()?,
    };
    let builder = match args.service {
        Service::NetworkManager => builder.name("org.freedesktop.NetworkManager")?.serve_at(
            "/org/freedesktop/NetworkManager",
            NetworkManager {
                metered: args.metered,
            },
        )?,
        Service::Upower => builder
            .name("org.freedesktop.UPower")?
            .serve_at(
                "/org/freedesktop/UPower",
                UPower {
                    on_battery: args.on_battery,
                },
            )?
            .serve_at(
                "/org/freedesktop/UPower/devices/DisplayDevice",
                Device {
                    percentage: args.percentage,
                },
            )?,
        Service::Logind => {
            let mut b = builder.name("org.freedesktop.login1")?.serve_at(
                "/org/freedesktop/login1",
                Login1 {
                    sessions: listed.clone(),
                },
            )?;
            for spec in listed {
                b = b.serve_at(session_path(&spec.id), Session { spec })?;
            }
            b
        }
        Service::Notifications => builder.name("org.freedesktop.Notifications")?.serve_at(
            "/org/freedesktop/Notifications",
            Notifications {
                record: args.record.clone(),
                press: args.press.clone(),
                next: 0,
            },
        )?,
    };
    let _conn = builder.build().await?;
    std::future::pending::<()>().await;
    Ok(())
}
