//! Diagnostics: a problem found in a file (the fleet repository, client.toml), and toml errors folded into one line.

use std::fmt;
use std::path::PathBuf;

use crate::core::names::HostName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One thing wrong in the fleet repository, with the path (relative to the
/// repository) where the admin has to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub host: Option<HostName>,
    pub path: PathBuf,
    pub message: String,
}

impl Problem {
    pub fn error(
        host: Option<&HostName>,
        path: impl Into<PathBuf>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            severity: Severity::Error,
            host: host.cloned(),
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn warning(
        host: Option<&HostName>,
        path: impl Into<PathBuf>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(host, path, message)
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}: {}", self.path.display(), self.message)
    }
}

/// toml's error, folded into one line: "line 3, column 1: unknown field `x`, expected …".
pub fn toml_message(e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            // The span is a byte range in the input; toml's Display carries the line,
            // but also a multi-line excerpt we don't want, so pick the line out of it.
            let full = e.to_string();
            let location = full
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("TOML parse error at "))
                .map(str::to_owned);
            match location {
                Some(loc) => format!("{loc}: {message}"),
                None => format!("byte {}: {message}", span.start),
            }
        }
        None => message,
    }
}
