//! `slipway secrets check`: which secrets the templates need, which the environment's
//! secrets file lacks, and which it holds that nothing uses. Names only, never a value.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{secrets_file, Environment, FileStore, SecretStore, Secrets};
use crate::error::Error;
use crate::render::{self, Renderer};

/// One secret's line in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    /// Templates (or `slipway`) that need it; empty when nothing does.
    pub needed_by: Vec<String>,
    pub present: bool,
}

impl Row {
    pub fn state(&self) -> &'static str {
        match (self.needed_by.is_empty(), self.present) {
            (false, true) => "ok",
            (false, false) => "missing",
            (true, _) => "unused",
        }
    }
}

/// Sorts every name that is needed or present into one row each.
pub fn classify(needed_by: &BTreeMap<String, Vec<String>>, present: &[String]) -> Vec<Row> {
    let mut names: Vec<&String> = needed_by.keys().chain(present).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| Row {
            name: name.clone(),
            needed_by: needed_by.get(name).cloned().unwrap_or_default(),
            present: present.contains(name),
        })
        .collect()
}

/// Which template needs which secret; the secrets slipway itself requires count too.
fn needed_by(renderer: &Renderer) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let mut needed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in crate::config::REQUIRED_SECRETS {
        needed
            .entry(name.to_string())
            .or_default()
            .push("slipway".into());
    }
    for template in render::ALL {
        for name in renderer.secrets_used(template)? {
            needed.entry(name).or_default().push(template.to_string());
        }
    }
    Ok(needed)
}

/// Prints the report; exit 2 (an error naming them) when a needed secret is missing.
pub fn run(root: &Path, env_name: &str) -> anyhow::Result<()> {
    let env = Environment::load_without_secrets(root, env_name)?;
    let file = secrets_file(&env.name);
    let store = FileStore::open(root, &file)?;
    let present: Vec<String> = Secrets::from_store(&store)?
        .names()
        .map(String::from)
        .collect();
    let mut needed = needed_by(&Renderer::new(root))?;
    for name in crate::notify::secrets_used(&env.settings.notify) {
        needed.entry(name).or_default().push("notify".into());
    }
    let rows = classify(&needed, &present);

    println!("secrets of {} ({}):", env.name, store.source());
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    println!("  {:<width$}  {:<8}  needed by", "name", "state");
    for row in &rows {
        let by = if row.needed_by.is_empty() {
            "-".to_string()
        } else {
            row.needed_by.join(", ")
        };
        println!("  {:<width$}  {:<8}  {by}", row.name, row.state());
    }

    let missing: Vec<&str> = rows
        .iter()
        .filter(|r| r.state() == "missing")
        .map(|r| r.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Error::config(
            &file,
            format!("missing secret(s): {}", missing.join(", ")),
            format!("add a line NAME=... for each to {file}"),
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_present_and_unused_names_each_get_a_state() {
        let needed = BTreeMap::from([
            ("API_KEY".to_string(), vec!["app.env.j2".to_string()]),
            ("DB_PASSWORD".to_string(), vec!["slipway".to_string()]),
        ]);
        let present = vec!["DB_PASSWORD".to_string(), "OLD_TOKEN".to_string()];
        let rows = classify(&needed, &present);

        let states: Vec<(&str, &str)> = rows.iter().map(|r| (r.name.as_str(), r.state())).collect();
        assert_eq!(
            states,
            vec![
                ("API_KEY", "missing"),
                ("DB_PASSWORD", "ok"),
                ("OLD_TOKEN", "unused")
            ]
        );
    }
}
