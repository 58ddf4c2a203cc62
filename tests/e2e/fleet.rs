//! Three nodes at once: `--limit` by name, glob and label, a node that fails its health
//! check while the others go live, and a failing canary that keeps the others untouched.

use std::time::{Duration, Instant};

use crate::support::{on_node_ok, repo, sh_ok, Project, Watched};

/// The three nodes' names and labels, in inventory order.
const NODES: [(&str, &str); 3] = [
    ("web-1", "toronto"),
    ("web-2", "montreal"),
    ("edge-1", "berlin"),
];

/// Writes the environment over the first three harness nodes, with labels; the node at
/// `failing` (if any) runs its app with FAIL_HEALTH=1, a per-node variable no other node
/// sees. `extra` adds top-level lines.
fn write_inventory(project: &Project, failing: Option<usize>, extra: &str) {
    let state = repo().join("tests/harness/.state");
    let mut text = format!(
        "known_hosts: {}\nhttp_port: {}\ndrain_seconds: 1\nstop_grace_seconds: 6\nwatch_seconds: 2\n\
         health:\n  timeout_seconds: 10\n{extra}nodes:\n",
        state.join("known_hosts").display(),
        project.http_port,
    );
    for (i, ((name, label), node)) in NODES.iter().zip(&project.nodes).enumerate() {
        text.push_str(&format!(
            "  - name: {name}\n    address: {}\n    user: root\n    key: {}\n    labels: [{label}]\n",
            node.address,
            state.join("id_ed25519").display()
        ));
        if failing == Some(i) {
            text.push_str("    vars:\n      app_env: {FAIL_HEALTH: \"1\"}\n");
        }
    }
    text.push_str("vars:\n  app_env: {}\n");
    project.write(&format!("inventory/{}.yml", project.env), &text);
}

fn project(env: &str, port: u16) -> Project {
    let project = Project::new(env, port, 3);
    write_inventory(&project, None, "");
    project
}

/// The node names `--list-nodes` prints (its first line is a header).
fn listed(project: &Project, limit: &str) -> Vec<String> {
    let run = project
        .slipway()
        .args(["status", &project.env, "--list-nodes", "--limit", limit])
        .run();
    run.assert_code(0);
    run.stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

/// The summary table's row of a node.
fn summary_row<'a>(stderr: &'a str, node: &str) -> &'a str {
    stderr
        .lines()
        .rev()
        .find(|l| l.starts_with(&format!("{node} ")) && !l.contains(" | "))
        .unwrap_or_else(|| panic!("no summary row for {node}:\n{stderr}"))
}

/// App containers of this environment on a node (any color, running or not).
fn app_containers(project: &Project, node: usize) -> usize {
    let ids = on_node_ok(
        &project.nodes[node],
        &format!(
            "docker ps -aq --filter label=slipway.env={} --filter label=slipway.color",
            project.env
        ),
    );
    ids.lines().filter(|l| !l.trim().is_empty()).count()
}

fn assert_all_locks_free(project: &Project) {
    let lock = project
        .slipway()
        .args(["lock", "status", &project.env])
        .run();
    for (name, _) in NODES {
        assert!(
            lock.stdout.contains(&format!("{name}: free")),
            "{}",
            lock.stdout
        );
    }
}

#[test]
fn list_nodes_resolves_names_globs_and_labels_without_connecting() {
    let project = project("e2e-fleet-list", 18190);

    assert_eq!(listed(&project, "web-1,edge-*"), ["web-1", "edge-1"]);
    assert_eq!(
        listed(&project, "edge-1,web-*,@montreal"),
        ["web-1", "web-2", "edge-1"]
    );
    assert_eq!(listed(&project, "@montreal,edge-?"), ["web-2", "edge-1"]);

    let run = project
        .slipway()
        .args([
            "deploy",
            &project.env,
            "--list-nodes",
            "--limit",
            "@toronto",
        ])
        .run();
    run.assert_code(0);
    let row = run.stdout.lines().nth(1).unwrap_or_default();
    assert!(row.contains("web-1"), "{}", run.stdout);
    assert!(row.contains(&project.nodes[0].address), "{}", run.stdout);
    assert!(row.contains("@toronto"), "{}", run.stdout);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);

    let unknown = project
        .slipway()
        .args(["deploy", &project.env, "--limit", "web-1,@paris"])
        .run();
    unknown
        .assert_code(2)
        .assert_stderr_has("`@paris` matched no node")
        .assert_stderr_has("web-2 (@montreal)")
        .assert_stderr_has("edge-1 (@berlin)");

    write_inventory(&project, None, "require_limit: true\n");
    let refused = project.deploy();
    refused
        .assert_code(2)
        .assert_stderr_has("require_limit")
        .assert_stderr_has("--limit");
    assert!(
        !refused.stderr.contains("building"),
        "refused after a build:\n{}",
        refused.stderr
    );
    for node in 0..3 {
        assert_eq!(app_containers(&project, node), 0);
    }
}

#[test]
fn a_node_that_fails_its_health_check_leaves_the_others_live_on_the_new_release() {
    let project = project("e2e-fleet-fail", 18191);
    project.deploy().assert_code(0);
    let v1: Vec<String> = (0..3)
        .map(|i| project.live_version(i).expect("every node serves v1"))
        .collect();
    assert!(v1.iter().all(|v| v == &v1[0]), "{v1:?}");

    write_inventory(&project, Some(1), "");
    project.commit("v2");
    let run = project.deploy();

    run.assert_code(1).assert_stderr_has("web-2");
    let failed = summary_row(&run.stderr, "web-2");
    assert!(failed.contains("failed"), "{failed}");
    assert!(failed.contains("health_gate"), "{failed}");
    for node in ["web-1", "edge-1"] {
        assert!(
            summary_row(&run.stderr, node).contains(" ok "),
            "{}",
            run.stderr
        );
    }
    run.assert_stderr_has("2 of 3 node(s) succeeded; did not succeed: web-2 (failed)");

    let now: Vec<Option<String>> = (0..3).map(|i| project.live_version(i)).collect();
    let v2 = now[0].clone().expect("web-1 serves");
    assert_ne!(v2, v1[0], "web-1 still serves the old release");
    assert_eq!(now[2].as_deref(), Some(v2.as_str()), "edge-1: {now:?}");
    assert_eq!(now[1].as_deref(), Some(v1[1].as_str()), "web-2: {now:?}");
    assert_all_locks_free(&project);
}

#[test]
fn a_failing_canary_keeps_every_other_node_untouched() {
    let project = project("e2e-fleet-canary", 18192);
    write_inventory(&project, Some(0), "");

    let run = project
        .slipway()
        .args(["deploy", &project.env, "--canary", "1", "--json"])
        .run();

    run.assert_code(1).assert_stderr_has("health_gate");
    assert!(summary_row(&run.stderr, "web-1").contains("failed"));
    for node in ["web-2", "edge-1"] {
        let row = summary_row(&run.stderr, node);
        assert!(
            row.contains("skipped") && row.contains("canary failed"),
            "{row}"
        );
    }
    let events = run.events();
    let count = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    assert_eq!(count("node.started"), 1, "{}", run.stdout);
    assert_eq!(count("node.failed"), 1);
    assert_eq!(count("node.skipped"), 2);

    for node in 1..3 {
        assert_eq!(project.live_version(node), None, "node {node} was deployed");
        assert_eq!(
            app_containers(&project, node),
            0,
            "node {node} has app containers"
        );
    }
    assert_eq!(
        app_containers(&project, 0),
        0,
        "the failed canary's color is still there"
    );
    assert_all_locks_free(&project);
}

/// `--parallel 1 --max-fail 0`: one node at a time, and once web-2 fails, edge-1 is not
/// started; web-1 keeps the release it got.
#[test]
fn one_at_a_time_and_no_new_node_once_more_than_max_fail_failed() {
    let project = project("e2e-fleet-maxfail", 18144);
    write_inventory(&project, Some(1), "");

    let run = project
        .slipway()
        .args([
            "deploy",
            &project.env,
            "--parallel",
            "1",
            "--max-fail",
            "0",
            "--json",
        ])
        .run();

    run.assert_code(1).assert_stderr_has("health_gate");
    assert!(summary_row(&run.stderr, "web-1").contains(" ok "));
    assert!(summary_row(&run.stderr, "web-2").contains("failed"));
    let skipped = summary_row(&run.stderr, "edge-1");
    assert!(
        skipped.contains("skipped") && skipped.contains("--max-fail 0"),
        "{skipped}"
    );

    let events = run.events();
    let mut running = 0;
    for event in &events {
        match event["event"].as_str() {
            Some("node.started") => running += 1,
            Some("node.succeeded" | "node.failed") => running -= 1,
            _ => {}
        }
        assert!(running <= 1, "two nodes ran at once: {}", run.stdout);
    }
    assert!(
        project.live_version(0).is_some(),
        "web-1 serves its release"
    );
    assert_eq!(project.live_version(2), None, "edge-1 was deployed");
    assert_all_locks_free(&project);
}

/// Waits until `lock status` shows every node free (a session the node had not yet seen
/// die may hold its flock for a moment).
fn wait_all_locks_free(project: &Project, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let lock = project
            .slipway()
            .args(["lock", "status", &project.env])
            .run();
        if NODES
            .iter()
            .all(|(n, _)| lock.stdout.contains(&format!("{n}: free")))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "locks still held: {}",
            lock.stdout
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One node frozen mid-deploy (`docker pause`: its processes stop answering, as across a
/// network cut, but nothing on it dies or restarts, so what it runs afterwards is exactly
/// what the cut left): the run ends within the SSH keepalive's bound, the other nodes go
/// live, the row names the node, its step and the lost connection; once the node is back,
/// `status` tells what it serves and a deploy to it is not blocked by its old lock.
#[test]
fn a_node_cut_off_mid_deploy_fails_alone_and_takes_a_deploy_once_back() {
    let project = Project::new("e2e-fleet-cut", 18240, 3);
    write_inventory(&project, None, "ssh_keepalive_seconds: 1\n");
    project.deploy().assert_code(0);
    let v1 = project.live_version(2).expect("edge-1 serves v1");

    project.commit("v2");
    let mut deploy = Watched::start(project.slipway().args(["deploy", &project.env]));
    deploy.wait_for_line(&["edge-1 | ", "health_gate..."], Duration::from_secs(600));
    let edge = &project.nodes[2].container;
    // The freezer can fail on a loaded machine ("unable to freeze"): try again at once.
    sh_ok(&format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do docker pause {edge} >/dev/null 2>&1 && exit 0; sleep 0.3; done; \
         docker pause {edge}"
    ));
    let (run, took) = deploy.finish(Duration::from_secs(600));
    sh_ok(&format!("docker unpause {edge}"));

    run.assert_code(1);
    assert!(
        took < Duration::from_secs(90),
        "ended {took:?} after the cut"
    );
    let row = summary_row(&run.stderr, "edge-1");
    assert!(
        row.contains("failed") && row.contains("health_gate"),
        "{row}"
    );
    assert!(row.contains("could not be reached"), "{row}");
    run.assert_stderr_has("2 of 3 node(s) succeeded; did not succeed: edge-1 (failed)");
    let v2 = project.live_version(0).expect("web-1 serves");
    assert_ne!(v2, v1);
    assert_eq!(project.live_version(1).as_deref(), Some(v2.as_str()));

    wait_all_locks_free(&project, Duration::from_secs(30));
    let status = project
        .slipway()
        .args(["status", &project.env, "--limit", "edge-1", "--json"])
        .run();
    status.assert_code(0);
    let served = project.live_version(2).expect("edge-1 answers once back");
    assert_eq!(served, v1, "the cut node switched");
    let rows: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let row = &rows[0];
    assert_eq!(row["node"], "edge-1", "{rows}");
    assert_eq!(
        row["version"],
        served.as_str(),
        "status lies about edge-1: {rows}"
    );
    assert!(row["error"].is_null(), "{rows}");
    let idle = if row["color"] == "blue" {
        "green"
    } else {
        "blue"
    };
    let leftover = on_node_ok(
        &project.nodes[2],
        &format!(
            "docker ps -q --filter label=slipway.env={} --filter label=slipway.color={idle}",
            project.env
        ),
    );
    let noted = row["notes"]
        .to_string()
        .contains(&format!("idle {idle} color still runs"));
    assert_eq!(
        noted,
        !leftover.trim().is_empty(),
        "status and the node disagree on a leftover {idle} color: {rows}"
    );

    let again = project
        .slipway()
        .args(["deploy", &project.env, "--limit", "edge-1"])
        .run();
    again.assert_code(0);
    assert_eq!(project.live_version(2).as_deref(), Some(v2.as_str()));
    assert_all_locks_free(&project);
}

/// FC-15 (b): another process holds the third node's lock (its flock taken in a shell on
/// the node, with a holder record beside it). The deploy is refused before any build or
/// change, names the holder, and lets go of the locks it took on the first two nodes.
#[test]
fn a_lock_held_on_the_third_node_refuses_the_deploy_and_frees_the_other_two() {
    let project = project("e2e-fleet-held", 18241);
    let dir = project.state_dir();
    let holder = r#"{"user": "ops", "host": "jump-7", "pid": 4242, "deploy_id": "d-20261204000000-4242", "operation": "deploy", "started_at": "2026-12-04T00:00:00Z", "step": "migrate"}"#;
    let edge = &project.nodes[2];
    on_node_ok(
        edge,
        &format!(
            "mkdir -p {dir} && printf '%s' '{holder}' > {dir}/lock.holder && \
             sh -c 'exec 9>{dir}/lock && flock -n 9 && echo $$ > /tmp/e2e-fleet-held.pid && exec sleep 600' \
             >/dev/null 2>&1 & sleep 1; cat /tmp/e2e-fleet-held.pid"
        ),
    );

    let run = project.deploy();
    let pid = on_node_ok(edge, "cat /tmp/e2e-fleet-held.pid");
    on_node_ok(edge, &format!("kill {pid}; rm -f /tmp/e2e-fleet-held.pid"));

    run.assert_code(3)
        .assert_stderr_has("edge-1")
        .assert_stderr_has("ops@jump-7 pid 4242")
        .assert_stderr_has("d-20261204000000-4242");
    assert!(
        !run.stderr.contains("building"),
        "built before being refused:\n{}",
        run.stderr
    );
    for node in 0..2 {
        let left = on_node_ok(
            &project.nodes[node],
            &format!(
                "ls -A {dir}; docker ps -aq --filter label=com.docker.compose.project=events-{}",
                project.env
            ),
        );
        assert_eq!(left, "lock", "node {node} was changed: {left}");
        assert_eq!(app_containers(&project, node), 0);
    }
    let lock = project
        .slipway()
        .args(["lock", "status", &project.env])
        .run();
    for name in ["web-1", "web-2"] {
        assert!(
            lock.stdout.contains(&format!("{name}: free")),
            "{}",
            lock.stdout
        );
    }
}
