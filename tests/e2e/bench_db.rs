//! The database scale benchmark (issue 5, point 5), run by `tests/bench-db`: on one harness
//! node with the reference app deployed, the events table is loaded with
//! `SLIPWAY_BENCH_EVENTS` events (default 1,000,000; geography, vector(3) and text columns
//! with the app's GiST, HNSW and trigram GIN indexes, generated inside the database
//! container), then it measures `slipway snapshot create` against a plain `pg_dump -Fc` of
//! the same database in the same container, `slipway snapshot restore`, and a deploy that
//! adds a column and builds an index concurrently while reads and writes go through nginx.
//! It prints figures; it asserts only that every command succeeded.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::load::{ms, Load, Options, Report};
use crate::support::{on_node_ok, Project};

/// The `lock_timeout` the deploy's migrations run with (slipway's default).
const LOCK_TIMEOUT_MS: u64 = 3000;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The database container of the project's environment, as a shell expression on the node.
fn db_container(project: &Project) -> String {
    format!(
        "$(docker ps -q --filter label=com.docker.compose.project=events-{} \
         --filter label=slipway.role=db)",
        project.env
    )
}

/// Runs a psql script (statement by statement, one session) in the database container.
fn db_script(project: &Project, sql: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(sql);
    on_node_ok(
        &project.nodes[0],
        &format!(
            "echo {encoded} | base64 -d | docker exec -i -u postgres {db} \
             psql -X -q -A -t -v ON_ERROR_STOP=1 -U events -d events",
            db = db_container(project)
        ),
    )
}

/// Runs a shell command in the database container, as its root (as slipway's pg_dump runs).
fn db_shell(project: &Project, command: &str) -> String {
    on_node_ok(
        &project.nodes[0],
        &format!("docker exec {} sh -c '{command}'", db_container(project)),
    )
}

fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let started = Instant::now();
    let value = f();
    (started.elapsed(), value)
}

/// The reference app's index statements (from its events migration) and their names.
fn app_indexes(project: &Project) -> Vec<(String, String)> {
    let file = std::fs::read_to_string(project.root().join("migrations/000002_events.up.sql"))
        .expect("the events migration");
    let indexes: Vec<(String, String)> = file
        .lines()
        .filter(|l| l.starts_with("CREATE INDEX "))
        .map(|l| {
            let name = l.split_whitespace().nth(2).unwrap_or_default().to_string();
            (name, l.to_string())
        })
        .collect();
    assert_eq!(indexes.len(), 3, "GiST, HNSW and trigram GIN: {indexes:?}");
    indexes
}

/// Fills the events table server-side with `count` generated events: the indexes are
/// dropped, the rows inserted, then the same indexes built again. Returns the time of the
/// insert and of each index build.
fn load_events(project: &Project, count: usize) -> Vec<(String, Duration)> {
    let indexes = app_indexes(project);
    let names: Vec<&str> = indexes.iter().map(|(n, _)| n.as_str()).collect();
    db_script(project, &format!("DROP INDEX {};", names.join(", ")));

    let insert = format!(
        "INSERT INTO events (name, starts_at, location, embedding) \
         SELECT (ARRAY['Jazz','Rock','Folk','Tech','Food','Film','Art','Wine'])[1 + i % 8] \
                || ' ' || (ARRAY['Night','Meetup','Brunch','Festival','Tour','Market','Talk'])\
                [1 + (i / 8) % 7] || ' ' || i, \
                timestamptz '2027-01-01 00:00+00' + (i % 525600) * interval '1 minute', \
                ST_SetSRID(ST_MakePoint(-180 + 360 * random(), -85 + 170 * random()), 4326)::geography, \
                ARRAY[random(), random(), random()]::real[]::vector \
         FROM generate_series(1, {count}) AS i;"
    );
    let mut phases = vec![(
        format!("insert {count} rows"),
        timed(|| db_script(project, &insert)).0,
    )];
    for (name, statement) in &indexes {
        // Built by one process in its own memory: a parallel build's shared memory would
        // not fit the container's 64 MB /dev/shm.
        let sql = format!(
            "SET maintenance_work_mem = '1GB';\nSET max_parallel_maintenance_workers = 0;\n{statement}"
        );
        phases.push((
            format!("build {name}"),
            timed(|| db_script(project, &sql)).0,
        ));
    }
    phases.push((
        "vacuum analyze".into(),
        timed(|| db_script(project, "VACUUM ANALYZE events;")).0,
    ));
    phases
}

/// A running slipway command whose stderr lines are timed as they arrive.
struct Timed {
    started: Instant,
    finished: Instant,
    code: i32,
    lines: Vec<(Instant, String)>,
}

impl Timed {
    fn run(mut child: Child) -> Timed {
        let started = Instant::now();
        let mut stdout = child.stdout.take().expect("piped stdout");
        let drain = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines: Vec<(Instant, String)> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .map(|l| (Instant::now(), l))
            .collect();
        let status = child.wait().expect("slipway ran");
        let _ = drain.join();
        Timed {
            started,
            finished: Instant::now(),
            code: status.code().unwrap_or(-1),
            lines,
        }
    }

    #[track_caller]
    fn assert_ok(&self) {
        let text: Vec<&str> = self.lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(self.code, 0, "slipway failed:\n{}", text.join("\n"));
    }

    fn at(&self, text: &str) -> Option<Instant> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(text))
            .map(|(at, _)| *at)
    }

    fn line(&self, text: &str) -> Option<&str> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(text))
            .map(|(_, l)| l.as_str())
    }

    fn total(&self) -> Duration {
        self.finished - self.started
    }
}

/// The newest snapshot file on the node and its size in bytes.
fn newest_snapshot(project: &Project) -> (String, u64) {
    let line = on_node_ok(
        &project.nodes[0],
        &format!(
            "cd {}/snapshots && ls -t *.dump | head -n 1 | xargs stat -c '%n %s'",
            project.state_dir()
        ),
    );
    let (name, size) = line.split_once(' ').expect("name size");
    (name.to_string(), size.parse().expect("a size"))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Commits a release whose migrations add a column (one transaction) and build an index
/// concurrently (a `-- slipway:no-transaction` file).
fn commit_schema_change(project: &Project) {
    project.write(
        "migrations/000004_add_capacity.up.sql",
        "ALTER TABLE events ADD COLUMN capacity integer;\n",
    );
    project.write(
        "migrations/000005_index_starts_at.up.sql",
        "-- slipway:no-transaction\n\
         CREATE INDEX CONCURRENTLY events_starts_at ON events (starts_at);\n",
    );
    project.commit("v2: a column, and an index built concurrently");
}

/// Reads (PostGIS near) with one write (`POST /events`) in every ten requests.
fn read_write_load() -> Options {
    Options {
        rate: 100,
        path: "/events/near?lat=43.65&lon=-79.38&km=300".into(),
        write_every: 10,
        max_duration: Duration::from_secs(1800),
        ..Options::default()
    }
}

/// The requests in flight at any moment of `[from, to)`.
fn overlapping(report: &Report, from: Instant, to: Instant) -> Report {
    Report {
        started: report.started,
        samples: report
            .samples
            .iter()
            .filter(|s| s.sent < to && s.received >= from)
            .cloned()
            .collect(),
        hit_deadline: report.hit_deadline,
    }
}

fn print_load(label: &str, report: &Report) {
    let writes = report.samples.iter().filter(|s| s.write).count();
    let causes = report.failure_causes();
    if !causes.is_empty() {
        println!("{label}: failed requests by cause: {causes:?}");
    }
    let longest = report.samples.iter().max_by_key(|s| s.latency());
    println!(
        "{label}: {} ({writes} writes), failed {}, longest {}",
        report.latency(false),
        report.failures().len(),
        longest.map_or("-".into(), |s| report.describe(s)),
    );
}

#[test]
#[ignore = "benchmark: run by tests/bench-db"]
fn bench_database_at_scale() {
    let events = env_count("SLIPWAY_BENCH_EVENTS", 1_000_000);
    let project = Project::new("e2e-bench-db", 18222, 1);
    let v1 = project.deploy_first_release();

    // Each figure is printed as soon as it is measured: the restore, last, may take long.
    let phases = load_events(&project, events);
    let rows = project.psql("SELECT count(*) FROM events");
    let db_size: u64 = project
        .psql("SELECT pg_database_size('events')")
        .parse()
        .expect("a size");
    println!(
        "\ndatabase scale benchmark: {rows} events, database {:.1} MB",
        mb(db_size)
    );
    for (phase, took) in &phases {
        println!("  load: {phase}: {:.1} s", secs(*took));
    }

    let snapshot = measure_snapshots(&project);

    commit_schema_change(&project);
    let load = Load::start(&project.url(0, ""), read_write_load());
    std::thread::sleep(Duration::from_secs(5));
    let deploy = Timed::run(project.slipway().args(["deploy", &project.env]).spawn());
    std::thread::sleep(Duration::from_secs(3));
    let report = load.stop();
    deploy.assert_ok();
    assert_ne!(project.live_version(0), Some(v1));
    print_deploy(&deploy, &report);

    let restore = Timed::run(
        project
            .slipway()
            .args(["snapshot", "restore", &project.env, &snapshot, "--yes"])
            .spawn(),
    );
    print_restore(&restore);
    if restore.code == 0 {
        assert_eq!(project.psql("SELECT count(*) FROM events"), rows);
    }
}

/// `slipway snapshot create` beside a plain `pg_dump -Fc` in the same container; returns
/// the snapshot's name.
fn measure_snapshots(project: &Project) -> String {
    let create = Timed::run(
        project
            .slipway()
            .args(["snapshot", "create", &project.env])
            .spawn(),
    );
    create.assert_ok();
    let (snapshot, snapshot_bytes) = newest_snapshot(project);

    let plain = "/snapshots/bench-plain.dump";
    let (plain_time, _) = timed(|| {
        db_shell(
            project,
            &format!(
                "$(ls /usr/lib/postgresql/*/bin/pg_dump | tail -n 1) -Fc -U events -d events \
                 -f {plain}"
            ),
        )
    });
    let plain_bytes: u64 = db_shell(project, &format!("stat -c %s {plain}"))
        .parse()
        .expect("a size");
    db_shell(project, &format!("rm -f {plain}"));

    println!(
        "\n{:<44} {:>9} {:>10} {:>8}",
        "operation", "time s", "file MB", "ratio"
    );
    println!(
        "{:<44} {:>9.1} {:>10.1} {:>8}",
        "plain pg_dump -Fc (same container)",
        secs(plain_time),
        mb(plain_bytes),
        "1.00"
    );
    println!(
        "{:<44} {:>9.1} {:>10.1} {:>7.2}x",
        "slipway snapshot create",
        secs(create.total()),
        mb(snapshot_bytes),
        secs(create.total()) / secs(plain_time).max(f64::MIN_POSITIVE)
    );
    snapshot
}

fn print_restore(restore: &Timed) {
    println!(
        "{:<44} {:>9.1}{}",
        "slipway snapshot restore --yes (all)",
        secs(restore.total()),
        if restore.code == 0 {
            ""
        } else {
            "  FAILED (rolled back)"
        }
    );
    if let Some(at) = restore.at("| restore...") {
        println!(
            "{:<44} {:>9.1}",
            "  of which: checks + snapshot of current state",
            secs(at - restore.started)
        );
        println!(
            "{:<44} {:>9.1}",
            "  of which: restore, ANALYZE, health check",
            secs(restore.finished - at)
        );
    }
    if restore.code != 0 {
        println!("\nthe restore failed:");
        restore.lines.iter().for_each(|(_, l)| println!("  {l}"));
    }
}

fn print_deploy(deploy: &Timed, report: &Report) {
    println!(
        "{:<44} {:>9.1}",
        "deploy: add a column + CREATE INDEX CONCURRENTLY",
        secs(deploy.total())
    );
    let step = |name: &str| deploy.at(&format!("| {name}..."));
    if let (Some(from), Some(to)) = (step("snapshot"), step("migrate")) {
        println!(
            "{:<44} {:>9.1}",
            "  of which: snapshot step",
            secs(to - from)
        );
    }
    let migration = step("migrate").zip(step("start_color"));
    if let Some((from, to)) = migration {
        println!(
            "{:<44} {:>9.1}",
            "  of which: migrate step",
            secs(to - from)
        );
    }
    if let Some(line) = deploy.line("migrations applied") {
        println!("  {line}");
    }

    println!("\nload during the deploy ({} req/s through nginx, reads of /events/near, one POST /events in 10):",
        read_write_load().rate);
    print_load(
        "  whole deploy",
        &report.between(deploy.started, deploy.finished),
    );
    if let (Some(from), Some(to)) = (step("snapshot"), step("migrate")) {
        print_load("  snapshot step", &overlapping(report, from, to));
    }
    if let Some((from, to)) = migration {
        let during = overlapping(report, from, to);
        print_load("  migrate step", &during);
        let longest = during.samples.iter().map(|s| s.latency()).max();
        println!(
            "  longest request during the migration: {:.0} ms (goal: under lock_timeout + 1 s = {} ms); failed: {}",
            longest.map_or(0.0, ms),
            LOCK_TIMEOUT_MS + 1000,
            during.failures().len()
        );
    }
}
