//! The `migrations:` settings: session limits, and the lint findings an operator has
//! acknowledged for a given migration. Rule names are checked while the inventory file is
//! read, so an unknown one names its file, key and line like any other bad value.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Limits on a migration's database session, so it cannot stall the live app, and the lint
/// findings that may pass.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Migrations {
    /// Milliseconds a statement may wait for a lock (Postgres `lock_timeout`): a migration
    /// queued behind a long transaction fails fast instead of queueing the app behind it.
    pub lock_timeout_ms: u64,
    /// Seconds one statement may run (Postgres `statement_timeout`); 0 means no limit.
    pub statement_timeout_seconds: u64,
    /// Per migration version, the lint rules whose findings in that file may pass.
    pub acknowledge: BTreeMap<Version, Vec<RuleName>>,
}

impl Default for Migrations {
    fn default() -> Self {
        Migrations {
            lock_timeout_ms: 3000,
            statement_timeout_seconds: 600,
            acknowledge: BTreeMap::new(),
        }
    }
}

impl Migrations {
    /// Whether `rule` findings in migration `version` were acknowledged.
    pub fn acknowledged(&self, version: u64, rule: &str) -> bool {
        self.acknowledge
            .get(&Version(version))
            .is_some_and(|rules| rules.iter().any(|r| r.0 == rule))
    }
}

/// A migration version as a key: `4`, `"4"` and `"000004"` are the same migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Version(pub u64);

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(VersionVisitor)
    }
}

struct VersionVisitor;

impl Visitor<'_> for VersionVisitor {
    type Value = Version;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a migration version (the number a migration file name starts with)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Version, E> {
        Ok(Version(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Version, E> {
        u64::try_from(v)
            .map(Version)
            .map_err(|_| E::custom(format!("`{v}` is not a migration version")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Version, E> {
        v.parse().map(Version).map_err(|_| {
            E::custom(format!(
                "`{v}` is not a migration version (write the number a migration file name \
                 starts with, e.g. \"000004\")"
            ))
        })
    }
}

/// The name of a lint rule slipway checks (see `crate::lint::RULES`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleName(pub String);

impl<'de> Deserialize<'de> for RuleName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if crate::lint::is_rule(&name) {
            return Ok(RuleName(name));
        }
        Err(de::Error::custom(format!(
            "`{name}` is not a lint rule slipway checks; the rules are: {}",
            crate::lint::rule_names().join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Migrations, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    #[test]
    fn versions_are_numbers_however_written() {
        let m = parse(
            "acknowledge:\n  \"000004\": [ban-drop-column]\n  5: [renaming-column]\n  \
             000006: [changing-column-type]\n",
        )
        .unwrap();
        assert!(m.acknowledged(4, "ban-drop-column"));
        assert!(!m.acknowledged(4, "renaming-column"));
        assert!(m.acknowledged(5, "renaming-column"));
        assert!(m.acknowledged(6, "changing-column-type"));
    }

    #[test]
    fn versions_survive_a_round_trip_through_a_yaml_value() {
        let value: serde_yaml::Value =
            serde_yaml::from_str("acknowledge:\n  000004: [ban-drop-column]\n").unwrap();
        let m: Migrations = serde_yaml::from_value(value).unwrap();
        assert!(m.acknowledged(4, "ban-drop-column"));
    }

    #[test]
    fn an_unknown_rule_is_named_with_its_key_and_line() {
        let err = parse("lock_timeout_ms: 10\nacknowledge:\n  \"4\": [ban-drop-colum]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`ban-drop-colum` is not a lint rule"), "{err}");
        assert!(err.contains("acknowledge"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn a_version_that_is_not_a_number_is_refused() {
        let err = parse("acknowledge:\n  drop_note: [ban-drop-column]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`drop_note` is not a migration version"),
            "{err}"
        );
    }
}
