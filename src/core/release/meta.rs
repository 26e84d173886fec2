//! Per-file settings of a release's `files/`: owner and group by name, the stage it is deployed at, the units its change restarts or reloads, and where it came from.

use serde::{Deserialize, Serialize};

use crate::core::names::{AccountName, UnitName};

/// When a file is deployed, relative to the rebuild.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Before the rebuild (the default): the new configuration can read the file when it starts.
    #[default]
    Before,
    /// After a successful activation: the accounts the new configuration creates exist by then.
    After,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Before => "before",
            Stage::After => "after",
        }
    }
    /// When the stage runs, for messages.
    pub fn when(self) -> &'static str {
        match self {
            Stage::Before => "before the rebuild",
            Stage::After => "after activation",
        }
    }
    pub fn is_before(&self) -> bool {
        *self == Stage::Before
    }
}

/// Which tree of the fleet repository a file of `files/` came from.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum FileSource {
    /// `hosts/<name>/files/` (the default).
    #[default]
    Host,
    /// `common/files/`, shared by every host that has no file of its own at the same path.
    Common,
}

impl FileSource {
    pub fn is_host(&self) -> bool {
        *self == FileSource::Host
    }
}

/// The settings of one file (everything but its content and mode), as the MANIFEST carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FileMeta {
    /// `None`: root.
    pub owner: Option<AccountName>,
    /// `None`: root.
    pub group: Option<AccountName>,
    pub stage: Stage,
    /// Units restarted after activation when this file's content, mode or owner changed.
    pub restart: Vec<UnitName>,
    /// Units reloaded instead (a unit in both lists is restarted).
    pub reload: Vec<UnitName>,
}
