//! `slipway trust`: puts a node's host key in known_hosts, only when the operator names the
//! fingerprint they checked out of band. slipway never trusts a key by itself.

use std::sync::Arc;

use anyhow::bail;

use crate::config::{Connection, Environment, NodeSpec};
use crate::error::Error;
use crate::fleet;
use crate::host::known_hosts::{self, Verdict};
use crate::host::offered_key;

/// Shows each selected node's offered key; with `fingerprint`, trusts the nodes that offer
/// exactly that key. Returns how many nodes were not trusted.
pub async fn run(
    env: Arc<Environment>,
    limit: &[String],
    fingerprint: Option<&str>,
) -> anyhow::Result<usize> {
    let specs: Vec<NodeSpec> = fleet::select(&env, limit)?
        .into_iter()
        .filter(|s| s.connection == Connection::Ssh)
        .collect();
    if specs.is_empty() {
        return Err(no_ssh_nodes(&env.name).into());
    }

    let mut refused = 0;
    for spec in &specs {
        match trust_node(&env, spec, fingerprint).await {
            Ok(line) => eprintln!("{}: {line}", spec.name),
            Err(e) => {
                refused += 1;
                eprintln!("{}: {e:#}", spec.name);
            }
        }
    }
    Ok(refused)
}

async fn trust_node(
    env: &Environment,
    spec: &NodeSpec,
    fingerprint: Option<&str>,
) -> anyhow::Result<String> {
    let target = fleet::ssh_target(env, spec)?;
    let host = known_hosts::host_pattern(&target.address, target.port);
    let (key, verdict) = offered_key(&target).await?;
    let offered = known_hosts::fingerprint(&key);
    let file = &target.known_hosts.label;

    if verdict == Verdict::Trusted {
        return Ok(format!(
            "{host} offers {offered}, already trusted in {file}"
        ));
    }
    let Some(wanted) = fingerprint else {
        return Ok(format!(
            "{host} offers {} {offered} ({}); nothing was changed. Check it out of band \
             (on the node: `ssh-keygen -lf /etc/ssh/ssh_host_{}_key.pub`), then run \
             `slipway trust {} --limit {} --fingerprint {offered}`",
            key.algorithm(),
            describe(&verdict),
            key_file_kind(&key),
            env.name,
            spec.name
        ));
    };
    if wanted != offered {
        bail!(
            "{host} offers {offered}, not the {wanted} you named; nothing was trusted. \
             If the node was not rebuilt, treat this as an attack"
        );
    }
    let Some(path) = &target.known_hosts.path else {
        bail!(
            "known_hosts comes from {file}, which slipway cannot change; add this line to it: {}",
            known_hosts::hashed_line(&target.address, target.port, &key)?
        );
    };
    let replaced = known_hosts::trust(path, &target.address, target.port, &key)?;
    Ok(match replaced {
        0 => format!("trusted {offered} for {host} in {file}"),
        n => format!("trusted {offered} for {host} in {file}, replacing {n} older key line(s)"),
    })
}

fn describe(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Trusted => "trusted".into(),
        Verdict::Unknown { file } => format!("not in {file}"),
        Verdict::Changed { file, line, known } => {
            format!("CHANGED: {file}:{line} has {known}")
        }
    }
}

/// The part of OpenSSH's host key file name for this key type (`ed25519`, `rsa`, ...).
fn key_file_kind(key: &russh::keys::PublicKey) -> &'static str {
    use russh::keys::Algorithm;
    match key.algorithm() {
        Algorithm::Ed25519 => "ed25519",
        Algorithm::Rsa { .. } => "rsa",
        Algorithm::Ecdsa { .. } => "ecdsa",
        _ => "*",
    }
}

/// A trust request without any SSH node selected is invalid input.
fn no_ssh_nodes(env: &str) -> Error {
    Error::config(
        format!("inventory/{env}.yml"),
        "none of the selected nodes is reached over SSH",
        "select a node with `connection: ssh`",
    )
}
