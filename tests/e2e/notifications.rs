//! Notification sinks and `--json` events, against HTTP receivers that run in this test
//! process (slipway runs on this machine, so it reaches them on 127.0.0.1): the payloads
//! of a deploy that succeeds and of one that is rolled back, retries, the HMAC signature,
//! ntfy's request shape, a receiver that never answers, and no secret in any payload.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::receiver::{Answer, Receiver, Request};
use crate::support::{repo, Project, Run};

const HOOK_KEY: &str = "e2e-hook-key-31415";
const SECRETS: &str =
    "DB_PASSWORD=e2e-db-password-1\nAPI_KEY=e2e-api-key-1\nHOOK_KEY=e2e-hook-key-31415\n";
const SECRET_VALUES: [&str; 3] = ["e2e-db-password-1", "e2e-api-key-1", HOOK_KEY];

/// Every `--json` line of a run, parsed; stdout holds nothing else.
fn json_events(run: &Run) -> Vec<Value> {
    run.stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"))
        })
        .collect()
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

/// The steps of the repository's deploy playbook, in order.
fn playbook_steps() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("playbooks/deploy.yml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    doc["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().expect("built-in steps only").to_string())
        .collect()
}

fn hmac_hex(key: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Deliveries once each: retried requests carry the same delivery id.
fn delivered(requests: &[Request]) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for request in requests {
        let id = request.header("x-slipway-delivery").unwrap().to_string();
        if !seen.contains(&id) {
            seen.push(id);
            out.push(request.json());
        }
    }
    out
}

fn assert_no_secret(what: &str, text: &str) {
    use base64::Engine;
    for secret in SECRET_VALUES {
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        assert!(
            !text.contains(secret) && !text.contains(&b64),
            "{what} holds a secret value:\n{text}"
        );
    }
}

#[test]
fn sinks_and_json_events_for_a_deploy_that_succeeds_and_one_that_is_rolled_back() {
    let hook = Receiver::start(18161, Answer::Statuses(&[500, 500]));
    let ntfy = Receiver::start(18162, Answer::Statuses(&[]));
    let mut project = Project::new("e2e-not-flow", 18160, 1);
    project.write_secrets(SECRETS);
    project.set_extra(&format!(
        "notify:\n\
         \x20 - {{kind: webhook, url: '{}', secret: HOOK_KEY, retries: 3, timeout_seconds: 5}}\n\
         \x20 - {{kind: ntfy, url: '{}', title: slipway e2e, priority: 2, tags: [rocket, e2e]}}\n\
         \x20 - {{kind: log, file: deploys.jsonl}}\n",
        hook.url("/hooks/slipway"),
        ntfy.url("/e2e-deploys"),
    ));
    project.commit("notify sinks");

    let ok = project
        .slipway()
        .args(["deploy", &project.env, "--json"])
        .run();
    ok.assert_code(0);
    let events = json_events(&ok);
    let release = project.live_version(0).expect("the release answers");

    // --json: run, build, node and every playbook step, in order, one deploy id.
    let mut expected = vec![
        "run.started",
        "step.started",
        "step.finished",
        "node.started",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    for _ in playbook_steps() {
        expected.push("step.started".into());
        expected.push("step.finished".into());
    }
    expected.push("node.succeeded".into());
    expected.push("run.succeeded".into());
    assert_eq!(names(&events), expected, "{}", ok.stdout);
    let node_steps: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step.finished" && e["node"] == "node-1")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert_eq!(node_steps, playbook_steps());
    assert_eq!(events[1]["step"], "build");
    assert!(events[1]["node"].is_null());
    let deploy_id = events[0]["deploy_id"].as_str().unwrap().to_string();
    for event in &events {
        assert_eq!(event["deploy_id"], deploy_id.as_str());
        assert_eq!(event["environment"], "e2e-not-flow");
        assert_eq!(event["release"], release.as_str(), "{event}");
        assert!(chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str().unwrap()).is_ok());
    }
    for event in events.iter().filter(|e| e["event"] == "step.finished") {
        assert!(event["elapsed_seconds"].as_f64().unwrap() >= 0.0);
    }

    // The summary table is on stderr.
    ok.assert_stderr_has("node-1  ok  ")
        .assert_stderr_has("all 1 node(s) succeeded");

    // Webhook: run.started was answered 500 twice, then 200: three identical attempts.
    let first = hook.requests();
    assert!(first.len() >= 3, "{first:?}");
    assert_eq!(first[0].body, first[1].body);
    assert_eq!(first[1].body, first[2].body);
    let tries = first
        .iter()
        .filter(|r| r.header("x-slipway-delivery") == first[0].header("x-slipway-delivery"))
        .count();
    assert_eq!(tries, 3);
    let sent = delivered(&first);
    assert_eq!(
        names(&sent),
        [
            "run.started",
            "node.started",
            "node.succeeded",
            "run.succeeded"
        ]
    );
    for request in &first {
        assert_eq!(request.path, "/hooks/slipway");
        assert_eq!(request.header("content-type"), Some("application/json"));
        let signature = request.header("x-slipway-signature").expect("a signature");
        assert_eq!(
            signature,
            format!("sha256={}", hmac_hex(HOOK_KEY, &request.body))
        );
        assert_ne!(
            signature,
            format!("sha256={}", hmac_hex("another key", &request.body))
        );
    }
    let succeeded = &sent[2];
    assert_eq!(succeeded["node"], "node-1");
    assert_eq!(succeeded["release"], release.as_str());
    assert_eq!(succeeded["deploy_id"], deploy_id.as_str());
    assert_eq!(succeeded["environment"], "e2e-not-flow");
    assert!(succeeded["cause"].is_null());
    assert!(succeeded["timestamp"].is_string());

    // ntfy: one message per lifecycle event, with its headers.
    let messages = ntfy.requests();
    assert_eq!(messages.len(), 4, "{messages:?}");
    for message in &messages {
        assert_eq!(message.path, "/e2e-deploys");
        assert_eq!(message.header("title"), Some("slipway e2e"));
        assert_eq!(message.header("priority"), Some("2"));
        assert_eq!(message.header("tags"), Some("rocket,e2e"));
    }
    assert!(
        messages[2].body.starts_with("node-1: deploy of "),
        "{}",
        messages[2].body
    );
    assert!(messages[2].body.contains("succeeded"));

    // A release that turns unhealthy after the switch is rolled back.
    project.set_watch_seconds(30);
    project.set_app_env("FAIL_HEALTH_AFTER_MS", "15000");
    project.commit("v2 turns unhealthy 15 s after it starts");
    let failed = project
        .slipway()
        .args(["deploy", &project.env, "--json"])
        .run();
    failed.assert_code(1);
    let events = json_events(&failed);
    let tail: Vec<String> = names(&events).into_iter().rev().take(4).collect();
    assert_eq!(
        tail,
        [
            "run.failed",
            "node.rolled_back",
            "node.failed",
            "step.failed"
        ]
    );
    let step_failed = &events[events.len() - 4];
    assert_eq!(step_failed["step"], "watch");
    assert!(step_failed["cause"].as_str().unwrap().contains("unhealthy"));
    assert_eq!(project.live_version(0).as_deref(), Some(release.as_str()));
    failed.assert_stderr_has("did not succeed: node-1 (failed)");

    let second = delivered(&hook.requests()[first.len()..]);
    assert_eq!(
        names(&second),
        [
            "run.started",
            "node.started",
            "node.failed",
            "node.rolled_back",
            "run.failed"
        ]
    );
    let node_failed = &second[2];
    assert_eq!(node_failed["node"], "node-1");
    assert_eq!(node_failed["step"], "watch");
    assert_ne!(node_failed["release"], release.as_str());
    assert!(node_failed["release"].is_string());
    assert!(node_failed["cause"].as_str().unwrap().contains("unhealthy"));
    assert!(second[3]["outcome"]
        .as_str()
        .unwrap()
        .contains("traffic is back"));
    assert_eq!(second[4]["nodes"], serde_json::json!(["node-1"]));

    let urgent = ntfy.requests()[4..]
        .iter()
        .filter(|m| m.header("priority") == Some("4"))
        .count();
    assert_eq!(urgent, 3, "node.failed, node.rolled_back, run.failed");

    // The log file has every lifecycle event of both runs, and no step events.
    let log = std::fs::read_to_string(project.root().join("deploys.jsonl")).unwrap();
    let logged: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(logged.len(), 9, "{log}");
    assert!(logged
        .iter()
        .all(|e| !e["event"].as_str().unwrap().starts_with("step.")));

    for request in hook.requests().iter().chain(&ntfy.requests()) {
        assert_no_secret(
            "a request",
            &format!("{:?}{}", request.headers, request.body),
        );
    }
    assert_no_secret("the log sink", &log);
    assert_no_secret("--json", &format!("{}{}", ok.stdout, failed.stdout));
}

#[test]
fn a_receiver_that_hangs_neither_fails_nor_stalls_the_deploy_and_no_secret_leaks() {
    let good = Receiver::start(18164, Answer::Statuses(&[]));
    let hung = Receiver::start(18165, Answer::Hang);
    let mut project = Project::new("e2e-not-hang", 18163, 1);
    project.write_secrets(SECRETS);
    project.set_extra(&format!(
        "notify:\n\
         \x20 - {{kind: webhook, name: stuck-hook, url: '{}', retries: 1, timeout_seconds: 2}}\n\
         \x20 - {{kind: webhook, url: '{}', secret: HOOK_KEY, events: [run.started, step.failed, node.failed, run.failed, run.succeeded]}}\n",
        hung.url("/never"),
        good.url("/hook"),
    ));
    project.commit("a sink that never answers");

    let child = project.slipway().args(["deploy", &project.env]).spawn();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    let output = rx
        .recv_timeout(Duration::from_secs(600))
        .expect("the deploy finishes while a notification receiver hangs");
    let status = output.status;
    let run = Run::from(output);
    assert_eq!(status.code(), Some(0), "{}", run.stderr);
    run.assert_stderr_has("warning: notify webhook `stuck-hook`")
        .assert_stderr_has("all 1 node(s) succeeded");
    assert!(!hung.requests().is_empty(), "the hung receiver was reached");
    assert!(
        !run.stderr.contains("/never"),
        "a warning shows the sink's URL, which may hold a token:\n{}",
        run.stderr
    );

    assert_eq!(
        names(&delivered(&good.requests())),
        ["run.started", "run.succeeded"]
    );

    // A custom step that fails while printing secrets: every sink gets it masked.
    project.write(
        "playbooks/leaky.yml",
        "steps: [preflight, ship_images, upload_bundle, ensure_infra, snapshot, migrate, start_color,\
         {run: {name: leak, in: app, command: '{ cat /run/secrets/api_key; echo; base64 /run/secrets/db_password; } >&2; exit 3'}},\
         health_gate, switch, verify, drain, record]\n",
    );
    let extra = format!(
        "playbook: playbooks/leaky.yml\nnotify:\n\
         \x20 - {{kind: webhook, url: '{}', events: [step.failed, node.failed, run.failed]}}\n\
         \x20 - {{kind: log, file: leaky.jsonl, events: [step.failed, node.failed]}}\n",
        good.url("/leak"),
    );
    project.set_extra(&extra);
    project.commit("a step that prints secrets and fails");
    let before = good.requests().len();
    let leaky = project
        .slipway()
        .args(["deploy", &project.env, "--json"])
        .run();
    leaky.assert_code(1);

    let payloads = delivered(&good.requests()[before..]);
    assert_eq!(
        names(&payloads),
        ["step.failed", "node.failed", "run.failed"]
    );
    assert_eq!(payloads[0]["step"], "leak");
    let cause = payloads[0]["cause"].as_str().unwrap();
    assert!(cause.contains("***"), "the secrets were masked: {cause}");
    for request in &good.requests() {
        assert_no_secret(
            "a webhook request",
            &format!("{:?}{}", request.headers, request.body),
        );
    }
    let log = std::fs::read_to_string(project.root().join("leaky.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert_no_secret("the log sink", &log);
    assert_no_secret("--json", &leaky.stdout);
    assert_no_secret("stderr", &leaky.stderr);
}
