//! Inventory files: `inventory/all.yml` holds settings shared by every environment,
//! `inventory/<env>.yml` the environment's nodes and its overrides. Each file is checked on
//! its own (so an unknown key names its file and line), then the two are merged, the
//! environment's values winning.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::{Migrations, SHARED_FILE};
use crate::error::Error;
use crate::host::ssh_config;

/// Everything an environment's deploy needs to know, defaults filled in.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Application name; part of every compose project name.
    pub app: String,
    /// Where slipway keeps its state on a node (one subdirectory per app and environment).
    pub state_dir: String,
    /// known_hosts file used to verify node host keys (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<String>,
    pub build: Build,
    /// Port nginx publishes on each node.
    pub http_port: u16,
    /// Address nginx binds on each node.
    pub http_bind: String,
    pub database: Database,
    pub migrations: Migrations,
    pub health: Health,
    /// Seconds the old color keeps running after the switch so in-flight requests finish.
    pub drain_seconds: u64,
    /// Seconds Docker waits after SIGTERM before it kills an app container.
    pub stop_grace_seconds: u64,
    /// Seconds the new color is watched through nginx after the switch; the old color keeps
    /// running meanwhile so traffic can go back to it.
    pub watch_seconds: u64,
    /// App releases (images, stopped containers, bundles) kept on a node, the live one and
    /// the one before it included.
    pub keep_releases: usize,
    /// Snapshots older than this are pruned (never the newest).
    pub snapshot_retention_days: u64,
    /// Seconds pg_dump waits for its table locks before the snapshot (and the deploy)
    /// fails, instead of queueing behind a long transaction indefinitely.
    pub snapshot_lock_wait_seconds: u64,
    /// Seconds between SSH keepalives, so a firewall or proxy that drops idle
    /// connections never cuts a long, silent step (a migration, a snapshot).
    pub ssh_keepalive_seconds: u64,
    /// Seconds a node gets to accept the TCP connection, finish the SSH handshake and
    /// authenticate, together; an address that drops packets fails within it.
    pub ssh_connect_timeout_seconds: u64,
    /// The playbook a deploy runs.
    pub playbook: String,
    /// `deploy` and `rollback` refuse to run without `--limit`, a guard against changing
    /// every node of the environment by accident.
    pub require_limit: bool,
    pub nodes: Vec<NodeSpec>,
    /// Free variables for the templates.
    pub vars: BTreeMap<String, Value>,
    /// Where lifecycle events are sent (see `crate::notify`).
    pub notify: Vec<crate::notify::SinkConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Build {
    /// Build context, relative to the repository root.
    pub context: String,
    /// Dockerfile, relative to the context.
    pub dockerfile: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    pub name: String,
    pub user: String,
    /// The node whose database every node of the environment uses (FC-07). Without it,
    /// each node runs its own. With it, that node publishes the database on
    /// `address:port`, and a deploy snapshots and migrates it once, before any node starts
    /// its new release.
    pub node: Option<String>,
    /// Where the other nodes reach that database: an IP address of the database node on a
    /// private network (the port is published on it, and on nothing else). Required with
    /// `node`: the node's SSH address is often a public one.
    pub address: Option<String>,
    pub port: u16,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    pub path: String,
    pub port: u16,
    /// Seconds the new color has to become healthy.
    pub timeout_seconds: u64,
    /// Milliseconds between probes.
    pub interval_ms: u64,
    /// A Docker health check for the app container (compose `test` form, e.g.
    /// `["CMD", "events-server", "-healthcheck"]`). When set, the container must also be
    /// healthy in Docker's eyes before the switch.
    pub container_check: Option<Vec<String>>,
    /// Docker health check start period and interval, in seconds.
    pub start_period_seconds: u64,
    pub check_interval_seconds: u64,
    /// Milliseconds between Docker health checks during the start period, so a new or
    /// restarted container turns healthy within one such interval instead of one full
    /// `check_interval_seconds`. Needs Docker Engine 25 or later; left out on older
    /// engines. 0 leaves it out everywhere.
    pub start_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Connection {
    #[default]
    Ssh,
    Local,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    #[serde(default)]
    pub address: Option<String>,
    /// SSH port; without one, the SSH client configuration's, else 22.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub user: Option<String>,
    /// Private key file; without one the ssh-agent is asked.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub connection: Connection,
    /// Per-node template variables, over the environment's.
    #[serde(default)]
    pub vars: BTreeMap<String, Value>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            app: String::new(),
            state_dir: "/var/lib/slipway".into(),
            known_hosts: None,
            build: Build::default(),
            http_port: 80,
            http_bind: "0.0.0.0".into(),
            database: Database::default(),
            migrations: Migrations::default(),
            health: Health::default(),
            drain_seconds: 5,
            stop_grace_seconds: 15,
            watch_seconds: 30,
            ssh_keepalive_seconds: 15,
            ssh_connect_timeout_seconds: 10,
            keep_releases: 3,
            snapshot_retention_days: 7,
            snapshot_lock_wait_seconds: 60,
            playbook: "playbooks/deploy.yml".into(),
            require_limit: false,
            nodes: Vec::new(),
            vars: BTreeMap::new(),
            notify: Vec::new(),
        }
    }
}

impl Default for Build {
    fn default() -> Self {
        Build {
            context: ".".into(),
            dockerfile: "Dockerfile".into(),
        }
    }
}

impl Default for Database {
    fn default() -> Self {
        Database {
            name: "app".into(),
            user: "app".into(),
            node: None,
            address: None,
            port: 5432,
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: "/health".into(),
            port: 8080,
            timeout_seconds: 60,
            interval_ms: 500,
            container_check: None,
            start_period_seconds: 10,
            check_interval_seconds: 5,
            start_interval_ms: 500,
        }
    }
}

/// Reads, checks and merges the shared file and the environment's file.
pub fn load(root: &Path, env: &str) -> Result<Settings, Error> {
    let env_file = format!("inventory/{env}.yml");
    if !root.join(&env_file).exists() {
        return Err(Error::config(
            &env_file,
            format!(
                "environment `{env}` has no inventory file; environments here: {}",
                known_environments(root).join(", ")
            ),
            format!("pick one of those, or create {env_file} (see inventory/staging.yml)"),
        ));
    }

    let shared = read_checked(root, SHARED_FILE, false)?;
    let own = read_checked(root, &env_file, true)?;
    let merged = merge(shared, own);

    let settings: Settings = serde_yaml::from_value(merged)
        .map_err(|e| Error::config(&env_file, e.to_string(), "correct the value"))?;
    validate(&settings, &env_file)?;
    Ok(settings)
}

/// Environment names that have an inventory file.
fn known_environments(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("inventory"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".yml")
                        .map(String::from)
                })
                .filter(|name| name != "all")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Parses one file and checks it against the schema on its own, so errors name it.
fn read_checked(root: &Path, file: &str, required: bool) -> Result<Value, Error> {
    let path = root.join(file);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(Value::Mapping(Default::default()))
        }
        Err(e) => {
            return Err(Error::config(
                file,
                format!("cannot read: {e}"),
                "make the file readable",
            ))
        }
    };

    let value: Value = serde_yaml::from_str(&text)
        .map_err(|e| Error::config(file, format!("not valid YAML: {e}"), "fix the syntax"))?;
    let value = match value {
        Value::Null => Value::Mapping(Default::default()),
        other => other,
    };
    if value.as_mapping().is_some_and(|m| !m.is_empty()) {
        check_schema(&text, file)?;
    }
    Ok(value)
}

/// Deserializes the file's own text, so errors carry the key path and the line.
fn check_schema(text: &str, file: &str) -> Result<(), Error> {
    let Err(e) = serde_yaml::from_str::<Settings>(text) else {
        return Ok(());
    };
    let message = e.to_string();
    let fix = if message.contains("unknown field") {
        "remove or rename the key; README.md (Inventory keys) lists every key"
    } else {
        "correct the value at that line; README.md (Inventory keys) says what each key takes"
    };
    let place = if message.contains(" line ") {
        String::new()
    } else {
        locate(text, &message)
    };
    Err(Error::config(file, format!("{message}{place}"), fix))
}

/// serde_yaml loses positions once a document is a `Value`; find the offending key's line.
fn locate(text: &str, message: &str) -> String {
    let Some(key) = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("unknown field"))
    else {
        return String::new();
    };
    text.lines()
        .position(|line| {
            line.trim_start()
                .trim_start_matches("- ")
                .starts_with(&format!("{key}:"))
        })
        .map(|n| format!(" (line {})", n + 1))
        .unwrap_or_default()
}

/// Deep-merges mappings; anything else in `over` replaces what is in `base`.
fn merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Mapping(mut base), Value::Mapping(over)) => {
            for (key, value) in over {
                let merged = match base.remove(&key) {
                    Some(old) => merge(old, value),
                    None => value,
                };
                base.insert(key, merged);
            }
            Value::Mapping(base)
        }
        (_, over) => over,
    }
}

fn validate(settings: &Settings, file: &str) -> Result<(), Error> {
    if settings.app.is_empty() || !is_slug(&settings.app) {
        return Err(Error::config(
            SHARED_FILE,
            format!("key `app` is missing or invalid ({:?})", settings.app),
            "set `app:` to a lowercase name of letters, digits and dashes",
        ));
    }
    if settings.nodes.is_empty() {
        return Err(Error::config(
            file,
            "key `nodes` lists no node",
            "add at least one node under `nodes:`",
        ));
    }

    let mut seen = std::collections::BTreeSet::new();
    for node in &settings.nodes {
        validate_node(node, file)?;
        if !seen.insert(node.name.as_str()) {
            return Err(Error::config(
                file,
                format!("node name `{}` appears twice", node.name),
                "give every node a unique name",
            ));
        }
    }

    if settings.keep_releases < 2 {
        return Err(Error::config(
            file,
            format!(
                "key `keep_releases` must be at least 2 (got {})",
                settings.keep_releases
            ),
            "keep the live release and the one before it, so a rollback is always possible",
        ));
    }
    validate_stop_grace(settings.stop_grace_seconds, file)?;
    validate_connect_timeout(settings.ssh_connect_timeout_seconds, file)?;
    if !settings.health.path.starts_with('/') {
        return Err(Error::config(
            file,
            format!(
                "key `health.path` must start with `/` (got {:?})",
                settings.health.path
            ),
            "write the health endpoint's path, e.g. /health",
        ));
    }
    crate::notify::validate(&settings.notify, file)?;
    validate_shared_database(settings, file)
}

/// `database.node` names a node of the environment, and `database.address` is an IP
/// address of it for the other nodes (never a default: a node's SSH address is often a
/// public one, and the database would be published there).
fn validate_shared_database(settings: &Settings, file: &str) -> Result<(), Error> {
    let Some(name) = &settings.database.node else {
        return Ok(());
    };
    if !settings.nodes.iter().any(|n| &n.name == name) {
        return Err(Error::config(
            file,
            format!("key `database.node` names `{name}`, which is not a node of this file"),
            "name the node that runs the shared database, or remove the key",
        ));
    }
    let address = settings.database.address.as_deref().unwrap_or_default();
    if address.parse::<IpAddr>().is_err() {
        return Err(Error::config(
            file,
            format!(
                "key `database.node` is `{name}`, and `database.address` is {}: it must be an \
                 IP address of {name}",
                if address.is_empty() {
                    "missing".to_string()
                } else {
                    format!("`{address}`")
                }
            ),
            format!(
                "set `database.address` to the private IP address of {name} the other nodes \
                 reach; the database is published there and nowhere else"
            ),
        ));
    }
    Ok(())
}

impl Database {
    /// Where the other nodes reach the shared database (`None`: each node has its own).
    pub fn shared_address(&self) -> Option<String> {
        self.node.as_ref()?;
        self.address.clone()
    }
}

/// The app gets `stop_grace_seconds - 2` seconds to finish its requests after SIGTERM
/// (templates/app.env.j2), Docker the 2 s left to see it exit: below 3 the app would have
/// no grace at all, or a negative one.
const MIN_STOP_GRACE_SECONDS: u64 = 3;

fn validate_stop_grace(seconds: u64, file: &str) -> Result<(), Error> {
    if seconds >= MIN_STOP_GRACE_SECONDS {
        return Ok(());
    }
    Err(Error::config(
        file,
        format!(
            "key `stop_grace_seconds` must be at least {MIN_STOP_GRACE_SECONDS} (got {seconds}): \
             the app's shutdown grace is 2 s less"
        ),
        "raise `stop_grace_seconds` to the longest request the app serves plus 2 s",
    ))
}

/// 0 would fail every node before its first packet.
fn validate_connect_timeout(seconds: u64, file: &str) -> Result<(), Error> {
    if seconds >= 1 {
        return Ok(());
    }
    Err(Error::config(
        file,
        "key `ssh_connect_timeout_seconds` must be at least 1 (got 0)",
        "set it to the seconds a node may take to accept an SSH login, e.g. 10",
    ))
}

fn validate_node(node: &NodeSpec, file: &str) -> Result<(), Error> {
    let at = format!("node `{}`", node.name);
    if !is_slug(&node.name) {
        return Err(Error::config(
            file,
            format!("{at}: key `name` must be lowercase letters, digits and dashes"),
            "rename the node",
        ));
    }
    if node.connection == Connection::Local {
        return Ok(());
    }

    let Some(address) = &node.address else {
        return Err(Error::config(
            file,
            format!("{at}: key `address` is missing"),
            "add `address:` (an IP address or host name) or set `connection: local`",
        ));
    };
    if !is_valid_address(address) {
        return Err(Error::config(
            file,
            format!("{at}: key `address` is malformed: {address:?}"),
            "write an IPv4/IPv6 address or a DNS host name",
        ));
    }
    if node.port == Some(0) {
        return Err(Error::config(
            file,
            format!("{at}: key `port` must be between 1 and 65535"),
            "use the node's SSH port, usually 22",
        ));
    }
    if node.user.as_deref().unwrap_or("").is_empty() && !ssh_config_names_user(address)? {
        return Err(Error::config(
            file,
            format!("{at}: key `user` is missing"),
            "add `user:` with the SSH user that runs docker on the node",
        ));
    }
    Ok(())
}

/// Whether the SSH client configuration gives a `User` for `host`.
fn ssh_config_names_user(host: &str) -> Result<bool, Error> {
    let config = ssh_config::load()
        .map_err(|e| Error::config("the SSH client configuration", format!("{e:#}"), "fix it"))?;
    Ok(ssh_config::lookup(config.as_ref(), host).user.is_some())
}

fn is_slug(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// An IP address, or a DNS name whose labels are letters, digits and inner dashes.
/// A dotted string of digits that is not an IPv4 address is malformed.
pub fn is_valid_address(value: &str) -> bool {
    if value.parse::<IpAddr>().is_ok() {
        return true;
    }
    if value.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return false;
    }
    value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_database_must_name_a_node_and_an_ip_address_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| {
            std::fs::create_dir_all(dir.path().join("inventory")).unwrap();
            std::fs::write(dir.path().join("inventory/all.yml"), "app: shop\n").unwrap();
            std::fs::write(dir.path().join("inventory/prod.yml"), text).unwrap();
        };

        write(
            "database: {node: db-9}\nnodes:\n  - {name: web-1, address: 10.0.0.1, user: deploy}\n",
        );
        let err = load(dir.path(), "prod").unwrap_err().to_string();
        assert!(err.contains("`db-9`, which is not a node"), "{err}");

        let web_1 = "nodes:\n  - {name: web-1, address: web-1.example.org, user: deploy}\n";
        write(&format!("database: {{node: web-1}}\n{web_1}"));
        let err = load(dir.path(), "prod").unwrap_err().to_string();
        assert!(err.contains("`database.address` is missing"), "{err}");

        write(&format!(
            "database: {{node: web-1, address: web-1.lan}}\n{web_1}"
        ));
        let err = load(dir.path(), "prod").unwrap_err().to_string();
        assert!(err.contains("must be an IP address of web-1"), "{err}");

        write(&format!(
            "database: {{node: web-1, address: 10.0.0.1}}\n{web_1}"
        ));
        let settings = load(dir.path(), "prod").unwrap();
        assert_eq!(
            settings.database.shared_address().as_deref(),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn addresses() {
        assert!(is_valid_address("10.0.0.1"));
        assert!(is_valid_address("::1"));
        assert!(is_valid_address("node-a.example.org"));
        assert!(!is_valid_address("10.0.0"));
        assert!(!is_valid_address("300.1.1.1"));
        assert!(!is_valid_address("node_a"));
        assert!(!is_valid_address("-bad.example"));
        assert!(!is_valid_address(""));
    }

    #[test]
    fn merge_overrides_scalars_and_merges_maps() {
        let base: Value = serde_yaml::from_str("a: 1\nvars: {x: 1, y: 2}").unwrap();
        let over: Value = serde_yaml::from_str("vars: {y: 3}").unwrap();
        let merged: Value = merge(base, over);
        let expected: Value = serde_yaml::from_str("a: 1\nvars: {x: 1, y: 3}").unwrap();
        assert_eq!(merged, expected);
    }

    #[test]
    fn stop_grace_below_three_seconds_is_refused_by_name() {
        for seconds in [0, 1, 2] {
            let err = validate_stop_grace(seconds, "inventory/x.yml").unwrap_err();
            assert_eq!(err.exit_code(), crate::error::exit::INVALID);
            assert!(err.to_string().contains("`stop_grace_seconds`"), "{err}");
        }
        assert!(validate_stop_grace(3, "inventory/x.yml").is_ok());
    }

    #[test]
    fn ssh_connect_timeout_defaults_to_ten_seconds_and_refuses_zero() {
        assert_eq!(Settings::default().ssh_connect_timeout_seconds, 10);
        let parsed: Settings = serde_yaml::from_str("ssh_connect_timeout_seconds: 3\n").unwrap();
        assert_eq!(parsed.ssh_connect_timeout_seconds, 3);

        let err = validate_connect_timeout(0, "inventory/x.yml").unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::INVALID);
        assert!(
            err.to_string().contains("`ssh_connect_timeout_seconds`"),
            "{err}"
        );
        assert!(validate_connect_timeout(1, "inventory/x.yml").is_ok());

        let words = serde_yaml::from_str::<Settings>("app: x\nssh_connect_timeout_seconds: soon\n");
        assert!(words.unwrap_err().to_string().contains("line 2"));
    }

    #[test]
    fn locates_unknown_key() {
        let text = "app: x\nnodez: []\n";
        let msg = "unknown field `nodez`, expected one of ...";
        assert_eq!(locate(text, msg), " (line 2)");
    }
}
