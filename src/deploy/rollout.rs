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

/// What the scheduler needs of a node's part: start it, or leave its node alone.
#[async_trait::async_trait]
pub(crate) trait Unit: Send + 'static {
    async fn start(self) -> Ended;
    /// Lets go of the node without changing it, and reports it skipped for `cause`.
    async fn skip(self, cause: &str, reporter: &Reporter);
}

#[async_trait::async_trait]
impl Unit for Job {
    async fn start(self) -> Ended {
        let release = self.shared.release.name.clone();
        let outcome = steps::deploy_node(self.node, self.lock, self.shared).await;
        Ended::Ran { outcome, release }
    }

    async fn skip(self, cause: &str, reporter: &Reporter) {
        if let Err(e) = self.lock.release(&self.node).await {
            reporter.info(
                &self.node.name,
                &format!("could not release the lock cleanly: {e:#}"),
            );
        }
        reporter.node_skipped(&self.node.name, cause);
    }
}

/// How one node's part ended.
pub(crate) enum Ended {
    Ran { outcome: Outcome, release: String },
    Skipped,
}

/// Runs the jobs (given in inventory order) as `rollout` says, and returns how each ended.
pub(crate) async fn run<U: Unit>(
    jobs: Vec<U>,
    rollout: Rollout,
    reporter: &Reporter,
) -> anyhow::Result<Vec<Ended>> {
    let mut rest: VecDeque<U> = jobs.into();
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
async fn run_phase<U: Unit>(
    mut queue: VecDeque<U>,
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
            running.spawn(job.start());
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

/// Skips every job given, in order.
async fn skip_all<U: Unit>(
    jobs: impl IntoIterator<Item = U>,
    cause: &str,
    reporter: &Reporter,
    ended: &mut Vec<Ended>,
) {
    for job in jobs {
        job.skip(cause, reporter).await;
        ended.push(Ended::Skipped);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// What the fake nodes saw: how many ran at once at most, and which started.
    #[derive(Default)]
    struct Seen {
        running: AtomicUsize,
        peak: AtomicUsize,
        started: Mutex<Vec<usize>>,
        skipped: Mutex<Vec<(usize, String)>>,
    }

    struct Fake {
        index: usize,
        fails: bool,
        seen: Arc<Seen>,
    }

    #[async_trait::async_trait]
    impl Unit for Fake {
        async fn start(self) -> Ended {
            self.seen.started.lock().unwrap().push(self.index);
            let now = self.seen.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.seen.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.seen.running.fetch_sub(1, Ordering::SeqCst);

            let result = match self.fails {
                true => Err(anyhow::anyhow!("node {} failed", self.index)),
                false => Ok(()),
            };
            let node = self.index.to_string();
            let outcome = Outcome {
                node,
                result,
                timings: Vec::new(),
                bytes: 0,
            };
            Ended::Ran {
                outcome,
                release: "r1".into(),
            }
        }

        async fn skip(self, cause: &str, _: &Reporter) {
            let mut skipped = self.seen.skipped.lock().unwrap();
            skipped.push((self.index, cause.to_string()));
        }
    }

    /// Runs `count` fake nodes, those in `failing` failing, and returns what was seen.
    async fn roll(count: usize, failing: &[usize], rollout: Rollout) -> Arc<Seen> {
        let seen = Arc::new(Seen::default());
        let jobs: Vec<Fake> = (0..count)
            .map(|index| Fake {
                index,
                fails: failing.contains(&index),
                seen: seen.clone(),
            })
            .collect();
        let ended = run(jobs, rollout, &Reporter::new()).await.unwrap();
        assert_eq!(ended.len(), count);
        seen
    }

    fn rollout(parallel: usize, canary: usize, max_fail: Option<usize>) -> Rollout {
        Rollout {
            parallel,
            canary,
            max_fail,
        }
    }

    #[tokio::test]
    async fn at_most_parallel_nodes_run_at_once_and_every_node_runs() {
        let seen = roll(7, &[], rollout(3, 0, None)).await;
        assert_eq!(seen.peak.load(Ordering::SeqCst), 3);
        assert_eq!(seen.started.lock().unwrap().len(), 7);

        let serial = roll(4, &[1], rollout(1, 0, None)).await;
        assert_eq!(serial.peak.load(Ordering::SeqCst), 1);
        assert_eq!(*serial.started.lock().unwrap(), [0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_failing_canary_skips_the_rest_and_a_good_one_lets_them_run() {
        let seen = roll(4, &[0], rollout(10, 1, None)).await;
        assert_eq!(*seen.started.lock().unwrap(), [0]);
        let skipped = seen.skipped.lock().unwrap().clone();
        assert_eq!(skipped.len(), 3);
        assert!(skipped.iter().all(|(_, cause)| cause == "canary failed"));

        let seen = roll(4, &[3], rollout(10, 2, None)).await;
        assert_eq!(seen.started.lock().unwrap().len(), 4);
        assert!(seen.skipped.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn no_node_starts_once_more_than_max_fail_have_failed() {
        let seen = roll(5, &[0, 1], rollout(1, 0, Some(1))).await;
        assert_eq!(*seen.started.lock().unwrap(), [0, 1]);
        let skipped = seen.skipped.lock().unwrap().clone();
        let indexes: Vec<usize> = skipped.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, [2, 3, 4]);
        assert!(skipped[0].1.contains("--max-fail 1"), "{}", skipped[0].1);

        let within = roll(5, &[0], rollout(1, 0, Some(1))).await;
        assert_eq!(within.started.lock().unwrap().len(), 5);
    }
}
