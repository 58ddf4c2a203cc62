//! Commands that must outlive the SSH session that starts them: a migration that a dropped
//! connection must not cut short (FC-12).
//!
//! The command's input goes to a 0600 file in a 0700 directory under the environment's
//! `jobs/` directory, never on a command line. A runner started with `setsid` and `nohup`,
//! its own streams on `/dev/null`, feeds that file to the command and writes its stdout,
//! stderr and exit code to files beside it; the tool waits for the exit code file. When the
//! connection is lost meanwhile the command goes on on the node, and the tool opens a new
//! connection (bounded, see [`crate::host::Host::reconnect`]) and reads the files back, so
//! it reports what really happened there. A runner started twice (a start cut off before
//! its answer came back, then sent again) runs the command once: the second one finds the
//! directory's `started` mark and does nothing.

use std::time::Duration;

use anyhow::{bail, Context};

use crate::host::{Input, Output};
use crate::node::{quote, Node};

/// Where a job's progress is told (the deploy's reporter).
pub type Say<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// A command to run apart from the SSH session, described for messages.
pub struct Job<'a> {
    /// The step it runs in (`migrate`).
    pub step: &'a str,
    /// What it is, in a sentence: "the migration".
    pub what: &'a str,
    /// The command that shows its effect once the node answers again.
    pub check: String,
}

/// The waiter's exit code when the runner ended without writing an exit code.
const RUNNER_GONE: i32 = 45;

/// Runs `command` on the node with `input` on its stdin, apart from the SSH session, and
/// returns its exit code and output once it has ended.
pub async fn run(
    node: &Node,
    job: &Job<'_>,
    command: &str,
    input: Vec<u8>,
    say: Say<'_>,
) -> anyhow::Result<Output> {
    let dir = job_dir(node, job);
    let script = runner(&dir, command).into_bytes();
    for (name, bytes, mode) in [("input", input, 0o600), ("run.sh", script, 0o700)] {
        write(node, job, say, &format!("{dir}/{name}"), bytes, mode)
            .await
            .with_context(|| format!("{}: writing {dir}/{name}", node.name))?;
    }

    let started = resilient(node, job, say, Phase::Starting, &start(&dir)).await?;
    if !started.success() {
        bail!(
            "{}: {} could not be started: {}",
            node.name,
            job.what,
            started.tail(4)
        );
    }

    let waited = resilient(node, job, say, Phase::Running, &wait(&dir)).await?;
    if !waited.success() {
        bail!(
            "{}: {} ended without recording its exit code (its runner was killed, or the node \
             restarted); check what it did with `{}`",
            node.name,
            job.what,
            job.check
        );
    }

    let out = collect(node, job, say, &dir).await?;
    let _ = node
        .run(&format!("rm -rf {}", quote(&dir)), Input::None)
        .await;
    Ok(out)
}

/// `<base>/jobs/<step>-<time>-<pid>`: one directory per run.
fn job_dir(node: &Node, job: &Job<'_>) -> String {
    let time = chrono::Utc::now().format("%Y%m%dT%H%M%S%3f");
    format!(
        "{}/{}-{time}-{}",
        node.paths.jobs_dir(),
        job.step,
        std::process::id()
    )
}

/// The runner: marks the start (once), runs the command on the input file, then writes the
/// exit code under a temporary name and renames it, so a reader never sees half of it.
fn runner(dir: &str, command: &str) -> String {
    format!(
        "cd {dir} || exit 1\n\
         mkdir started 2>/dev/null || exit 0\n\
         echo $$ > pid.tmp && mv pid.tmp pid\n\
         {command} < input > stdout 2> stderr\n\
         echo $? > code.tmp && mv code.tmp code\n",
        dir = quote(dir)
    )
}

/// Starts the runner in a session of its own, immune to hangups, with no stream tied to
/// the SSH channel, and returns at once.
fn start(dir: &str) -> String {
    format!(
        "cd {dir} && if command -v setsid >/dev/null 2>&1; then s=setsid; else s=; fi && \
         nohup $s sh run.sh </dev/null >/dev/null 2>&1 &",
        dir = quote(dir)
    )
}

/// Waits for the exit code file; exits with [`RUNNER_GONE`] when the runner is no longer
/// there and left none.
fn wait(dir: &str) -> String {
    format!(
        "cd {dir} || exit {RUNNER_GONE}; i=0; \
         while [ ! -f pid ] && [ ! -f code ]; do \
           i=$((i+1)); [ $i -gt 30 ] && exit {RUNNER_GONE}; sleep 1; done; \
         while [ ! -f code ]; do \
           if ! kill -0 \"$(cat pid)\" 2>/dev/null; then sleep 1; [ -f code ] || exit {RUNNER_GONE}; fi; \
           sleep 1; done",
        dir = quote(dir)
    )
}

/// Reads the exit code and the output the command left behind.
async fn collect(node: &Node, job: &Job<'_>, say: Say<'_>, dir: &str) -> anyhow::Result<Output> {
    let read = |name: &str| format!("cat {}", quote(&format!("{dir}/{name}")));
    let code = resilient(node, job, say, Phase::Ended, &read("code")).await?;
    let stdout = resilient(node, job, say, Phase::Ended, &read("stdout")).await?;
    let stderr = resilient(node, job, say, Phase::Ended, &read("stderr")).await?;
    let code = code.stdout().trim().parse::<i32>().ok();
    Ok(Output {
        code,
        stdout: stdout.stdout,
        stderr: stderr.stdout,
    })
}

/// Writes a file on the node, again on a new connection when the first one is lost
/// meanwhile (the write goes to a temporary name first, so a cut write leaves no half file).
async fn write(
    node: &Node,
    job: &Job<'_>,
    say: Say<'_>,
    path: &str,
    bytes: Vec<u8>,
    mode: u32,
) -> anyhow::Result<()> {
    loop {
        let result = node.write_file(path, bytes.clone(), mode).await;
        if result.is_ok() {
            return result;
        }
        tokio::time::sleep(LAG).await;
        if node.host.connected() {
            return result;
        }
        reconnect(node, job, say, Phase::Before).await?;
    }
}

/// Runs a command that may run again without harm. When the connection is lost meanwhile,
/// opens a new one and runs the command again on it.
async fn resilient(
    node: &Node,
    job: &Job<'_>,
    say: Say<'_>,
    phase: Phase,
    command: &str,
) -> anyhow::Result<Output> {
    let mut unexplained = 0;
    loop {
        let result = node.run(command, Input::None).await;
        if matches!(&result, Ok(out) if out.code.is_some()) {
            return result;
        }

        // The channel ended without an exit status: the connection may be gone, which the
        // SSH library can tell a moment after the channel ends.
        tokio::time::sleep(LAG).await;
        if node.host.connected() {
            if result.is_err() || unexplained == 3 {
                return result;
            }
            unexplained += 1;
            continue;
        }
        reconnect(node, job, say, phase).await?;
    }
}

/// How long the SSH library may take to tell that a connection whose channel just ended
/// is gone.
const LAG: Duration = Duration::from_millis(500);

/// Where the job was when the connection went, for what the messages may claim.
#[derive(Clone, Copy)]
enum Phase {
    /// Its files were being written: it has not started.
    Before,
    /// Its start was sent: it may have started.
    Starting,
    /// It was started.
    Running,
    /// It has ended; its result was being read.
    Ended,
}

impl Phase {
    /// What became of the job, while the connection is down.
    fn meanwhile(self, what: &str) -> String {
        match self {
            Phase::Before => format!("{what} has not started"),
            Phase::Starting => format!("{what}, if it started, runs on apart from the SSH session"),
            Phase::Running => format!("{what} runs on apart from the SSH session"),
            Phase::Ended => format!("{what} has ended"),
        }
    }

    /// What may be true on the node when the connection did not come back.
    fn unknown(self, what: &str) -> String {
        match self {
            Phase::Before => format!("{what} did not start"),
            Phase::Starting => {
                format!("{what} may have started and may still be running on the node")
            }
            Phase::Running => {
                format!("{what} may still be running on the node, apart from the SSH session")
            }
            Phase::Ended => {
                format!("{what} has ended on the node, and its result could not be read")
            }
        }
    }
}

async fn reconnect(node: &Node, job: &Job<'_>, say: Say<'_>, phase: Phase) -> anyhow::Result<()> {
    let window = node.host.reconnect_window().as_secs();
    say(&format!(
        "connection to {} lost during {}; reconnecting (for up to {window}s); {}",
        node.name,
        job.step,
        phase.meanwhile(job.what)
    ));
    if let Err(e) = node.host.reconnect().await {
        bail!(
            "connection to {} lost during {} and not back within {window}s ({e:#}); {}: once \
             the node answers, check with `{}`",
            node.name,
            job.step,
            phase.unknown(job.what),
            job.check
        );
    }
    say(&format!(
        "reconnected to {}; reading back what {} did there",
        node.name, job.what
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_runs_once_and_writes_the_exit_code_last() {
        let script = runner("/var/lib/slipway/a b/jobs/migrate-1", "psql -X");
        let at = |text: &str| {
            script
                .find(text)
                .unwrap_or_else(|| panic!("`{text}` missing:\n{script}"))
        };
        assert!(script.starts_with("cd '/var/lib/slipway/a b/jobs/migrate-1' || exit 1\n"));
        assert!(at("mkdir started 2>/dev/null || exit 0") < at("psql -X < input"));
        assert!(at("psql -X < input > stdout 2> stderr") < at("echo $? > code.tmp"));
        assert!(at("echo $? > code.tmp") < at("mv code.tmp code"));
    }

    #[test]
    fn the_start_leaves_no_stream_tied_to_the_session() {
        let command = start("/srv/jobs/migrate-1");
        assert!(command.contains("nohup $s sh run.sh </dev/null >/dev/null 2>&1 &"));
        assert!(command.contains("s=setsid"));
    }
}
