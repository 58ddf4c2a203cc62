//! `slipway deploy`: validate everything, take every node's lock, build, then run the
//! playbook on each node. A node that fails undoes its own change and says what it did.

mod cleanup;
mod database;
mod down;
mod interrupt;
mod recover;
mod rollback;
mod rollout;
mod steps;
mod undo;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Environment, NodeSpec};
use crate::error::Error;
use crate::fleet;
use crate::image::{self, Release};
use crate::lock::{self, Holder, Lock};
use crate::migrate::{self, Migration};
use crate::node::Node;
use crate::playbook::Playbook;
use crate::render::{self, Images, Renderer};
use crate::report::Reporter;

pub use database::SharedDatabase;
pub use down::{run as migrate_down, DownOptions};
pub use interrupt::Interrupted;
pub use recover::{run as recover, RecoverOptions};
pub use rollback::{run as rollback, RollbackOptions};
pub use rollout::Rollout;
use rollout::{Ended, Job};

pub struct Options {
    pub git_ref: String,
    pub limit: Vec<String>,
    /// Deploy even though the working tree has uncommitted changes.
    pub allow_dirty: bool,
    /// The commit `git_ref` must resolve to (the one CI tested).
    pub expect_commit: Option<String>,
    pub rollout: Rollout,
}

/// What every node's deploy shares.
pub struct Shared {
    pub renderer: Renderer,
    pub images: Images,
    pub release: Release,
    /// The images saved on this machine for shipping, once for all nodes.
    pub saved: image::Saved,
    pub playbook: Playbook,
    pub migrations: Vec<Migration>,
    /// The down files a rollback runs after the switch (`--migrate-down`), newest first.
    pub revert: Vec<migrate::Revert>,
    pub deploy_id: String,
    /// What the history calls this operation: `deploy` or `rollback`.
    pub action: String,
    pub reporter: Arc<Reporter>,
    /// The database the run's nodes share (`database.node`), if they share one.
    pub database: Option<SharedDatabase>,
}

/// How one node's deploy ended.
pub struct Outcome {
    pub node: String,
    pub result: Result<(), anyhow::Error>,
    pub timings: Vec<(String, Duration)>,
    pub bytes: u64,
}

pub async fn run(
    root: &Path,
    env_name: &str,
    opts: &Options,
    reporter: Arc<Reporter>,
) -> anyhow::Result<()> {
    let env = Arc::new(Environment::load(root, env_name)?);
    let playbook = Playbook::load(root, &env.settings.playbook)?;
    fleet::require_limit(&env, &opts.limit, "deploy")?;
    let specs = fleet::select(&env, &opts.limit)?;
    let renderer = Renderer::new(root);
    let tags = image::infra_tags(root)?;
    for spec in &specs {
        render::check_all(&env, &spec.name, &renderer, &tags)?;
    }

    let (name, commit, migrations) = resolve_ref(root, &env, &opts.git_ref).await?;
    check_source(root, opts, &commit).await?;
    let deploy_id = format!(
        "d-{}-{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        std::process::id()
    );
    let selected: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    reporter.start_run(&env, &deploy_id, "deploy", Some(&name), &selected)?;

    let database::Locked {
        nodes,
        mut locks,
        database,
        mut db_only,
    } = database::connect_and_lock(&env, specs, &deploy_id, &reporter).await?;
    for (lock, node) in locks.iter_mut().zip(&nodes) {
        lock.step(node, "build").await;
    }
    if let Some((node, lock)) = db_only.as_mut() {
        lock.step(node, "build").await;
    }
    let database = database.map(SharedDatabase::of);

    reporter.info(
        "local",
        &format!("building release {name} ({})", &commit[..7]),
    );
    reporter.run_step_started("build");
    let timer = Timer::start();
    let (images, release) = match build(&env, &name, &commit).await {
        Ok(built) => built,
        Err(e) => {
            release_locks(locks, &nodes, db_only).await;
            return Err(e);
        }
    };
    reporter.run_step_finished();
    reporter.info(
        "local",
        &format!("built in {:.1}s", timer.elapsed().as_secs_f64()),
    );

    let mut shared = Shared {
        renderer,
        images,
        release,
        saved: image::Saved::default(),
        playbook,
        migrations,
        revert: Vec::new(),
        deploy_id,
        action: "deploy".into(),
        reporter: reporter.clone(),
        database,
    };
    let prepared = match database::prepare(&mut shared).await {
        Ok(()) => hold_database_lock(&mut locks, &nodes, db_only.as_mut(), &shared).await,
        Err(e) => Err(e),
    };
    if let Err(e) = prepared {
        release_locks(locks, &nodes, db_only).await;
        return Err(e);
    }
    let shared = Arc::new(shared);

    let jobs = nodes
        .into_iter()
        .zip(locks)
        .map(|(node, lock)| Job {
            node,
            lock,
            shared: shared.clone(),
        })
        .collect();
    interrupt::listen()?;
    let ended = rollout::run(jobs, opts.rollout, &reporter).await;
    release_locks(Vec::new(), &[], db_only).await;
    finish(ended?, &reporter)
}

/// Takes the shared database node's lock again if its connection was reopened while the
/// database was prepared (the lock went with the old connection); fails if another
/// operation took it meanwhile.
async fn hold_database_lock(
    locks: &mut [Lock],
    nodes: &[Node],
    db_only: Option<&mut (Node, Lock)>,
    shared: &Shared,
) -> anyhow::Result<()> {
    let Some(db) = &shared.database else {
        return Ok(());
    };
    let held = match db_only {
        Some((node, lock)) => lock.hold_again(node).await?,
        None => match nodes.iter().position(|n| n.name == db.node.name) {
            Some(i) => locks[i].hold_again(&nodes[i]).await?,
            None => false,
        },
    };
    if held {
        shared.reporter.info(
            &db.node.name,
            "the lock, dropped with the lost connection, is held again by this deploy",
        );
    }
    Ok(())
}

/// Releases the locks of `nodes`, and that of the node taking part for its database only.
async fn release_locks(locks: Vec<Lock>, nodes: &[Node], db_only: Option<(Node, Lock)>) {
    for (lock, node) in locks.into_iter().zip(nodes) {
        let _ = lock.release(node).await;
    }
    if let Some((node, lock)) = db_only {
        let _ = lock.release(&node).await;
    }
}

/// [`conclude`], unless a signal stopped the rollout: then that is the run's error.
pub(crate) fn finish(ended: Vec<Ended>, reporter: &Reporter) -> anyhow::Result<()> {
    let result = conclude(ended, reporter);
    let Some(signal) = interrupt::received() else {
        return result;
    };
    if let Err(e) = &result {
        let ours = e.chain().find_map(|c| c.downcast_ref::<Error>());
        let hints = ours.map(Error::hints).unwrap_or_default();
        for line in std::iter::once(format!("error: {e:#}")).chain(hints) {
            eprintln!("{}", crate::redact::redact(&line));
        }
    }
    Err(signal.into())
}

/// Resolves `git_ref` to the release it names and its commit, with the migration files of
/// that commit; a ref that does not exist or broken migration files are exit 2.
pub(super) async fn resolve_ref(
    root: &Path,
    env: &Environment,
    git_ref: &str,
) -> anyhow::Result<(String, String, Vec<Migration>)> {
    let (name, commit) = image::resolve(root, &env.settings.app, git_ref)
        .await
        .map_err(|e| {
            Error::config(
                "--ref",
                e.to_string(),
                "pass a commit, branch or tag that exists",
            )
        })?;

    let migrations = migrate::load(root, &commit)
        .await
        .map_err(|e| Error::config("migrations/", format!("{e:#}"), "fix the migration files"))?;
    Ok((name, commit, migrations))
}

/// Refuses, before any node is touched, a deploy whose source is not what the operator
/// or CI meant: a commit other than the tested one, or a working tree with uncommitted
/// changes (a build uses the commit alone, so they would silently be left out).
async fn check_source(root: &Path, opts: &Options, commit: &str) -> Result<(), Error> {
    if let Some(expected) = &opts.expect_commit {
        let matches = expected.len() >= 7 && commit.starts_with(expected.as_str());
        if !matches {
            return Err(Error::config(
                "--expect-commit",
                format!(
                    "`{}` is commit {commit}, not {expected}, the commit that was tested",
                    opts.git_ref
                ),
                "deploy the tested commit (`--ref <sha>`), or test this one first",
            ));
        }
    }
    if !opts.allow_dirty && image::dirty(root).await {
        return Err(Error::config(
            "the working tree",
            format!(
                "it has uncommitted changes, and a release is built from commit {} alone",
                &commit[..7]
            ),
            "commit or stash them, or pass --allow-dirty to deploy the commit without them",
        ));
    }
    Ok(())
}

async fn build(env: &Environment, name: &str, commit: &str) -> anyhow::Result<(Images, Release)> {
    let images = image::build_infra(&env.root).await?;
    let release = image::build_app(env, name, commit).await?;
    Ok((images, release))
}

pub(crate) async fn connect_all(
    env: &Arc<Environment>,
    specs: &[NodeSpec],
) -> anyhow::Result<Vec<Node>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, spec) in specs.iter().enumerate() {
        let (env, spec) = (env.clone(), spec.clone());
        tasks.spawn(async move { (i, connect_usable(&env, &spec).await) });
    }

    let (nodes, errors) = in_order(tasks).await?;
    if let Some((i, cause)) = errors.into_iter().next() {
        return Err(Error::Step {
            node: specs[i].name.clone(),
            step: "connect".into(),
            cause: format!("{:#}", cause.root_cause()),
            outcome: "nothing was changed on any node".into(),
            hint: "fix the connection, or leave the node out with --limit".into(),
        }
        .into());
    }
    Ok(nodes.into_iter().map(|(_, n)| n).collect())
}

/// Waits for every task and splits what they returned into successes and failures, each
/// in inventory order (the index a task was spawned with).
async fn in_order<T: 'static, E: 'static>(
    mut tasks: tokio::task::JoinSet<(usize, Result<T, E>)>,
) -> anyhow::Result<(Vec<(usize, T)>, Vec<(usize, E)>)> {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            (i, Ok(value)) => done.push((i, value)),
            (i, Err(e)) => failed.push((i, e)),
        }
    }

    done.sort_by_key(|(i, _)| *i);
    failed.sort_by_key(|(i, _)| *i);
    Ok((done, failed))
}

/// Connects and checks that Docker answers for this user, before any lock or build.
async fn connect_usable(env: &Arc<Environment>, spec: &NodeSpec) -> anyhow::Result<Node> {
    let node = fleet::connect(env, spec).await?;
    node.docker_version().await?;
    Ok(node)
}

/// Takes the lock on every node, or on none: a refusal releases those already taken. The
/// nodes are asked at once, so a fleet locks in about one round trip.
pub(crate) async fn lock_all(
    nodes: &[Node],
    deploy_id: &str,
    reporter: &Reporter,
) -> anyhow::Result<Vec<Lock>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        reporter.step(&node.name, "lock");
        let (node, holder) = (node.clone(), Holder::new(deploy_id, "deploy"));
        tasks.spawn(async move { (i, lock::acquire(&node, holder).await) });
    }

    let (taken, refused) = in_order(tasks).await?;

    if let Some((_, e)) = refused.into_iter().next() {
        for (i, lock) in taken {
            let _ = lock.release(&nodes[i]).await;
        }
        return Err(e);
    }
    Ok(taken.into_iter().map(|(_, lock)| lock).collect())
}

/// Prints each node's last line and turns the results into the run's: the one failure
/// itself when a single node failed, a count when several did. Skipped nodes were
/// reported as they were skipped; the summary table lists them.
pub(crate) fn conclude(ended: Vec<Ended>, reporter: &Reporter) -> anyhow::Result<()> {
    let total = ended.len();
    let mut failures = Vec::new();
    for end in ended {
        let Ended::Ran { outcome, release } = end else {
            continue;
        };
        match outcome.result {
            Ok(()) => reporter.finish(
                &outcome.node,
                &format!(
                    "live: {release} ({})",
                    summary(&outcome.timings, outcome.bytes)
                ),
            ),
            Err(e) => {
                reporter.finish(&outcome.node, "FAILED");
                failures.push(e);
            }
        }
    }

    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        n => {
            for e in &failures {
                eprintln!("{}", crate::redact::redact(&format!("error: {e:#}")));
            }
            Err(Error::Nodes { failed: n, total }.into())
        }
    }
}

fn summary(timings: &[(String, Duration)], bytes: u64) -> String {
    let total: Duration = timings.iter().map(|(_, d)| *d).sum();
    let steps: Vec<String> = timings
        .iter()
        .map(|(s, d)| format!("{s} {:.1}s", d.as_secs_f64()))
        .collect();
    format!(
        "{:.1}s: {}; shipped {:.1} MB",
        total.as_secs_f64(),
        steps.join(", "),
        bytes as f64 / 1e6
    )
}

/// Asks `question` on the terminal and goes on only on `y`. Without a terminal it refuses
/// (exit 2), saying that `--yes` confirms; either refusal changed nothing.
pub(crate) fn ask(question: &str, why: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};

    if !std::io::stdin().is_terminal() {
        anyhow::bail!(Error::config(
            "--yes",
            format!("{why}; no terminal to ask on, so nothing was changed"),
            "read the plan above, then pass --yes to go on",
        ));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        anyhow::bail!(Error::config(
            "confirmation",
            "cancelled, nothing was changed",
            "run it again to confirm"
        ));
    }
    Ok(())
}

/// Measures a step.
pub(crate) struct Timer(Instant);

impl Timer {
    pub fn start() -> Self {
        Timer(Instant::now())
    }

    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}
