//! Secrets never leak (issue 6, FC-17, FC-18): a sentinel secret, used as the database
//! password and as the API key, goes through deploys, a migration with its snapshot, a
//! rollback and four injected failures at the highest verbosity. Its plain, base64 and
//! URL-encoded forms must appear in nothing slipway printed, in no `docker inspect` of the
//! environment's containers (one-off and stopped ones included), in no `docker history` of
//! the images, and in no process's command line on the node or this machine while the
//! snapshot runs. The app must still receive it byte for byte. So that the search can
//! fail, one deploy's custom steps print the secret files (as they are, in base64, URL- and
//! JSON-encoded) for slipway to relay to its output, `--json` events and notification
//! sinks: each must arrive there as `***`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::receiver::{Answer, Receiver};
use crate::support::{http_get, on_node, on_node_ok, sh_ok, HarnessNode, Project, Run};

const SENTINEL: &str = "SNTL-7q$P&x 'y\"z;#*";

/// The sentinel as a `.env` value: double quotes, with `$` and `"` escaped.
fn env_value(value: &str) -> String {
    format!(
        "\"{}\"",
        value
            .replace('\\', "\\\\")
            .replace('$', "\\$")
            .replace('"', "\\\"")
    )
}

fn secrets_file(db_password: &str) -> String {
    format!(
        "DB_PASSWORD={}\nAPI_KEY={}\n",
        env_value(db_password),
        env_value(SENTINEL)
    )
}

fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The sentinel inside a JSON string, as serde writes it and as Go (Docker) does.
fn json_escaped() -> (String, String) {
    let serde = serde_json::to_string(SENTINEL).unwrap();
    let serde = serde[1..serde.len() - 1].to_string();
    let go = serde.replace('&', "\\u0026");
    (serde, go)
}

/// Every form of the sentinel that must never show.
fn forms() -> Vec<(&'static str, String)> {
    let engines = base64::engine::general_purpose::STANDARD;
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (json, go_json) = json_escaped();
    vec![
        ("plain", SENTINEL.to_string()),
        ("base64", engines.encode(SENTINEL)),
        ("base64url", url_safe.encode(SENTINEL)),
        ("url-encoded", url_encode(SENTINEL)),
        (
            "url-encoded, lowercase",
            url_encode(SENTINEL).to_lowercase(),
        ),
        ("form-encoded", url_encode(SENTINEL).replace("%20", "+")),
        ("json-escaped", json),
        ("go-json-escaped", go_json),
    ]
}

/// Fails, naming `what` and the form, when any form of the sentinel is in `text`.
#[track_caller]
fn assert_clean(what: &str, text: &str) {
    for (form, value) in forms() {
        if let Some(at) = text.find(&value) {
            let start = text[..at]
                .char_indices()
                .rev()
                .nth(80)
                .map_or(0, |(i, _)| i);
            panic!(
                "the sentinel ({form}) leaked in {what}, after: {:?}",
                &text[start..at]
            );
        }
    }
}

/// What every slipway run printed, kept for one search at the end.
#[derive(Default)]
struct Printed(Vec<(String, String)>);

impl Printed {
    fn keep(&mut self, label: &str, run: &Run) {
        self.0
            .push((label.to_string(), format!("{}\n{}", run.stdout, run.stderr)));
    }

    fn assert_clean(&self) {
        for (label, text) in &self.0 {
            assert_clean(&format!("the output of `{label}`"), text);
        }
    }
}

/// Runs slipway at the highest verbosity, keeping what it printed.
fn slipway(project: &Project, printed: &mut Printed, args: &[&str]) -> Run {
    slipway_at(project, printed, "-vv", args)
}

fn slipway_at(project: &Project, printed: &mut Printed, verbosity: &str, args: &[&str]) -> Run {
    let mut all = vec![verbosity];
    all.extend_from_slice(args);
    let run = project.slipway().args(all.iter().copied()).run();
    printed.keep(&args.join(" "), &run);
    run
}

/// The hex SHA-256 of `text`.
fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The digest the live app reports for the file named by `var`.
#[track_caller]
fn app_digest(project: &Project, var: &str) -> String {
    let (code, body) = http_get(&project.url(0, &format!("/secret-digest?var={var}")))
        .expect("the app answers /secret-digest");
    assert_eq!(code, 200, "{body}");
    body["sha256"].as_str().unwrap_or_default().to_string()
}

const STOP_FILE: &str = "/tmp/e2e-secrets-sampler.stop";
const SAMPLES: &str = "/tmp/e2e-secrets-sampler.txt";

/// Reads every process's command line, on this machine and on the node, until stopped.
struct CmdlineSampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<String>>>,
    threads: Vec<std::thread::JoinHandle<usize>>,
}

impl CmdlineSampler {
    fn start(node: &HarnessNode) -> Self {
        on_node_ok(node, &format!("rm -f {STOP_FILE} {SAMPLES}"));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let local = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) && rounds < 20_000 {
                    let mut found = seen.lock().unwrap();
                    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
                            found.insert(String::from_utf8_lossy(&raw).replace('\0', " "));
                        }
                    }
                    drop(found);
                    rounds += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                rounds
            })
        };
        let remote = {
            let (stop, seen, node) = (stop.clone(), seen.clone(), node.clone());
            std::thread::spawn(move || {
                // One loop inside the node, about 100 rounds a second, until the stop
                // file appears (or ten minutes pass); `head` prints every process at once.
                let sampled = on_node(
                    &node,
                    &format!(
                        "i=0; \
                         while [ ! -e {STOP_FILE} ] && [ $i -lt 60000 ]; do \
                           head -q -c 4096 /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' >>{SAMPLES}; \
                           echo >>{SAMPLES}; i=$((i+1)); sleep 0.01; done; echo $i"
                    ),
                );
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let text = on_node_ok(&node, &format!("sort -u {SAMPLES}; rm -f {SAMPLES}"));
                seen.lock().unwrap().extend(text.lines().map(String::from));
                String::from_utf8_lossy(&sampled.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0)
            })
        };
        CmdlineSampler {
            stop,
            seen,
            threads: vec![local, remote],
        }
    }

    /// Stops sampling; returns every command line seen and the rounds per side.
    fn stop(self, node: &HarnessNode) -> (BTreeSet<String>, Vec<usize>) {
        self.stop.store(true, Ordering::Relaxed);
        on_node_ok(node, &format!("touch {STOP_FILE}"));
        let rounds = self
            .threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        (seen, rounds)
    }
}

/// Every string in a JSON document (keys too), one a line, unescaped: Docker writes `&` as
/// `\u0026` and `"` as `\"`, which a search of the raw JSON would miss.
fn json_strings(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                out.push_str(key);
                out.push('\n');
                json_strings(v, out);
            }
        }
        _ => {}
    }
}

/// `docker inspect` of every container of the environment on the node (the database,
/// nginx, both colors, stopped ones and one-off ones), as its unescaped strings.
fn inspect_all(project: &Project) -> String {
    let raw = inspect_raw(project);
    let parsed: serde_json::Value = serde_json::from_str(&raw).expect("docker inspect gives JSON");
    let count = parsed.as_array().map_or(0, Vec::len);
    assert!(
        count >= 4,
        "expected db, nginx, an app color and a one-off; inspected {count}"
    );
    let mut text = String::new();
    json_strings(&parsed, &mut text);
    text
}

fn inspect_raw(project: &Project) -> String {
    on_node_ok(
        &project.nodes[0],
        &format!(
            "ids=$(docker ps -aq --filter label=slipway.env={env}; \
               docker ps -aq --filter name=e2e-secrets-oneoff); \
             docker inspect $ids",
            env = project.env
        ),
    )
}

/// `docker history` of every image the environment runs, here and on the node.
fn history_all(project: &Project) -> String {
    let images = on_node_ok(
        &project.nodes[0],
        &format!(
            "docker ps -a --filter label=slipway.env={} --format '{{{{.Image}}}}' | sort -u",
            project.env
        ),
    );
    let mut text = String::new();
    for image in images.lines() {
        let command = format!("docker history --no-trunc --format '{{{{.CreatedBy}}}}' {image}");
        text.push_str(&on_node_ok(&project.nodes[0], &command));
        text.push_str(&sh_ok(&format!("{command} 2>/dev/null || true")));
    }
    assert!(!text.is_empty(), "no image history was read");
    text
}

/// A one-off container of the live release, started the way an operator would.
fn start_one_off(project: &Project) {
    let state = project.state_dir();
    on_node_ok(
        &project.nodes[0],
        &format!(
            "docker rm -f e2e-secrets-oneoff >/dev/null 2>&1; \
             color=$(cat {state}/color); \
             docker compose -p events-{env}-$color -f {state}/current/app.yml run -d \
               --name e2e-secrets-oneoff --no-deps app events-server -version >/dev/null",
            env = project.env
        ),
    );
}

/// Secret files on the node: mode and owner of each.
fn secret_files(project: &Project) -> String {
    on_node_ok(
        &project.nodes[0],
        &format!(
            "find {}/secrets {}/releases/*/secrets -type f -exec stat -c '%a %U %n' {{}} +",
            project.state_dir(),
            project.state_dir()
        ),
    )
}

/// Deploys that must fail, each with one injected fault, and leave the old release live.
fn injected_failures(project: &mut Project, printed: &mut Printed, live: &str) {
    let expect_failure = |project: &Project, printed: &mut Printed, what: &str| {
        let run = slipway(project, printed, &["deploy", &project.env]);
        assert_eq!(run.code, 1, "{what}: expected exit 1\n{}", run.stderr);
        assert_eq!(
            project.live_version(0).as_deref(),
            Some(live),
            "{what}: the old release must keep serving"
        );
        run
    };

    project.set_app_env("FAIL_HEALTH", "1");
    project.commit("fault: failing health");
    expect_failure(project, printed, "failing health");
    project.clear_app_env();

    project.write_secrets(&secrets_file(&format!("{SENTINEL}-wrong")));
    project.commit("fault: wrong database password");
    expect_failure(project, printed, "wrong database password");
    assert_eq!(
        app_digest(project, "DATABASE_PASSWORD_FILE"),
        sha256(SENTINEL),
        "the live color must keep its own copy of the right password"
    );
    project.write_secrets(&secrets_file(SENTINEL));

    let template = project.root().join("templates/app.compose.yml.j2");
    let good = std::fs::read_to_string(&template).unwrap();
    let broken = good.replace(
        "    restart: unless-stopped\n",
        "    restart: unless-stopped\n    mem_limit: not-a-size\n",
    );
    assert_ne!(
        broken, good,
        "the app template has no restart line to break"
    );
    std::fs::write(&template, broken).unwrap();
    project.commit("fault: compose refuses the app project");
    expect_failure(project, printed, "failing compose");
    std::fs::write(&template, good).unwrap();

    project.write(
        "migrations/000005_add_note.up.sql",
        "ALTER TABLE events ADD COLUMN note text;\n",
    );
    project.write(
        "migrations/000005_add_note.down.sql",
        "ALTER TABLE events DROP COLUMN note;\n",
    );
    project.set_extra("snapshot_lock_wait_seconds: 2\n");
    project.commit("fault: pg_dump cannot get its locks");
    let holder = std::process::Command::new("docker")
        .args(["exec", &project.nodes[0].container, "sh", "-c"])
        .arg(format!(
            "docker exec -u postgres $(docker ps -q --filter label=com.docker.compose.project=events-{} \
             --filter label=slipway.role=db) psql -U events -d events -c \
             'BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;'",
            project.env
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let run = expect_failure(project, printed, "failing pg_dump");
    project.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
    );
    let _ = holder.wait_with_output();
    assert!(
        run.stderr.contains("snapshot failed"),
        "the snapshot was meant to fail:\n{}",
        run.stderr
    );
}

/// Shell that URL-encodes a file's bytes (`enc <printf format for the hex> <file>`).
const ENC: &str =
    "enc() { od -An -v -tu1 \"$2\" | awk -v fmt=\"$1\" '{ for (i = 1; i <= NF; i++) { \
c = $i; if ((c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 \
|| c == 46 || c == 95 || c == 126) printf \"%c\", c; else printf fmt, c } }'; }";

/// A playbook whose custom steps print the secret files: `relay` every form on stdout (one
/// a line, which slipway relays as info lines), `leak` four forms on one stderr line before
/// it fails (which becomes the failed step's cause in events and payloads).
fn relay_playbook() -> String {
    let relay = format!(
        "{ENC}\n\
         for f in /run/secrets/api_key /run/secrets/db_password; do\n\
         \x20 cat \"$f\"; echo\n\
         \x20 base64 -w0 \"$f\"; echo\n\
         \x20 base64 -w0 \"$f\" | tr '+/' '-_' | tr -d =; echo\n\
         \x20 enc %%%02X \"$f\"; echo\n\
         \x20 enc %%%02x \"$f\"; echo\n\
         \x20 enc %%%02X \"$f\" | sed 's/%20/+/g'; echo\n\
         \x20 sed 's/\\\\/\\\\\\\\/g; s/\"/\\\\\"/g' \"$f\"; echo\n\
         done\n"
    );
    let leak = format!(
        "{ENC}\n\
         f=/run/secrets/api_key\n\
         echo \"leaked: $(cat $f) $(base64 -w0 $f) $(enc %%%02X $f) $(enc %%%02x $f)\" >&2\n\
         exit 3\n"
    );
    let block = |text: &str| {
        text.lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    };
    format!(
        "steps:\n\
         \x20 - preflight\n  - ship_images\n  - upload_bundle\n  - ensure_infra\n  - snapshot\n\
         \x20 - migrate\n  - start_color\n\
         \x20 - run:\n      name: relay\n      in: app\n      command: |\n{}\
         \x20 - run:\n      name: leak\n      in: app\n      command: |\n{}\
         \x20 - health_gate\n  - switch\n  - verify\n  - drain\n  - record\n",
        block(&relay),
        block(&leak)
    )
}

/// Every string of a JSON document, unescaped, one a line.
fn strings_of(json: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    let mut text = String::new();
    json_strings(&value, &mut text);
    text
}

/// A deploy that relays the secrets, at `-v` with `--json` and two notification sinks: the
/// mask must stand where each form was, and no form may show in any stream or payload.
fn relayed_secrets(project: &mut Project, printed: &mut Printed, live: &str) {
    let hook = Receiver::start(18126, Answer::Statuses(&[]));
    let ntfy = Receiver::start(18127, Answer::Statuses(&[]));
    project.write("playbooks/relay.yml", &relay_playbook());
    project.set_extra(&format!(
        "playbook: playbooks/relay.yml\nnotify:\n\
         \x20 - {{kind: webhook, url: '{}'}}\n\
         \x20 - {{kind: ntfy, url: '{}'}}\n",
        hook.url("/hook"),
        ntfy.url("/deploys"),
    ));
    project.commit("custom steps that print the secrets");

    let run = slipway_at(project, printed, "-v", &["deploy", &project.env, "--json"]);
    assert_eq!(
        run.code, 1,
        "the leak step fails the deploy\n{}",
        run.stderr
    );
    assert_eq!(project.live_version(0).as_deref(), Some(live));

    let relayed: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("| relay: "))
        .collect();
    assert_eq!(relayed.len(), 14, "two files, seven forms:\n{}", run.stderr);
    for line in &relayed {
        assert!(line.ends_with("| relay: ***"), "not masked whole: {line}");
    }

    let masked = "leaked: *** *** *** ***";
    let events: Vec<&str> = run.stdout.lines().collect();
    let failed = events
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "step.failed" && e["step"] == "leak")
        .unwrap_or_else(|| panic!("no step.failed for leak:\n{}", run.stdout));
    let cause = failed["cause"].as_str().unwrap_or_default();
    assert!(cause.contains(masked), "{cause}");
    for event in &events {
        assert_clean("a --json event", &strings_of(event));
    }

    let payloads = hook.requests();
    let node_failed = payloads
        .iter()
        .map(|r| r.json())
        .find(|p| p["event"] == "node.failed")
        .unwrap_or_else(|| panic!("no node.failed payload: {payloads:?}"));
    assert!(
        node_failed["cause"]
            .as_str()
            .unwrap_or_default()
            .contains(masked),
        "{node_failed}"
    );
    for request in &payloads {
        assert_clean(
            "a webhook request",
            &format!("{:?}\n{}", request.headers, request.body),
        );
        assert_clean("a webhook payload", &strings_of(&request.body));
    }

    let messages = ntfy.requests();
    assert!(
        messages.iter().any(|m| m.body.contains(masked)),
        "no ntfy message holds the masked cause: {messages:?}"
    );
    for message in &messages {
        assert_clean(
            "an ntfy message",
            &format!("{:?}\n{}", message.headers, message.body),
        );
    }

    let status = slipway_at(project, printed, "-v", &["status", &project.env, "--json"]);
    status.assert_code(0);
    assert_clean("status --json", &strings_of(&status.stdout));
}

#[test]
fn a_sentinel_secret_never_leaks_and_arrives_byte_for_byte() {
    let mut project = Project::new("e2e-secrets", 18123, 1);
    project.set_health_timeout(30);
    project.write_secrets(&secrets_file(SENTINEL));
    let mut printed = Printed::default();

    let check = slipway(&project, &mut printed, &["secrets", "check", &project.env]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(check.stdout.contains("API_KEY") && check.stdout.contains("ok"));

    project.commit("v1");
    slipway(&project, &mut printed, &["deploy", &project.env]).assert_code(0);
    let v1 = project.live_version(0).expect("v1 answers");
    for var in ["DATABASE_PASSWORD_FILE", "API_KEY_FILE"] {
        assert_eq!(app_digest(&project, var), sha256(SENTINEL), "{var}");
    }
    let near = http_get(&project.url(0, "/events/near?lat=43.65&lon=-79.38&km=50")).unwrap();
    assert_eq!(near.0, 200, "the app reaches the database: {:?}", near.1);

    project.write(
        "migrations/000004_add_capacity.up.sql",
        "ALTER TABLE events ADD COLUMN capacity integer;\n",
    );
    project.write(
        "migrations/000004_add_capacity.down.sql",
        "ALTER TABLE events DROP COLUMN capacity;\n",
    );
    project.commit("v2: a migration, so a snapshot");
    let sampler = CmdlineSampler::start(&project.nodes[0]);
    let v2_run = slipway(&project, &mut printed, &["deploy", &project.env]);
    let (cmdlines, rounds) = sampler.stop(&project.nodes[0]);
    v2_run.assert_code(0).assert_stderr_has("snapshot events_");
    assert!(
        rounds.iter().all(|r| *r > 3),
        "too few samples of the process lists: {rounds:?}"
    );
    assert!(
        cmdlines.iter().any(|c| c.contains("pg_dump")),
        "pg_dump was never seen running; samples: {}",
        cmdlines.len()
    );
    assert_clean(
        "a process command line",
        &cmdlines.into_iter().collect::<Vec<_>>().join("\n"),
    );
    let v2 = project.live_version(0).expect("v2 answers");

    let files = secret_files(&project);
    for line in files.lines() {
        assert!(
            line.starts_with("600 root "),
            "a secret file is not 0600 root: {line}"
        );
    }
    assert!(
        files.contains("/releases/") && files.contains("api_key"),
        "{files}"
    );

    slipway(&project, &mut printed, &["rollback", &project.env, "--yes"]).assert_code(0);
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
    slipway(
        &project,
        &mut printed,
        &["rollback", &project.env, "--to", &v2, "--yes"],
    )
    .assert_code(0);

    injected_failures(&mut project, &mut printed, &v2);
    relayed_secrets(&mut project, &mut printed, &v2);
    start_one_off(&project);

    printed.assert_clean();
    assert_clean("docker inspect", &inspect_all(&project));
    assert_clean("docker history", &history_all(&project));
    assert!(
        inspect_all(&project).contains("/run/secrets/db_password"),
        "the containers should name secret files"
    );
}
