//! The operator's OpenSSH client configuration (`~/.ssh/config`, or the file named by
//! `SLIPWAY_SSH_CONFIG`), parsed by the ssh2-config crate. A node's `address` may be a
//! `Host` alias there: its HostName, User, Port, IdentityFile and ProxyJump apply where the
//! inventory leaves them out. Other settings are read past and ignored.

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context;
use ssh2_config::{ParseRule, SshConfig};

pub const CONFIG_VAR: &str = "SLIPWAY_SSH_CONFIG";

/// What the configuration says about one host name or alias.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostEntry {
    pub host_name: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    /// Jump hosts, outermost first, as written (`[user@]host[:port]`).
    pub proxy_jump: Vec<String>,
}

/// The configuration file, if there is one.
pub fn load() -> anyhow::Result<Option<SshConfig>> {
    let path = match std::env::var_os(CONFIG_VAR) {
        Some(path) => PathBuf::from(path),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".ssh/config"),
            None => return Ok(None),
        },
    };
    let Ok(file) = std::fs::File::open(&path) else {
        return Ok(None);
    };
    let rules = ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS;
    let config = SshConfig::default()
        .parse(&mut BufReader::new(file), rules)
        .with_context(|| {
            format!(
                "cannot parse the SSH client configuration {}",
                path.display()
            )
        })?;
    Ok(Some(config))
}

/// The settings for `host` (an alias or a name), empty when nothing matches.
pub fn lookup(config: Option<&SshConfig>, host: &str) -> HostEntry {
    let Some(config) = config else {
        return HostEntry::default();
    };
    let params = config.query(host);
    HostEntry {
        host_name: params.host_name.filter(|h| h != host),
        user: params.user,
        port: params.port,
        identity_file: params
            .identity_file
            .and_then(|files| files.into_iter().find(|f| f.exists())),
        proxy_jump: params
            .proxy_jump
            .unwrap_or_default()
            .into_iter()
            .filter(|j| !j.eq_ignore_ascii_case("none"))
            .collect(),
    }
}

/// Splits a ProxyJump entry `[user@]host[:port]`.
pub fn split_jump(entry: &str) -> (Option<String>, String, Option<u16>) {
    let (user, rest) = match entry.split_once('@') {
        Some((user, rest)) => (Some(user.to_string()), rest),
        None => (None, entry),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (rest, None),
    };
    (user, host.trim_matches(['[', ']']).to_string(), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SshConfig {
        let rules = ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS;
        SshConfig::default()
            .parse(&mut text.as_bytes(), rules)
            .unwrap()
    }

    #[test]
    fn an_alias_gives_its_host_name_user_port_and_jump() {
        let config = parse(
            "Host web-*\n  User deploy\n  ProxyJump ops@bastion:2222\n\
             Host web-1\n  HostName 10.0.0.5\n  Port 2200\n  ForwardAgent yes\n",
        );
        let entry = lookup(Some(&config), "web-1");
        assert_eq!(entry.host_name.as_deref(), Some("10.0.0.5"));
        assert_eq!(entry.user.as_deref(), Some("deploy"));
        assert_eq!(entry.port, Some(2200));
        assert_eq!(entry.proxy_jump, vec!["ops@bastion:2222".to_string()]);
        assert_eq!(lookup(Some(&config), "db-1"), HostEntry::default());
    }

    #[test]
    fn jump_entries_split_into_user_host_and_port() {
        assert_eq!(
            split_jump("ops@bastion:2222"),
            (Some("ops".into()), "bastion".into(), Some(2222))
        );
        assert_eq!(split_jump("bastion"), (None, "bastion".into(), None));
    }
}
