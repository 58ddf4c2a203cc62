//! Choosing and reaching the nodes of an environment.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Connection, Environment, NodeSpec};
use crate::error::Error;
use crate::host::{credentials, ssh_config, Host, LocalHost, SshHost, SshTarget};
use crate::node::Node;
use crate::paths::Paths;

/// The nodes `--limit` selects, in inventory order (all when it is empty).
///
/// Each comma-separated term is a node name (`web-1`), a glob over names (`web-*`), or a
/// label (`@toronto`); the selection is their union. A term that matches no node is an
/// error (exit 2) naming it and listing the nodes, so a typo never narrows a rollout
/// silently; so is a selection that ends up empty.
pub fn select(env: &Environment, limit: &[String]) -> Result<Vec<NodeSpec>, Error> {
    let file = format!("inventory/{}.yml", env.name);
    let nodes = &env.settings.nodes;
    let terms: Vec<&str> = limit
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    if terms.is_empty() && limit.is_empty() {
        return Ok(nodes.clone());
    }

    let mut chosen = vec![false; nodes.len()];
    let mut unmatched = Vec::new();
    for term in &terms {
        let matcher = Term::parse(term).map_err(|message| {
            Error::config(
                "--limit",
                message,
                "write a node name, a glob such as `web-*`, or a label such as `@toronto`",
            )
        })?;
        let hits: Vec<usize> = (0..nodes.len())
            .filter(|&i| matcher.matches(&nodes[i]))
            .collect();
        if hits.is_empty() {
            unmatched.push(format!("`{term}`"));
        }
        hits.into_iter().for_each(|i| chosen[i] = true);
    }

    if !unmatched.is_empty() || !chosen.contains(&true) {
        let what = if unmatched.is_empty() {
            "--limit selects no node".to_string()
        } else {
            format!("--limit: {} matched no node", unmatched.join(", "))
        };
        return Err(Error::config(
            &file,
            what,
            format!("the nodes are: {}", describe_all(nodes)),
        ));
    }
    Ok(nodes
        .iter()
        .zip(chosen)
        .filter(|(_, keep)| *keep)
        .map(|(n, _)| n.clone())
        .collect())
}

/// Refuses a deploy or rollback without `--limit` in an environment that sets
/// `require_limit: true` (exit 2), before anything is built or touched.
pub fn require_limit(env: &Environment, limit: &[String], command: &str) -> Result<(), Error> {
    let given = limit.iter().any(|t| !t.trim().is_empty());
    if given || !env.settings.require_limit {
        return Ok(());
    }
    Err(Error::config(
        format!("inventory/{}.yml", env.name),
        format!("`require_limit: true`: `{command}` must name its nodes with --limit"),
        format!(
            "pass --limit with names, globs or @labels (the nodes are: {});              --list-nodes shows what a --limit selects",
            describe_all(&env.settings.nodes)
        ),
    ))
}

/// One `--limit` term.
enum Term {
    Label(String),
    Glob(glob::Pattern),
    Name(String),
}

impl Term {
    fn parse(term: &str) -> Result<Term, String> {
        if let Some(label) = term.strip_prefix('@') {
            if label.is_empty() {
                return Err("`@` needs a label after it".into());
            }
            return Ok(Term::Label(label.to_string()));
        }
        if term.contains(['*', '?', '[']) {
            return glob::Pattern::new(term)
                .map(Term::Glob)
                .map_err(|e| format!("`{term}` is not a valid glob: {e}"));
        }
        Ok(Term::Name(term.to_string()))
    }

    fn matches(&self, node: &NodeSpec) -> bool {
        match self {
            Term::Label(label) => node.labels.iter().any(|l| l == label),
            Term::Glob(pattern) => pattern.matches(&node.name),
            Term::Name(name) => &node.name == name,
        }
    }
}

/// `web-1 (@toronto), web-2, db-1 (@berlin @primary)`: every node with its labels.
fn describe_all(nodes: &[NodeSpec]) -> String {
    nodes
        .iter()
        .map(|n| match labels(n).as_str() {
            "-" => n.name.clone(),
            l => format!("{} ({l})", n.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A node's labels as `--limit` spells them, `-` when it has none.
pub fn labels(node: &NodeSpec) -> String {
    if node.labels.is_empty() {
        return "-".into();
    }
    node.labels
        .iter()
        .map(|l| format!("@{l}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--list-nodes`: reads the inventory alone (no secrets, no connection) and prints what
/// `limit` selects.
pub fn list(root: &Path, env_name: &str, limit: &[String]) -> anyhow::Result<()> {
    let env = Environment::load_without_secrets(root, env_name)?;
    print_selection(&select(&env, limit)?);
    Ok(())
}

/// The selection, one node a line (name, address, labels), on stdout.
pub fn print_selection(specs: &[NodeSpec]) {
    let address = |n: &NodeSpec| match n.connection {
        Connection::Local => "local".to_string(),
        Connection::Ssh => {
            let port = n.port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}{port}", n.address.as_deref().unwrap_or("-"))
        }
    };
    let name_width = specs.iter().map(|n| n.name.len()).max().unwrap_or(0).max(4);
    let addr_width = specs
        .iter()
        .map(|n| address(n).len())
        .max()
        .unwrap_or(0)
        .max(7);
    println!(
        "{:<name_width$}  {:<addr_width$}  labels",
        "node", "address"
    );
    for node in specs {
        println!(
            "{:<name_width$}  {:<addr_width$}  {}",
            node.name,
            address(node),
            labels(node)
        );
    }
}

/// The nodes that run the databases of the nodes `limit` selects: each node itself, or the
/// node of the database they share (`database.node`), once. Database commands (`migrate`,
/// `snapshot`) act there.
pub fn select_databases(env: &Environment, limit: &[String]) -> Result<Vec<NodeSpec>, Error> {
    let selected = select(env, limit)?;
    let Some(shared) = &env.settings.database.node else {
        return Ok(selected);
    };
    Ok(env
        .settings
        .nodes
        .iter()
        .filter(|n| &n.name == shared)
        .cloned()
        .collect())
}

/// Opens the one connection a node gets for the whole operation.
pub async fn connect(env: &Arc<Environment>, spec: &NodeSpec) -> anyhow::Result<Node> {
    let host: Arc<dyn Host> = match spec.connection {
        Connection::Local => Arc::new(LocalHost),
        Connection::Ssh => {
            let target = ssh_target(env, spec)?;
            Arc::new(
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
    let connect_timeout = Duration::from_secs(env.settings.ssh_connect_timeout_seconds.max(1));

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
            connect_timeout,
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
        connect_timeout,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secrets, Settings};

    fn env(require_limit: bool) -> Environment {
        let node = |name: &str, labels: &[&str]| NodeSpec {
            name: name.into(),
            address: Some("10.0.0.1".into()),
            port: None,
            user: Some("deploy".into()),
            key: None,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            connection: Connection::Ssh,
            vars: Default::default(),
        };
        Environment {
            name: "prod".into(),
            root: ".".into(),
            settings: Settings {
                nodes: vec![
                    node("web-1", &["toronto"]),
                    node("web-2", &["berlin"]),
                    node("db-1", &["toronto", "primary"]),
                    node("cache-1", &[]),
                ],
                require_limit,
                ..Settings::default()
            },
            secrets: Secrets::default(),
        }
    }

    fn names(limit: &[&str]) -> Result<Vec<String>, Error> {
        let limit: Vec<String> = limit.iter().map(|s| s.to_string()).collect();
        select(&env(false), &limit).map(|specs| specs.into_iter().map(|s| s.name).collect())
    }

    fn message(err: Error) -> String {
        format!("{err} / {}", err.hints().join(" "))
    }

    #[test]
    fn no_limit_selects_every_node_in_inventory_order() {
        assert_eq!(names(&[]).unwrap(), ["web-1", "web-2", "db-1", "cache-1"]);
    }

    #[test]
    fn names_globs_and_labels_combine_as_a_union_in_inventory_order() {
        assert_eq!(
            names(&["cache-1", "web-*"]).unwrap(),
            ["web-1", "web-2", "cache-1"]
        );
        assert_eq!(names(&["@toronto"]).unwrap(), ["web-1", "db-1"]);
        assert_eq!(
            names(&["db-1", "@toronto", "web-?"]).unwrap(),
            ["web-1", "web-2", "db-1"]
        );
        assert_eq!(names(&[" web-2 ", "@primary"]).unwrap(), ["web-2", "db-1"]);
    }

    #[test]
    fn a_term_that_matches_nothing_is_named_with_the_nodes_listed() {
        for limit in [&["web-1", "web-9"][..], &["@paris"], &["api-*"]] {
            let err = names(limit).unwrap_err();
            assert_eq!(err.exit_code(), crate::error::exit::INVALID);
            let text = message(err);
            let bad = limit.last().unwrap();
            assert!(text.contains(&format!("`{bad}` matched no node")), "{text}");
            assert!(text.contains("web-1 (@toronto)"), "{text}");
            assert!(text.contains("db-1 (@toronto @primary)"), "{text}");
            assert!(text.contains("cache-1"), "{text}");
        }
    }

    #[test]
    fn an_empty_selection_and_a_bad_glob_are_errors() {
        let text = message(names(&[""]).unwrap_err());
        assert!(text.contains("selects no node"), "{text}");
        assert!(message(names(&["web-[1"]).unwrap_err()).contains("not a valid glob"));
        assert!(message(names(&["@"]).unwrap_err()).contains("needs a label"));
    }

    #[test]
    fn require_limit_refuses_only_when_no_limit_is_given() {
        let strict = env(true);
        let err = require_limit(&strict, &[], "deploy").unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::INVALID);
        assert!(message(err).contains("must name its nodes with --limit"));
        assert!(require_limit(&strict, &["web-1".into()], "deploy").is_ok());
        assert!(require_limit(&env(false), &[], "deploy").is_ok());
    }

    #[test]
    fn require_limit_takes_only_a_boolean() {
        let parsed: Settings = serde_yaml::from_str("require_limit: true\n").unwrap();
        assert!(parsed.require_limit);
        assert!(!Settings::default().require_limit);
        let err = serde_yaml::from_str::<Settings>("app: x\nrequire_limit: always\n");
        assert!(err.unwrap_err().to_string().contains("line 2"));
    }
}
