//! `slipway migrate down <env> --to N`: the explicit way back to an older schema. The down
//! files come from one commit (`--ref`, default HEAD). Under the environment's lock every
//! selected node is planned first (a dirty schema, or a down file that is missing or empty,
//! refuses before anything changes); after confirmation each node takes a verified snapshot,
//! then runs its down files (see [`crate::migrate`] for how they run).

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;

use super::steps::dirty_message;
use super::{ask, connect_all, lock_all, resolve_ref};
use crate::config::Environment;
use crate::error::Error;
use crate::migrate::{self, DownSource, Migration, Revert};
use crate::node::Node;
use crate::report::Reporter;
use crate::{fleet, snapshot, snapshot_cmd};

pub struct DownOptions {
    pub limit: Vec<String>,
    /// The version to go back to; 0 reverts every file.
    pub to: u64,
    pub git_ref: String,
    pub yes: bool,
}

pub async fn run(
    root: &Path,
    env_name: &str,
    opts: &DownOptions,
    reporter: Arc<Reporter>,
) -> anyhow::Result<()> {
    let env = Arc::new(Environment::load(root, env_name)?);
    let specs = fleet::select_databases(&env, &opts.limit)?;
    let (_, commit, files) = resolve_ref(root, &env, &opts.git_ref).await?;
    let id = format!(
        "m-{}-{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        std::process::id()
    );

    let nodes = connect_all(&env, &specs).await?;
    let locks = lock_all(&nodes, &id, &reporter).await?;
    let result = down_all(&nodes, &files, &commit, opts, &reporter).await;
    for (lock, node) in locks.into_iter().zip(&nodes) {
        if let Err(e) = lock.release(node).await {
            tracing::warn!(node = %node.name, "could not release the lock cleanly: {e:#}");
        }
    }
    result
}

/// Plans every node, shows the plans, asks, then reverts node by node.
async fn down_all(
    nodes: &[Node],
    files: &[Migration],
    commit: &str,
    opts: &DownOptions,
    reporter: &Reporter,
) -> anyhow::Result<()> {
    let mut plans = Vec::new();
    for node in nodes {
        plans.push(plan(node, files, commit, opts.to).await?);
    }
    for (node, (from, reverts)) in nodes.iter().zip(&plans) {
        eprintln!(
            "{} | {}",
            node.name,
            describe(*from, reverts, opts.to, commit)
        );
    }
    if plans.iter().all(|(_, reverts)| reverts.is_empty()) {
        eprintln!("nothing to revert; nothing was changed");
        return Ok(());
    }
    if !opts.yes {
        ask(
            "revert the schema?",
            "reverting the schema needs confirmation",
        )?;
    }

    for (node, (_, reverts)) in nodes.iter().zip(&plans) {
        if !reverts.is_empty() {
            down_on(node, reverts, reporter).await?;
        }
    }
    Ok(())
}

/// The node's schema version and the files that take it to `to`; refuses a dirty schema.
async fn plan(
    node: &Node,
    files: &[Migration],
    commit: &str,
    to: u64,
) -> anyhow::Result<(Option<u64>, Vec<Revert>)> {
    let state = migrate::state(node).await?;
    if state.dirty {
        bail!(Error::Step {
            node: node.name.clone(),
            step: "plan".into(),
            cause: dirty_message(state.version),
            outcome: "nothing was changed".into(),
            hint: "recover the schema first, then run the down again".into(),
        });
    }
    let fix = format!(
        "write the down file that reverts the migration, commit it, then run `slipway migrate \
         down {env} --to {to} --ref <that commit>`",
        env = node.env.name
    );
    let reverts = migrate::plan_down(files, state, to, &DownSource { commit, fix: &fix })?;
    Ok((state.version, reverts))
}

fn describe(from: Option<u64>, reverts: &[Revert], to: u64, commit: &str) -> String {
    let Some(from) = from.filter(|_| !reverts.is_empty()) else {
        let at = from.map_or("no version".into(), |v| format!("version {v}"));
        return format!("schema at {at}: nothing to revert to reach {to}");
    };
    let versions: Vec<String> = reverts
        .iter()
        .map(|r| format!("{} ({})", r.version(), r.file.name))
        .collect();
    let after = reverts
        .last()
        .and_then(|r| r.previous)
        .map_or("no version".into(), |v| format!("version {v}"));
    format!(
        "schema version {from} -> {after}: revert {}, newest first, with the down files of \
         commit {}; a verified snapshot is taken first",
        versions.join(", "),
        &commit[..7.min(commit.len())]
    )
}

/// Snapshot (verified), then the down files; reports what was reverted.
async fn down_on(node: &Node, reverts: &[Revert], reporter: &Reporter) -> anyhow::Result<()> {
    reporter.step(&node.name, "snapshot");
    let taken = snapshot_first(node, reporter).await;
    let name = taken.map_err(|e| Error::Step {
        node: node.name.clone(),
        step: "snapshot".into(),
        cause: format!("{e:#}"),
        outcome: "nothing was changed".into(),
        hint: "check the database container and the snapshot directory's free space".into(),
    })?;

    reporter.step(&node.name, "migrate_down");
    let reverted = migrate::revert(node, reverts)
        .await
        .map_err(|e| Error::Step {
            node: node.name.clone(),
            step: "migrate_down".into(),
            cause: format!("{e:#}"),
            outcome: format!("the snapshot taken before it is {name}"),
            hint: format!(
                "see `slipway migrate status {env}`, then `slipway migrate recover {env}` as \
                 the message says (or restore {name})",
                env = node.env.name
            ),
        })?;
    let state = migrate::state(node).await?;
    reporter.finish(
        &node.name,
        &format!(
            "reverted {reverted:?}; schema version {}; snapshot {name}",
            state.version.map_or("none".into(), |v| v.to_string())
        ),
    );
    Ok(())
}

async fn snapshot_first(node: &Node, reporter: &Reporter) -> anyhow::Result<String> {
    let pruned = snapshot::prune(node).await?;
    if !pruned.is_empty() {
        reporter.info(
            &node.name,
            &format!("pruned {} old snapshot(s)", pruned.len()),
        );
    }
    let (name, _) = snapshot_cmd::take_recorded(node).await?;
    snapshot::verify_present(node, &name).await?;
    reporter.info(&node.name, &format!("snapshot {name}"));
    Ok(name)
}
