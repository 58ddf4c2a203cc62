//! Which nodes change when: at most `parallel` at a time, canaries first, and no new node
//! once too many have failed. A node that does not start is skipped: its lock is released
//! and the summary says why.

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::Context;

use super::{steps, Outcome, Shared};
use crate::lock::Lock;
use crate::node::Node;
use crate::report::Reporter;

/// How a run spreads over its nodes (`--parallel`, `--serial`, `--canary`, `--max-fail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollout {
    /// Nodes that deploy at the same time (at least 1).
    pub parallel: usize,
    /// Nodes, in inventory order, that deploy before any other starts.
    pub canary: usize,
    /// No node starts once more than this many have failed.
    pub max_fail: Option<usize>,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            parallel: 10,
            canary: 0,
            max_fail: None,
        }
    }
}

/// One node's part of a rollout: its connection, its lock, and what it deploys.
pub(crate) struct Job {
    pub node: Node,
    pub lock: Lock,
    pub shared: Arc<Shared>,
}

/// How one node's part ended.
pub(crate) enum Ended {
    Ran { outcome: Outcome, release: String },
    Skipped,
}

/// Runs the jobs (given in inventory order) as `rollout` says, and returns how each ended.
pub(crate) async fn run(
    jobs: Vec<Job>,
    rollout: Rollout,
    reporter: &Reporter,
) -> anyhow::Result<Vec<Ended>> {
    let mut rest: VecDeque<Job> = jobs.into();
    let canaries = rest.drain(..rollout.canary.min(rest.len())).collect();
    let parallel = rollout.parallel.max(1);
    let mut ended = Vec::new();

    let failed = run_phase(canaries, parallel, 0, &interrupted, reporter, &mut ended).await?;
    if failed > 0 {
        let cause = interrupted(failed).unwrap_or_else(|| "canary failed".into());
        skip_all(rest, &cause, reporter, &mut ended).await;
        return Ok(ended);
    }

    let max_fail = |failed: usize| match rollout.max_fail {
        Some(max) if failed > max => {
            Some(format!("more than {max} node(s) failed (--max-fail {max})"))
        }
        _ => interrupted(failed),
    };
    run_phase(rest, parallel, failed, &max_fail, reporter, &mut ended).await?;
    Ok(ended)
}

/// Starts jobs while fewer than `parallel` run and `stop` gives no reason to stop; a
/// stop skips every job not yet started. Returns the failures counted so far.
async fn run_phase(
    mut queue: VecDeque<Job>,
    parallel: usize,
    mut failed: usize,
    stop: &dyn Fn(usize) -> Option<String>,
    reporter: &Reporter,
    ended: &mut Vec<Ended>,
) -> anyhow::Result<usize> {
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < parallel && !queue.is_empty() {
            if let Some(cause) = stop(failed) {
                skip_all(std::mem::take(&mut queue), &cause, reporter, ended).await;
                break;
            }
            let job = queue.pop_front().expect("checked non-empty");
            running.spawn(start(job));
        }

        let Some(done) = running.join_next().await else {
            return Ok(failed);
        };
        let done = done.context("a node's deploy task panicked")?;
        if let Ended::Ran { outcome, .. } = &done {
            failed += usize::from(outcome.result.is_err());
        }
        ended.push(done);
    }
}

/// A signal stops the rollout: no node starts after it.
fn interrupted(_failed: usize) -> Option<String> {
    super::interrupt::received().map(|signal| format!("interrupted by {}", signal.name))
}

async fn start(job: Job) -> Ended {
    let release = job.shared.release.name.clone();
    let outcome = steps::deploy_node(job.node, job.lock, job.shared).await;
    Ended::Ran { outcome, release }
}

/// Lets go of each job's lock without changing its node, and reports it skipped.
async fn skip_all(
    jobs: impl IntoIterator<Item = Job>,
    cause: &str,
    reporter: &Reporter,
    ended: &mut Vec<Ended>,
) {
    for job in jobs {
        if let Err(e) = job.lock.release(&job.node).await {
            reporter.info(
                &job.node.name,
                &format!("could not release the lock cleanly: {e:#}"),
            );
        }
        reporter.node_skipped(&job.node.name, cause);
        ended.push(Ended::Skipped);
    }
}
