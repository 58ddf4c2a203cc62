//! `slipway snapshot create|restore|download` (issue 5, FC-08, FC-09): a restore under
//! traffic keeps the app and its extensions working and brings back exactly the snapshot's
//! data; snapshots are made by the server's own pg_dump, and a dump that fails, is killed,
//! is empty or unreadable never becomes a snapshot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::support::{http_get, on_node, on_node_ok, sh_ok, HarnessNode, Project};

/// The three queries of the events server that need PostGIS, pgvector and pg_trgm.
const QUERIES: [&str; 3] = [
    "/events/near?lat=53.55&lon=9.95&km=10",
    "/events/similar?v=0.9,0.1,0.1&k=3",
    "/events/search?q=jazz",
];

/// `docker exec` into this environment's database container on a node.
fn in_db(project: &Project, node: &HarnessNode, command: &str) -> std::process::Output {
    on_node(
        node,
        &format!(
            "docker exec $(docker ps -q --filter label=com.docker.compose.project=events-{} \
             --filter label=slipway.role=db) sh -c '{command}'",
            project.env
        ),
    )
}

fn snapshot_files(project: &Project) -> Vec<String> {
    let dir = format!("{}/snapshots", project.state_dir());
    let listing = on_node_ok(&project.nodes[0], &format!("ls -1a {dir}"));
    listing
        .lines()
        .filter(|f| *f != "." && *f != "..")
        .map(String::from)
        .collect()
}

/// The snapshot files (`.dump`) in the environment's snapshot directory on the first node.
pub(crate) fn dumps(project: &Project) -> Vec<String> {
    snapshot_files(project)
        .into_iter()
        .filter(|f| f.ends_with(".dump"))
        .collect()
}

/// An open transaction that has read the events table, so the restore cannot lock it;
/// ended by the test through `pg_terminate_backend`.
fn hold_events_table(project: &Project) -> std::process::Child {
    let mut child = std::process::Command::new("docker")
        .args(["exec", &project.nodes[0].container, "sh", "-c"])
        .arg(format!(
            "docker exec -e PGAPPNAME=e2e-snap-blocker -u postgres \
             $(docker ps -q --filter label=com.docker.compose.project=events-{} \
             --filter label=slipway.role=db) psql -U events -d events \
             -c 'BEGIN; SELECT count(*) FROM events; SELECT pg_sleep(120); COMMIT;'",
            project.env
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker exec runs");
    for _ in 0..50 {
        let waiting = project.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'e2e-snap-blocker' \
             AND wait_event = 'PgSleep'",
        );
        if waiting == "1" {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the blocking transaction did not start");
}

/// Everything the restore must bring back, as one comparable text.
fn fingerprint(project: &Project) -> String {
    project.psql(
        "SELECT (SELECT count(*) || ':' || md5(string_agg(id || name || starts_at || \
         location::text || embedding::text, ',' ORDER BY id)) FROM events) || ' ' || \
         (SELECT count(*) || ':' || md5(string_agg(code, ',' ORDER BY code)) FROM tickets) || ' ' || \
         (SELECT version || ' ' || dirty FROM schema_migrations)",
    )
}

fn extension_versions(project: &Project) -> String {
    project.psql(
        "SELECT string_agg(extname || ' ' || extversion, ', ' ORDER BY extname) FROM pg_extension",
    )
}

/// Requests the three queries through nginx in turn until stopped; returns every answer
/// that was not a 200 (status or transport error) and the number of requests.
fn poll(url: String, stop: Arc<AtomicBool>) -> JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let path = QUERIES[sent % QUERIES.len()];
            sent += 1;
            match http_get(&format!("{url}{path}")) {
                Some((200, _)) => {}
                Some((code, body)) => failures.push(format!("{path}: {code} {body}")),
                None => failures.push(format!("{path}: transport error")),
            }
        }
        (sent, failures)
    })
}

#[test]
fn fc09_restore_under_traffic_brings_back_the_snapshot_and_keeps_extensions() {
    let mut project = Project::new("e2e-snap-restore", 18150, 1);
    project.set_extra("snapshot_lock_wait_seconds: 2\n");
    project.commit("v1");
    project.deploy().assert_code(0);

    let indexes = project.psql(
        "SELECT string_agg(indexname || ' ' || split_part(split_part(indexdef, 'USING ', 2), ' ', 1), \
         ', ' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'events'",
    );
    for wanted in [
        "events_embedding_hnsw hnsw",
        "events_location_gist gist",
        "events_name_trgm gin",
    ] {
        assert!(
            indexes.contains(wanted),
            "events lacks `{wanted}`: {indexes}"
        );
    }
    project.psql(
        "CREATE TABLE tickets (code text PRIMARY KEY); \
         INSERT INTO tickets SELECT 't' || g FROM generate_series(1, 50) g",
    );
    let extensions = extension_versions(&project);
    let snapshot_data = fingerprint(&project);

    let created = project
        .slipway()
        .args(["snapshot", "create", &project.env])
        .run();
    created.assert_code(0).assert_stderr_has("snapshot events_");
    let taken = dumps(&project);
    assert_eq!(taken.len(), 1, "one snapshot: {taken:?}");
    let name = taken[0].clone();

    project.psql(
        "UPDATE events SET name = 'Changed ' || id WHERE id % 2 = 0; \
         DELETE FROM events WHERE id = 1; \
         INSERT INTO events (name, location, embedding) VALUES \
           ('After the snapshot', ST_SetSRID(ST_MakePoint(9.95, 53.55), 4326)::geography, '[0.5,0.5,0.5]'); \
         DROP TABLE tickets; CREATE TABLE made_later (id int)",
    );
    let changed = project.psql("SELECT count(*) FROM events WHERE name LIKE 'Changed %'");
    assert_ne!(changed, "0");

    let refused = project
        .slipway()
        .args(["snapshot", "restore", &project.env, &name])
        .run();
    refused
        .assert_code(2)
        .assert_stderr_has(&format!("restore {name}"))
        .assert_stderr_has("First a snapshot of the current state is taken")
        .assert_stderr_has("--yes");
    assert_eq!(
        dumps(&project).len(),
        1,
        "a refused restore takes no snapshot"
    );
    assert_eq!(
        project.psql("SELECT to_regclass('made_later') IS NOT NULL"),
        "t"
    );

    let blocker = hold_events_table(&project);
    let blocked = project
        .slipway()
        .args(["snapshot", "restore", &project.env, &name, "--yes"])
        .run();
    project.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'e2e-snap-blocker'",
    );
    let _ = blocker.wait_with_output();
    blocked
        .assert_code(1)
        .assert_stderr_has("step `restore` failed")
        .assert_stderr_has("lock timeout")
        .assert_stderr_has("nothing was changed");
    assert_eq!(
        project.psql("SELECT count(*) FROM events WHERE name LIKE 'Changed %'"),
        changed,
        "a failed restore changed data"
    );
    assert_eq!(
        project.psql("SELECT to_regclass('made_later') IS NOT NULL"),
        "t"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll(project.url(0, ""), stop.clone());
    let restored = project
        .slipway()
        .args(["snapshot", "restore", &project.env, &name, "--yes"])
        .run();
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = poller.join().unwrap();
    eprintln!(
        "{}\npoller during the restore: {sent} requests, {} failed: {failures:?}",
        restored.stderr,
        failures.len()
    );
    restored
        .assert_code(0)
        .assert_stderr_has("extensions unchanged")
        .assert_stderr_has(&format!("restored {name}"));
    assert!(sent > 0, "the poller sent no request");
    assert!(
        failures.is_empty(),
        "requests failed during the restore: {failures:?}"
    );

    assert_eq!(
        fingerprint(&project),
        snapshot_data,
        "data equals the snapshot"
    );
    assert_eq!(
        project.psql("SELECT to_regclass('made_later') IS NULL"),
        "t",
        "a table made after the snapshot is gone"
    );
    assert_eq!(extension_versions(&project), extensions);
    for path in QUERIES {
        let (code, body) = http_get(&project.url(0, path)).expect("the app answers");
        assert_eq!(code, 200, "{path}: {body}");
        assert!(
            body["events"].as_array().is_some_and(|a| !a.is_empty()),
            "{path} found nothing: {body}"
        );
    }
    let (_, found) = http_get(&project.url(0, "/events/search?q=jazz")).unwrap();
    assert!(
        found.to_string().contains("Harbour Jazz Night"),
        "search lacks the restored row: {found}"
    );

    let all = dumps(&project);
    assert_eq!(all.len(), 3, "each restore took a snapshot first: {all:?}");
    let list = project
        .slipway()
        .args(["snapshot", "list", &project.env])
        .run();
    list.assert_code(0);
    assert!(
        list.stdout.matches("schema 3  taken ").count() == 3 && list.stdout.contains("at release "),
        "snapshot list:\n{}",
        list.stdout
    );

    let local = tempfile::tempdir().unwrap();
    let download = project
        .slipway()
        .args(["snapshot", "download", &project.env, &name, "--to"])
        .args([local.path().to_str().unwrap()])
        .run();
    download.assert_code(0);
    let copy = local.path().join(&name);
    let remote_sum = on_node_ok(
        &project.nodes[0],
        &format!(
            "sha256sum {}/snapshots/{name} | cut -d' ' -f1",
            project.state_dir()
        ),
    );
    let local_sum = sh_ok(&format!("sha256sum {} | cut -d' ' -f1", copy.display()));
    assert_eq!(local_sum.trim(), remote_sum);
    assert!(download.stdout.contains(&remote_sum), "{}", download.stdout);
    assert!(local.path().join(format!("{name}.json")).exists());
    assert!(!local.path().join(format!("{name}.partial")).exists());

    project
        .slipway()
        .args([
            "snapshot",
            "download",
            &project.env,
            "events_20200101T000000Z_0000000.dump",
        ])
        .run()
        .assert_code(2)
        .assert_stderr_has("holds snapshot");
}

/// Replaces the database container's own pg_dump with a shell script whose lines are
/// `body` (`$real` runs the real one, `$out` is the file it was asked to write); `None`
/// puts the real one back.
fn fake_container_pg_dump(project: &Project, body: Option<&str>) {
    use base64::Engine;

    let bin = "/usr/lib/postgresql/17/bin";
    let command = match body {
        Some(body) => {
            let script =
                format!("#!/bin/sh\nreal={bin}/pg_dump.real\nfor a; do out=$a; done\n{body}\n");
            let encoded = base64::engine::general_purpose::STANDARD.encode(script);
            format!(
                "[ -e {bin}/pg_dump.real ] || mv {bin}/pg_dump {bin}/pg_dump.real; \
                 echo {encoded} | base64 -d > {bin}/pg_dump; chmod 755 {bin}/pg_dump"
            )
        }
        None => format!("mv {bin}/pg_dump.real {bin}/pg_dump"),
    };
    let out = in_db(project, &project.nodes[0], &command);
    assert!(
        out.status.success(),
        "faking pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fake's first line: answer `--version` as the real one does.
const REAL_VERSION: &str = "case $1 in --version) exec $real --version;; esac";

#[test]
fn fc08_snapshots_come_from_the_servers_pg_dump_and_bad_dumps_never_count() {
    let project = Project::new("e2e-snap-pgdump", 18151, 1);
    project.commit("v1");
    project.deploy().assert_code(0);
    let node = &project.nodes[0];

    let marker = "/tmp/e2e-snap-node-pg-dump-ran";
    on_node_ok(
        node,
        &format!(
            "rm -f {marker}; printf '#!/bin/sh\\ntouch {marker}\\necho \"pg_dump (PostgreSQL) 12.22\"\\nexit 1\\n' \
             > /usr/local/bin/pg_dump; chmod 755 /usr/local/bin/pg_dump"
        ),
    );
    let created = project
        .slipway()
        .args(["snapshot", "create", &project.env])
        .run();
    on_node(node, "rm -f /usr/local/bin/pg_dump");
    created.assert_code(0);
    assert!(
        !on_node(node, &format!("test -e {marker}")).status.success(),
        "the node's own pg_dump ran"
    );
    let good = dumps(&project);
    assert_eq!(good.len(), 1);
    let header = in_db(
        &project,
        node,
        &format!("pg_restore --list /snapshots/{}", good[0]),
    );
    let header = String::from_utf8_lossy(&header.stdout);
    assert!(
        header.contains("Dumped by pg_dump version: 17."),
        "not made by pg_dump 17:\n{header}"
    );

    let old = "events_20200101T000000Z_0000000.dump";
    let dir = format!("{}/snapshots", project.state_dir());
    on_node_ok(
        node,
        &format!("echo old > {dir}/{old}; echo '{{}}' > {dir}/{old}.json"),
    );
    // The dump and the shell around it are killed: no trap runs, a partial file stays.
    fake_container_pg_dump(
        &project,
        Some(&format!(
            "{REAL_VERSION}\nhead -c 4096 /dev/urandom > $out\nkill -9 $PPID $$"
        )),
    );
    let killed = project
        .slipway()
        .args(["snapshot", "create", &project.env])
        .run();
    killed.assert_code(1).assert_stderr_has("snapshot failed");
    assert_eq!(
        dumps(&project),
        good,
        "a killed dump left a file under a final name"
    );
    assert!(
        !snapshot_files(&project).iter().any(|f| f.starts_with(old)),
        "retention did not run before the dump: the 2020 snapshot is still there"
    );

    for (what, script) in [
        ("empty", ": > $out"),
        ("unreadable", "echo not-a-dump > $out"),
        ("failed", "echo half > $out; exit 1"),
    ] {
        fake_container_pg_dump(&project, Some(&format!("{REAL_VERSION}\n{script}")));
        let run = project
            .slipway()
            .args(["snapshot", "create", &project.env])
            .run();
        run.assert_code(1);
        assert_eq!(dumps(&project), good, "an {what} dump became a snapshot");
        assert_eq!(
            snapshot_files(&project),
            [good[0].clone(), format!("{}.json", good[0])],
            "an {what} dump left a file (or the killed dump's partial file stayed); slipway said:\n{}",
            run.stderr
        );
    }

    fake_container_pg_dump(&project, Some("echo 'pg_dump (PostgreSQL) 16.4'; exit 1"));
    project.write(
        "migrations/000004_add_capacity.up.sql",
        "ALTER TABLE events ADD COLUMN capacity integer;\n",
    );
    project.commit("adds events.capacity");
    let refused = project.deploy();
    refused
        .assert_code(1)
        .assert_stderr_has("step `snapshot` failed")
        .assert_stderr_has("pg_dump (PostgreSQL) 16.4")
        .assert_stderr_has("server is PostgreSQL 17.");
    assert_eq!(
        project.psql("SELECT version || ' ' || dirty FROM schema_migrations"),
        "3 false",
        "nothing was migrated"
    );
    assert_eq!(dumps(&project), good);

    fake_container_pg_dump(&project, None);
    project.deploy().assert_code(0);
    assert_eq!(project.psql("SELECT version FROM schema_migrations"), "4");
    assert_eq!(dumps(&project).len(), 2, "the deploy took a snapshot");
}
