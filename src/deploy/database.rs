//! A database several nodes share (`database.node`, FC-07). Before any node of the run
//! starts its new release, the run starts that database if it is not running, snapshots
//! it and applies the pending migrations there, once; every node's own snapshot and
//! migrate steps then find nothing pending. The database's node is locked with the others,
//! selected or not, so a second run waits for nothing and fails on the lock.

use anyhow::{bail, Context};

use std::sync::Arc;

use super::{connect_all, lock_all, Shared, Timer};
use crate::config::{file_name, Environment, NodeSpec};
use crate::detached::Say;
use crate::error::Error;
use crate::history;
use crate::host::Input;
use crate::image;
use crate::lock::Lock;
use crate::migrate::{self, Migration, SchemaState};
use crate::node::{quote, Node};
use crate::render::{self, Renderer};
use crate::report::Reporter;
use crate::snapshot;
use crate::switch;

/// The shared database of a run, as every node's deploy sees it.
pub struct SharedDatabase {
    /// The connection to the node that runs it (the one its own deploy uses, if selected).
    pub node: Node,
    /// What the run did to it before the rollout, for each node's steps to say.
    pub done: Option<String>,
    /// The snapshot taken before its migrations, if any.
    pub snapshot: Option<String>,
}

impl SharedDatabase {
    /// The shared database on `node`, before the run did anything to it.
    pub fn of(node: Node) -> Self {
        SharedDatabase {
            node,
            done: None,
            snapshot: None,
        }
    }
}

/// The selected nodes, connected and locked (all or none), and the shared database's node.
pub(crate) struct Locked {
    pub nodes: Vec<Node>,
    pub locks: Vec<Lock>,
    /// The node running the database the nodes share, if they share one.
    pub database: Option<Node>,
    /// That node and its lock, when the selection leaves it out: it takes part for its
    /// database only, locked but not deployed.
    pub db_only: Option<(Node, Lock)>,
}

/// Connects to and locks the selected nodes and, when they share a database, its node too.
pub(crate) async fn connect_and_lock(
    env: &Arc<Environment>,
    specs: Vec<NodeSpec>,
    id: &str,
    reporter: &Reporter,
) -> anyhow::Result<Locked> {
    let (specs, added) = with_database_node(env, specs);
    let mut nodes = connect_all(env, &specs).await?;
    let mut locks = lock_all(&nodes, id, reporter).await?;
    let database = find(env, &nodes);
    let db_only = added.and_then(|_| Some((nodes.pop()?, locks.pop()?)));
    Ok(Locked {
        nodes,
        locks,
        database,
        db_only,
    })
}

/// The node specs to connect and lock: the selection, plus the shared database's node
/// when the selection leaves it out. Returns that node's name when it was added.
fn with_database_node(
    env: &Environment,
    mut specs: Vec<NodeSpec>,
) -> (Vec<NodeSpec>, Option<String>) {
    let Some(name) = &env.settings.database.node else {
        return (specs, None);
    };
    if specs.iter().any(|s| &s.name == name) {
        return (specs, None);
    }
    let spec = env.settings.nodes.iter().find(|n| &n.name == name);
    match spec {
        Some(spec) => {
            specs.push(spec.clone());
            (specs, Some(name.clone()))
        }
        None => (specs, None),
    }
}

/// The connected node that runs the shared database, if the environment has one.
fn find(env: &Environment, nodes: &[Node]) -> Option<Node> {
    let name = env.settings.database.node.as_ref()?;
    nodes.iter().find(|n| &n.name == name).cloned()
}

/// Starts the shared database if needed, then snapshots and migrates it once. Any failure
/// names the database's node and says that no node was changed.
pub(super) async fn prepare(shared: &mut Shared) -> anyhow::Result<()> {
    let Some(db) = &shared.database else {
        return Ok(());
    };
    let node = db.node.clone();
    let reporter = shared.reporter.clone();
    let mut step = "start_database";

    reporter.run_step_started_at(step, &format!("on {}", node.name));
    reporter.info(
        &node.name,
        "starting the shared database if it is not running",
    );
    let result = async {
        start(&node, shared).await?;
        step = "migrate";
        reporter.run_step_started_at(step, &format!("once, on {}", node.name));
        reporter.info(
            &node.name,
            "snapshot and migrations of the shared database, once for every node",
        );
        migrate_once(&node, shared).await
    }
    .await;

    match result {
        Ok((done, snap)) => {
            reporter.run_step_finished();
            reporter.info(&node.name, &done);
            if let Some(db) = shared.database.as_mut() {
                db.done = Some(done);
                db.snapshot = snap;
            }
            Ok(())
        }
        Err(e) => Err(Error::Step {
            node: node.name.clone(),
            step: step.into(),
            cause: format!("{e:#}"),
            outcome: "no node was changed: the shared database is used by every node of the run"
                .into(),
            hint: "see `slipway migrate status <env>` for the database's state, fix the cause, \
                   then deploy again"
                .into(),
        }
        .into()),
    }
}

/// Ships the database image, writes the database's secrets and the infra compose file,
/// and starts the database if it is not running; checks that it publishes its port.
async fn start(node: &Node, shared: &Shared) -> anyhow::Result<()> {
    image::ship(node, &shared.images.postgres, &shared.saved).await?;
    write_infra_secrets(node, &shared.renderer).await?;

    let active = switch::active_color(node).await?;
    let ctx = render::context(
        &node.env,
        &node.name,
        &node.paths,
        &shared.images,
        None,
        None,
        active.as_deref(),
    );
    let infra = shared.renderer.render(render::INFRA_COMPOSE, &ctx)?;
    node.write_file(&node.paths.infra_compose(), infra.into_bytes(), 0o644)
        .await?;
    node.sh(&format!("mkdir -p {}", quote(&node.paths.snapshots_dir())))
        .await?;
    node.sh(&node.infra_compose("up -d --no-recreate --wait --wait-timeout 120 db"))
        .await
        .context("starting the shared database")?;

    let published = node
        .run(&node.infra_compose("port db 5432"), Input::None)
        .await?;
    if !published.success() {
        bail!(
            "the database on {} publishes no port for the other nodes: it was started before \
             `database.node` was set; recreate it once on that node with `docker compose -p {} \
             up -d db` in {}",
            node.name,
            node.paths.infra_project(),
            node.paths.base()
        );
    }
    Ok(())
}

/// Reads the database's state, lints what is pending, snapshots a database in use and
/// applies the pending files. Returns what it did, and the snapshot's name.
async fn migrate_once(node: &Node, shared: &Shared) -> anyhow::Result<(String, Option<String>)> {
    let state = migrate::state(node).await?;
    if state.dirty {
        bail!(super::steps::dirty_message(state.version));
    }
    let pending = migrate::pending(&shared.migrations, state);
    let settings = &node.env.settings;
    crate::lint::check(&pending, &settings.migrations, state.version.is_some())?;
    if pending.is_empty() {
        return Ok((
            format!("shared database: no pending migration ({})", shown(state)),
            None,
        ));
    }

    let timer = Timer::start();
    let snap = match state.version {
        Some(_) => Some(take_snapshot(node, shared, state.version).await?),
        None => None,
    };
    let reporter = shared.reporter.clone();
    let say = |message: &str| reporter.info(&node.name, message);
    let (applied, after) = apply(node, &pending, snap.as_deref(), state, &say).await?;
    let done = format!(
        "shared database: snapshot {}, migrations {applied:?} applied once in {:.1}s; {}",
        snap.as_deref().unwrap_or("skipped (empty database)"),
        timer.elapsed().as_secs_f64(),
        shown(after)
    );
    Ok((done, snap))
}

fn shown(state: SchemaState) -> String {
    format!(
        "schema version {}",
        state.version.map_or("none".into(), |v| v.to_string())
    )
}

/// Prunes old snapshots, checks there is room, takes one and records what it holds.
pub(super) async fn take_snapshot(
    node: &Node,
    shared: &Shared,
    schema_version: Option<u64>,
) -> anyhow::Result<String> {
    snapshot::check_room(node).await?;
    let pruned = snapshot::prune(node).await?;
    if !pruned.is_empty() {
        shared.reporter.info(
            &node.name,
            &format!("pruned {} old snapshot(s)", pruned.len()),
        );
    }

    let release = &shared.release;
    let name = snapshot::take(node, &release.commit).await?;
    let live_release = history::read(node).await?.last().map(|r| r.release.clone());
    let meta = snapshot::Meta {
        taken_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        before_release: release.name.clone(),
        commit: release.commit.clone(),
        live_release,
        schema_version,
        bytes: 0,
    };
    snapshot::record(node, &name, meta).await?;
    Ok(name)
}

/// Applies `pending` once the snapshot of a database in use is verified; returns the
/// versions applied and the state after.
pub(super) async fn apply(
    node: &Node,
    pending: &[Migration],
    snap: Option<&str>,
    before: SchemaState,
    say: Say<'_>,
) -> anyhow::Result<(Vec<u64>, SchemaState)> {
    if before.version.is_some() {
        match snap {
            Some(name) => snapshot::verify_present(node, name).await?,
            None => bail!("refusing to migrate without a verified snapshot"),
        }
    }

    let applied = migrate::apply(node, pending, say).await.map_err(|e| {
        let snap = snap.unwrap_or("none (the database was empty)");
        // Unreachable, the node may still be migrating: the advice would not hold.
        if !node.host.connected() {
            return e.context(format!("snapshot taken before migrating: {snap}"));
        }
        e.context(format!(
            "snapshot taken before migrating: {snap}; the tool never forces the version: \
             see `slipway migrate status`, fix the cause, then `slipway migrate recover`"
        ))
    })?;
    let after = migrate::state(node).await?;
    Ok((applied, after))
}

/// The secrets the database and nginx use, 0600 in the environment's secrets directory.
pub(super) async fn write_infra_secrets(node: &Node, renderer: &Renderer) -> anyhow::Result<()> {
    let secrets = &node.env.secrets;
    for name in &renderer.secrets_used(render::INFRA_COMPOSE)? {
        let Some(value) = secrets.get(name) else {
            continue;
        };
        let path = format!("{}/{}", node.paths.secrets_dir(), file_name(name));
        node.write_file(&path, value.as_bytes().to_vec(), 0o600)
            .await?;
    }
    Ok(())
}
