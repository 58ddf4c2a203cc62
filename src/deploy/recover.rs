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
    /// before it (it did not); `0` when there is none before it.
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
    let specs = fleet::select(&env, &opts.limit)?;
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
    let Some(dirty) = state.version.filter(|_| state.dirty) else {
        eprintln!("{} | schema is not dirty; nothing to recover", node.name);
        return Ok(());
    };
    let before = files
        .iter()
        .map(|m| m.version)
        .filter(|v| *v < dirty)
        .max()
        .unwrap_or(0);
    if opts.to != dirty && opts.to != before {
        bail!(Error::config(
            "--to",
            format!(
                "{}: version {dirty} is dirty; --to must be {dirty} (its file did apply) or \
                 {before} (it did not), not {}",
                node.name, opts.to
            ),
            "check which of the two the database holds, then pass that one",
        ));
    }

    let plan = plan_text(dirty, opts.to);
    eprintln!("{} | {plan}", node.name);
    if !opts.yes {
        bail!(Error::config(
            "--yes",
            "recovering a dirty schema needs confirmation; nothing was changed",
            "read what it will do above, then run it again with --yes",
        ));
    }
    migrate::force_clean(node, dirty, opts.to).await?;
    eprintln!(
        "{} | schema_migrations recorded as {} (clean)",
        node.name, opts.to
    );
    Ok(())
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
