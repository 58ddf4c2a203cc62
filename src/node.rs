//! One node of an environment as the deploy steps see it: its connection plus the names and
//! paths of the environment on it, with the few remote operations every step builds on.

use std::sync::Arc;

use anyhow::{bail, Context};

use crate::config::{Environment, NodeSpec};
use crate::host::{runtime_retry, Host, Input, Output};
use crate::paths::Paths;

const DOCKER_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct Node {
    pub name: String,
    pub spec: NodeSpec,
    pub env: Arc<Environment>,
    pub paths: Paths,
    pub host: Arc<dyn Host>,
}

/// Quotes one word for `sh`.
pub fn quote(word: &str) -> String {
    shlex::try_quote(word)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| "''".into())
}

impl Node {
    /// Runs a command and returns its output whatever the exit code. A `docker exec` the
    /// container runtime never started is run again (see [`runtime_retry`]).
    pub async fn run(&self, command: &str, input: Input) -> anyhow::Result<Output> {
        tracing::debug!(node = %self.name, %command, "run");
        runtime_retry::run(self.host.as_ref(), command, input).await
    }

    /// Runs a command that must succeed; the error quotes the end of its output.
    pub async fn sh(&self, command: &str) -> anyhow::Result<String> {
        self.sh_with(command, Input::None).await
    }

    pub async fn sh_with(&self, command: &str, input: Input) -> anyhow::Result<String> {
        let out = self.run(command, input).await?;
        if !out.success() {
            bail!(
                "`{}` exited with {}: {}",
                short(command),
                out.code.map_or("no status".into(), |c| c.to_string()),
                out.tail(8)
            );
        }
        Ok(out.stdout())
    }

    /// The engine's version and API version, checking that this user may use Docker.
    /// Nothing here can wait on a prompt: commands get no terminal, slipway never runs
    /// sudo, and the check gives up after 10 seconds.
    pub async fn docker_version(&self) -> anyhow::Result<String> {
        let command = "docker version --format '{{.Server.Version}} {{.Server.APIVersion}}'";
        let out = tokio::time::timeout(DOCKER_CHECK, self.run(command, Input::None))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "`docker version` gave no answer on {} within {}s; check the engine there",
                    self.host.describe(),
                    DOCKER_CHECK.as_secs()
                )
            })??;
        if out.success() {
            return Ok(out.stdout().trim().to_string());
        }

        let said = out.tail(2);
        let user = self.spec.user.as_deref().unwrap_or("this user");
        if said.to_lowercase().contains("permission denied") {
            bail!(
                "{user} may not use Docker on {}: `docker version` said: {said}. Add the user to \
                 the docker group on the node (`usermod -aG docker {user}`) or deploy as a user \
                 who may use Docker; slipway never uses sudo",
                self.host.describe()
            );
        }
        bail!(
            "`docker version` failed on {}: {said}; install or start the Docker engine there",
            self.host.describe()
        )
    }

    /// Writes `bytes` to `path` on the node: temporary name, mode, then rename.
    pub async fn write_file(&self, path: &str, bytes: Vec<u8>, mode: u32) -> anyhow::Result<()> {
        let tmp = format!("{path}.tmp-slipway");
        let dir = path.rsplit_once('/').map_or(".", |(d, _)| d);
        let command = format!(
            "umask 077 && mkdir -p {dir} && cat > {tmp} && chmod {mode:o} {tmp} && mv -f {tmp} {path}",
            dir = quote(dir),
            tmp = quote(&tmp),
            path = quote(path),
        );
        self.sh_with(&command, Input::Bytes(bytes))
            .await
            .with_context(|| format!("writing {path}"))?;
        Ok(())
    }

    /// Reads a file; `None` when it does not exist.
    pub async fn read_file(&self, path: &str) -> anyhow::Result<Option<String>> {
        let q = quote(path);
        let out = self
            .run(
                &format!("if [ -f {q} ]; then cat {q}; else exit 44; fi"),
                Input::None,
            )
            .await?;
        match out.code {
            Some(0) => Ok(Some(out.stdout())),
            Some(44) => Ok(None),
            _ => bail!("cannot read {path}: {}", out.tail(3)),
        }
    }

    /// `docker compose` on the environment's database + nginx project.
    pub fn infra_compose(&self, args: &str) -> String {
        format!(
            "docker compose -p {} -f {} {args}",
            quote(&self.paths.infra_project()),
            quote(&self.paths.infra_compose())
        )
    }

    /// `docker exec` of `command` (already quoted for the shell) in the container of the
    /// infra project's `service`, by the name compose gives it (`<project>-<service>-1`):
    /// `docker compose exec` first loads the whole project, which costs a node twice the
    /// CPU of this, and a fleet deploy runs these many times a second.
    pub fn infra_exec(&self, service: &str, command: &str) -> String {
        self.infra_exec_with(service, "", command)
    }

    /// [`Node::infra_exec`] with options for `docker exec` (`-i` to pass stdin on,
    /// `-u postgres`).
    pub fn infra_exec_with(&self, service: &str, flags: &str, command: &str) -> String {
        let container = format!("{}-{service}-1", self.paths.infra_project());
        format!("docker exec {flags} {} {command}", quote(&container))
    }

    /// The infra project's services that have a running container (`docker ps` by label:
    /// no compose project to load).
    pub async fn infra_running(&self) -> anyhow::Result<Vec<String>> {
        let command = format!(
            "{} --format '{{{{.Label \"com.docker.compose.service\"}}}}'",
            self.infra_ps()
        );
        let out = self.sh(&command).await?;
        Ok(out.lines().map(|l| l.trim().to_string()).collect())
    }

    fn infra_ps(&self) -> String {
        format!(
            "docker ps --filter status=running --filter label=com.docker.compose.project={}",
            quote(&self.paths.infra_project())
        )
    }

    /// `docker compose` on one color's project, with the compose file of `release`.
    pub fn color_compose(&self, color: &str, release: &str, args: &str) -> String {
        format!(
            "docker compose -p {} -f {} {args}",
            quote(&self.paths.color_project(color)),
            quote(&format!("{}/app.yml", self.paths.release_dir(release)))
        )
    }

    /// Runs SQL through psql inside the database container, as the database owner over the
    /// local socket (no password travels). The script comes on stdin.
    pub async fn psql(&self, script: &str, extra: &str) -> anyhow::Result<Output> {
        let command = self.psql_command(extra);
        self.run(&command, Input::Bytes(script.as_bytes().to_vec()))
            .await
    }

    /// The command that runs psql in the database container, reading its script on stdin.
    pub fn psql_command(&self, extra: &str) -> String {
        let db = &self.env.settings.database;
        let psql = format!(
            "psql -X -q -v ON_ERROR_STOP=1 -U {} -d {} {extra}",
            quote(&db.user),
            quote(&db.name)
        );
        self.infra_exec_with("db", "-i -u postgres", &psql)
    }

    /// Runs a query and returns its unaligned, tuples-only output.
    pub async fn query(&self, sql: &str) -> anyhow::Result<String> {
        let out = self.psql(sql, "-A -t").await?;
        if !out.success() {
            bail!("database query failed: {}", out.tail(4));
        }
        Ok(out.stdout().trim().to_string())
    }
}

/// The first words of a command, for messages.
fn short(command: &str) -> String {
    let first: String = command.chars().take(120).collect();
    if first.len() < command.len() {
        format!("{first}...")
    } else {
        first
    }
}
