//! Field cases FC-02, FC-04 and FC-05 of ../shared/FIELD-CASES.md (the watch after the
//! switch is tested under load in `zero_downtime`).

use std::io::{BufRead, BufReader};
use std::time::Duration;

use crate::support::{http_get_within, on_node, on_node_ok, Project};

/// Containers of this environment's app, per color.
fn app_containers(project: &Project, color: &str) -> Vec<String> {
    on_node_ok(
        &project.nodes[0],
        &format!(
            "docker ps -aq --filter label=slipway.env={} --filter label=slipway.color={color}",
            project.env
        ),
    )
    .split_whitespace()
    .map(String::from)
    .collect()
}

/// FC-02: slow requests in flight at the switch finish on the old version; an app that
/// ignores SIGTERM is killed after the grace period, with a warning.
#[test]
fn fc02_in_flight_requests_finish_and_sigterm_ignorers_are_killed() {
    let mut project = Project::new("e2e-fc02", 18110, 1);
    project.set_drain_seconds(10);
    let v1 = project.deploy_first_release();

    project.set_app_env("IGNORE_SIGTERM", "1");
    project.commit("v2 ignores SIGTERM");
    let mut deploy = project.slipway().args(["deploy", &project.env]).spawn();
    let stderr = BufReader::new(deploy.stderr.take().unwrap());
    let mut lines = Vec::new();
    let mut slow = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("health_gate...") {
            slow = (0..20)
                .map(|_| {
                    let url = project.url(0, "/sleep?ms=8000");
                    std::thread::spawn(move || http_get_within(&url, Duration::from_secs(30)))
                })
                .collect();
        }
        lines.push(line);
    }
    let status = deploy.wait().unwrap();
    assert!(status.success(), "deploy v2 failed:\n{}", lines.join("\n"));
    assert_eq!(slow.len(), 20, "the deploy never reached health_gate");
    for request in slow {
        let (code, body) = request.join().unwrap().expect("no transport error");
        assert_eq!(code, 200);
        assert_eq!(
            body["version"],
            v1.as_str(),
            "a slow request was not served by the old version"
        );
    }

    project.clear_app_env();
    project.commit("v3");
    let v3 = project.deploy();
    v3.assert_code(0)
        .assert_stderr_has("ignored SIGTERM and was killed after 6s");
}

/// FC-04: a deploy killed after creating its container, a leftover one-off container, and
/// an unrelated container named `postgres` do not stop the next deploy.
#[test]
fn fc04_leftover_and_unrelated_containers_do_not_block_a_deploy() {
    let mut project = Project::new("e2e-fc04", 18111, 1);
    project.commit("v1");
    project.deploy().assert_code(0);

    let postgres_image = on_node_ok(
        &project.nodes[0],
        "docker images --format '{{.Repository}}:{{.Tag}}' slipway/postgres | head -n 1",
    );
    on_node(&project.nodes[0], "docker rm -f postgres >/dev/null 2>&1");
    on_node_ok(
        &project.nodes[0],
        &format!("docker run -d --name postgres --entrypoint sleep {postgres_image} 600"),
    );
    let unrelated = on_node_ok(
        &project.nodes[0],
        "docker inspect -f '{{.Id}} {{.State.StartedAt}}' postgres",
    );

    let release = on_node_ok(
        &project.nodes[0],
        &format!("readlink {}/current", project.state_dir()),
    );
    on_node_ok(
        &project.nodes[0],
        &format!(
            "cd {}/{release} && docker compose -p events-{}-blue -f app.yml run -d --entrypoint sleep app 600",
            project.state_dir(),
            project.env
        ),
    );

    project.write(
        "playbooks/pause.yml",
        "steps: [preflight, ship_images, upload_bundle, ensure_infra, snapshot, migrate, start_color,\
         {run: {name: hold, in: node, command: 'sleep 60'}}, health_gate, switch, verify, watch, drain, record, cleanup]\n",
    );
    project.set_extra("playbook: playbooks/pause.yml\n");
    project.commit("v2 with a pause after start_color");
    let mut killed = project.slipway().args(["deploy", &project.env]).spawn();
    let stderr = BufReader::new(killed.stderr.take().unwrap());
    for line in stderr.lines() {
        if line.unwrap().contains("hold...") {
            break;
        }
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert_eq!(
        app_containers(&project, "green").len(),
        1,
        "the killed deploy's container is there"
    );

    project.set_extra("");
    project.commit("v3");
    project.deploy().assert_code(0);
    project.commit("v4");
    project.deploy().assert_code(0);

    assert_eq!(app_containers(&project, "blue").len(), 1);
    assert_eq!(app_containers(&project, "green").len(), 1);
    let after = on_node_ok(
        &project.nodes[0],
        "docker inspect -f '{{.Id}} {{.State.StartedAt}}' postgres",
    );
    assert_eq!(after, unrelated, "the unrelated container was touched");
    on_node(&project.nodes[0], "docker rm -f postgres");
}

/// FC-05 (a): a Docker health check that can never pass fails the gate quoting Docker's
/// log; (b) without any Docker health check the tool still probes the app itself.
#[test]
fn fc05_impossible_and_missing_health_checks() {
    let mut project = Project::new("e2e-fc05", 18112, 1);
    let v1 = project.deploy_first_release();

    project.set_health_extra(
        "  container_check: [\"CMD\", \"/usr/bin/no-such-probe\"]\n  start_period_seconds: 2\n  check_interval_seconds: 1\n",
    );
    project.set_health_timeout(30);
    project.commit("v2 with an impossible health check");
    let started = std::time::Instant::now();
    let run = project.deploy();
    run.assert_code(1)
        .assert_stderr_has("Docker reports the container unhealthy")
        .assert_stderr_has("no-such-probe");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "the gate took {:?}",
        started.elapsed()
    );
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
    assert!(
        app_containers(&project, "green").is_empty(),
        "the failed color was kept"
    );

    project.set_health_extra("  container_check: null\n");
    project.set_health_timeout(8);
    project.set_app_env("FAIL_HEALTH", "1");
    project.commit("v3 without a Docker health check, failing its endpoint");
    project
        .deploy()
        .assert_code(1)
        .assert_stderr_has("never became healthy");
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
}

/// FC-05 (c): a slow starter (start period 20 s, interval 30 s, ready after 25 s) passes.
#[test]
fn fc05_slow_starter_passes() {
    let mut project = Project::new("e2e-fc05c", 18113, 1);
    project.set_health_extra("  start_period_seconds: 20\n  check_interval_seconds: 30\n");
    project.set_health_timeout(90);
    project.set_app_env("START_DELAY_MS", "25000");
    project.commit("slow starter");
    project.deploy().assert_code(0);
    assert!(project.live_version(0).is_some());
}
