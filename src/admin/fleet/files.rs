//! host.toml's `[files."<path>"]` tables: owner, group, stage and the units a change restarts or reloads, checked with the key named in every message.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::core::diag::Problem;
use crate::core::names::{AccountName, HostName, RelPath, UnitName};
use crate::core::release::{FileMeta, Stage};

/// One `[files."etc/grafana/secret"]` table as written; checked by [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileMeta {
    owner: Option<String>,
    group: Option<String>,
    stage: Option<String>,
    #[serde(default)]
    restart: Vec<String>,
    #[serde(default)]
    reload: Vec<String>,
}

/// The tables of a host.toml, each checked; every mistake is a problem naming host.toml and
/// the key (`files."etc/x".restart`). Tables with a mistake are left out.
pub fn check(
    host: &HostName,
    host_file: &Path,
    raw: &BTreeMap<String, RawFileMeta>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<RelPath, FileMeta> {
    let mut out = BTreeMap::new();
    for (key, table) in raw {
        let mut errors = Vec::new();
        let at = |field: &str| format!("files.{key:?}{}", field);
        let path = match key.parse::<RelPath>() {
            Ok(p) if p.first() == crate::core::release::FILES_DIR => {
                errors.push(format!(
                    "{}: the key is the path on the client, without \"files/\" (like \"etc/grafana/secret\")",
                    at("")
                ));
                None
            }
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(format!(
                    "{}: {e} (the key is the path on the client without its leading '/', like \"etc/grafana/secret\")",
                    at("")
                ));
                None
            }
        };
        let account = |field: &str, value: &Option<String>, errors: &mut Vec<String>| {
            value.as_ref().and_then(|v| {
                v.parse::<AccountName>()
                    .map_err(|e| errors.push(format!("{}: {e}", at(&format!(".{field}")))))
                    .ok()
            })
        };
        let owner = account("owner", &table.owner, &mut errors);
        let group = account("group", &table.group, &mut errors);
        let stage = match table.stage.as_deref() {
            None | Some("before") => Stage::Before,
            Some("after") => Stage::After,
            Some(other) => {
                errors.push(format!(
                    "{}: unknown stage {other:?}: expected \"before\" (deployed before the rebuild, the default) or \"after\" (after a successful activation)",
                    at(".stage")
                ));
                Stage::Before
            }
        };
        let units = |field: &str, list: &[String], errors: &mut Vec<String>| -> Vec<UnitName> {
            list.iter()
                .filter_map(|u| {
                    u.parse::<UnitName>()
                        .map_err(|e| errors.push(format!("{}: {e}", at(&format!(".{field}")))))
                        .ok()
                })
                .collect()
        };
        let restart = units("restart", &table.restart, &mut errors);
        let reload = units("reload", &table.reload, &mut errors);
        let ok = errors.is_empty();
        for e in errors {
            problems.push(Problem::error(Some(host), host_file, e));
        }
        if let (true, Some(path)) = (ok, path) {
            let meta = FileMeta {
                owner,
                group,
                stage,
                restart,
                reload,
            };
            out.insert(path, meta);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(toml_text: &str) -> Vec<String> {
        let raw: BTreeMap<String, RawFileMeta> = toml::from_str(toml_text).unwrap();
        let mut problems = Vec::new();
        let host: HostName = "web".parse().unwrap();
        check(&host, Path::new("hosts/web/host.toml"), &raw, &mut problems);
        problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_good_table_is_kept() {
        let raw: BTreeMap<String, RawFileMeta> = toml::from_str(
            "[\"etc/grafana/secret\"]\nowner = \"grafana\"\nstage = \"after\"\nrestart = [\"grafana.service\"]\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        let host: HostName = "web".parse().unwrap();
        let metas = check(&host, Path::new("hosts/web/host.toml"), &raw, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let meta = &metas[&"etc/grafana/secret".parse::<RelPath>().unwrap()];
        assert_eq!(meta.owner.as_ref().unwrap().as_str(), "grafana");
        assert_eq!(meta.stage, Stage::After);
        assert_eq!(meta.restart[0].as_str(), "grafana.service");
    }

    #[test]
    fn every_mistake_names_the_file_and_key() {
        insta::assert_snapshot!(
            "invalid_unit_name",
            problems_of("[\"etc/grafana/secret\"]\nrestart = [\"grafana\"]\n").join("\n")
        );
        let all = problems_of(
            "[\"etc/a\"]\nowner = \"no body\"\ngroup = \"1x\"\nstage = \"later\"\nreload = [\"-x.service\"]\n[\"files/etc/b\"]\n[\"/etc/c\"]\n",
        );
        assert_eq!(all.len(), 6, "{all:#?}");
        for p in &all {
            assert!(p.starts_with("error: hosts/web/host.toml: files.\""), "{p}");
        }
        for key in [
            ".owner:",
            ".group:",
            ".stage:",
            ".reload:",
            "\"files/etc/b\":",
            "\"/etc/c\":",
        ] {
            assert!(all.iter().any(|p| p.contains(key)), "{key} in {all:#?}");
        }
    }
}
