//! The built-in steps of a deploy on one node, and the loop that runs a playbook.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use super::{database, interrupt, Outcome, Shared, Timer};
use crate::health;
use crate::history::{self, Record};
use crate::host::Input;
use crate::image;
use crate::lock::Lock;
use crate::migrate::{self, Migration};
use crate::node::{quote, Node};
use crate::playbook::{Custom, Params, Place, Step};
use crate::render::{self, ReleaseVars};
use crate::snapshot;
use crate::switch;

/// Free space a node needs under its state directory before a deploy starts.
const MIN_FREE_BYTES: u64 = 1 << 30;

/// Exit code of the preflight check when `docker compose` is not there.
const NO_COMPOSE: i32 = 45;

/// One node's deploy in progress: what it changed so far, so a failure can be undone.
pub(super) struct Deploy {
    pub node: Node,
    pub shared: Arc<Shared>,
    pub lock: Lock,
    pub old_color: Option<String>,
    pub old_release: Option<String>,
    pub new_color: &'static str,
    /// The node's Docker Engine takes a health check `start_interval` (API 1.44+).
    pub engine_start_interval: bool,
    pub pending: Vec<Migration>,
    pub started_new: bool,
    pub switched: bool,
    pub old_stopped: bool,
    pub snapshot: Option<String>,
    /// The database's schema version, as `schema_migrations` last said.
    pub schema_version: Option<u64>,
    /// The schema the release expects: its highest migration version.
    pub expected_schema: Option<u64>,
    pub bytes: u64,
    pub timings: Vec<(String, Duration)>,
}

pub(super) async fn deploy_node(node: Node, lock: Lock, shared: Arc<Shared>) -> Outcome {
    let mut deploy = Deploy {
        node,
        shared,
        lock,
        old_color: None,
        old_release: None,
        new_color: "blue",
        engine_start_interval: false,
        pending: Vec::new(),
        started_new: false,
        switched: false,
        old_stopped: false,
        snapshot: None,
        schema_version: None,
        expected_schema: None,
        bytes: 0,
        timings: Vec::new(),
    };
    deploy.expected_schema = expected_schema(&deploy.shared, &deploy.node).await;

    let name = deploy.node.name.clone();
    let reporter = deploy.shared.reporter.clone();
    reporter.node_started(&name, &deploy.shared.release.name);
    let result = tokio::select! {
        result = deploy.run_playbook() => result,
        signal = interrupt::requested() => {
            Err((deploy.lock.step_name().to_string(), anyhow::Error::new(signal)))
        }
    };
    let mut rolled_back = false;
    let result = match result {
        Ok(()) => Ok(()),
        Err((step, cause)) => {
            let err = deploy.undo(&step, cause).await;
            deploy.record_failure(&step).await;
            rolled_back = deploy.traffic_is_back().await;
            Err(err)
        }
    };

    if let Err(e) = deploy.lock.release(&deploy.node).await {
        deploy
            .shared
            .reporter
            .info(&name, &format!("could not release the lock cleanly: {e:#}"));
    }
    reporter.node_finished(&name, &result, rolled_back);
    Outcome {
        node: name,
        result,
        timings: deploy.timings,
        bytes: deploy.bytes,
    }
}

impl Deploy {
    async fn run_playbook(&mut self) -> Result<(), (String, anyhow::Error)> {
        let steps = self.shared.playbook.steps.clone();
        for step in &steps {
            let name = step.name().to_string();
            self.shared.reporter.step_started(&self.node.name, &name);
            self.lock.step(&self.node, &name).await;

            let timer = Timer::start();
            let result = match step {
                Step::Builtin { name, params } => self.builtin(name, params).await,
                Step::Run(custom) => self.custom(custom).await,
            };
            self.timings.push((name.clone(), timer.elapsed()));
            let error = result.as_ref().err();
            self.shared
                .reporter
                .step_finished(&self.node.name, &name, timer.elapsed(), error);
            result.map_err(|e| (name, e))?;
        }
        Ok(())
    }

    async fn builtin(&mut self, name: &str, params: &Params) -> anyhow::Result<()> {
        match name {
            "preflight" => self.preflight().await,
            "ship_images" => self.ship_images().await,
            "upload_bundle" => self.upload_bundle().await,
            "ensure_infra" => self.ensure_infra().await,
            "snapshot" => self.snapshot().await,
            "migrate" => self.migrate().await,
            "migrate_down" => self.migrate_down().await,
            "start_color" => self.start_color().await,
            "health_gate" => self.health_gate(params).await,
            "switch" => self.switch().await,
            "verify" => self.verify().await,
            "watch" => self.watch(params).await,
            "drain" => self.drain(params).await,
            "record" => self.record().await,
            "cleanup" => self.cleanup().await,
            other => bail!("step `{other}` has no implementation"),
        }
    }

    /// After an undo: traffic had moved to the new color, and the node now records the
    /// old one as live again.
    async fn traffic_is_back(&self) -> bool {
        if !self.switched {
            return false;
        }
        match switch::active_color(&self.node).await {
            Ok(live) => live == self.old_color,
            Err(_) => false,
        }
    }

    pub(super) fn info(&self, message: &str) {
        self.shared.reporter.info(&self.node.name, message);
    }

    /// Docker, compose, free disk, a clean schema, which color is live, and pending
    /// migrations that run as written and pass the lint.
    async fn preflight(&mut self) -> anyhow::Result<()> {
        let node = &self.node;
        let docker = node.docker_version().await?;
        let compose = self.check_compose_and_space().await?;
        tracing::info!(node = %node.name, docker = docker.trim(), compose = compose.trim(), "preflight");
        self.engine_start_interval = docker
            .split_whitespace()
            .nth(1)
            .is_some_and(|api| api_at_least(api, (1, 44)));

        self.old_color = switch::active_color(node).await?;
        self.old_release = history::read(node).await?.last().map(|r| r.release.clone());
        self.new_color = self.old_color.as_deref().map_or("blue", switch::other);

        if self.database_running().await? {
            let mut state = migrate::state(self.db()).await?;
            if state.dirty {
                state = self.wait_for_running_migration(state).await?;
            }
            if state.dirty {
                bail!(dirty_message(state.version));
            }
            self.pending = migrate::pending(&self.shared.migrations, state);
            self.schema_version = state.version;
            if self.changes_schema() && state.version.is_some() {
                snapshot::check_room(self.db()).await?;
            }
        } else {
            self.pending = self.shared.migrations.clone();
        }

        let in_use = self.schema_version.is_some();
        crate::lint::check(&self.pending, &node.env.settings.migrations, in_use)
    }

    /// A dirty mark whose migration still runs (in a session left by an operation that
    /// ended) is not a failure yet: waits, within the migration's statement timeout, for
    /// that session to let go of the advisory lock, then reads the state again.
    async fn wait_for_running_migration(
        &self,
        state: migrate::SchemaState,
    ) -> anyhow::Result<migrate::SchemaState> {
        let limit = self.node.env.settings.migrations.statement_timeout_seconds + 30;
        let deadline = std::time::Instant::now() + Duration::from_secs(limit);
        let mut told = false;
        while let Some(session) = migrate::running_migrator(self.db()).await? {
            if !told {
                self.info(&format!(
                    "migration {} is still running ({session}), left by an operation that \
                     ended; waiting up to {limit}s for it to finish",
                    state.version.map_or("-".into(), |v| v.to_string())
                ));
                told = true;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "migration {} still runs after {limit}s ({session}); wait for it, or end \
                     that session, then deploy again",
                    state.version.map_or("-".into(), |v| v.to_string())
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if !told {
            return Ok(state);
        }
        migrate::state(self.db()).await
    }

    /// The compose plugin's version (it must be there) and enough free disk under the
    /// environment's directory, in one command.
    async fn check_compose_and_space(&self) -> anyhow::Result<String> {
        let base = quote(self.node.paths.base());
        let command = format!(
            "docker compose version --short || exit {NO_COMPOSE}; \
             mkdir -p {base} && df -Pk {base} | tail -n 1"
        );
        let out = self.node.run(&command, Input::None).await?;
        if out.code == Some(NO_COMPOSE) {
            bail!(
                "the docker compose plugin is missing on the node: {}",
                out.tail(2)
            );
        }
        if !out.success() {
            bail!("cannot read the free disk space: {}", out.tail(3));
        }
        let text = out.stdout();
        let (compose, df) = text.split_once('\n').unwrap_or((&text, ""));
        let free_kb: u64 = df
            .split_whitespace()
            .nth(3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if free_kb * 1024 < MIN_FREE_BYTES {
            bail!(
                "only {} MB free under {}; at least {} MB are needed",
                free_kb / 1024,
                self.node.paths.base(),
                MIN_FREE_BYTES >> 20
            );
        }
        Ok(compose.trim().to_string())
    }

    async fn database_running(&self) -> anyhow::Result<bool> {
        Ok(self.db().infra_running().await?.iter().any(|s| s == "db"))
    }

    async fn ship_images(&mut self) -> anyhow::Result<()> {
        let images = &self.shared.images;
        let mut tags = vec![&images.nginx, &self.shared.release.image];
        if self.infra_services().contains(&"db") {
            tags.insert(0, &images.postgres);
        }
        for tag in tags {
            let sent = image::ship(&self.node, tag, &self.shared.saved).await?;
            if sent > 0 {
                self.info(&format!("shipped {tag} ({:.1} MB)", sent as f64 / 1e6));
            }
            self.bytes += sent;
        }
        Ok(())
    }

    /// The secrets the database and nginx use (0600, in the environment's secrets
    /// directory), then the release's directory in one piece, renamed into place: its
    /// compose and env files and its own copy of every secret (0600, in `secrets/`).
    async fn upload_bundle(&mut self) -> anyhow::Result<()> {
        database::write_infra_secrets(&self.node, &self.shared.renderer).await?;
        let secrets = &self.node.env.secrets;

        let ctx = self.context(Some(self.new_color));
        let compose = self.shared.renderer.render(render::APP_COMPOSE, &ctx)?;
        let env_ctx = render::with_secret_values(ctx.clone(), secrets);
        let env_file = self.shared.renderer.render(render::APP_ENV, &env_ctx)?;
        let mut files = vec![
            ("app.yml".to_string(), compose.into_bytes(), 0o644),
            ("app.env".to_string(), env_file.into_bytes(), 0o600),
        ];
        for (file, value) in secrets.files() {
            files.push((format!("secrets/{file}"), value.as_bytes().to_vec(), 0o600));
        }
        let bundle = tar_of(&files)?;

        let dir = self.node.paths.release_dir(&self.shared.release.name);
        let tmp = format!("{dir}.partial");
        let command = format!(
            "rm -rf {tmp} && mkdir -p {tmp}/secrets && chmod 700 {tmp}/secrets && \
             tar -x --no-same-owner -C {tmp} && rm -rf {dir} && mv {tmp} {dir}",
            tmp = quote(&tmp),
            dir = quote(&dir)
        );
        self.bytes += bundle.len() as u64;
        self.node.sh_with(&command, Input::Bytes(bundle)).await?;
        Ok(())
    }

    /// Starts the database and nginx if they are not running; never recreates them.
    async fn ensure_infra(&mut self) -> anyhow::Result<()> {
        let ctx = self.context(None);
        let infra = self.shared.renderer.render(render::INFRA_COMPOSE, &ctx)?;
        self.node
            .write_file(&self.node.paths.infra_compose(), infra.into_bytes(), 0o644)
            .await?;
        self.node
            .sh(&format!(
                "mkdir -p {}",
                quote(&self.node.paths.snapshots_dir())
            ))
            .await?;
        switch::ensure_config(
            &self.node,
            &self.shared.renderer,
            &self.shared.images,
            self.old_color.as_deref(),
        )
        .await?;

        let running = self.node.infra_running().await?;
        let services = self.infra_services();
        if services.iter().all(|s| running.iter().any(|r| r == s)) {
            return Ok(());
        }
        let what = match services.len() {
            1 => "nginx",
            _ => "the database and nginx",
        };
        self.info(&format!("starting {what}"));
        self.node
            .sh(&self.node.infra_compose(&format!(
                "up -d --no-recreate --wait --wait-timeout 120 {}",
                services.join(" ")
            )))
            .await
            .with_context(|| format!("starting {what}"))?;
        Ok(())
    }

    /// The long-lived services this node runs: nginx, and the database unless the node
    /// uses the one another node shares.
    fn infra_services(&self) -> Vec<&'static str> {
        match &self.shared.database {
            Some(db) if db.node.name != self.node.name => vec!["nginx"],
            _ => vec!["db", "nginx"],
        }
    }

    /// The node whose database this node's app uses: its own, or the shared one.
    pub(super) fn db(&self) -> &Node {
        self.shared
            .database
            .as_ref()
            .map_or(&self.node, |d| &d.node)
    }

    /// Whether this run changes the schema: pending migrations, or a rollback's down files.
    fn changes_schema(&self) -> bool {
        !self.pending.is_empty() || !self.shared.revert.is_empty()
    }

    async fn snapshot(&mut self) -> anyhow::Result<()> {
        if let Some(db) = &self.shared.database {
            self.snapshot = db.snapshot.clone();
            if !self.changes_schema() {
                self.info(&format!(
                    "the shared database on {} was prepared before the rollout",
                    db.node.name
                ));
                return Ok(());
            }
        }
        if !self.changes_schema() {
            self.info("no pending migration: snapshot skipped");
            return Ok(());
        }
        if self.schema_version.is_none() {
            self.info("empty database: snapshot skipped before the first migration");
            return Ok(());
        }

        let name = database::take_snapshot(self.db(), &self.shared, self.schema_version).await?;
        self.info(&format!("snapshot {name}"));
        self.snapshot = Some(name);
        Ok(())
    }

    async fn migrate(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let before = migrate::SchemaState {
            version: self.schema_version,
            dirty: false,
        };
        let (reporter, name) = (self.shared.reporter.clone(), self.node.name.clone());
        let say = move |message: &str| reporter.info(&name, message);
        let snap = self.snapshot.as_deref();
        let (applied, state) =
            database::apply(self.db(), &self.pending, snap, before, &say).await?;
        self.schema_version = state.version;
        self.info(&format!(
            "migrations applied: {:?}; schema version {}",
            applied,
            state.version.map_or("none".into(), |v| v.to_string())
        ));
        if self.lock.hold_again(&self.node).await? {
            self.info("the lock, dropped with the lost connection, is held again by this deploy");
        }
        Ok(())
    }

    /// A rollback's down files (`--migrate-down`), once the release is live and the newer
    /// one drained, after the snapshot is checked. A failure leaves the release live.
    async fn migrate_down(&mut self) -> anyhow::Result<()> {
        let Some(snap) = self.snapshot.clone() else {
            bail!("refusing to run down migrations without a verified snapshot");
        };
        snapshot::verify_present(&self.node, &snap).await?;

        let reverted = migrate::revert(&self.node, &self.shared.revert)
            .await
            .map_err(|e| e.context(format!("snapshot taken before the rollback: {snap}")))?;
        let state = migrate::state(&self.node).await?;
        self.schema_version = state.version;
        self.info(&format!(
            "down migrations run: {reverted:?}; schema version {}; snapshot {snap}",
            state.version.map_or("none".into(), |v| v.to_string())
        ));
        Ok(())
    }

    /// Starts the idle color with the new release, after clearing any leftover of it. A
    /// stopped container of this very release in that color (a rollback) is started again.
    async fn start_color(&mut self) -> anyhow::Result<()> {
        let color = self.new_color;
        self.started_new = true;
        if self.restart_kept_container(color).await? {
            return Ok(());
        }
        self.remove_color(color).await?;

        let up = self.node.color_compose(
            color,
            &self.shared.release.name,
            "up -d --no-build --pull never --remove-orphans",
        );
        self.node
            .sh(&up)
            .await
            .with_context(|| format!("starting the {color} color"))?;
        if self.shared.action == "rollback" {
            let release = &self.shared.release.name;
            self.info(&format!(
                "no kept container of {release}: started the {color} color from the kept image \
                 of {release}"
            ));
        }
        Ok(())
    }

    /// Starts the kept (stopped) container of this release in `color`, if there is one.
    async fn restart_kept_container(&self, color: &str) -> anyhow::Result<bool> {
        let release = &self.shared.release.name;
        let env = &self.node.env;
        let ids = self
            .node
            .sh(&format!(
                "docker ps -aq --filter label=slipway.app={} --filter label=slipway.env={} \
                 --filter label=slipway.color={} --filter label=slipway.release={}",
                quote(&env.settings.app),
                quote(&env.name),
                quote(color),
                quote(release)
            ))
            .await?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.len() != 1 {
            return Ok(false);
        }
        self.node.sh(&format!("docker start {}", ids[0])).await?;
        self.info(&format!("started the kept {color} container of {release}"));
        Ok(true)
    }

    async fn health_gate(&mut self, params: &Params) -> anyhow::Result<()> {
        let timeout = params
            .timeout_seconds
            .unwrap_or(self.node.env.settings.health.timeout_seconds);
        let url = health::color_url(&self.node, self.new_color);
        let release = &self.shared.release;

        let color = self.new_color;
        let report = health::wait_for(
            &self.node,
            &url,
            &release.name,
            &release.commit,
            Duration::from_secs(timeout),
            Some(color),
        )
        .await
        .with_context(|| format!("the {color} color never became healthy"))?;
        self.check_schema(&report).await
    }

    /// Fails the step when the app reports a schema older than the release expects (the
    /// step's error names the node and the step).
    async fn check_schema(&mut self, report: &health::Report) -> anyhow::Result<()> {
        if self.expected_schema.is_none() || report.schema_version.is_none() {
            return Ok(());
        }
        let database = migrate::state(self.db()).await?.version;
        self.schema_version = database;

        match health::schema_problem(self.expected_schema, report.schema_version, database) {
            Some(problem) => bail!("release {}: {problem}", self.shared.release.name),
            None => Ok(()),
        }
    }

    async fn switch(&mut self) -> anyhow::Result<()> {
        self.switched = true;
        switch::point_nginx(
            &self.node,
            &self.shared.renderer,
            &self.shared.images,
            Some(self.new_color),
        )
        .await?;
        switch::record_active(&self.node, Some(self.new_color)).await?;
        self.info(&format!("switched to {}", self.new_color));
        Ok(())
    }

    async fn verify(&mut self) -> anyhow::Result<()> {
        let url = health::nginx_url(&self.node);
        let release = &self.shared.release;
        let report = health::wait_for(
            &self.node,
            &url,
            &release.name,
            &release.commit,
            Duration::from_secs(15),
            None,
        )
        .await
        .context("nginx does not serve the new release")?;
        self.check_schema(&report).await
    }

    /// Keeps probing the new release through nginx while the old color still runs; a
    /// release that turns unhealthy fails the step, and the undo switches traffic back.
    async fn watch(&mut self, params: &Params) -> anyhow::Result<()> {
        let seconds = params
            .seconds
            .unwrap_or(self.node.env.settings.watch_seconds);
        let interval = Duration::from_millis(self.node.env.settings.health.interval_ms.max(200));
        let url = health::nginx_url(&self.node);
        let started = std::time::Instant::now();
        let mut misses = 0;

        while started.elapsed() < Duration::from_secs(seconds) {
            let probe = health::probe(&self.node, &url, Duration::from_secs(3)).await?;
            let ours = probe
                .report
                .as_ref()
                .is_some_and(|r| r.version == self.shared.release.name);
            misses = if probe.is_healthy() && ours {
                0
            } else {
                misses + 1
            };
            if misses >= 2 {
                bail!(
                    "the new release turned unhealthy {:.1}s after the switch: {}",
                    started.elapsed().as_secs_f64(),
                    probe.describe()
                );
            }
            tokio::time::sleep(interval).await;
        }
        Ok(())
    }

    /// Lets the old color finish in-flight requests, then stops it (kept for rollback).
    async fn drain(&mut self, params: &Params) -> anyhow::Result<()> {
        let Some(old) = self.old_color.clone() else {
            return Ok(());
        };
        let seconds = params
            .seconds
            .unwrap_or(self.node.env.settings.drain_seconds);
        tokio::time::sleep(Duration::from_secs(seconds)).await;

        let grace = self.node.env.settings.stop_grace_seconds;
        let ids = self.color_containers(&old, false).await?;
        if !ids.is_empty() {
            self.node
                .sh(&format!("docker stop -t {grace} {}", ids.join(" ")))
                .await?;
            self.warn_if_killed(&old, &ids, grace).await?;
        }
        self.old_stopped = true;
        Ok(())
    }

    /// Docker kills a container that outlives its stop timeout: exit code 137.
    async fn warn_if_killed(&self, color: &str, ids: &[String], grace: u64) -> anyhow::Result<()> {
        let codes = self
            .node
            .sh(&format!(
                "docker inspect --format '{{{{.State.ExitCode}}}}' {}",
                ids.join(" ")
            ))
            .await?;
        if codes.lines().any(|c| c.trim() == "137") {
            self.info(&format!(
                "warning: the old {color} container ignored SIGTERM and was killed after {grace}s; \
                 make the app stop on SIGTERM, or raise stop_grace_seconds"
            ));
        }
        Ok(())
    }

    async fn record(&mut self) -> anyhow::Result<()> {
        let record = self.history_record(&self.shared.action);
        history::append(&self.node, &record).await?;
        self.point_current().await
    }

    /// Notes a failed attempt in the history, so cleanup can find what it shipped. A failed
    /// `migrate_down` leaves the rollback's release live, so the history records it live.
    async fn record_failure(&mut self, step: &str) {
        if step == "migrate_down" {
            if let Err(e) = self.record().await {
                tracing::warn!(node = %self.node.name, step, "cannot record the rollback: {e:#}");
            }
            return;
        }
        let record = self.history_record("failed");
        if let Err(e) = history::append(&self.node, &record).await {
            tracing::warn!(node = %self.node.name, step, "cannot record the failure: {e:#}");
        }
    }

    fn history_record(&self, action: &str) -> Record {
        let release = &self.shared.release;
        Record {
            action: action.into(),
            release: release.name.clone(),
            commit: release.commit.clone(),
            image: release.image.clone(),
            image_id: release.image_id.clone(),
            color: self.new_color.to_string(),
            deployed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            deployed_by: crate::lock::operator(),
            deploy_id: self.shared.deploy_id.clone(),
            schema_version: self.expected_schema,
        }
    }

    /// Points `current` at the live release's bundle.
    async fn point_current(&self) -> anyhow::Result<()> {
        let release = &self.shared.release;
        let current = self.node.paths.current();
        let rel = format!("releases/{}", release.name);
        self.node
            .sh(&format!(
                "ln -sfn {rel} {tmp} && mv -T {tmp} {cur}",
                rel = quote(&rel),
                tmp = quote(&format!("{current}.tmp")),
                cur = quote(&current)
            ))
            .await?;
        Ok(())
    }

    async fn custom(&mut self, custom: &Custom) -> anyhow::Result<()> {
        let command = match custom.place {
            Place::Node => custom.command.clone(),
            Place::App => self.node.color_compose(
                self.new_color,
                &self.shared.release.name,
                &format!("exec -T app sh -c {}", quote(&custom.command)),
            ),
        };
        let out = self.node.sh(&command).await?;
        for line in out.lines().take(20) {
            self.info(&format!("{}: {line}", custom.name));
        }
        Ok(())
    }

    pub(super) fn context(&self, color: Option<&str>) -> serde_json::Value {
        let release = &self.shared.release;
        let vars = ReleaseVars {
            name: release.name.clone(),
            commit: release.commit.clone(),
            image: release.image.clone(),
        };
        let mut ctx = render::context(
            &self.node.env,
            &self.node.name,
            &self.node.paths,
            &self.shared.images,
            Some(&vars),
            Some(color.unwrap_or(self.new_color)),
            self.old_color.as_deref(),
        );
        ctx["engine"]["start_interval"] = self.engine_start_interval.into();
        ctx
    }

    /// IDs of this environment's containers of `color` (running only, or all).
    pub(super) async fn color_containers(
        &self,
        color: &str,
        all: bool,
    ) -> anyhow::Result<Vec<String>> {
        let env = &self.node.env;
        let out = self
            .node
            .sh(&format!(
                "docker ps -q {} --filter label=slipway.app={} --filter label=slipway.env={} --filter label=slipway.color={}",
                if all { "-a" } else { "" },
                quote(&env.settings.app),
                quote(&env.name),
                quote(color)
            ))
            .await?;
        Ok(out.split_whitespace().map(String::from).collect())
    }

    /// Removes every container of `color` in this environment.
    pub(super) async fn remove_color(&self, color: &str) -> anyhow::Result<()> {
        let ids = self.color_containers(color, true).await?;
        if ids.is_empty() {
            return Ok(());
        }
        let grace = self.node.env.settings.stop_grace_seconds;
        self.node
            .sh(&format!(
                "docker stop -t {grace} {ids} >/dev/null; docker rm -f {ids} >/dev/null",
                ids = ids.join(" ")
            ))
            .await?;
        Ok(())
    }

    /// The last lines the new color's app logged, for the failure message.
    pub(super) async fn new_color_logs(&self) -> String {
        let Ok(ids) = self.color_containers(self.new_color, true).await else {
            return String::new();
        };
        let Some(id) = ids.first() else {
            return String::new();
        };
        match self
            .node
            .run(&format!("docker logs --tail 15 {id} 2>&1"), Input::None)
            .await
        {
            Ok(out) => out.stdout().trim_end().to_string(),
            Err(_) => String::new(),
        }
    }
}

/// The schema the release expects. A deploy read its migrations already; a rollback reads
/// those of the target's commit from the repository (none when the commit is not there).
async fn expected_schema(shared: &Shared, node: &Node) -> Option<u64> {
    if shared.action != "rollback" {
        return migrate::expected(&shared.migrations);
    }
    let files = migrate::load(&node.env.root, &shared.release.commit).await;
    files.ok().and_then(|files| migrate::expected(&files))
}

/// Whether a Docker API version such as `1.45` is at least `min`.
fn api_at_least(api: &str, min: (u32, u32)) -> bool {
    let mut parts = api.trim().split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

pub(super) fn dirty_message(version: Option<u64>) -> String {
    let Some(v) = version else {
        return "the database is dirty with no version: schema_migrations holds golang-migrate's \
                -1 marker, left by a failed down migration of the first file. Nothing was \
                changed. Find out whether the first file's changes are in the database, then \
                record that with `slipway migrate recover <env> --to 0 --yes` (they are not) \
                or `--to <first version>` (they are) and deploy again"
            .into();
    };
    format!(
        "the database is dirty at migration version {v}: a migration failed half-way. Nothing was changed. \
         Find out whether migration {v} is in the database (each file runs in one transaction, \
         so a failed one normally left nothing), then record that with \
         `slipway migrate recover <env> --to <version> --yes` and deploy again"
    )
}

/// A tar of `(path, bytes, mode)` entries.
fn tar_of(files: &[(String, Vec<u8>, u32)]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(chrono::Utc::now().timestamp() as u64);
        header.set_cksum();
        builder.append_data(&mut header, name, bytes.as_slice())?;
    }
    Ok(builder.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::api_at_least;

    #[test]
    fn api_versions_compare_by_number_not_text() {
        assert!(api_at_least("1.44", (1, 44)));
        assert!(api_at_least("1.45\n", (1, 44)));
        assert!(api_at_least("2.0", (1, 44)));
        assert!(!api_at_least("1.43", (1, 44)));
        assert!(!api_at_least("1.9", (1, 44)));
        assert!(!api_at_least("", (1, 44)));
    }
}
