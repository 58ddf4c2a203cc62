//! An environment: its inventory (shared settings plus the environment's own file) and its
//! secrets, loaded and validated before any node is touched.

mod inventory;
mod migrations;
mod secrets;

use std::path::{Path, PathBuf};

pub use inventory::{Build, Connection, Database, Health, NodeSpec, Settings};
pub use migrations::Migrations;
pub use secrets::{file_name, FileStore, SecretStore, Secrets, REQUIRED as REQUIRED_SECRETS};

use crate::error::Error;

/// Shared settings every environment starts from.
pub const SHARED_FILE: &str = "inventory/all.yml";

/// One environment of the project, fully validated.
#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub root: PathBuf,
    pub settings: Settings,
    pub secrets: Secrets,
}

impl Environment {
    /// Loads `inventory/all.yml`, `inventory/<name>.yml` and `inventory/<name>.env`.
    pub fn load(root: &Path, name: &str) -> Result<Self, Error> {
        check_env_name(name)?;

        let settings = inventory::load(root, name)?;
        check_key_files(root, name, &settings)?;
        let secrets = Secrets::load(root, &secrets_file(name))?;

        Ok(Environment {
            name: name.to_string(),
            root: root.to_path_buf(),
            settings,
            secrets,
        })
    }

    /// Loads only the inventory, for commands that never need secret values. The secrets
    /// file's values are still masked in what the command prints, when it can be read.
    pub fn load_without_secrets(root: &Path, name: &str) -> Result<Self, Error> {
        check_env_name(name)?;
        FileStore::mask_values(root, &secrets_file(name));

        Ok(Environment {
            name: name.to_string(),
            root: root.to_path_buf(),
            settings: inventory::load(root, name)?,
            secrets: Secrets::default(),
        })
    }

    /// `<app>-<env>`: the prefix of every compose project, network and state directory.
    pub fn slug(&self) -> String {
        format!("{}-{}", self.settings.app, self.name)
    }

    /// Resolves a path from the inventory against the project root (`~` is the home dir).
    pub fn path(&self, value: &str) -> PathBuf {
        resolve_path(&self.root, value)
    }
}

/// Every `key:` must name a private key file that only its owner can read.
fn check_key_files(root: &Path, env: &str, settings: &Settings) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;

    let file = format!("inventory/{env}.yml");
    if crate::host::credentials::key_from_environment() {
        return Ok(());
    }
    for node in &settings.nodes {
        let Some(key) = node
            .key
            .as_deref()
            .filter(|_| node.connection == Connection::Ssh)
        else {
            continue;
        };
        let path = resolve_path(root, key);
        let meta = std::fs::metadata(&path).map_err(|e| {
            Error::config(
                &file,
                format!(
                    "node `{}`: key file {} cannot be read: {e}",
                    node.name,
                    path.display()
                ),
                "set `key:` to an existing private key file, or remove it to use the ssh-agent",
            )
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::config(
                &file,
                format!(
                    "node `{}`: key file {} is readable by group or others",
                    node.name,
                    path.display()
                ),
                format!("run `chmod 600 {}`", path.display()),
            ));
        }
    }
    Ok(())
}

pub fn secrets_file(env: &str) -> String {
    format!("inventory/{env}.env")
}

pub fn resolve_path(root: &Path, value: &str) -> PathBuf {
    if let Some(rest) = value.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    root.join(value)
}

fn check_env_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name != "all";
    if valid {
        return Ok(());
    }
    Err(Error::config(
        format!("inventory/{name}.yml"),
        format!("`{name}` is not a valid environment name"),
        "use lowercase letters, digits and dashes (and not `all`, which holds shared settings)",
    ))
}
