//! Where SSH credentials come from: the inventory and `~/.ssh` on a laptop, environment
//! variables in a CI job that holds a deploy key (no `~/.ssh`, no agent).
//!
//! The variables win over the inventory, so one committed inventory serves both:
//! `SLIPWAY_SSH_KEY` (the private key itself) or `SLIPWAY_SSH_KEY_FILE`, and
//! `SLIPWAY_KNOWN_HOSTS` (the known_hosts lines themselves) or `SLIPWAY_KNOWN_HOSTS_FILE`.

use std::fmt;
use std::path::PathBuf;

use super::known_hosts::KnownHosts;

pub const KEY_VAR: &str = "SLIPWAY_SSH_KEY";
pub const KEY_FILE_VAR: &str = "SLIPWAY_SSH_KEY_FILE";
pub const KNOWN_HOSTS_VAR: &str = "SLIPWAY_KNOWN_HOSTS";
pub const KNOWN_HOSTS_FILE_VAR: &str = "SLIPWAY_KNOWN_HOSTS_FILE";

/// The private key a node is reached with.
#[derive(Clone)]
pub enum KeySource {
    File(PathBuf),
    /// Key material from an environment variable; never printed.
    Variable {
        name: &'static str,
        text: String,
    },
    Agent,
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "key file {}", path.display()),
            KeySource::Variable { name, .. } => write!(f, "key from ${name}"),
            KeySource::Agent => write!(f, "ssh-agent"),
        }
    }
}

/// The key from the environment variables if one is set, else the inventory's `key:`
/// (already resolved to a path), else the agent. Key material is registered for masking.
pub fn key(inventory_key: Option<PathBuf>) -> KeySource {
    if let Some(text) = variable(KEY_VAR) {
        register(&text);
        return KeySource::Variable {
            name: KEY_VAR,
            text,
        };
    }
    if let Some(path) = variable(KEY_FILE_VAR) {
        return KeySource::File(PathBuf::from(path));
    }
    inventory_key.map_or(KeySource::Agent, KeySource::File)
}

/// Whether a key comes from the environment, so the inventory's `key:` files are unused.
pub fn key_from_environment() -> bool {
    variable(KEY_VAR).is_some() || variable(KEY_FILE_VAR).is_some()
}

/// The known_hosts list from the environment variables if one is set, else the file.
pub fn known_hosts(file: PathBuf) -> KnownHosts {
    if let Some(text) = variable(KNOWN_HOSTS_VAR) {
        return KnownHosts::inline(KNOWN_HOSTS_VAR, text);
    }
    match variable(KNOWN_HOSTS_FILE_VAR) {
        Some(path) => KnownHosts::file(&PathBuf::from(path)),
        None => KnownHosts::file(&file),
    }
}

fn variable(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Masks the key and each of its base64 lines, should any ever reach output.
fn register(text: &str) {
    crate::redact::register(text);
    for line in text.lines().map(str::trim).filter(|l| l.len() >= 16) {
        crate::redact::register(line);
    }
}
