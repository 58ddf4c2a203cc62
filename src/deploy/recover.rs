//! `slipway migrate recover`: the explicit way out of a dirty schema. It never guesses: the
//! operator names the version whose changes are really in the database, and slipway records
//! that version as clean, under the environment's lock and golang-migrate's advisory lock,
//! only if the database is still dirty at the version it reported.

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;

use super::{connect_all, lock_all};
use crate::config::Environment;
use crate::error::Error;
use crate::fleet;
use crate::migrate::{self, Migration};
use crate::node::Node;
use crate::report::Reporter;

pub struct RecoverOptions {
    pub limit: Vec<String>,
    /// The version to record as clean: the dirty one (its file did apply) or the one
    /// before it (it did not); `0` when there is none before it. For golang-migrate's
    /// dirty -1 row: `0` (the first file's down took effect) or the first file's version.
    pub to: u64,
    pub git_ref: String,
    pub yes: bool,
}

pub async fn run(
    root: &Path,
    env_name: &str,
    opts: &RecoverOptions,
    reporter: Arc<Reporter>,
) -> anyhow::Result<()> {
    let env = Arc::new(Environment::load(root, env_name)?);
    let specs = fleet::select_databases(&env, &opts.limit)?;
    let files = migrate::load(root, &opts.git_ref).await?;
    let id = format!("m-{}", std::process::id());

    let nodes = connect_all(&env, &specs).await?;
    let locks = lock_all(&nodes, &id, &reporter).await?;
    let mut result = Ok(());
    for node in &nodes {
        result = recover_node(node, &files, opts).await;
        if result.is_err() {
            break;
        }
    }
    for (lock, node) in locks.into_iter().zip(&nodes) {
        let _ = lock.release(node).await;
    }
    result
}

async fn recover_node(
    node: &Node,
    files: &[Migration],
    opts: &RecoverOptions,
) -> anyhow::Result<()> {
    let state = migrate::state(node).await?;
    if !state.dirty {
        eprintln!("{} | schema is not dirty; nothing to recover", node.name);
        return Ok(());
    }
    let (allowed, plan) = match state.version {
        Some(dirty) => {
            let before = files
                .iter()
                .map(|m| m.version)
                .filter(|v| *v < dirty)
                .max()
                .unwrap_or(0);
            ([dirty, before], plan_text(dirty, opts.to))
        }
        None => {
            let first = files.iter().map(|m| m.version).min().unwrap_or(0);
            ([0, first], nil_plan_text(first, opts.to))
        }
    };
    if !allowed.contains(&opts.to) {
        let dirty = state
            .version
            .map_or("golang-migrate's -1 (no version)".into(), |v| v.to_string());
        bail!(Error::config(
            "--to",
            format!(
                "{}: version {dirty} is dirty; --to must be {} (its file did apply) or {} \
                 (it did not), not {}",
                node.name, allowed[0], allowed[1], opts.to
            ),
            "check which of the two the database holds, then pass that one",
        ));
    }

    eprintln!("{} | {plan}", node.name);
    if !opts.yes {
        bail!(Error::config(
            "--yes",
            "recovering a dirty schema needs confirmation; nothing was changed",
            "read what it will do above, then run it again with --yes",
        ));
    }
    migrate::force_clean(node, state.version, opts.to).await?;
    eprintln!(
        "{} | schema_migrations recorded as {} (clean)",
        node.name, opts.to
    );
    Ok(())
}

/// The plan for golang-migrate's dirty `NilVersion` row, left by a failed down migration of
/// the first file (`first`).
fn nil_plan_text(first: u64, to: u64) -> String {
    let meaning = if to == 0 {
        "no migration is taken as applied: the table is emptied, and the next deploy runs \
         every file"
            .to_string()
    } else {
        format!("migration {first} is taken as still applied; the next deploy starts after it")
    };
    format!(
        "schema_migrations holds golang-migrate's dirty -1 row (no version): a down migration \
         of the first file failed. Recover will record {to} as clean: {meaning}. No migration \
         runs."
    )
}

fn plan_text(dirty: u64, to: u64) -> String {
    let meaning = if to == dirty {
        format!("migration {dirty} is taken as applied; the next deploy starts after it")
    } else {
        format!("migration {dirty} is taken as not applied; the next deploy runs it again")
    };
    format!(
        "schema_migrations says version {dirty} is dirty. slipway runs each file in one \
         transaction, so a file that failed left nothing behind; only a crash between the \
         file's commit and its bookkeeping leaves it applied. Recover will record version \
         {to} as clean: {meaning}. No migration runs."
    )
}
