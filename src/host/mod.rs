//! How slipway reaches a node: over SSH, or the workstation's own Docker (`local`).
//!
//! Every step talks to a node through [`Host`]: run a shell command (with optional input on
//! stdin, so secrets and images never touch a command line), or hold a command open for
//! as long as the deploy runs (the lock).

pub mod credentials;
pub mod known_hosts;
mod local;
pub mod runtime_retry;
mod ssh;
pub mod ssh_config;

use std::pin::Pin;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub use local::LocalHost;
pub use ssh::{offered_key, SshHost, SshTarget};

/// What a finished command left behind.
#[derive(Debug, Default, Clone)]
pub struct Output {
    /// Exit status; `None` when the command died from a signal or the channel closed early.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The last lines of stderr (or stdout when stderr is empty), for error messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = if self.stderr.is_empty() {
            self.stdout()
        } else {
            self.stderr()
        };
        let all: Vec<&str> = text.trim_end().lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Bytes fed to a command's stdin.
pub enum Input {
    None,
    Bytes(Vec<u8>),
    Stream(Pin<Box<dyn AsyncRead + Send>>),
}

/// A command kept running on the node until released.
#[async_trait]
pub trait Held: Send + Sync {
    /// The next line the command printed, or `None` once it has exited.
    async fn read_line(&mut self) -> anyhow::Result<Option<String>>;

    /// Closes the command's stdin and waits for it to exit; returns its exit code.
    async fn release(self: Box<Self>) -> anyhow::Result<Option<i32>>;
}

#[async_trait]
pub trait Host: Send + Sync {
    /// `user@address:port` or `local`, for messages.
    fn describe(&self) -> String;

    /// Runs `command` with `sh` semantics and collects its output.
    async fn run(&self, command: &str, input: Input) -> anyhow::Result<Output>;

    /// Starts `command` and keeps it running until the returned handle is released or
    /// dropped, or this process dies.
    async fn hold(&self, command: &str) -> anyhow::Result<Box<dyn Held>>;

    /// Runs `command` and writes its stdout into `sink` as it arrives, for output too large
    /// to hold in memory (a snapshot being downloaded). The returned output holds the exit
    /// code and stderr; its stdout is empty.
    async fn run_to(
        &self,
        command: &str,
        sink: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> anyhow::Result<Output> {
        let mut out = self.run(command, Input::None).await?;
        sink.write_all(&out.stdout).await?;
        out.stdout.clear();
        Ok(out)
    }

    /// Whether the node's Docker engine is the workstation's own (nothing to ship).
    fn is_local(&self) -> bool {
        false
    }

    /// Whether the connection to the node is still up (an SSH connection whose keepalives
    /// went unanswered is closed for good).
    fn connected(&self) -> bool {
        true
    }

    /// Opens a new connection after this one was lost, trying for a bounded time
    /// ([`Host::reconnect_window`]); every command run afterwards uses it. Whatever ran in
    /// the old connection's channels ended with it, held commands (the lock) included.
    async fn reconnect(&self) -> anyhow::Result<()> {
        anyhow::bail!(
            "{}: this connection cannot be opened again",
            self.describe()
        )
    }

    /// How many times [`Host::reconnect`] opened a new connection.
    fn generation(&self) -> u64 {
        0
    }

    /// How long [`Host::reconnect`] keeps trying.
    fn reconnect_window(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Bytes sent to the node so far.
    fn bytes_sent(&self) -> u64 {
        0
    }
}
