//! `slipway rollback`: put a release from the node's history back live. The previous
//! release by default, `--to <release>` for an older one. Its stopped container is started
//! again when it is still there; otherwise it starts from its image, which cleanup keeps.
//! By default rollback runs no migration: when the database is newer than the release
//! expects it says so and asks for confirmation (`--yes` in CI). With `--migrate-down` it
//! reverts the versions above the release's schema with the down files of the live
//! release's commit, all checked before any change: a verified snapshot first, then the
//! usual switch (the older release serves on the newer schema, the blue-green contract),
//! then the down files once the newer release is drained, then the history record.

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;

use super::rollout::{self, Job, Rollout};
use super::steps::dirty_message;
use super::{ask, database, finish, interrupt, release_locks, Shared, SharedDatabase};
use crate::config::Environment;
use crate::error::Error;
use crate::fleet;
use crate::history::{self, Record};
use crate::image::{self, Release};
use crate::migrate::{self, DownSource, Revert, SchemaState};
use crate::node::{quote, Node};
use crate::playbook::{Params, Playbook, Step};
use crate::render::Renderer;
use crate::report::Reporter;

pub struct RollbackOptions {
    pub limit: Vec<String>,
    pub to: Option<String>,
    pub yes: bool,
    /// Revert the migrations newer than the target expects (down files of the live release).
    pub migrate_down: bool,
    pub rollout: Rollout,
}

/// The steps of a rollback: no build, no shipping; with `--migrate-down`, [`DOWN_STEPS`]
/// join them.
const STEPS: &[&str] = &[
    "preflight",
    "upload_bundle",
    "ensure_infra",
    "start_color",
    "health_gate",
    "switch",
    "verify",
    "drain",
    "record",
];

/// With `--migrate-down`: `snapshot` before the release starts, `migrate_down` once the
/// newer release is drained (each after the step named first).
const DOWN_STEPS: &[(&str, &str)] = &[("ensure_infra", "snapshot"), ("drain", "migrate_down")];

pub async fn run(
    root: &Path,
    env_name: &str,
    opts: &RollbackOptions,
    reporter: Arc<Reporter>,
) -> anyhow::Result<()> {
    let env = Arc::new(Environment::load(root, env_name)?);
    fleet::require_limit(&env, &opts.limit, "rollback")?;
    let specs = fleet::select(&env, &opts.limit)?;
    let deploy_id = format!(
        "r-{}-{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        std::process::id()
    );
    let selected: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    reporter.start_run(&env, &deploy_id, "rollback", None, &selected)?;

    let database::Locked {
        nodes,
        locks,
        database: db,
        db_only,
    } = database::connect_and_lock(&env, specs, &deploy_id, &reporter).await?;
    let planned = plan_all(&nodes, db.as_ref(), opts).await;
    let plans = match planned.and_then(|plans| confirm(&plans, opts).map(|()| plans)) {
        Ok(plans) => plans,
        Err(e) => {
            release_locks(locks, &nodes, db_only).await;
            return Err(e);
        }
    };

    let mut jobs = Vec::new();
    for ((node, lock), plan) in nodes.into_iter().zip(locks).zip(plans) {
        let mut shared = shared_for(&env, plan, &deploy_id, reporter.clone())?;
        shared.database = db.clone().map(SharedDatabase::of);
        jobs.push(Job {
            node,
            lock,
            shared: Arc::new(shared),
        });
    }
    interrupt::listen()?;
    let ended = rollout::run(jobs, opts.rollout, &reporter).await;
    release_locks(Vec::new(), &[], db_only).await;
    finish(ended?, &reporter)
}

/// What a rollback will do on one node.
struct Plan {
    node: String,
    live: String,
    target: Record,
    /// Set when the database is newer than the target release expects (no `--migrate-down`).
    schema_warning: Option<String>,
    /// With `--migrate-down`: the down files to run, newest first.
    revert: Vec<Revert>,
    /// What `--migrate-down` will do, for the plan.
    down_text: Option<String>,
}

/// Plans every node; `db` is the node of the database they share, if they share one.
async fn plan_all(
    nodes: &[Node],
    db: Option<&Node>,
    opts: &RollbackOptions,
) -> anyhow::Result<Vec<Plan>> {
    if opts.migrate_down && db.is_some() {
        bail!(Error::config(
            "--migrate-down",
            "the nodes share one database (`database.node`), and a rollback of each node \
             would revert it once per node",
            "roll back without --migrate-down, then revert the shared database once with \
             `slipway migrate down <env> --to <version>`",
        ));
    }
    let mut plans = Vec::new();
    for node in nodes {
        plans.push(plan(node, db.unwrap_or(node), opts).await?);
    }
    Ok(plans)
}

async fn plan(node: &Node, db_node: &Node, opts: &RollbackOptions) -> anyhow::Result<Plan> {
    let records: Vec<Record> = history::read(node)
        .await?
        .into_iter()
        .filter(|r| r.action != "failed")
        .collect();
    let Some(live) = records.last().map(|r| r.release.clone()) else {
        bail!(Error::config(
            format!("{}:{}", node.name, node.paths.history()),
            "nothing was ever deployed here, so there is nothing to roll back to",
            "deploy a release first",
        ));
    };

    let target = pick_target(&records, &live, opts.to.as_deref()).map_err(|message| {
        let known: Vec<&str> = records.iter().rev().map(|r| r.release.as_str()).collect();
        Error::config(
            format!("{}:{}", node.name, node.paths.history()),
            message,
            format!(
                "pick one of the releases this node ran: {}",
                known.join(", ")
            ),
        )
    })?;
    check_image(node, &target).await?;

    let live_commit = records.last().map(|r| r.commit.clone()).unwrap_or_default();
    let mut plan = Plan {
        node: node.name.clone(),
        live,
        target,
        schema_warning: None,
        revert: Vec::new(),
        down_text: None,
    };
    let db = match opts.migrate_down {
        true => migrate::state(db_node).await?,
        false => migrate::state(db_node).await.unwrap_or_default(),
    };
    let expected = expected_schema(node, &plan.target).await;
    let Some(current) = newer_schema(db.version, expected) else {
        return Ok(plan);
    };
    if opts.migrate_down {
        plan.revert = down_plan(node, &plan, &live_commit, db, expected.unwrap_or(0)).await?;
        plan.down_text = Some(down_text(&plan.revert, current, &live_commit));
    } else {
        plan.schema_warning =
            Some(schema_warning(node, &plan.target, &live_commit, current, expected).await);
    }
    Ok(plan)
}

/// The schema the target expects: the one its history record names (its highest
/// migration); a record without one falls back to the migrations of its commit, and a
/// release with none expects none.
async fn expected_schema(node: &Node, target: &Record) -> Option<u64> {
    match target.schema_version {
        Some(v) => Some(v),
        None => migrate::load(&node.env.root, &target.commit)
            .await
            .ok()
            .and_then(|files| migrate::expected(&files)),
    }
}

/// The down files that take the database from `db` to `to`, read from the live release's
/// commit and all checked now, before any change.
async fn down_plan(
    node: &Node,
    plan: &Plan,
    live_commit: &str,
    db: SchemaState,
    to: u64,
) -> anyhow::Result<Vec<Revert>> {
    if db.dirty {
        bail!(Error::Step {
            node: node.name.clone(),
            step: "plan".into(),
            cause: dirty_message(db.version),
            outcome: "nothing was changed".into(),
            hint: "recover the schema first, then roll back again".into(),
        });
    }
    let root = &node.env.root;
    if !migrate::has_commit(root, live_commit).await {
        bail!(Error::config(
            format!("commit {live_commit}"),
            format!(
                "{}: the live release {} was built from commit {live_commit}, which this                  repository does not have, so its down files cannot be read; nothing was changed",
                node.name, plan.live
            ),
            "fetch that commit (`git fetch`), then run the rollback again",
        ));
    }
    let files = migrate::load(root, live_commit)
        .await
        .map_err(|e| Error::config("migrations/", format!("{e:#}"), "fix the migration files"))?;
    let fix = format!(
        "a release's down files are those it was built with; revert the schema with `slipway          migrate down {env} --to {to} --ref <a commit with the down file>`, then roll back          without --migrate-down (or roll back without it and keep the newer schema)",
        env = node.env.name
    );
    let source = DownSource {
        commit: live_commit,
        fix: &fix,
    };
    Ok(migrate::plan_down(&files, db, to, &source)?)
}

fn down_text(revert: &[Revert], current: u64, live_commit: &str) -> String {
    let versions: Vec<String> = revert
        .iter()
        .map(|r| format!("{} ({})", r.version(), r.file.name))
        .collect();
    let after = revert
        .last()
        .and_then(|r| r.previous)
        .map_or("no version".into(), |v| format!("version {v}"));
    format!(
        "--migrate-down: schema version {current} -> {after}: a verified snapshot first, then the          switch, then the down files of {}, newest first, from commit {}",
        versions.join(", "),
        &live_commit[..7.min(live_commit.len())]
    )
}

/// The release to go back to: `to`, or the last one that was live before `live`.
fn pick_target(records: &[Record], live: &str, to: Option<&str>) -> Result<Record, String> {
    match to {
        Some(name) if name == live => Err(format!("release {name} is already live")),
        Some(name) => records
            .iter()
            .rev()
            .find(|r| r.release == name)
            .cloned()
            .ok_or_else(|| format!("release {name} is not in this node's history")),
        None => records
            .iter()
            .rev()
            .find(|r| r.release != live)
            .cloned()
            .ok_or_else(|| "no earlier release is recorded".to_string()),
    }
}

async fn check_image(node: &Node, target: &Record) -> anyhow::Result<()> {
    let out = node
        .run(
            &format!(
                "docker image inspect {} >/dev/null 2>&1",
                quote(&target.image)
            ),
            crate::host::Input::None,
        )
        .await?;
    if !out.success() {
        bail!(
            "{}: the image of release {} is no longer on the node; deploy it again with `--ref {}`",
            node.name,
            target.release,
            &target.commit[..7.min(target.commit.len())]
        );
    }
    Ok(())
}

/// Says which migrations the database has that the target release predates.
async fn schema_warning(
    node: &Node,
    target: &Record,
    live_commit: &str,
    current: u64,
    expected: Option<u64>,
) -> String {
    let floor = expected.unwrap_or(0);
    let files = migrate::load(&node.env.root, live_commit)
        .await
        .unwrap_or_default();
    let newer: Vec<String> = files
        .iter()
        .filter(|m| m.version > floor && m.version <= current)
        .map(|m| format!("{} ({})", m.version, m.name))
        .collect();
    let newer = if newer.is_empty() {
        format!("{}..={current}", floor + 1)
    } else {
        newer.join(", ")
    };
    let expects = expected.map_or("no migration".into(), |v| format!("version {v}"));
    format!(
        "the database schema is at version {current}, newer than release {} expects ({expects}); \
         newer migrations: {newer}. slipway will not run down migrations unless asked: the \
         release will run against the newer schema (pass --migrate-down to revert them with \
         the live release's down files)",
        target.release
    )
}

/// The database's version when it is newer than the release expects (`None`: the release
/// has no migration).
fn newer_schema(database: Option<u64>, expected: Option<u64>) -> Option<u64> {
    let current = database?;
    (expected.is_none_or(|e| current > e)).then_some(current)
}

/// Prints the plan and, when the schema is newer (or will be reverted), asks before going on.
fn confirm(plans: &[Plan], opts: &RollbackOptions) -> anyhow::Result<()> {
    for plan in plans {
        eprintln!(
            "{} | rollback: {} -> {}",
            plan.node, plan.live, plan.target.release
        );
        if opts.migrate_down && plan.down_text.is_none() {
            eprintln!("{} | --migrate-down: the schema needs no revert", plan.node);
        }
    }
    let mut asks = false;
    for plan in plans {
        if let Some(text) = &plan.down_text {
            eprintln!("{} | {text}", plan.node);
            asks = true;
        }
        if let Some(warning) = &plan.schema_warning {
            let label = if opts.yes { "warning: " } else { "" };
            eprintln!("{} | {label}{warning}", plan.node);
            asks = true;
        }
    }
    if !asks || opts.yes {
        return Ok(());
    }
    let why = if opts.migrate_down {
        "the rollback reverts the database schema and needs confirmation"
    } else {
        "the rollback needs confirmation because the database is newer than the release"
    };
    ask("roll back?", why)
}

/// The step names of a rollback, with the down steps when it reverts the schema.
fn step_names(migrate_down: bool) -> Vec<&'static str> {
    let mut names = Vec::new();
    for name in STEPS {
        names.push(*name);
        let added = DOWN_STEPS.iter().filter(|(after, _)| after == name);
        names.extend(added.filter(|_| migrate_down).map(|(_, step)| *step));
    }
    names
}

fn shared_for(
    env: &Environment,
    plan: Plan,
    deploy_id: &str,
    reporter: Arc<Reporter>,
) -> anyhow::Result<Shared> {
    let target = &plan.target;
    let steps = step_names(!plan.revert.is_empty())
        .into_iter()
        .map(|name| Step::Builtin {
            name: name.to_string(),
            params: Params::default(),
        })
        .collect();
    Ok(Shared {
        renderer: Renderer::new(&env.root),
        images: image::infra_tags(&env.root)?,
        release: Release {
            name: target.release.clone(),
            commit: target.commit.clone(),
            built_at: String::new(),
            image: target.image.clone(),
            image_id: target.image_id.clone(),
        },
        saved: image::Saved::default(),
        playbook: Playbook {
            file: "(rollback)".into(),
            steps,
        },
        migrations: Vec::new(),
        revert: plan.revert,
        deploy_id: deploy_id.to_string(),
        action: "rollback".into(),
        reporter,
        database: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(release: &str) -> Record {
        Record::sample("deploy", release)
    }

    #[test]
    fn picks_the_previous_release_or_the_named_one() {
        let records = [record("r1"), record("r2"), record("r3")];
        assert_eq!(pick_target(&records, "r3", None).unwrap().release, "r2");
        assert_eq!(
            pick_target(&records, "r3", Some("r1")).unwrap().release,
            "r1"
        );
        assert!(pick_target(&records, "r3", Some("r3"))
            .unwrap_err()
            .contains("already live"));
        assert!(pick_target(&records, "r3", Some("r9"))
            .unwrap_err()
            .contains("not in this node's history"));
        assert!(pick_target(&records[..1], "r1", None).is_err());
    }

    #[test]
    fn migrate_down_adds_a_snapshot_before_the_start_and_the_down_after_the_drain() {
        assert_eq!(step_names(false), STEPS);
        let names = step_names(true);
        let at = |name: &str| names.iter().position(|n| *n == name).unwrap();
        assert!(at("ensure_infra") < at("snapshot"));
        assert!(at("snapshot") < at("start_color"));
        assert!(at("switch") < at("migrate_down"));
        assert!(at("drain") < at("migrate_down"));
        assert!(at("migrate_down") < at("record"));
        assert_eq!(names.len(), STEPS.len() + 2);
    }

    #[test]
    fn warns_only_when_the_database_is_ahead_of_the_release() {
        assert_eq!(newer_schema(Some(9), Some(8)), Some(9));
        assert_eq!(newer_schema(Some(8), Some(8)), None);
        assert_eq!(newer_schema(Some(7), Some(8)), None);
        assert_eq!(
            newer_schema(Some(3), None),
            Some(3),
            "the release has no migration"
        );
        assert_eq!(newer_schema(None, Some(8)), None, "an empty database");
    }
}
