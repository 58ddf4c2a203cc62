//! `slipway snapshot create|restore|download <env>`: snapshots taken, restored and copied
//! by hand. Create and restore hold the environment's lock; download only reads.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::config::Environment;
use crate::deploy::connect_all;
use crate::error::Error;
use crate::lock::{self, Holder, Lock};
use crate::node::{quote, Node};
use crate::report::Reporter;
use crate::{fleet, health, history, migrate, restore, snapshot, switch};

/// `snapshot create`: on every selected node, prune snapshots past the retention, then
/// take one of the database as it is now.
pub async fn create(
    root: &Path,
    env_name: &str,
    limit: &[String],
    reporter: Arc<Reporter>,
) -> anyhow::Result<()> {
    let env = Arc::new(Environment::load_without_secrets(root, env_name)?);
    let nodes = connect_all(&env, &fleet::select_databases(&env, limit)?).await?;
    let locks = lock_each(&nodes, "snapshot create", &reporter).await?;

    let mut result = Ok(());
    for node in &nodes {
        reporter.step(&node.name, "snapshot");
        result = create_on(node, &reporter).await;
        if result.is_err() {
            break;
        }
    }
    release(locks, &nodes).await;
    result
}

async fn create_on(node: &Node, reporter: &Reporter) -> anyhow::Result<()> {
    require_database(node).await?;
    let pruned = snapshot::prune(node).await?;
    if !pruned.is_empty() {
        reporter.info(
            &node.name,
            &format!("pruned {} old snapshot(s)", pruned.len()),
        );
    }
    let (name, meta) = take_recorded(node)
        .await
        .map_err(|e| step_error(node, "snapshot", e))?;
    reporter.finish(&node.name, &describe(&name, &meta));
    Ok(())
}

/// Takes a snapshot of the database as it is and records the live release, its commit and
/// the schema version beside it. The caller holds the lock and has pruned if it wants to.
pub(crate) async fn take_recorded(node: &Node) -> anyhow::Result<(String, snapshot::Meta)> {
    snapshot::check_room(node).await?;
    let live = history::read(node)
        .await?
        .into_iter()
        .rfind(|r| r.action != "failed");
    let commit = live
        .as_ref()
        .map_or_else(|| "0000000".to_string(), |r| r.commit.clone());
    let state = migrate::state(node).await?;

    let name = snapshot::take(node, &commit).await?;
    let meta = snapshot::Meta {
        taken_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        // Outside a deploy no release is about to be deployed: the snapshot belongs to
        // the live one, which `snapshot list` then shows as "at release ...".
        before_release: live
            .as_ref()
            .map_or_else(|| "none".into(), |r| r.release.clone()),
        commit,
        live_release: live.map(|r| r.release),
        schema_version: state.version,
        bytes: 0,
    };
    snapshot::record(node, &name, meta).await?;
    let meta = snapshot::meta(node, &name).await?.unwrap_or_default();
    Ok((name, meta))
}

fn describe(name: &str, meta: &snapshot::Meta) -> String {
    format!(
        "snapshot {name} ({:.1} MB, schema {}, release {})",
        meta.bytes as f64 / 1e6,
        meta.schema_version.map_or("none".into(), |v| v.to_string()),
        meta.live_release.as_deref().unwrap_or("none")
    )
}

pub struct RestoreOptions {
    pub limit: Vec<String>,
    pub name: String,
    pub yes: bool,
}

/// `snapshot restore`: after confirmation, under the lock, snapshot the current state,
/// then restore `name` into the live database (see [`restore`](crate::restore)).
pub async fn restore(
    root: &Path,
    env_name: &str,
    opts: &RestoreOptions,
    reporter: Arc<Reporter>,
) -> anyhow::Result<()> {
    let env = Arc::new(Environment::load_without_secrets(root, env_name)?);
    let nodes = connect_all(&env, &fleet::select_databases(&env, &opts.limit)?).await?;
    let node = holder(nodes, &opts.name, env_name).await?;

    let meta = snapshot::meta(&node, &opts.name).await?.unwrap_or_default();
    eprintln!("{}", restore_plan(&node, &opts.name, &meta));
    confirm(
        opts.yes,
        "restoring a snapshot replaces the database's data",
    )?;

    let locks = lock_each(std::slice::from_ref(&node), "snapshot restore", &reporter).await?;
    let result = restore_on(&node, &opts.name, &reporter).await;
    release(locks, std::slice::from_ref(&node)).await;
    result
}

fn restore_plan(node: &Node, name: &str, meta: &snapshot::Meta) -> String {
    format!(
        "{node_name}: restore {name} (taken {taken}, schema {schema}, release {release}) into \
         database `{db}`.\n  First a snapshot of the current state is taken. Then, in one \
         transaction, every table, view, sequence, type and function that no extension owns \
         is dropped and the snapshot's are restored; extensions (PostGIS, pgvector, pg_trgm, \
         ...) stay as installed. The app keeps running; its queries wait until the restore \
         commits. A failure rolls everything back.",
        node_name = node.name,
        taken = if meta.taken_at.is_empty() {
            "at an unrecorded time"
        } else {
            &meta.taken_at
        },
        schema = meta
            .schema_version
            .map_or("unknown".into(), |v| v.to_string()),
        release = meta.live_release.as_deref().unwrap_or("unknown"),
        db = node.env.settings.database.name,
    )
}

async fn restore_on(node: &Node, name: &str, reporter: &Reporter) -> anyhow::Result<()> {
    require_database(node).await?;
    restore::contents(node, name)
        .await
        .map_err(|e| step_error(node, "check snapshot", e))?;
    let before = restore::extensions(node).await?;

    reporter.step(&node.name, "snapshot of the current state");
    let (saved, meta) = take_recorded(node)
        .await
        .map_err(|e| step_error(node, "snapshot", e))?;
    reporter.info(&node.name, &describe(&saved, &meta));

    reporter.step(&node.name, "restore");
    if let Err(e) = restore::restore(node, name).await {
        return Err(Error::Step {
            node: node.name.clone(),
            step: "restore".into(),
            cause: format!("{e:#}"),
            outcome: format!("nothing was changed; the current state is also in {saved}"),
            hint: "fix the cause named above, then run the restore again".into(),
        }
        .into());
    }
    report_restored(node, name, &saved, &before, reporter).await
}

/// After a restore: extension versions, schema version and the app's health through nginx.
async fn report_restored(
    node: &Node,
    name: &str,
    saved: &str,
    before: &restore::Extensions,
    reporter: &Reporter,
) -> anyhow::Result<()> {
    let after = restore::extensions(node).await?;
    let versions: Vec<String> = after.iter().map(|(n, v)| format!("{n} {v}")).collect();
    if &after != before {
        reporter.info(
            &node.name,
            &format!("warning: extensions changed: {before:?} before, {after:?} now"),
        );
    } else {
        reporter.info(
            &node.name,
            &format!("extensions unchanged: {}", versions.join(", ")),
        );
    }
    let state = migrate::state(node).await?;
    let schema = state.version.map_or("none".into(), |v| v.to_string());

    if switch::active_color(node).await?.is_some() {
        let probe = health::probe(
            node,
            &health::nginx_url(node),
            std::time::Duration::from_secs(10),
        )
        .await?;
        if !probe.is_healthy() {
            bail!(Error::Step {
                node: node.name.clone(),
                step: "verify".into(),
                cause: format!("after the restore the app answers {}", probe.describe()),
                outcome: format!(
                    "{name} was restored (schema {schema}); the state before it is in {saved}"
                ),
                hint: format!("check the app's log; to go back, restore {saved}"),
            });
        }
    }
    reporter.finish(
        &node.name,
        &format!("restored {name}: schema {schema}; the state before it is in {saved}"),
    );
    Ok(())
}

pub struct DownloadOptions {
    pub limit: Vec<String>,
    pub name: String,
    /// A file, or a directory to put `<name>` in; default: the current directory.
    pub to: Option<PathBuf>,
}

/// `snapshot download`: copies a snapshot over the SSH connection, then checks that the
/// copy has the node's size and SHA-256 and that the node's `pg_restore --list` reads it.
pub async fn download(root: &Path, env_name: &str, opts: &DownloadOptions) -> anyhow::Result<()> {
    let env = Arc::new(Environment::load_without_secrets(root, env_name)?);
    let nodes = connect_all(&env, &fleet::select_databases(&env, &opts.limit)?).await?;
    let node = holder(nodes, &opts.name, env_name).await?;
    let dest = destination(opts.to.as_deref(), &opts.name);

    let path = format!("{}/{}", node.paths.snapshots_dir(), opts.name);
    let (size, sum) = remote_digest(&node, &path).await?;
    restore::contents(&node, &opts.name).await?;

    let partial = PathBuf::from(format!("{}.partial", dest.display()));
    let copied = fetch(&node, &path, &partial).await;
    let checked = copied.and_then(|()| check_copy(&partial, size, &sum));
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!(
            "{}: downloading {} failed; nothing was kept",
            node.name, opts.name
        )));
    }
    std::fs::rename(&partial, &dest)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), dest.display()))?;

    if let Some(meta) = node.read_file(&format!("{path}.json")).await? {
        std::fs::write(format!("{}.json", dest.display()), meta)?;
    }
    println!(
        "{}: {} -> {} ({size} bytes, sha256 {sum}); size and SHA-256 match the node's, \
         pg_restore --list reads it",
        node.name,
        opts.name,
        dest.display()
    );
    Ok(())
}

fn destination(to: Option<&Path>, name: &str) -> PathBuf {
    match to {
        Some(p) if p.is_dir() => p.join(name),
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(name),
    }
}

async fn remote_digest(node: &Node, path: &str) -> anyhow::Result<(u64, String)> {
    let q = quote(path);
    let out = node.sh(&format!("stat -c %s {q} && sha256sum {q}")).await?;
    let mut lines = out.lines();
    let size = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("cannot read the snapshot's size on the node")?;
    let sum = lines
        .next()
        .and_then(|l| l.split_whitespace().next())
        .context("cannot read the snapshot's SHA-256 on the node")?;
    Ok((size, sum.to_string()))
}

async fn fetch(node: &Node, path: &str, local: &Path) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::create(local)
        .await
        .with_context(|| format!("cannot create {}", local.display()))?;
    let out = node
        .host
        .run_to(&format!("cat {}", quote(path)), &mut file)
        .await?;
    if !out.success() {
        bail!("reading {path} on the node failed: {}", out.tail(3));
    }
    file.sync_all().await?;
    Ok(())
}

fn check_copy(local: &Path, size: u64, sum: &str) -> anyhow::Result<()> {
    let got = std::fs::metadata(local)?.len();
    if got != size {
        bail!("the copy has {got} bytes, the node's file {size}");
    }
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(local)?;
    std::io::copy(&mut file, &mut hasher)?;
    let local_sum = hex::encode(hasher.finalize());
    if local_sum != sum {
        bail!("the copy's SHA-256 is {local_sum}, the node's {sum}");
    }
    Ok(())
}

/// The one selected node that holds snapshot `name`; invalid input when none or several do.
async fn holder(nodes: Vec<Node>, name: &str, env: &str) -> anyhow::Result<Node> {
    if name.contains('/') || !name.ends_with(".dump") {
        bail!(Error::config(
            "snapshot name",
            format!("`{name}` is not a snapshot name"),
            format!("use a name that `slipway snapshot list {env}` shows"),
        ));
    }
    let mut holding = Vec::new();
    for node in nodes {
        if snapshot::verify_present(&node, name).await.is_ok() {
            holding.push(node);
        }
    }
    match holding.len() {
        1 => Ok(holding.remove(0)),
        0 => bail!(Error::config(
            "snapshot name",
            format!("no selected node of {env} holds snapshot {name}; nothing was changed"),
            format!("pick one that `slipway snapshot list {env}` shows"),
        )),
        _ => {
            let names: Vec<&str> = holding.iter().map(|n| n.name.as_str()).collect();
            bail!(Error::config(
                "--limit",
                format!(
                    "nodes {} each hold a snapshot named {name}",
                    names.join(", ")
                ),
                "pick one with --limit <node>",
            ))
        }
    }
}

/// Goes on with `--yes`, or after the operator types `yes` on a terminal; refuses (exit 2)
/// without a terminal, after the plan was printed.
fn confirm(yes: bool, what: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(Error::config(
            "--yes",
            format!("{what} and needs confirmation; no terminal to ask on, so nothing was changed"),
            "read what it will do above, then run it again with --yes",
        ));
    }
    eprint!("Type `yes` to go on: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!(Error::config(
            "confirmation",
            "not confirmed; nothing was changed",
            "type `yes` to go on"
        ));
    }
    Ok(())
}

async fn require_database(node: &Node) -> anyhow::Result<()> {
    if !node.infra_running().await?.iter().any(|s| s == "db") {
        bail!(Error::Step {
            node: node.name.clone(),
            step: "database".into(),
            cause: "the environment's database is not running".into(),
            outcome: "nothing was changed".into(),
            hint: "deploy the environment first, or start its database".into(),
        });
    }
    Ok(())
}

fn step_error(node: &Node, step: &str, cause: anyhow::Error) -> anyhow::Error {
    Error::Step {
        node: node.name.clone(),
        step: step.into(),
        cause: format!("{cause:#}"),
        outcome: "nothing was changed".into(),
        hint: "fix the cause named above and run the command again".into(),
    }
    .into()
}

/// Takes the lock on every node, or on none.
async fn lock_each(
    nodes: &[Node],
    operation: &str,
    reporter: &Reporter,
) -> anyhow::Result<Vec<Lock>> {
    let id = format!(
        "s-{}-{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        std::process::id()
    );
    let mut locks = Vec::new();
    for node in nodes {
        reporter.step(&node.name, "lock");
        match lock::acquire(node, Holder::new(&id, operation)).await {
            Ok(lock) => locks.push(lock),
            Err(e) => {
                release(locks, nodes).await;
                return Err(e);
            }
        }
    }
    Ok(locks)
}

async fn release(locks: Vec<Lock>, nodes: &[Node]) {
    for (lock, node) in locks.into_iter().zip(nodes) {
        if let Err(e) = lock.release(node).await {
            tracing::warn!(node = %node.name, "could not release the lock cleanly: {e:#}");
        }
    }
}
