//! The `local` connection: the workstation's own shell and Docker engine.

use std::process::Stdio;

use anyhow::Context;
use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use super::{Held, Host, Input, Output};

#[derive(Debug, Default)]
pub struct LocalHost;

#[async_trait]
impl Host for LocalHost {
    fn describe(&self) -> String {
        "local".into()
    }

    async fn run(&self, command: &str, input: Input) -> anyhow::Result<Output> {
        let mut child = shell(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start sh on this machine")?;

        let mut stdin = child.stdin.take().expect("stdin is piped");
        let feed = async move {
            match input {
                Input::None => {}
                Input::Bytes(bytes) => stdin.write_all(&bytes).await?,
                Input::Stream(mut reader) => {
                    tokio::io::copy(&mut reader, &mut stdin).await?;
                }
            }
            stdin.shutdown().await
        };

        let (fed, out) = tokio::join!(feed, child.wait_with_output());
        let out = out.context("waiting for a local command")?;
        if let Err(e) = fed {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(e).context("feeding a local command");
            }
        }
        Ok(Output {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn hold(&self, command: &str) -> anyhow::Result<Box<dyn Held>> {
        let mut child = shell(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start sh on this machine")?;
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        Ok(Box::new(LocalHeld { child, stdout }))
    }

    fn is_local(&self) -> bool {
        true
    }
}

fn shell(command: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command);
    cmd
}

struct LocalHeld {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

#[async_trait]
impl Held for LocalHeld {
    async fn read_line(&mut self) -> anyhow::Result<Option<String>> {
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line).await?;
        Ok((read > 0).then(|| line.trim_end().to_string()))
    }

    async fn release(mut self: Box<Self>) -> anyhow::Result<Option<i32>> {
        drop(self.child.stdin.take());
        let status = self.child.wait().await?;
        Ok(status.code())
    }
}
