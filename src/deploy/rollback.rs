//! `slipway rollback`: put a release from the node's history back live. The previous
//! release by default, `--to <release>` for an older one. Its stopped container is started
//! again when it is still there; otherwise it starts from its image, which cleanup keeps.
//! Rollback never runs migrations: when the database is newer than the release expects it
//! says so and asks for confirmation (`--yes` in CI).

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::bail;

use super::rollout::{self, Job, Rollout};
use super::{connect_all, finish, interrupt, lock_all, Shared};
use crate::config::Environment;
use crate::error::Error;
use crate::history::{self, Record};
use crate::image::{self, Release};
use crate::migrate;
use crate::node::{quote, Node};
use crate::playbook::{Params, Playbook, Step};
use crate::render::Renderer;
use crate::report::Reporter;
use crate::{fleet, lock::Lock};

pub struct RollbackOptions {
    pub limit: Vec<String>,
    pub to: Option<String>,
    pub yes: bool,
    pub rollout: Rollout,
}

/// The steps of a rollback: no build, no shipping, no snapshot, no migration.
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

    let nodes = connect_all(&env, &specs).await?;
    let locks = lock_all(&nodes, &deploy_id, &reporter).await?;
    let planned = plan_all(&nodes, opts).await;
    let plans = match planned.and_then(|plans| confirm(&plans, opts.yes).map(|()| plans)) {
        Ok(plans) => plans,
        Err(e) => {
            release_all(locks, &nodes).await;
            return Err(e);
        }
    };

    let mut jobs = Vec::new();
    for ((node, lock), plan) in nodes.into_iter().zip(locks).zip(plans) {
        let shared = Arc::new(shared_for(
            &env,
            &plan.target,
            &deploy_id,
            reporter.clone(),
        )?);
        jobs.push(Job { node, lock, shared });
    }
    interrupt::listen()?;
    let ended = rollout::run(jobs, opts.rollout, &reporter).await?;
    finish(ended, &reporter)
}

async fn release_all(locks: Vec<Lock>, nodes: &[Node]) {
    for (lock, node) in locks.into_iter().zip(nodes) {
        let _ = lock.release(node).await;
    }
}

/// What a rollback will do on one node.
struct Plan {
    node: String,
    live: String,
    target: Record,
    /// Set when the database is newer than the target release expects.
    schema_warning: Option<String>,
}

async fn plan_all(nodes: &[Node], opts: &RollbackOptions) -> anyhow::Result<Vec<Plan>> {
    let mut plans = Vec::new();
    for node in nodes {
        plans.push(plan(node, opts.to.as_deref()).await?);
    }
    Ok(plans)
}

async fn plan(node: &Node, to: Option<&str>) -> anyhow::Result<Plan> {
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

    let target = pick_target(&records, &live, to).map_err(|message| {
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

    Ok(Plan {
        node: node.name.clone(),
        live,
        schema_warning: schema_warning(node, &target, &records).await?,
        target,
    })
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

/// Says which migrations the database has that the target release predates. The release
/// expects the schema its history record names (its highest migration); a record without
/// one falls back to the migrations of its commit, and a release with none expects none.
async fn schema_warning(
    node: &Node,
    target: &Record,
    records: &[Record],
) -> anyhow::Result<Option<String>> {
    let db = migrate::state(node).await.unwrap_or_default();
    let expected = match target.schema_version {
        Some(v) => Some(v),
        None => migrate::load(&node.env.root, &target.commit)
            .await
            .ok()
            .and_then(|files| migrate::expected(&files)),
    };
    let Some(current) = newer_schema(db.version, expected) else {
        return Ok(None);
    };
    let floor = expected.unwrap_or(0);

    let live_commit = records.last().map(|r| r.commit.clone()).unwrap_or_default();
    let files = migrate::load(&node.env.root, &live_commit)
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
    Ok(Some(format!(
        "the database schema is at version {current}, newer than release {} expects ({expects}); \
         newer migrations: {newer}. slipway will not run down migrations by itself: the release will \
         run against the newer schema",
        target.release
    )))
}

/// The database's version when it is newer than the release expects (`None`: the release
/// has no migration).
fn newer_schema(database: Option<u64>, expected: Option<u64>) -> Option<u64> {
    let current = database?;
    (expected.is_none_or(|e| current > e)).then_some(current)
}

/// Prints the plan and, when the schema is newer, asks before going on.
fn confirm(plans: &[Plan], yes: bool) -> anyhow::Result<()> {
    for plan in plans {
        eprintln!(
            "{} | rollback: {} -> {}",
            plan.node, plan.live, plan.target.release
        );
    }
    let warnings: Vec<&Plan> = plans
        .iter()
        .filter(|p| p.schema_warning.is_some())
        .collect();
    if warnings.is_empty() || yes {
        for plan in &warnings {
            eprintln!(
                "{} | warning: {}",
                plan.node,
                plan.schema_warning.as_deref().unwrap_or_default()
            );
        }
        return Ok(());
    }

    for plan in &warnings {
        eprintln!(
            "{} | {}",
            plan.node,
            plan.schema_warning.as_deref().unwrap_or_default()
        );
    }
    if !std::io::stdin().is_terminal() {
        bail!(Error::config(
            "--yes",
            "the rollback needs confirmation because the database is newer than the release",
            "read the warning above, then pass --yes to go on",
        ));
    }
    eprint!("roll back anyway? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!(Error::config(
            "--yes",
            "rollback cancelled, nothing was changed",
            "run it again to confirm"
        ));
    }
    Ok(())
}

fn shared_for(
    env: &Environment,
    target: &Record,
    deploy_id: &str,
    reporter: Arc<Reporter>,
) -> anyhow::Result<Shared> {
    let steps = STEPS
        .iter()
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
        deploy_id: deploy_id.to_string(),
        action: "rollback".into(),
        reporter,
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
