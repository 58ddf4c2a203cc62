//! Choosing and reaching the nodes of an environment.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Connection, Environment, NodeSpec};
use crate::error::Error;
use crate::host::{credentials, ssh_config, Host, LocalHost, SshHost, SshTarget};
use crate::node::Node;
use crate::paths::Paths;

/// The nodes `--limit` selects (all when it is empty). Unknown names are an error.
pub fn select(env: &Environment, limit: &[String]) -> Result<Vec<NodeSpec>, Error> {
    let file = format!("inventory/{}.yml", env.name);
    if limit.is_empty() {
        return Ok(env.settings.nodes.clone());
    }

    for name in limit {
        if !env.settings.nodes.iter().any(|n| &n.name == name) {
            let known: Vec<&str> = env.settings.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(Error::config(
                &file,
                format!("--limit names node `{name}`, which the environment does not have"),
                format!("use one of: {}", known.join(", ")),
            ));
        }
    }
    Ok(env
        .settings
        .nodes
        .iter()
        .filter(|n| limit.contains(&n.name))
        .cloned()
        .collect())
}

/// Opens the one connection a node gets for the whole operation.
pub async fn connect(env: &Arc<Environment>, spec: &NodeSpec) -> anyhow::Result<Node> {
    let host: Box<dyn Host> = match spec.connection {
        Connection::Local => Box::new(LocalHost),
        Connection::Ssh => {
            let target = ssh_target(env, spec)?;
            Box::new(
                SshHost::connect(target)
                    .await
                    .with_context(|| format!("{}: cannot connect", spec.name))?,
            )
        }
    };

    Ok(Node {
        name: spec.name.clone(),
        spec: spec.clone(),
        env: env.clone(),
        paths: Paths::new(env),
        host,
    })
}

/// How a node is reached over SSH: its inventory entry, then the SSH client
/// configuration for its address (HostName, User, Port, IdentityFile, ProxyJump) where the
/// inventory leaves a value out, with the key and known_hosts that the environment
/// variables may give instead (see `host::credentials`).
pub fn ssh_target(env: &Environment, spec: &NodeSpec) -> anyhow::Result<SshTarget> {
    let config = ssh_config::load()?;
    let address = spec.address.clone().unwrap_or_default();
    let entry = ssh_config::lookup(config.as_ref(), &address);
    let key = spec
        .key
        .as_deref()
        .map(|k| env.path(k))
        .or(entry.identity_file);
    let known_hosts = known_hosts_file(env);
    let keepalive = Duration::from_secs(env.settings.ssh_keepalive_seconds.max(1));

    let mut jump = None;
    for hop in &entry.proxy_jump {
        let (user, host, port) = ssh_config::split_jump(hop);
        let hop_entry = ssh_config::lookup(config.as_ref(), &host);
        jump = Some(Box::new(SshTarget {
            address: hop_entry.host_name.unwrap_or(host),
            port: port.or(hop_entry.port).unwrap_or(22),
            user: user
                .or(hop_entry.user)
                .unwrap_or_else(|| spec_user(spec, None)),
            key: credentials::key(hop_entry.identity_file.or(key.clone())),
            known_hosts: credentials::known_hosts(known_hosts.clone()),
            jump,
            keepalive,
        }));
    }

    Ok(SshTarget {
        address: entry.host_name.unwrap_or(address),
        port: spec.port.or(entry.port).unwrap_or(22),
        user: spec_user(spec, entry.user),
        key: credentials::key(key),
        known_hosts: credentials::known_hosts(known_hosts),
        jump,
        keepalive,
    })
}

fn spec_user(spec: &NodeSpec, configured: Option<String>) -> String {
    spec.user.clone().or(configured).unwrap_or_default()
}

fn known_hosts_file(env: &Environment) -> std::path::PathBuf {
    env.path(
        env.settings
            .known_hosts
            .as_deref()
            .unwrap_or("~/.ssh/known_hosts"),
    )
}

/// Where nginx answers for a node, as seen from the workstation.
pub fn url(env: &Environment, spec: &NodeSpec) -> String {
    let host = match spec.connection {
        Connection::Local => "127.0.0.1".to_string(),
        Connection::Ssh => spec.address.clone().unwrap_or_default(),
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    format!("http://{host}:{}/", env.settings.http_port)
}
