//! Reaching nodes without a laptop's setup: the CI path with a deploy key and known_hosts
//! from environment variables and no `~/.ssh` or agent (FC-11), and a deploy user who may
//! not use Docker, which must fail fast instead of waiting on a prompt (FC-13); a node
//! behind a jump host named in an SSH client configuration; keepalives through a proxy
//! that cuts idle connections (FC-12, first half); a hard cut of every connection during a
//! long migration, survived by reconnecting (FC-12, second half).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lock::assert_lock_free;
use crate::support::{harness, on_node, on_node_ok, repo, sh_ok, Project, Watched};

fn harness_key() -> String {
    std::fs::read_to_string(repo().join("tests/harness/.state/id_ed25519")).unwrap()
}

/// The project's inventory without `key:` and `known_hosts:`, as a CI job would commit it.
fn inventory_without_credentials(project: &Project) {
    let rel = format!("inventory/{}.yml", project.env);
    let text = std::fs::read_to_string(project.root().join(&rel)).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("key:") && !l.starts_with("known_hosts:"))
        .collect();
    project.write(&rel, &(kept.join("\n") + "\n"));
}

/// Every base64 line of the private key: none may ever be printed.
fn key_lines(key: &str) -> Vec<String> {
    key.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect()
}

#[test]
fn fc11_a_ci_job_deploys_with_a_key_and_known_hosts_from_variables() {
    let project = Project::new("e2e-ci", 18115, 1);
    inventory_without_credentials(&project);
    project.commit("v1");
    let home = tempfile::tempdir().unwrap();
    let key = harness_key();
    let address = &project.nodes[0].address;
    let scanned = sh_ok(&format!(
        "ssh-keyscan -H -t ed25519,ecdsa,rsa {address} 2>/dev/null"
    ));
    assert!(
        scanned.lines().filter(|l| l.starts_with("|1|")).count() >= 2,
        "ssh-keyscan gave fewer than two hashed key types:\n{scanned}"
    );

    let deploy = project
        .slipway()
        .clean_env(home.path())
        .env("SLIPWAY_SSH_KEY", &key)
        .env("SLIPWAY_KNOWN_HOSTS", &scanned)
        .args(["-vv", "deploy", &project.env])
        .run();
    deploy.assert_code(0);
    assert!(project.live_version(0).is_some());
    for line in key_lines(&key) {
        assert!(
            !deploy.stdout.contains(&line) && !deploy.stderr.contains(&line),
            "key material was printed"
        );
    }

    let unpinned = project
        .slipway()
        .clean_env(home.path())
        .env("SLIPWAY_SSH_KEY", &key)
        .args(["deploy", &project.env])
        .run();
    let fingerprint = sh_ok(&format!(
        "echo '{}' | ssh-keygen -l -f - -E sha256",
        on_node_ok(&project.nodes[0], "cat /etc/ssh/ssh_host_ed25519_key.pub")
    ));
    unpinned
        .assert_code(1)
        .assert_stderr_has(&format!("host key of {address} is not known"))
        .assert_stderr_has(fingerprint.split_whitespace().nth(1).unwrap())
        .assert_stderr_has("slipway trust");

    let loose = home.path().join("deploy_key");
    std::fs::write(&loose, &key).unwrap();
    sh_ok(&format!("chmod 644 {}", loose.display()));
    project
        .slipway()
        .clean_env(home.path())
        .env("SLIPWAY_SSH_KEY_FILE", &loose)
        .env("SLIPWAY_KNOWN_HOSTS", &scanned)
        .args(["deploy", &project.env])
        .run()
        .assert_code(1)
        .assert_stderr_has("readable by others");

    check_in_a_clean_container(&project, &key, &scanned);
}

/// A runner image as bare as a CI job's: Debian with git, no ssh client, no `~/.ssh`.
const RUNNER_IMAGE: &str = "slipway-e2e-ci-runner:trixie";

fn runner_image() -> &'static str {
    sh_ok(&format!(
        "docker image inspect {RUNNER_IMAGE} >/dev/null 2>&1 || printf '%s\\n' \
           'FROM debian:trixie-slim' \
           'RUN apt-get update && apt-get install -y --no-install-recommends git \
              && rm -rf /var/lib/apt/lists/*' | docker build -q -t {RUNNER_IMAGE} - >/dev/null"
    ));
    RUNNER_IMAGE
}

/// `slipway check`, then a deploy of a new commit, from a bare container on the nodes'
/// network: no `~/.ssh`, no agent, the key and known_hosts from the CI job's variables. The
/// container drives this machine's Docker engine (socket and static CLI mounted) for the
/// build, as a CI runner with Docker does.
fn check_in_a_clean_container(project: &Project, key: &str, known_hosts: &str) {
    project.commit("v2, deployed from a clean container");
    let commit = project.git(&["rev-parse", "--short=7", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), key).unwrap();
    std::fs::write(dir.path().join("known_hosts"), known_hosts).unwrap();

    let out = sh_ok(&format!(
        "docker run --rm --network slipway-harness \
           -v /var/run/docker.sock:/var/run/docker.sock -v $(command -v docker):/usr/local/bin/docker:ro \
           -v {bin}:/usr/local/bin/slipway:ro -v {root}:/project -v {dir}:/creds:ro \
           {image} sh -c 'test ! -e /root/.ssh && test -z \"$SSH_AUTH_SOCK\" && \
             ! command -v ssh >/dev/null && git config --global --add safe.directory /project && \
             export SLIPWAY_SSH_KEY=\"$(cat /creds/key)\" SLIPWAY_KNOWN_HOSTS_FILE=/creds/known_hosts && \
             slipway --root /project check {env} 2>&1 && slipway --root /project deploy {env} 2>&1'",
        bin = env!("CARGO_BIN_EXE_slipway"),
        root = project.root().display(),
        dir = dir.path().display(),
        image = runner_image(),
        env = project.env
    ));
    assert!(out.contains("host key verified"), "{out}");
    let live = project.live_version(0).unwrap_or_default();
    assert!(
        live.starts_with(commit.trim()),
        "the deploy from the clean container did not put {commit} live (live: {live}):\n{out}"
    );
}

#[test]
fn fc13_a_user_who_may_not_use_docker_fails_fast_naming_the_fix() {
    let mut project = Project::new("e2e-nodocker", 18116, 1);
    let node = project.nodes[0].clone();
    on_node_ok(
        &node,
        "id deployer >/dev/null 2>&1 || useradd -m -s /bin/sh deployer; \
         install -d -o deployer -m 700 /home/deployer/.ssh && \
         install -o deployer -m 600 /root/.ssh/authorized_keys /home/deployer/.ssh/authorized_keys",
    );
    project.set_extra("state_dir: /home/deployer/slipway");
    let rel = format!("inventory/{}.yml", project.env);
    let text = std::fs::read_to_string(project.root().join(&rel)).unwrap();
    project.write(&rel, &text.replace("user: root", "user: deployer"));
    project.commit("v1");

    let started = Instant::now();
    let deploy = project.deploy();
    let took = started.elapsed();
    deploy
        .assert_code(1)
        .assert_stderr_has(&format!("deployer@{}", node.address))
        .assert_stderr_has("docker version")
        .assert_stderr_has("usermod -aG docker deployer")
        .assert_stderr_has("nothing was changed");
    assert!(
        took.as_secs() < 10,
        "the refusal took {took:?}; it must not wait on anything"
    );
    assert!(
        !deploy.stderr.contains("building release"),
        "a deploy that cannot run built first:\n{}",
        deploy.stderr
    );

    let check = project.slipway().args(["check", &project.env]).run();
    check.assert_code(1);
    let said = format!("{}{}", check.stdout, check.stderr);
    assert!(said.contains("usermod -aG docker deployer"), "{said}");
    let lock = on_node_ok(
        &node,
        "ls /home/deployer/slipway/events-e2e-nodocker/lock.holder 2>/dev/null || true",
    );
    assert!(lock.is_empty(), "a lock holder was left behind: {lock}");
}

#[test]
fn an_ssh_config_alias_reaches_its_node_through_a_jump_host() {
    let project = Project::new("e2e-jump", 18117, 1);
    let target = project.nodes[0].clone();
    let bastion = harness()[1].clone();
    let key = repo().join("tests/harness/.state/id_ed25519");
    let config = project.root().join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host e2e-web\n  HostName {}\n  User root\n  IdentityFile {key}\n  ProxyJump e2e-bastion\n\
             Host e2e-bastion\n  HostName {}\n  User root\n  IdentityFile {key}\n",
            target.address,
            bastion.address,
            key = key.display()
        ),
    )
    .unwrap();
    let rel = format!("inventory/{}.yml", project.env);
    let text = std::fs::read_to_string(project.root().join(&rel)).unwrap();
    let text: Vec<String> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("key:") && !l.trim_start().starts_with("user:"))
        .map(|l| l.replace(&target.address, "e2e-web"))
        .collect();
    project.write(&rel, &(text.join("\n") + "\n"));
    project.commit("v1");
    let since = sh_ok("date -u +%Y-%m-%dT%H:%M:%SZ");

    project
        .slipway()
        .env("SLIPWAY_SSH_CONFIG", &config)
        .args(["deploy", &project.env])
        .run()
        .assert_code(0);
    assert!(project.live_version(0).is_some());

    let log = sh_ok(&format!(
        "docker logs --since {} {} 2>&1",
        since.trim(),
        target.container
    ));
    let through_bastion = format!("Accepted publickey for root from {} ", bastion.address);
    assert!(
        log.contains(&through_bastion),
        "the node saw no login from the jump host {}:\n{log}",
        bastion.address
    );
}

/// A TCP proxy in front of a node's sshd. It cuts any connection idle (no byte either way)
/// for longer than `idle`, as a stateful firewall or cloud load balancer does, and on
/// demand cuts every connection at once and refuses new ones until restored, as a network
/// outage does.
struct CuttingProxy {
    port: u16,
    /// Connections cut for being idle.
    cuts: Arc<AtomicUsize>,
    /// Both ends of every connection relayed so far.
    streams: Arc<Mutex<Vec<TcpStream>>>,
    /// While set, a new connection is closed as soon as it is accepted.
    refusing: Arc<AtomicBool>,
}

impl CuttingProxy {
    /// Listens on 127.0.0.1:`port` (0: any free port) and relays to `upstream`.
    fn start(port: u16, upstream: String, idle: Duration) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cuts = Arc::new(AtomicUsize::new(0));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let refusing = Arc::new(AtomicBool::new(false));
        let (counted, kept, closed) = (cuts.clone(), streams.clone(), refusing.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if closed.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                if let Ok(server) = TcpStream::connect(&upstream) {
                    let mut kept = kept.lock().unwrap();
                    kept.push(client.try_clone().unwrap());
                    kept.push(server.try_clone().unwrap());
                    relay(client, server, idle, counted.clone());
                }
            }
        });
        CuttingProxy {
            port,
            cuts,
            streams,
            refusing,
        }
    }

    /// Cuts every open connection and refuses new ones; returns how many were open.
    fn cut_everything(&self) -> usize {
        self.refusing.store(true, Ordering::SeqCst);
        let streams: Vec<TcpStream> = self.streams.lock().unwrap().drain(..).collect();
        let open = streams.iter().filter(|s| s.peer_addr().is_ok()).count() / 2;
        for stream in streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
        open
    }

    /// Accepts connections again.
    fn restore(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

fn relay(client: TcpStream, server: TcpStream, idle: Duration, cuts: Arc<AtomicUsize>) {
    let last = Arc::new(Mutex::new(Instant::now()));
    let open = Arc::new(AtomicBool::new(true));
    for (mut from, mut to) in [
        (client.try_clone().unwrap(), server.try_clone().unwrap()),
        (server.try_clone().unwrap(), client.try_clone().unwrap()),
    ] {
        let (last, open) = (last.clone(), open.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
                *last.lock().unwrap() = Instant::now();
            }
            open.store(false, Ordering::Relaxed);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    std::thread::spawn(move || {
        while open.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            if last.lock().unwrap().elapsed() > idle {
                cuts.fetch_add(1, Ordering::Relaxed);
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
        }
    });
}

/// Points the project's only node at `proxy`, whose address known_hosts must hold the
/// node's host keys under.
fn reach_through(project: &mut Project, proxy: &CuttingProxy) {
    let node = project.nodes[0].clone();
    let host_keys = on_node_ok(&node, "cat /etc/ssh/ssh_host_*_key.pub");
    let known_hosts = project.root().join("known_hosts.proxy");
    let lines: Vec<String> = host_keys
        .lines()
        .map(|k| format!("[127.0.0.1]:{} {k}", proxy.port))
        .collect();
    std::fs::write(&known_hosts, lines.join("\n") + "\n").unwrap();
    project.set_known_hosts(&known_hosts);
    point_node_at(project, "127.0.0.1", proxy.port);
}

#[test]
fn fc12_keepalives_carry_a_long_silent_migration_through_an_idle_cutting_proxy() {
    let mut project = Project::new("e2e-keepalive", 18118, 1);
    let node = project.nodes[0].clone();
    let idle_cut = Duration::from_secs(8);
    let proxy = CuttingProxy::start(0, format!("{}:22", node.address), idle_cut);
    project.set_extra("ssh_keepalive_seconds: 2");
    reach_through(&mut project, &proxy);
    project.commit("v1");
    project.deploy().assert_code(0);

    project.write("migrations/000004_silent.up.sql", "SELECT pg_sleep(20);\n");
    project.write("migrations/000004_silent.down.sql", "SELECT 1;\n");
    project.commit("v2: a migration silent for 20 s, longer than the proxy's idle cut");
    let started = Instant::now();
    let deploy = project.deploy();
    deploy.assert_code(0);

    assert!(
        started.elapsed() > Duration::from_secs(20),
        "the silent migration did not run"
    );
    assert_eq!(
        project.psql("SELECT version || ' ' || dirty FROM schema_migrations"),
        "4 false"
    );
    assert_eq!(
        proxy.cuts.load(Ordering::Relaxed),
        0,
        "the proxy cut an idle connection"
    );
}

/// A project whose only node is reached through a [`CuttingProxy`] on `proxy_port`, with
/// v1 live and v2 committed. v2's migration 4 counts its starts in a sequence (`nextval`
/// is never rolled back), creates a table holding one row, then sleeps `seconds`.
fn slow_migration_behind_a_proxy(
    env: &str,
    http_port: u16,
    proxy_port: u16,
    connect_timeout: u64,
    seconds: u64,
) -> (Project, CuttingProxy, String) {
    let mut project = Project::new(env, http_port, 1);
    let node = project.nodes[0].clone();
    let never_idle = Duration::from_secs(3600);
    let proxy = CuttingProxy::start(proxy_port, format!("{}:22", node.address), never_idle);
    project.set_extra(&format!(
        "ssh_keepalive_seconds: 2\nssh_connect_timeout_seconds: {connect_timeout}"
    ));
    reach_through(&mut project, &proxy);
    let v1 = project.deploy_first_release();

    project.psql("CREATE SEQUENCE fc12_starts");
    project.write(
        "migrations/000004_slow_mark.up.sql",
        &format!(
            "SELECT nextval('fc12_starts');\n\
             CREATE TABLE fc12_runs (ran_at timestamptz);\n\
             INSERT INTO fc12_runs VALUES (now());\n\
             SELECT pg_sleep({seconds});\n"
        ),
    );
    project.write(
        "migrations/000004_slow_mark.down.sql",
        "DROP TABLE fc12_runs;\n",
    );
    project.commit(&format!(
        "v2: a {seconds} s migration that records each run"
    ));
    (project, proxy, v1)
}

/// Migration 4 ran exactly once and is recorded clean.
#[track_caller]
fn migrated_once(project: &Project) {
    assert_eq!(project.psql("SELECT count(*) FROM fc12_runs"), "1");
    assert_eq!(
        project.psql("SELECT last_value || ' ' || is_called FROM fc12_starts"),
        "1 true",
        "the migration started exactly once"
    );
    assert_eq!(
        project.psql("SELECT version || ' ' || dirty FROM schema_migrations"),
        "4 false"
    );
}

/// FC-12, second half: every connection to the node is cut 20 s into a 60 s migration and
/// the node is unreachable for 10 s. The migration goes on on the node and runs once; the
/// deploy says it lost the connection, reconnects, reads back what the migration did, takes
/// the lock again and finishes with the new release live; the lock ends free.
#[test]
fn fc12_a_hard_cut_during_a_long_migration_is_survived_by_reconnecting() {
    let (project, proxy, v1) = slow_migration_behind_a_proxy("e2e-fc12-cut", 18300, 18301, 5, 60);
    let node = project.nodes[0].clone();

    let mut deploy = Watched::start(project.slipway().args(["deploy", &project.env]));
    deploy.wait_for_line(&["node-1 | migrate..."], Duration::from_secs(600));
    let migrating = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let cut = proxy.cut_everything();
    std::thread::sleep(Duration::from_secs(10));
    proxy.restore();
    let (run, _) = deploy.finish(Duration::from_secs(300));
    let took = migrating.elapsed();
    eprintln!("{}", run.stderr);

    run.assert_code(0)
        .assert_stderr_has(
            "connection to node-1 lost during migrate; reconnecting (for up to 30s); the \
             migration runs on apart from the SSH session",
        )
        .assert_stderr_has("reconnected to node-1; reading back what the migration did")
        .assert_stderr_has("migrations applied: [4]; schema version 4")
        .assert_stderr_has("the lock, dropped with the lost connection, is held again");
    assert!(cut >= 1, "the proxy cut no open connection");
    assert!(
        took > Duration::from_secs(60),
        "the deploy ended {took:?} after the migrate step began: the 60 s migration did not run"
    );
    let v2 = project.live_version(0).expect("the new release answers");
    assert_ne!(v2, v1, "the new release is live");
    migrated_once(&project);
    assert_lock_free(&project);
    let jobs = on_node_ok(
        &node,
        &format!("ls -A {}/jobs 2>/dev/null || true", project.state_dir()),
    );
    assert_eq!(jobs, "", "the migration's job files were removed");
}

/// FC-12, a node that does not come back: the reconnect gives up after six connect
/// timeouts and the node fails in `migrate`, saying the migration may still run there and
/// how to check; the old release keeps serving. Once the node answers again, the migration
/// has finished there, once, and the next deploy goes live without running it again.
#[test]
fn fc12_a_node_that_does_not_come_back_fails_in_migrate_saying_the_migration_may_still_run() {
    let (project, proxy, v1) = slow_migration_behind_a_proxy("e2e-fc12-gone", 18302, 18303, 2, 45);

    let mut deploy = Watched::start(project.slipway().args(["deploy", &project.env]));
    deploy.wait_for_line(&["node-1 | migrate..."], Duration::from_secs(600));
    let migrating = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        proxy.cut_everything() >= 1,
        "the proxy cut no open connection"
    );
    let (run, _) = deploy.finish(Duration::from_secs(120));
    let took = migrating.elapsed();
    eprintln!("{}", run.stderr);

    run.assert_code(1)
        .assert_stderr_has("connection to node-1 lost during migrate; reconnecting (for up to 12s)")
        .assert_stderr_has("step `migrate` failed")
        .assert_stderr_has("connection to node-1 lost during migrate and not back within 12s")
        .assert_stderr_has("the migration may still be running on the node")
        .assert_stderr_has("slipway migrate status e2e-fc12-gone");
    assert!(
        !run.stderr.contains("migrations applied"),
        "nothing read back can say the migration was applied:\n{}",
        run.stderr
    );
    assert!(
        took < Duration::from_secs(40),
        "the tool waited {took:?} instead of giving up after the reconnect window"
    );

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(90);
    while project.psql("SELECT count(*) FROM schema_migrations WHERE version = 4 AND NOT dirty")
        != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the migration never finished on the node"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    migrated_once(&project);
    assert_eq!(
        project.live_version(0).as_deref(),
        Some(v1.as_str()),
        "v1 still serves"
    );
    assert_lock_free(&project);

    project.deploy().assert_code(0);
    assert_ne!(project.live_version(0), Some(v1), "v2 is live");
    migrated_once(&project);
}

/// FC-12, the lock taken by someone else while the node was cut off: the node dropped this
/// deploy's lock with the old session, and another operation takes it during the outage.
/// After the reconnect the migration's result is read back and reported, but the node
/// stops there, naming the holder; the old release keeps serving and the other holder's
/// record is left alone.
#[test]
fn fc12_a_lock_taken_by_another_operation_during_the_cut_stops_the_node_after_the_migration() {
    let (project, proxy, v1) = slow_migration_behind_a_proxy("e2e-fc12-taken", 18304, 18305, 5, 40);
    let node = project.nodes[0].clone();
    let other = r#"{"user":"ops","host":"other-laptop","pid":4242,"deploy_id":"d-other-fc12","operation":"deploy","started_at":"2026-12-04T00:00:00Z","step":"hold"}"#;

    let mut deploy = Watched::start(project.slipway().args(["deploy", &project.env]));
    deploy.wait_for_line(&["node-1 | migrate..."], Duration::from_secs(600));
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        proxy.cut_everything() >= 1,
        "the proxy cut no open connection"
    );
    let take = format!(
        "cd {dir} && echo $$ > other.pid && exec flock -w 20 lock sh -c \
         'echo $$ > other.child && printf %s \"$0\" > lock.holder && exec sleep 300' {other}",
        dir = project.state_dir(),
        other = shlex_quote(other),
    );
    sh_ok(&format!(
        "docker exec -d {} sh -c {}",
        node.container,
        shlex_quote(&take)
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !on_node_ok(&node, &format!("cat {}/lock.holder", project.state_dir()))
        .contains("d-other-fc12")
    {
        assert!(
            Instant::now() < deadline,
            "the other holder never took the lock"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    proxy.restore();
    let (run, _) = deploy.finish(Duration::from_secs(300));
    eprintln!("{}", run.stderr);

    run.assert_code(1)
        .assert_stderr_has("reconnected to node-1; reading back what the migration did")
        .assert_stderr_has("migrations applied: [4]; schema version 4")
        .assert_stderr_has("step `migrate` failed")
        .assert_stderr_has("could not be taken again for deploy")
        .assert_stderr_has("ops@other-laptop pid 4242 (deploy d-other-fc12")
        .assert_stderr_has("holds it now; this node stops here")
        .assert_stderr_has("next: what the step did stands");
    assert!(
        !run.stderr.contains("failed migration"),
        "the migration did not fail:\n{}",
        run.stderr
    );
    migrated_once(&project);
    assert_eq!(
        project.live_version(0).as_deref(),
        Some(v1.as_str()),
        "v1 still serves"
    );
    let holder = on_node_ok(&node, &format!("cat {}/lock.holder", project.state_dir()));
    assert!(
        holder.contains("d-other-fc12"),
        "the other holder's record was removed: {holder}"
    );

    on_node_ok(
        &node,
        &format!(
            "cd {} && kill $(cat other.pid) $(cat other.child)",
            project.state_dir()
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while on_node(
        &node,
        &format!("flock -n {}/lock true", project.state_dir()),
    )
    .status
    .code()
        != Some(0)
    {
        assert!(Instant::now() < deadline, "the other holder kept the lock");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn shlex_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Points the project's only node at `address:port` instead of its sshd.
fn point_node_at(project: &Project, address: &str, port: u16) {
    let rel = format!("inventory/{}.yml", project.env);
    let text = std::fs::read_to_string(project.root().join(&rel)).unwrap();
    let node = &project.nodes[0].address;
    project.write(
        &rel,
        &text.replace(
            &format!("address: {node}\n"),
            &format!("address: {address}\n    port: {port}\n"),
        ),
    );
}

/// Deploys and checks that the node failed within the timeout plus a few seconds, naming
/// host:port, the timeout, the phase that hung and the key to change.
fn fails_within_the_connect_timeout(project: &Project, at: &str, phase: &str, timeout: u64) {
    let started = Instant::now();
    let deploy = project.deploy();
    let took = started.elapsed();
    deploy
        .assert_code(1)
        .assert_stderr_has(&format!("{at}: no SSH answer within {timeout}s"))
        .assert_stderr_has(&format!("{phase} did not finish"))
        .assert_stderr_has("ssh_connect_timeout_seconds")
        .assert_stderr_has("nothing was changed");
    assert!(
        took >= Duration::from_secs(timeout) && took < Duration::from_secs(timeout + 5),
        "the refusal took {took:?} with a {timeout}s connect timeout"
    );
}

#[test]
fn an_address_that_drops_packets_or_never_speaks_ssh_fails_within_the_connect_timeout() {
    let mut project = Project::new("e2e-blackhole", 18260, 1);
    let node = project.nodes[0].clone();
    let drop_rule = "INPUT -p tcp --dport 2222 -j DROP";
    on_node_ok(
        &node,
        &format!("iptables -C {drop_rule} 2>/dev/null || iptables -I {drop_rule}"),
    );
    project.set_extra("ssh_connect_timeout_seconds: 3");
    point_node_at(&project, &node.address, 2222);
    project.commit("v1");
    fails_within_the_connect_timeout(
        &project,
        &format!("{}:2222", node.address),
        "the TCP connect",
        3,
    );
    on_node_ok(&node, &format!("iptables -D {drop_rule}"));

    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = silent.incoming().flatten().collect();
        drop(held);
    });
    project.set_extra("ssh_connect_timeout_seconds: 2");
    point_node_at(&project, "127.0.0.1", port);
    project.commit("v2");
    fails_within_the_connect_timeout(
        &project,
        &format!("127.0.0.1:{port}"),
        "the SSH handshake",
        2,
    );
}
