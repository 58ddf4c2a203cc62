//! `slipway status`, `slipway check` and `slipway lock status`: read-only looks at nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Environment, NodeSpec};
use crate::node::{quote, Node};
use crate::playbook::Playbook;
use crate::render::{self, Renderer};
use crate::{fleet, health, history, image, lock, migrate, snapshot, switch};

/// One node's line in `status`.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub url: String,
    pub color: Option<String>,
    pub version: Option<String>,
    pub commit: Option<String>,
    pub deployed_at: Option<String>,
    pub deployed_by: Option<String>,
    pub health: String,
    pub schema_version: Option<u64>,
    /// What else is true on the node: the idle color still running a release (left by a
    /// deploy cut off mid-way), or a history that names another release than the one live.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub async fn status(env: Arc<Environment>, limit: &[String]) -> anyhow::Result<Vec<NodeStatus>> {
    let specs = fleet::select(&env, limit)?;
    let mut rows = Vec::new();
    for spec in specs {
        let row = match fleet::connect(&env, &spec).await {
            Ok(node) => node_status(&node, &spec)
                .await
                .unwrap_or_else(|e| unreachable(&env, &spec, e)),
            Err(e) => unreachable(&env, &spec, e),
        };
        rows.push(row);
    }
    Ok(rows)
}

fn unreachable(env: &Environment, spec: &NodeSpec, err: anyhow::Error) -> NodeStatus {
    NodeStatus {
        node: spec.name.clone(),
        url: fleet::url(env, spec),
        color: None,
        version: None,
        commit: None,
        deployed_at: None,
        deployed_by: None,
        health: "unknown".into(),
        schema_version: None,
        notes: Vec::new(),
        error: Some(crate::redact::redact(&format!("{err:#}"))),
    }
}

async fn node_status(node: &Node, spec: &NodeSpec) -> anyhow::Result<NodeStatus> {
    let color = switch::active_color(node).await?;
    let last = history::read(node)
        .await?
        .into_iter()
        .rfind(|r| r.action != "failed");
    let probe = match &color {
        Some(_) => {
            Some(health::probe(node, &health::nginx_url(node), Duration::from_secs(5)).await?)
        }
        None => None,
    };
    let report = probe.as_ref().and_then(|p| p.report.clone());
    let running = running_releases(node).await?;
    let (version, notes) = live_release(color.as_deref(), &running, last.as_ref());
    // The record's commit and time describe the live release only when it names it.
    let last = last.filter(|r| version.as_deref() == Some(r.release.as_str()));

    Ok(NodeStatus {
        node: node.name.clone(),
        url: fleet::url(&node.env, spec),
        color,
        version,
        commit: last.as_ref().map(|r| r.commit.clone()),
        deployed_at: last.as_ref().map(|r| r.deployed_at.clone()),
        deployed_by: last.as_ref().map(|r| r.deployed_by.clone()),
        health: match (&probe, &report) {
            (None, _) => "not deployed".into(),
            (Some(_), Some(r)) if !r.status.is_empty() => r.status.clone(),
            (Some(p), _) => format!("unreachable ({})", p.describe()),
        },
        schema_version: report
            .and_then(|r| r.schema_version)
            .or(last.and_then(|r| r.schema_version)),
        notes,
        error: None,
    })
}

/// The release each color's running app container runs, from its labels.
async fn running_releases(node: &Node) -> anyhow::Result<BTreeMap<String, String>> {
    let env = &node.env;
    let out = node
        .sh(&format!(
            "docker ps --filter label=slipway.app={} --filter label=slipway.env={} \
             --format '{{{{.Label \"slipway.color\"}}}} {{{{.Label \"slipway.release\"}}}}'",
            quote(&env.settings.app),
            quote(&env.name)
        ))
        .await?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .map(|(color, release)| (color.to_string(), release.to_string()))
        .collect())
}

/// The release live on the node: the one the live color's container runs (the history's
/// last record when none runs), with notes on whatever disagrees with it.
fn live_release(
    live: Option<&str>,
    running: &BTreeMap<String, String>,
    last: Option<&history::Record>,
) -> (Option<String>, Vec<String>) {
    let recorded = last.map(|r| r.release.clone());
    let version = live
        .and_then(|c| running.get(c).cloned())
        .or(recorded.clone());

    let mut notes = Vec::new();
    if let (Some(v), Some(r)) = (&version, &recorded) {
        if v != r {
            notes.push(format!(
                "the history's last record names {r}, but the live color runs {v} (a deploy \
                 was cut off between the switch and its record)"
            ));
        }
    }
    for (color, release) in running {
        if Some(color.as_str()) != live {
            notes.push(format!(
                "the idle {color} color still runs {release}, not live (left by a deploy that \
                 was cut off, or one in progress); the next deploy removes it"
            ));
        }
    }
    (version, notes)
}

pub fn print_table(rows: &[NodeStatus]) {
    println!(
        "{:<12} {:<6} {:<26} {:<12} {:<7} {:<21} URL",
        "NODE", "COLOR", "RELEASE", "HEALTH", "SCHEMA", "DEPLOYED"
    );
    for r in rows {
        println!(
            "{:<12} {:<6} {:<26} {:<12} {:<7} {:<21} {}",
            r.node,
            r.color.as_deref().unwrap_or("-"),
            r.version.as_deref().unwrap_or("-"),
            r.health,
            r.schema_version.map_or("-".into(), |v| v.to_string()),
            r.deployed_at.as_deref().unwrap_or("-"),
            r.url
        );
        for note in &r.notes {
            println!("  {}: {note}", r.node);
        }
        if let Some(e) = &r.error {
            println!("  {}: {e}", r.node);
        }
    }
}

/// Validates everything that can be validated without changing a node. Returns the number
/// of nodes that failed their remote checks.
pub async fn check(env: Arc<Environment>, limit: &[String]) -> anyhow::Result<usize> {
    let playbook = Playbook::load(&env.root, &env.settings.playbook)?;
    let specs = fleet::select(&env, limit)?;
    let renderer = Renderer::new(&env.root);
    let images = image::infra_tags(&env.root)?;
    for spec in &specs {
        render::check_all(&env, &spec.name, &renderer, &images)?;
    }
    println!(
        "ok   inventory, secrets file, templates and playbook ({} steps)",
        playbook.steps.len()
    );

    let mut failed = 0;
    for spec in &specs {
        match check_node(&env, spec).await {
            Ok(line) => println!("ok   {}: {line}", spec.name),
            Err(e) => {
                failed += 1;
                println!(
                    "FAIL {}: {}",
                    spec.name,
                    crate::redact::redact(&format!("{e:#}"))
                );
            }
        }
    }
    Ok(failed)
}

async fn check_node(env: &Arc<Environment>, spec: &NodeSpec) -> anyhow::Result<String> {
    let node = fleet::connect(env, spec)
        .await
        .map_err(|e| anyhow::anyhow!("{:#}", e.root_cause()))?;
    let docker = node.docker_version().await?;
    let docker = docker.split_whitespace().next().unwrap_or_default();
    let compose = node.sh("docker compose version --short").await?;
    let lock = lock::status(&node).await?;
    let held = match lock.holder {
        Some(h) if lock.locked => format!("locked by {}", h.describe()),
        _ if lock.locked => "locked".into(),
        _ => "lock free".into(),
    };
    Ok(format!(
        "{} reachable, host key verified, docker {}, compose {}, {held}",
        node.host.describe(),
        docker.trim(),
        compose.trim()
    ))
}

/// `lock status`: every node's lock and its holder.
pub async fn lock_status(env: Arc<Environment>, limit: &[String]) -> anyhow::Result<bool> {
    let mut any_locked = false;
    for spec in fleet::select(&env, limit)? {
        let line = match fleet::connect(&env, &spec).await {
            Ok(node) => match lock::inspect(&node).await {
                Ok(state) if state.locked => {
                    any_locked = true;
                    match state.holder {
                        Some(h) => format!("locked by {}", h.describe()),
                        None => "locked (no holder file)".into(),
                    }
                }
                Ok(lock::LockState {
                    holder: Some(h), ..
                }) => format!(
                    "free, with a holder record left behind by {}; `slipway lock release {} \
                     --deploy-id {}` clears it",
                    h.describe(),
                    env.name,
                    h.deploy_id
                ),
                Ok(_) => "free".into(),
                Err(e) => format!("unknown: {e:#}"),
            },
            Err(e) => format!("unreachable: {e:#}"),
        };
        println!("{}: {}", spec.name, crate::redact::redact(&line));
    }
    Ok(any_locked)
}

/// `lock release`: shows each selected node's lock holder, then, after --yes or a
/// confirmation on the terminal, clears the holder records of `deploy_id` that a finished
/// or killed operation left behind. A lock that a live session holds is refused (exit 3),
/// a record of another deploy id is left alone (exit 2).
pub async fn lock_release(
    env: Arc<Environment>,
    limit: &[String],
    deploy_id: &str,
    yes: bool,
) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    let mut refusal: Option<anyhow::Error> = None;
    for spec in fleet::select(&env, limit)? {
        let node = fleet::connect(&env, &spec).await?;
        let state = lock::inspect(&node).await?;
        let line = match (&state.holder, state.locked) {
            (None, false) => "free, no holder record: nothing to release".to_string(),
            (None, true) => "locked by a live session that left no holder record".into(),
            (Some(h), true) => format!("locked by {} (its session is alive)", h.describe()),
            (Some(h), false) => format!("free, with a holder record left behind: {}", h.describe()),
        };
        println!("{}: {}", spec.name, crate::redact::redact(&line));

        let refused = match state.holder {
            Some(h) if h.deploy_id != deploy_id => Some(other_deploy(&node, &h, deploy_id)),
            Some(h) if state.locked => Some(lock::locked_by(&node, &h).into()),
            Some(h) => {
                stale.push((node, h));
                None
            }
            None => None,
        };
        if refusal.is_none() {
            refusal = refused;
        }
    }

    confirm_release(&stale, yes)?;
    for (node, holder) in &stale {
        lock::clear_stale(node, holder).await?;
        println!(
            "{}: released (holder record of {} removed)",
            node.name, holder.deploy_id
        );
    }
    match refusal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn other_deploy(node: &Node, holder: &lock::Holder, deploy_id: &str) -> anyhow::Error {
    crate::error::Error::config(
        "--deploy-id",
        format!(
            "{}: the lock's holder is {}, not {deploy_id}; it is left alone",
            node.name, holder.deploy_id
        ),
        format!(
            "check `slipway lock status {}` and pass the deploy id it shows",
            node.env.name
        ),
    )
    .into()
}

/// Goes on with --yes, or after a `y` on the terminal; refuses (exit 2) otherwise.
fn confirm_release(stale: &[(Node, lock::Holder)], yes: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};

    if stale.is_empty() || yes {
        return Ok(());
    }
    let names: Vec<&str> = stale.iter().map(|(n, _)| n.name.as_str()).collect();
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(crate::error::Error::config(
            "--yes",
            format!(
                "releasing the lock on {} needs confirmation",
                names.join(", ")
            ),
            "check the holder shown above, then pass --yes",
        ));
    }
    eprint!("release the lock on {}? [y/N] ", names.join(", "));
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        anyhow::bail!(crate::error::Error::config(
            "the confirmation",
            "not confirmed; nothing was released",
            "run it again and answer y",
        ));
    }
    Ok(())
}

/// `migrate status`: each node's schema version and dirty flag, and which migration files of
/// `git_ref` are applied or pending there. True when every node answered and none is dirty.
pub async fn migrate_status(
    env: Arc<Environment>,
    limit: &[String],
    git_ref: &str,
) -> anyhow::Result<bool> {
    let files = migrate::load(&env.root, git_ref).await?;
    let mut all_clean = true;
    for spec in fleet::select_databases(&env, limit)? {
        let line = match fleet::connect(&env, &spec).await {
            Ok(node) => match migrate::state(&node).await {
                Ok(state) => {
                    all_clean &= !state.dirty;
                    describe_schema(&files, state)
                }
                Err(e) => {
                    all_clean = false;
                    format!("unknown: {e:#}")
                }
            },
            Err(e) => {
                all_clean = false;
                format!("unreachable: {e:#}")
            }
        };
        println!("{}: {}", spec.name, crate::redact::redact(&line));
    }
    Ok(all_clean)
}

fn describe_schema(files: &[migrate::Migration], state: migrate::SchemaState) -> String {
    let Some(version) = state.version else {
        let dirty = if state.dirty {
            ", DIRTY: golang-migrate's no-version row (-1) is marked dirty (a failed down of \
             the first file); deploys are refused until `slipway migrate recover <env> --to 0` (or \
             `--to <first version>` if its changes are in)"
        } else {
            ""
        };
        return format!(
            "no migration applied{dirty}; pending: {}",
            list_versions(&migrate::pending(files, state))
        );
    };
    // A dirty version was started, not finished: it does not count as applied.
    let applied = files
        .iter()
        .filter(|m| m.version < version || (m.version == version && !state.dirty))
        .count();
    let dirty = if state.dirty {
        format!(
            ", DIRTY: migration {version} failed part-way and deploys are refused until it is \
             recovered"
        )
    } else {
        String::new()
    };
    format!(
        "version {version}{dirty}; {applied} of {} files applied; pending: {}",
        files.len(),
        list_versions(&migrate::pending(files, state))
    )
}

fn list_versions(migrations: &[migrate::Migration]) -> String {
    if migrations.is_empty() {
        return "none".into();
    }
    migrations
        .iter()
        .map(|m| format!("{} ({})", m.version, m.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `snapshot list`: every node's snapshots, oldest first, with what each was taken at.
pub async fn snapshot_list(env: Arc<Environment>, limit: &[String]) -> anyhow::Result<bool> {
    let mut all_answered = true;
    for spec in fleet::select_databases(&env, limit)? {
        println!("{}:", spec.name);
        let lines = match fleet::connect(&env, &spec).await {
            Ok(node) => snapshot_lines(&node).await,
            Err(e) => Err(e),
        };
        match lines {
            Ok(lines) if lines.is_empty() => println!("  no snapshot"),
            Ok(lines) => lines.iter().for_each(|l| println!("  {l}")),
            Err(e) => {
                all_answered = false;
                println!(
                    "  unreachable: {}",
                    crate::redact::redact(&format!("{e:#}"))
                );
            }
        }
    }
    Ok(all_answered)
}

async fn snapshot_lines(node: &Node) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for name in snapshot::list(node).await? {
        let line = match snapshot::meta(node, &name).await? {
            Some(m) if m.live_release.as_deref() == Some(m.before_release.as_str()) => format!(
                "{name}  {:.1} MB  schema {}  taken {} at release {}",
                m.bytes as f64 / 1e6,
                m.schema_version
                    .map_or("none".to_string(), |v| v.to_string()),
                m.taken_at,
                m.before_release,
            ),
            Some(m) => format!(
                "{name}  {:.1} MB  schema {}  taken {} before deploying {} (live: {})",
                m.bytes as f64 / 1e6,
                m.schema_version
                    .map_or("none".to_string(), |v| v.to_string()),
                m.taken_at,
                m.before_release,
                m.live_release.as_deref().unwrap_or("none"),
            ),
            None => format!("{name}  (no record)"),
        };
        lines.push(line);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(c, r)| (c.to_string(), r.to_string()))
            .collect()
    }

    #[test]
    fn the_live_colors_container_names_the_release_and_disagreements_are_noted() {
        let (v, notes) = live_release(
            Some("blue"),
            &running(&[("blue", "v1")]),
            Some(&history::Record::sample("deploy", "v1")),
        );
        assert_eq!((v.as_deref(), notes.len()), (Some("v1"), 0));

        let cut = running(&[("blue", "v1"), ("green", "v2")]);
        let (v, notes) = live_release(
            Some("blue"),
            &cut,
            Some(&history::Record::sample("deploy", "v1")),
        );
        assert_eq!(v.as_deref(), Some("v1"));
        assert!(
            notes[0].contains("idle green color still runs v2"),
            "{notes:?}"
        );

        let (v, notes) = live_release(
            Some("green"),
            &cut,
            Some(&history::Record::sample("deploy", "v1")),
        );
        assert_eq!(v.as_deref(), Some("v2"), "switched but never recorded");
        assert!(notes[0].contains("last record names v1"), "{notes:?}");
        assert!(
            notes[1].contains("idle blue color still runs v1"),
            "{notes:?}"
        );

        let (v, notes) = live_release(
            Some("blue"),
            &running(&[]),
            Some(&history::Record::sample("deploy", "v1")),
        );
        assert_eq!(
            (v.as_deref(), notes.len()),
            (Some("v1"), 0),
            "nothing runs: the record"
        );
    }
}
