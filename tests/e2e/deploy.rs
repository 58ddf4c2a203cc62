//! Deploys that succeed, and one that must not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{http_get, on_node_ok, sh_ok, Project};

/// The database container's ID and start time on a node.
fn db_identity(project: &Project) -> String {
    on_node_ok(
        &project.nodes[0],
        &format!(
            "docker inspect -f '{{{{.Id}}}} {{{{.State.StartedAt}}}}' $(docker ps -q --filter label=com.docker.compose.project=events-{} --filter label=slipway.role=db)",
            project.env
        ),
    )
}

fn status_json(project: &Project) -> serde_json::Value {
    let run = project
        .slipway()
        .args(["status", &project.env, "--json"])
        .run();
    run.assert_code(0);
    serde_json::from_str(&run.stdout).expect("status --json prints JSON")
}

#[test]
fn first_deploy_then_second_flips_color_snapshots_and_migrates() {
    let project = Project::new("e2e-flow", 18101, 1);

    let first = project.deploy();
    first.assert_code(0);
    let v1 = project
        .live_version(0)
        .expect("nginx answers after the first deploy");
    let extensions =
        project.psql("SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension");
    for ext in ["pg_trgm", "postgis", "vector"] {
        assert!(
            extensions.contains(ext),
            "extension {ext} missing: {extensions}"
        );
    }
    assert_eq!(
        project.psql("SELECT version || ' ' || dirty FROM schema_migrations"),
        "3 false"
    );
    let first_status = status_json(&project);
    assert_eq!(first_status[0]["color"], "blue");
    assert_eq!(first_status[0]["version"], v1.as_str());
    let db_before = db_identity(&project);

    project.write(
        "migrations/000004_add_capacity.up.sql",
        "ALTER TABLE events ADD COLUMN capacity integer;\n",
    );
    project.write(
        "migrations/000004_add_capacity.down.sql",
        "ALTER TABLE events DROP COLUMN capacity;\n",
    );
    project.commit("v2: capacity column");

    let second = project.deploy();
    second.assert_code(0).assert_stderr_has("snapshot events_");
    let v2 = project
        .live_version(0)
        .expect("nginx answers after the second deploy");
    assert_ne!(v1, v2);
    assert_eq!(
        db_identity(&project),
        db_before,
        "the database container was recreated"
    );
    assert_eq!(
        project.psql("SELECT version || ' ' || dirty FROM schema_migrations"),
        "4 false"
    );

    let snapshots = on_node_ok(
        &project.nodes[0],
        &format!("ls {}/snapshots", project.state_dir()),
    );
    let dump = snapshots
        .lines()
        .find(|f| f.ends_with(".dump"))
        .expect("a snapshot file");
    assert!(dump.starts_with("events_"), "snapshot name {dump}");
    on_node_ok(
        &project.nodes[0],
        &format!(
            "docker exec $(docker ps -q --filter label=com.docker.compose.project=events-{} --filter label=slipway.role=db) \
             pg_restore --list /snapshots/{dump} >/dev/null",
            project.env
        ),
    );

    let status = status_json(&project);
    assert_eq!(status[0]["node"], "node-1");
    assert_eq!(status[0]["color"], "green");
    assert_eq!(status[0]["version"], v2.as_str());
    assert_eq!(status[0]["health"], "healthy");
    assert_eq!(status[0]["schema_version"], 4);
    assert!(status[0]["url"]
        .as_str()
        .unwrap()
        .contains(&project.http_port.to_string()));
    assert!(status[0]["deployed_by"].as_str().unwrap().contains('@'));

    let near = http_get(&project.url(0, "/events/near?lat=43.65&lon=-79.38&km=50")).unwrap();
    assert_eq!(near.0, 200, "PostGIS query through nginx: {:?}", near.1);
}

#[test]
fn unhealthy_release_keeps_the_old_version_serving() {
    let mut project = Project::new("e2e-unhealthy", 18102, 1);
    project.deploy().assert_code(0);
    let good = project.live_version(0).expect("first release answers");

    project.set_app_env("FAIL_HEALTH", "1");
    project.set_health_timeout(8);
    project.commit("a release that never becomes healthy");

    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (watching, url) = (watching.clone(), project.url(0, "/version"));
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while watching.load(Ordering::Relaxed) {
                seen.push(http_get(&url).map(|(code, body)| (code, body["version"].to_string())));
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        })
    };

    let run = project.deploy();
    watching.store(false, Ordering::Relaxed);
    let seen = watcher.join().unwrap();

    run.assert_code(1)
        .assert_stderr_has("health_gate")
        .assert_stderr_has("node-1")
        .assert_stderr_has("last lines of the new container's log");
    assert!(!seen.is_empty());
    for answer in &seen {
        let (code, version) = answer
            .as_ref()
            .expect("no transport error during the deploy");
        assert_eq!(*code, 200);
        assert_eq!(version.trim_matches('"'), good);
    }
    assert_eq!(project.live_version(0).as_deref(), Some(good.as_str()));

    let green = on_node_ok(
        &project.nodes[0],
        &format!(
            "docker ps -aq --filter label=slipway.env={} --filter label=slipway.color=green",
            project.env
        ),
    );
    assert!(green.is_empty(), "the failed color is still there: {green}");
    crate::lock::assert_lock_free(&project);
}

#[test]
fn custom_steps_run_in_the_app_and_on_the_node_and_the_env_file_fallback_delivers_a_secret() {
    let mut project = Project::new("e2e-custom", 18103, 1);
    project.write(
        "playbooks/custom.yml",
        "steps: [preflight, ship_images, upload_bundle, ensure_infra, snapshot, migrate, start_color,\
         {run: {name: app-version, in: app, command: 'events-server -version'}},\
         {run: {name: mark, in: node, command: 'echo custom-ran > /tmp/e2e-custom-mark'}},\
         health_gate, switch, verify, drain, record]\n",
    );
    project.set_extra("playbook: playbooks/custom.yml\n");
    // The env-file fallback: one secret also given as a variable, its value full of what
    // compose's env files would otherwise expand or cut.
    let api_key = "e2e-$HOME 'q\"s\\ #x;*";
    project
        .write_secrets("DB_PASSWORD=e2e-db-password-1\nAPI_KEY=\"e2e-\\$HOME 'q\\\"s\\\\ #x;*\"\n");
    let template = std::fs::read_to_string(project.root().join("templates/app.env.j2")).unwrap();
    project.write(
        "templates/app.env.j2",
        &format!("{template}\nAPI_KEY_VALUE={{{{ secret_values.API_KEY | dotenv }}}}\n"),
    );
    project.commit("custom playbook");

    let run = project.deploy();
    run.assert_code(0).assert_stderr_has("app-version: ");
    let version = project.live_version(0).unwrap();
    assert!(
        run.stderr.contains(&format!("app-version: {version}")) || run.stderr.contains(&version)
    );
    assert_eq!(
        on_node_ok(&project.nodes[0], "cat /tmp/e2e-custom-mark"),
        "custom-ran"
    );

    // The one running app container (the old color, if any, stopped after the drain).
    let received = on_node_ok(
        &project.nodes[0],
        &format!(
            "docker exec $(docker ps -q --filter 'name=^events-{}-(blue|green)-app-1$') \
             sh -c 'printf %s \"$API_KEY_VALUE\" | od -An -tx1'",
            project.env
        ),
    );
    let sent = sh_ok(&format!(
        "printf %s {} | od -An -tx1",
        shlex::try_quote(api_key).unwrap()
    ));
    let bytes = |hex: &str| hex.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(
        bytes(&received),
        bytes(&sent),
        "the app got API_KEY byte for byte"
    );
}
