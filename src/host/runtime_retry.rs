//! A `docker exec` that the container runtime could not start.
//!
//! On a busy host runc sometimes fails to set up an exec'd process ("OCI runtime exec
//! failed: exec failed: unable to start container process: ... read init-p: connection
//! reset by peer"). The process never ran, so nothing happened in the container, and the
//! same command run again a moment later normally succeeds. A deploy should not fail its
//! snapshot or its health gate on that.

use std::time::Duration;

use super::{Host, Input, Output};

/// The pauses before each further attempt: at most three runs in all.
const PAUSES: [Duration; 2] = [Duration::from_millis(500), Duration::from_millis(1500)];

/// What Docker prints when the runtime could not start the exec'd process.
const NEVER_STARTED: &str =
    "OCI runtime exec failed: exec failed: unable to start container process";

/// Runs `command` on `host`, and runs it again when its only failure was a `docker exec`
/// the runtime never started. Input streamed from elsewhere cannot be sent twice, so such
/// a command runs once.
pub async fn run(host: &dyn Host, command: &str, input: Input) -> anyhow::Result<Output> {
    let bytes = match input {
        Input::Stream(_) => return host.run(command, input).await,
        Input::Bytes(bytes) => Some(bytes),
        Input::None => None,
    };
    let input = || bytes.clone().map_or(Input::None, Input::Bytes);
    let mut out = host.run(command, input()).await?;

    for pause in PAUSES {
        if !never_started(&out) {
            break;
        }
        tracing::warn!(%command, "the container runtime did not start `docker exec`; running it again");
        tokio::time::sleep(pause).await;
        out = host.run(command, input()).await?;
    }
    Ok(out)
}

/// Whether the command failed because a `docker exec` in it never started.
fn never_started(out: &Output) -> bool {
    !out.success() && String::from_utf8_lossy(&out.stderr).contains(NEVER_STARTED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::LocalHost;

    /// A command that fails as runc does the first `failures` times it runs, then
    /// prints what it read on stdin.
    fn flaky(dir: &std::path::Path, failures: usize) -> String {
        let count = dir.join("count");
        format!(
            "n=$(cat {c} 2>/dev/null || echo 0); echo $((n + 1)) > {c}; \
             if [ \"$n\" -lt {failures} ]; then \
               echo '{NEVER_STARTED}: waiting for init preliminary setup: read init-p: connection reset by peer: unknown' >&2; \
               exit 126; \
             fi; cat",
            c = count.display()
        )
    }

    fn runs(dir: &std::path::Path) -> String {
        std::fs::read_to_string(dir.join("count"))
            .unwrap()
            .trim()
            .to_string()
    }

    #[tokio::test]
    async fn an_exec_the_runtime_never_started_is_run_again_with_the_same_input() {
        let dir = tempfile::tempdir().unwrap();
        let input = Input::Bytes(b"the same bytes".to_vec());

        let out = run(&LocalHost, &flaky(dir.path(), 2), input).await.unwrap();

        assert!(out.success(), "{}", out.stderr());
        assert_eq!(out.stdout(), "the same bytes");
        assert_eq!(runs(dir.path()), "3");
    }

    #[tokio::test]
    async fn a_runtime_that_keeps_failing_is_tried_three_times_and_reported() {
        let dir = tempfile::tempdir().unwrap();

        let out = run(&LocalHost, &flaky(dir.path(), 5), Input::None)
            .await
            .unwrap();

        assert_eq!(out.code, Some(126));
        assert!(out.stderr().contains(NEVER_STARTED), "{}", out.stderr());
        assert_eq!(runs(dir.path()), "3");
    }

    #[tokio::test]
    async fn any_other_failure_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let command = format!(
            "echo 1 > {}; echo 'no such container' >&2; exit 1",
            count.display()
        );

        let out = run(&LocalHost, &command, Input::None).await.unwrap();

        assert_eq!(out.code, Some(1));
        assert_eq!(runs(dir.path()), "1");
    }
}
