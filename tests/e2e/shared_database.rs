//! FC-07: three nodes share the database on the first one (`database.node`). A migration
//! that sleeps 60 s runs once, before any node switches; a second deploy of the same
//! environment started 5 s later fails on the lock, naming the first, and never hangs.

use std::time::{Duration, Instant};

use crate::support::{on_node_ok, Project, Watched};

/// The compose projects' containers of `role` on a node of this environment.
fn containers(project: &Project, node: usize, role: &str) -> usize {
    let ids = on_node_ok(
        &project.nodes[node],
        &format!(
            "docker ps -q --filter label=slipway.env={} --filter label=slipway.role={role}",
            project.env
        ),
    );
    ids.split_whitespace().count()
}

/// Where in `events` the first one matching `kind`, `step` and `node` (`None`: the run's
/// own) is.
fn position(events: &[serde_json::Value], kind: &str, step: &str, node: Option<&str>) -> usize {
    events
        .iter()
        .position(|e| e["event"] == kind && e["step"] == step && e["node"].as_str() == node)
        .unwrap_or_else(|| panic!("no {kind} event of step {step} on {node:?}: {events:#?}"))
}

/// Three nodes that use node-1's database, published on a port of this test's own.
fn sharing_node_1s_database(env: &str, http_port: u16) -> Project {
    let mut project = Project::new(env, http_port, 3);
    project.set_extra(&format!(
        "database:\n  node: node-1\n  address: {}\n  port: {}\n",
        project.nodes[0].address,
        http_port + 7000
    ));
    project
}

#[test]
fn fc07_nodes_sharing_a_database_migrate_it_once_before_any_switch() {
    let project = sharing_node_1s_database("e2e-fc07", 18140);
    project.deploy().assert_code(0);
    assert_eq!(containers(&project, 0, "db"), 1, "node-1 runs the database");
    for node in 1..3 {
        assert_eq!(
            containers(&project, node, "db"),
            0,
            "node-{} runs none",
            node + 1
        );
        let search = crate::support::http_get(&project.url(node, "/events/search?q=jazz"));
        assert_eq!(search.map(|r| r.0), Some(200), "node-{} reads it", node + 1);
    }

    project.write(
        "migrations/000004_slow_once.up.sql",
        "SELECT pg_sleep(60);\n\
         CREATE TABLE fc07_runs (ran_at timestamptz NOT NULL DEFAULT now());\n\
         INSERT INTO fc07_runs DEFAULT VALUES;\n",
    );
    project.commit("v2: a migration that sleeps 60 s and records each run");
    let first = Watched::start(project.slipway().args(["deploy", &project.env, "--json"]));
    std::thread::sleep(Duration::from_secs(5));

    let started = Instant::now();
    let second = project.slipway().args(["deploy", &project.env]).run();
    let waited = started.elapsed();
    second
        .assert_code(3)
        .assert_stderr_has("locked by another operation");
    assert!(
        waited < Duration::from_secs(30),
        "the second deploy took {waited:?}"
    );

    let (first, _) = first.finish(Duration::from_secs(300));
    first.assert_code(0);
    let events = first.events();
    let deploy_id = events[0]["deploy_id"].as_str().unwrap_or_default();
    second.assert_stderr_has(deploy_id);

    let migrated = position(&events, "step.finished", "migrate", None);
    for node in ["node-1", "node-2", "node-3"] {
        let switched = position(&events, "step.started", "switch", Some(node));
        assert!(
            migrated < switched,
            "{node} switched before the migration ended"
        );
    }
    assert_eq!(
        project.psql("SELECT count(*) FROM fc07_runs"),
        "1",
        "one run"
    );
    assert_eq!(
        project.psql("SELECT version, dirty FROM schema_migrations"),
        "4|f"
    );
    for node in 0..3 {
        assert!(
            project.live_version(node).is_some(),
            "node-{} serves",
            node + 1
        );
    }
}

/// `--limit node-3` deploys node-3 alone, yet the shared database on node-1 is locked,
/// snapshotted and migrated once; node-1 and node-2 keep their release. Database commands
/// act on node-1 alone, and a rollback that would revert the schema once per node is
/// refused while a plain one works.
#[test]
fn a_node_deployed_alone_migrates_the_shared_database_on_its_own_node() {
    let project = sharing_node_1s_database("e2e-fc07-limit", 18141);
    let v1 = project.deploy_first_release();

    project.write(
        "migrations/000004_note.up.sql",
        "ALTER TABLE events ADD COLUMN fc07_note text;\n",
    );
    project.commit("v2 with a migration");
    let env = project.env.clone();
    project
        .slipway()
        .args(["deploy", &env, "--limit", "node-3"])
        .run()
        .assert_code(0)
        .assert_stderr_has("migrations [4] applied once");
    assert_eq!(
        project.psql("SELECT version, dirty FROM schema_migrations"),
        "4|f"
    );
    let v2 = project.live_version(2).expect("node-3 answers");
    assert_ne!(v2, v1);
    for node in 0..2 {
        assert_eq!(project.live_version(node).as_deref(), Some(v1.as_str()));
    }
    crate::lock::assert_lock_free(&project);

    let status = project.slipway().args(["migrate", "status", &env]).run();
    status.assert_code(0);
    let nodes: Vec<&str> = status
        .stdout
        .lines()
        .filter(|l| l.starts_with("node-"))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert_eq!(nodes, ["node-1"], "{}", status.stdout);

    project
        .slipway()
        .args([
            "rollback",
            &env,
            "--limit",
            "node-3",
            "--migrate-down",
            "--yes",
        ])
        .run()
        .assert_code(2)
        .assert_stderr_has("share one database");
    project
        .slipway()
        .args(["rollback", &env, "--limit", "node-3", "--yes"])
        .run()
        .assert_code(0);
    assert_eq!(project.live_version(2).as_deref(), Some(v1.as_str()));
    assert_eq!(
        project.psql("SELECT version, dirty FROM schema_migrations"),
        "4|f"
    );
}
