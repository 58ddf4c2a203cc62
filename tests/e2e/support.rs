//! The end-to-end harness: a throwaway project (a git repository holding a copy of the
//! templates, playbook, migrations and reference app) whose inventory points at the shared
//! harness nodes, and a builder that runs the real `slipway` binary against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The harness environment whose nodes every test shares (`tests/harness/nodes up ci 3`);
/// `SLIPWAY_HARNESS_ENV` picks other nodes, so two checkouts can test side by side.
const HARNESS_NODES: usize = 3;

fn harness_env() -> String {
    std::env::var("SLIPWAY_HARNESS_ENV").unwrap_or_else(|_| "ci".into())
}

/// How many nodes the harness brings up: 3, or `SLIPWAY_HARNESS_NODES` (the fleet
/// benchmark asks for 8), and never fewer than the env already has, since `nodes up`
/// removes the nodes above its count and a benchmark's warmed nodes would go with them.
fn harness_count(env: &str) -> usize {
    let asked = std::env::var("SLIPWAY_HARNESS_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(HARNESS_NODES);
    let existing = sh_ok(&format!(
        "docker ps -aq --filter label=slipway.harness.env={env} | wc -l"
    ));
    asked
        .max(HARNESS_NODES)
        .max(existing.trim().parse().unwrap_or(0))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A harness node: its container on this machine and its address.
#[derive(Debug, Clone)]
pub struct HarnessNode {
    pub container: String,
    pub address: String,
}

/// Starts the shared nodes once per machine (the script is idempotent and locks itself).
pub fn harness() -> &'static [HarnessNode] {
    static NODES: OnceLock<Vec<HarnessNode>> = OnceLock::new();
    NODES.get_or_init(|| {
        let env = harness_env();
        let count = harness_count(&env);
        let status = Command::new(repo().join("tests/harness/nodes"))
            .args(["up", &env, &count.to_string()])
            .current_dir(repo())
            .stdout(Stdio::null())
            .status()
            .expect("tests/harness/nodes runs");
        assert!(status.success(), "tests/harness/nodes up {env} failed");

        (1..=count)
            .map(|i| {
                let container = format!("slipway-{env}-node-{i}");
                let address = sh_ok(&format!(
                    "docker inspect -f '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' {container}"
                ));
                HarnessNode {
                    container,
                    address: address.trim().to_string(),
                }
            })
            .collect()
    })
}

/// Runs a shell command on this machine and returns stdout; panics on failure.
pub fn sh_ok(command: &str) -> String {
    let out = sh(command);
    assert!(
        out.status.success(),
        "`{command}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(command: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(command)
        .output()
        .expect("bash runs")
}

/// Runs a shell command inside a harness node (as its root, with its own Docker).
pub fn on_node(node: &HarnessNode, command: &str) -> Output {
    Command::new("docker")
        .args(["exec", &node.container, "sh", "-c", command])
        .output()
        .expect("docker exec runs")
}

pub fn on_node_ok(node: &HarnessNode, command: &str) -> String {
    let out = on_node(node, command);
    assert!(
        out.status.success(),
        "on {}: `{command}` failed: {}",
        node.container,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One test's project and environment.
pub struct Project {
    dir: tempfile::TempDir,
    pub env: String,
    pub http_port: u16,
    pub nodes: Vec<HarnessNode>,
    app_env: Vec<(String, String)>,
    extra: String,
    health_timeout: u64,
    health_extra: String,
    watch_seconds: u64,
    drain_seconds: u64,
    known_hosts: PathBuf,
}

impl Project {
    /// A project whose environment `env` deploys to the first `count` harness nodes, with
    /// nginx on `http_port`. Each test uses its own env name and port.
    pub fn new(env: &str, http_port: u16, count: usize) -> Self {
        let nodes = harness()[..count].to_vec();
        let dir = tempfile::Builder::new()
            .prefix("slipway-e2e-")
            .tempdir()
            .unwrap();
        for part in ["templates", "playbooks", "migrations", "tests/app"] {
            let target = dir.path().join(part);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            sh_ok(&format!(
                "cp -r {} {}",
                repo().join(part).display(),
                target.display()
            ));
        }
        std::fs::create_dir_all(dir.path().join("inventory")).unwrap();
        std::fs::copy(
            repo().join("inventory/all.yml"),
            dir.path().join("inventory/all.yml"),
        )
        .unwrap();

        let project = Project {
            dir,
            env: env.to_string(),
            http_port,
            nodes,
            app_env: Vec::new(),
            extra: String::new(),
            health_timeout: 40,
            health_extra: String::new(),
            watch_seconds: 2,
            drain_seconds: 1,
            known_hosts: repo().join("tests/harness/.state/known_hosts"),
        };
        project.write_inventory();
        project.write_secrets("DB_PASSWORD=e2e-db-password-1\nAPI_KEY=e2e-api-key-1\n");
        project.write(
            ".gitignore",
            "/inventory/*.yml\n!/inventory/all.yml\n/inventory/*.env\n",
        );
        project.git(&["init", "-q", "-b", "main"]);
        project.commit("initial");
        project.clean_nodes();
        project
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Sets a variable for the app container (a test knob) and rewrites the inventory.
    pub fn set_app_env(&mut self, name: &str, value: &str) {
        self.app_env.retain(|(n, _)| n != name);
        self.app_env.push((name.into(), value.into()));
        self.write_inventory();
    }

    /// Verifies host keys against another known_hosts file.
    pub fn set_known_hosts(&mut self, path: &Path) {
        self.known_hosts = path.to_path_buf();
        self.write_inventory();
    }

    /// Seconds the old color keeps serving in-flight requests after the switch.
    pub fn set_drain_seconds(&mut self, seconds: u64) {
        self.drain_seconds = seconds;
        self.write_inventory();
    }

    /// Seconds the new release is watched after the switch.
    pub fn set_watch_seconds(&mut self, seconds: u64) {
        self.watch_seconds = seconds;
        self.write_inventory();
    }

    pub fn clear_app_env(&mut self) {
        self.app_env.clear();
        self.write_inventory();
    }

    /// Extra keys under `health:` (each line indented by two spaces).
    pub fn set_health_extra(&mut self, yaml: &str) {
        self.health_extra = yaml.to_string();
        self.write_inventory();
    }

    /// Seconds the new color has to become healthy.
    pub fn set_health_timeout(&mut self, seconds: u64) {
        self.health_timeout = seconds;
        self.write_inventory();
    }

    /// Extra top-level inventory lines for this environment.
    pub fn set_extra(&mut self, yaml: &str) {
        self.extra = yaml.to_string();
        self.write_inventory();
    }

    fn write_inventory(&self) {
        let state = repo().join("tests/harness/.state");
        let mut text = format!(
            "known_hosts: {kh}\nhttp_port: {port}\ndrain_seconds: {drain}\nstop_grace_seconds: 6\nwatch_seconds: {watch}\n\
             health:\n  timeout_seconds: {timeout}\n{health_extra}{extra}\nnodes:\n",
            kh = self.known_hosts.display(),
            port = self.http_port,
            timeout = self.health_timeout,
            watch = self.watch_seconds,
            drain = self.drain_seconds,
            health_extra = self.health_extra,
            extra = self.extra,
        );
        for (i, node) in self.nodes.iter().enumerate() {
            text.push_str(&format!(
                "  - name: node-{}\n    address: {}\n    user: root\n    key: {}\n",
                i + 1,
                node.address,
                state.join("id_ed25519").display()
            ));
        }
        text.push_str("vars:\n  app_env:\n");
        for (name, value) in &self.app_env {
            text.push_str(&format!("    {name}: \"{value}\"\n"));
        }
        if self.app_env.is_empty() {
            text.push_str("    {}\n");
        }
        self.write(&format!("inventory/{}.yml", self.env), &text);
    }

    pub fn write_secrets(&self, text: &str) {
        let path = self.dir.path().join(format!("inventory/{}.env", self.env));
        std::fs::write(&path, text).unwrap();
        sh_ok(&format!("chmod 600 {}", path.display()));
    }

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=e2e",
                "-c",
                "user.email=e2e@slipway.invalid",
            ])
            .args(args)
            .current_dir(self.root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
    }

    /// The real binary, run in this project.
    pub fn slipway(&self) -> Slipway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_slipway"));
        cmd.arg("--root")
            .arg(self.root())
            .env("CI", "1")
            .env_remove("SSH_AUTH_SOCK");
        Slipway { cmd }
    }

    /// Commits `v1`, deploys it (exit 0 required) and returns the release nginx serves.
    pub fn deploy_first_release(&self) -> String {
        self.commit("v1");
        self.deploy().assert_code(0);
        self.live_version(0).expect("v1 answers")
    }

    pub fn deploy(&self) -> Run {
        self.slipway().args(["deploy", &self.env]).run()
    }

    /// The state directory of this environment on a node.
    pub fn state_dir(&self) -> String {
        format!("/var/lib/slipway/events-{}", self.env)
    }

    pub fn url(&self, node: usize, path: &str) -> String {
        format!(
            "http://{}:{}{path}",
            self.nodes[node].address, self.http_port
        )
    }

    /// The version nginx serves on a node (from the X-App-Version header of /version).
    pub fn live_version(&self, node: usize) -> Option<String> {
        let resp = http_get(&self.url(node, "/version"))?;
        (resp.0 == 200).then(|| resp.1["version"].as_str().unwrap_or_default().to_string())
    }

    /// Runs `sql` with psql in this environment's database container on the first node;
    /// returns the unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        on_node_ok(
            &self.nodes[0],
            &format!(
                "docker exec -u postgres $(docker ps -q --filter label=com.docker.compose.project=events-{} \
                 --filter label=slipway.role=db) psql -X -A -t -U events -d events -c \"{sql}\"",
                self.env
            ),
        )
    }

    /// Removes whatever an earlier run of this test left on the nodes.
    fn clean_nodes(&self) {
        let slug = format!("events-{}", self.env);
        for node in &self.nodes {
            on_node(
                node,
                &format!(
                    "ids=$(docker ps -aq --filter label=com.docker.compose.project={slug} \
                       --filter label=com.docker.compose.project={slug}-blue \
                       --filter label=com.docker.compose.project={slug}-green); \
                     for p in {slug} {slug}-blue {slug}-green; do \
                       docker ps -aq --filter label=com.docker.compose.project=$p | xargs -r docker rm -f >/dev/null; done; \
                     docker volume ls -q --filter label=com.docker.compose.project={slug} | xargs -r docker volume rm >/dev/null; \
                     docker network rm {slug} >/dev/null 2>&1; rm -rf /var/lib/slipway/{slug}; true"
                ),
            );
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.clean_nodes();
        }
    }
}

pub struct Slipway {
    cmd: Command,
}

impl Slipway {
    pub fn args<'a>(mut self, args: impl IntoIterator<Item = &'a str>) -> Self {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(name, value);
        self
    }

    /// Runs with only PATH and these variables, as a bare CI job would.
    pub fn clean_env(mut self, home: &Path) -> Self {
        self.cmd
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("CI", "1");
        self
    }

    pub fn spawn(mut self) -> std::process::Child {
        self.cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn run(mut self) -> Run {
        let out = self.cmd.output().unwrap();
        Run::from(out)
    }
}

/// A finished run of slipway.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// The JSON events of a `--json` run, one a line, in the order they were written.
    #[track_caller]
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON event a line"))
            .collect()
    }

    #[track_caller]
    pub fn assert_stderr_has(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "stderr lacks {text:?}:\n{}",
            self.stderr
        );
        self
    }
}

/// GET a URL from this machine; `None` on a transport error.
pub fn http_get(url: &str) -> Option<(u16, serde_json::Value)> {
    http_get_within(url, Duration::from_secs(5))
}

/// GET with a timeout of its own, for requests that are slow on purpose.
pub fn http_get_within(url: &str, timeout: Duration) -> Option<(u16, serde_json::Value)> {
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    match agent.get(url).call() {
        Ok(resp) => {
            let code = resp.status();
            Some((code, parse_body(resp)))
        }
        Err(ureq::Error::Status(code, resp)) => Some((code, parse_body(resp))),
        Err(_) => None,
    }
}

fn parse_body(resp: ureq::Response) -> serde_json::Value {
    let text = resp.into_string().unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

/// A slipway running in the background whose stderr lines are read as they arrive, so a
/// test can act when a node reaches a step (`web-1 | ship_images...`).
pub struct Watched {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<()>,
    stdout: std::thread::JoinHandle<String>,
}

impl Watched {
    pub fn start(slipway: Slipway) -> Self {
        use std::io::{BufRead, BufReader, Read};

        let mut child = slipway.spawn();
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let err = BufReader::new(child.stderr.take().expect("piped stderr"));
        let (send, lines) = std::sync::mpsc::channel();
        let stderr = std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        Watched {
            child,
            lines,
            seen: Vec::new(),
            stderr,
            stdout,
        }
    }

    /// Waits for a stderr line containing every one of `parts`; panics after `limit` or
    /// when slipway ends first.
    #[track_caller]
    pub fn wait_for_line(&mut self, parts: &[&str], limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if parts.iter().all(|p| line.contains(p)) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with {parts:?} within {limit:?}:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) to slipway.
    pub fn signal(&self, name: &str) {
        sh_ok(&format!("kill -{name} {}", self.child.id()));
    }

    /// Waits for slipway to end (killing it and panicking after `limit`); returns the run
    /// and how long the wait took.
    pub fn finish(mut self, limit: Duration) -> (Run, Duration) {
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "slipway still ran after {limit:?}:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let took = started.elapsed();
        self.stderr.join().unwrap();
        self.seen.extend(self.lines.try_iter());
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.seen.join("\n"),
        };
        (run, took)
    }
}
