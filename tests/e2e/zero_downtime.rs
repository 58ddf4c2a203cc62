//! Zero failed requests during deploys (issue 3, FC-01, FC-02): consecutive deploys while a
//! paced load runs through nginx with slow requests in flight at every switch and other
//! containers coming and going on the environment's network; a release that turns
//! unhealthy after the switch, switched back under the same load. Also the
//! benchmark (`tests/bench`) that sets slipway's switch beside the naive in-place update
//! (`docker compose up -d --force-recreate` of a new image behind the same nginx).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use crate::load::{ms, Load, Options, Report, Sample};
use crate::support::{on_node, on_node_ok, HarnessNode, Project, Run};

/// Seconds the old color keeps serving after a switch in these tests.
const DRAIN_SECONDS: u64 = 5;
/// How long a slow request takes; one in every 100 requests is slow (every 0.5 s at 200/s).
const SLOW_MS: u64 = 3000;
/// How long before the cutover a slow request must have been sent to count as in flight.
const RACE_MARGIN: Duration = Duration::from_millis(250);
/// A deploy or an in-place update that runs longer than this is killed.
const CHANGE_LIMIT: Duration = Duration::from_secs(600);
/// The most time the load allows for one change before it stops by itself.
const CHANGE_BUDGET: Duration = Duration::from_secs(180);
/// Quiet time after each change, so its tail (drain, stale DNS, restarts) is measured.
const SETTLE: Duration = Duration::from_secs(4);

/// 200 requests per second with a slow one every 0.5 s, for at most `changes` changes of
/// `CHANGE_BUDGET` each (the load stops by itself after that).
fn load_options(changes: usize) -> Options {
    Options {
        rate: 200,
        slow_every: 100,
        slow_ms: SLOW_MS,
        max_duration: CHANGE_BUDGET * (changes as u32 + 1),
        ..Options::default()
    }
}

/// A count from the environment, or `default`.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A project on one node whose deploys let the old color drain for `DRAIN_SECONDS`: the
/// project's own playbook with `drain: {seconds: N}` in place of `drain`.
fn draining_project(env: &str, http_port: u16) -> Project {
    let mut project = Project::new(env, http_port, 1);
    let playbook = std::fs::read_to_string(project.root().join("playbooks/deploy.yml")).unwrap();
    let steps: Vec<String> = playbook
        .lines()
        .map(|line| match line.trim() {
            "- drain" => line.replace("- drain", &format!("- drain: {{seconds: {DRAIN_SECONDS}}}")),
            _ => line.to_string(),
        })
        .collect();
    assert!(
        steps.iter().any(|l| l.contains("drain: {seconds")),
        "playbooks/deploy.yml has no `- drain` step to give a drain time:\n{playbook}"
    );
    project.write("playbooks/zero-downtime.yml", &(steps.join("\n") + "\n"));
    project.set_extra("playbook: playbooks/zero-downtime.yml\n");
    project.commit("drain the old color for a few seconds");
    project
}

/// Kills a process (by its id) that outlives its limit; disarmed when dropped.
struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    fn arm(pid: u32, limit: Duration) -> Self {
        let (disarm, disarmed) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if disarmed.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        });
        Watchdog { _disarm: disarm }
    }
}

/// One change of the live release under load: when it began and ended, every stderr line
/// with the moment it arrived, and when the marker line (slipway's `switched to`) came.
struct Change {
    /// The version that should answer afterwards.
    release: String,
    started: Instant,
    switched: Option<Instant>,
    finished: Instant,
    lines: Vec<(Instant, String)>,
    run: Run,
}

impl Change {
    /// Waits for `child`, noting when each stderr line arrives.
    fn watch(started: Instant, child: Child, marker: &str, release: String) -> Change {
        Change::watch_lines(started, child, marker, release, |_| {})
    }

    /// Like `watch`, and hands each stderr line to `seen` as soon as it arrives.
    fn watch_lines(
        started: Instant,
        mut child: Child,
        marker: &str,
        release: String,
        mut seen: impl FnMut(&str),
    ) -> Change {
        let _watchdog = Watchdog::arm(child.id(), CHANGE_LIMIT);
        let mut stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let lines: Vec<(Instant, String)> = stderr
            .lines()
            .map_while(Result::ok)
            .map(|line| {
                let at = Instant::now();
                seen(&line);
                (at, line)
            })
            .collect();
        let status = child.wait().expect("the child ran");
        let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
        Change {
            release,
            started,
            switched: lines
                .iter()
                .find(|(_, l)| l.contains(marker))
                .map(|(t, _)| *t),
            finished: Instant::now(),
            lines,
            run: Run {
                code: status.code().unwrap_or(-1),
                stdout: reader.join().unwrap_or_default(),
                stderr: text,
            },
        }
    }

    /// When the first stderr line containing `text` arrived.
    fn line_at(&self, text: &str) -> Option<Instant> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(text))
            .map(|(t, _)| *t)
    }

    /// `slipway deploy` of the project's HEAD, or of `--ref <commit>` given in `extra`.
    fn deploy(project: &Project, extra: &[&str]) -> Change {
        let started = Instant::now();
        let child = project
            .slipway()
            .args(["deploy", &project.env])
            .args(extra.iter().copied())
            .spawn();
        let mut change = Change::watch(started, child, " | switched to ", String::new());
        change.release = release_name(&change.run.stderr).unwrap_or_default();
        change
    }

    /// `slipway rollback` to the previous release, expected to be `release`.
    fn rollback(project: &Project, release: &str) -> Change {
        let started = Instant::now();
        let child = project
            .slipway()
            .args(["rollback", &project.env, "--yes"])
            .spawn();
        Change::watch(started, child, " | switched to ", release.to_string())
    }

    /// The span of requests this change is charged with: from its start to `SETTLE` after
    /// its end.
    fn span(&self) -> (Instant, Instant) {
        (self.started, self.finished + SETTLE)
    }

    /// The first request sent after the change began that the new version answered.
    fn first_new<'a>(&self, report: &'a Report) -> Option<&'a Sample> {
        report.first_answer_from(&self.release, self.started)
    }

    /// When traffic moved, as the load saw it: the send time of the first request the new
    /// version answered. The switch line comes later than the reload itself (after the
    /// reload's and the state write's SSH round trips), by over a second on a busy machine.
    fn cutover(&self, report: &Report) -> Option<Instant> {
        self.first_new(report).map(|s| s.sent)
    }

    /// Requests sent more than 1 s after the switch line (up to `until`) that another
    /// version answered.
    fn late_old(&self, report: &Report, until: Instant) -> usize {
        let from = self.switched.expect("a switch line") + Duration::from_secs(1);
        report
            .between(from, until)
            .versions_after(from)
            .iter()
            .filter(|(v, _)| *v != &self.release && v.as_str() != "-")
            .map(|(_, n)| n)
            .sum()
    }
}

/// The release a deploy built, from its `building release <name> (<sha7>)` line.
fn release_name(stderr: &str) -> Option<String> {
    let rest = stderr.split("building release ").nth(1)?;
    rest.split_whitespace().next().map(str::to_string)
}

/// Signed milliseconds from `from` to `to`.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => ms(d),
        None => -ms(from - to),
    }
}

/// The nginx container's error log (its stderr) on the project's node since `since`.
fn nginx_errors(project: &Project, since: SystemTime) -> String {
    let unix = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = on_node(
        &project.nodes[0],
        &format!(
            "docker logs --since {unix} $(docker ps -q --filter label=com.docker.compose.project=events-{} \
             --filter label=slipway.role=nginx) 2>&1 >/dev/null",
            project.env
        ),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Short-lived containers joining and leaving the environment's network on the node, so
/// that addresses freed by a removed color are soon handed to someone else (FC-01): a
/// proxy that kept dialing a stale address would reach a stranger or nothing.
struct Churn {
    stop: Arc<AtomicBool>,
    started: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Churn {
    /// Starts a container that lives for two seconds about every second, until stopped or
    /// for at most `limit`.
    fn start(project: &Project, limit: Duration) -> Churn {
        let node: HarnessNode = project.nodes[0].clone();
        let image = on_node_ok(
            &node,
            &format!(
                "docker ps --filter label=com.docker.compose.project=events-{} \
                 --filter label=slipway.role=nginx --format '{{{{.Image}}}}'",
                project.env
            ),
        );
        let command = format!(
            "docker run -d --rm --network events-{} --label slipway.test=churn \
             --entrypoint sleep {image} 2 >/dev/null",
            project.env
        );
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), started.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if on_node(&node, &command).status.success() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(700));
            }
        });
        Churn {
            stop,
            started,
            thread,
        }
    }

    /// Stops starting containers; returns how many were started.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.started.load(Ordering::Relaxed)
    }
}

/// Where change `i`'s requests end: at the next change's start, or `SETTLE` after it.
fn until(changes: &[Change], i: usize) -> Instant {
    changes
        .get(i + 1)
        .map_or(changes[i].finished + SETTLE, |c| c.started)
}

/// Slow requests sent at least `RACE_MARGIN` before `moment` and answered after it, by
/// answering version. A request sent within the margin races the first request the new
/// version answered to nginx, so either color may rightly take it.
fn in_flight_at(report: &Report, moment: Instant) -> BTreeMap<String, usize> {
    let mut versions = BTreeMap::new();
    let sent_by = moment.checked_sub(RACE_MARGIN).unwrap_or(moment);
    for s in &report.samples {
        if s.slow && s.sent < sent_by && s.received > moment {
            let version = s.version.clone().unwrap_or_else(|| "-".into());
            *versions.entry(version).or_default() += 1;
        }
    }
    versions
}

/// Prints what each deploy did to the traffic.
fn print_changes(report: &Report, changes: &[Change]) {
    for (i, change) in changes.iter().enumerate() {
        let during = report.between(change.started, until(changes, i));
        let switched = change.switched.expect("a switch line");
        let window = match change.first_new(report) {
            Some(first) => format!("{:+.0} ms", signed_ms(switched, first.sent)),
            None => "-".into(),
        };
        println!(
            "deploy {} ({}): {:.1} s; first answer of the new version {window} from the switch \
             line; slow requests in flight at the cutover answered by {:?}; {} requests, {} \
             failed, {} answered by the old version >1 s after the switch",
            i + 1,
            change.release,
            (change.finished - change.started).as_secs_f64(),
            change
                .cutover(report)
                .map(|at| in_flight_at(report, at))
                .unwrap_or_default(),
            during.count(),
            during.failures().len(),
            change.late_old(report, until(changes, i)),
        );
    }
}

#[test]
fn consecutive_deploys_under_load_fail_no_request() {
    let project = draining_project("e2e-zd", 18120);
    project.deploy().assert_code(0);
    let since = SystemTime::now();

    let count = env_count("SLIPWAY_ZD_DEPLOYS", 4);
    let load = Load::start(&project.url(0, ""), load_options(count));
    let churn = Churn::start(&project, CHANGE_BUDGET * count as u32);
    std::thread::sleep(Duration::from_secs(2));
    let mut changes = Vec::new();
    for i in 1..=count {
        project.commit(&format!("zero-downtime release {i}"));
        let change = Change::deploy(&project, &[]);
        change.run.assert_code(0);
        assert!(
            change.switched.is_some(),
            "no switch line:\n{}",
            change.run.stderr
        );
        assert_eq!(
            project.live_version(0).as_deref(),
            Some(change.release.as_str()),
            "after deploy {i}, nginx does not serve the new release"
        );
        changes.push(change);
    }
    std::thread::sleep(Duration::from_millis(SLOW_MS + 1000));
    let churned = churn.stop();
    let report = load.stop();
    assert!(
        !report.hit_deadline,
        "the load stopped by itself before the deploys were done"
    );
    assert!(
        churned > 0,
        "no other container came and went on the network"
    );

    println!(
        "{} deploys under load, {churned} other containers came and went on the network: \
         fast {}; slow {}; max queue delay {:.1} ms",
        changes.len(),
        report.latency(false),
        report.latency(true),
        ms(report.max_queue_delay())
    );
    print_changes(&report, &changes);
    let nginx = nginx_errors(&project, since);
    println!("--- nginx error log during the load\n{nginx}");

    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed:\n{}\n--- nginx error log\n{nginx}",
        failures.len(),
        report.count(),
        report.describe_failures()
    );
    assert!(
        !nginx.contains("connect() failed"),
        "nginx failed to connect to an upstream during the deploys:\n{nginx}"
    );
    let not_ok: Vec<String> = report.not_ok().iter().map(|s| report.describe(s)).collect();
    assert!(
        not_ok.is_empty(),
        "answers other than 200:\n{}",
        not_ok.join("\n")
    );

    for (i, change) in changes.iter().enumerate() {
        let cutover = change.cutover(&report).expect("the new version answered");
        let in_flight = in_flight_at(&report, cutover);
        assert!(
            !in_flight.is_empty()
                && !in_flight.contains_key(&change.release)
                && !in_flight.contains_key("-"),
            "deploy {}: no slow request was in flight at the cutover, or not all of them were \
             answered by the old version: {in_flight:?}",
            i + 1
        );
        assert_eq!(
            change.late_old(&report, until(&changes, i)),
            0,
            "deploy {}: the old version answered requests sent >1 s after the switch",
            i + 1
        );
    }
}

/// The line slipway prints when nginx points at the new color: `<node> | switched to <color>`.
const SWITCH_LINE: &str = " | switched to ";
/// The file whose presence makes the reference app fail its health check (`FAIL_HEALTH_FILE`).
const UNHEALTHY_FILE: &str = "/tmp/slipway-test-unhealthy";
/// How long after the switch the watched release turns unhealthy (issue 3).
const UNHEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Makes the app containers of `color` fail their health check from now on.
fn make_unhealthy(node: &HarnessNode, env: &str, color: &str) {
    let ids = on_node_ok(
        node,
        &format!(
            "docker ps -q --filter label=slipway.env={env} --filter label=slipway.color={color}"
        ),
    );
    assert!(
        !ids.is_empty(),
        "no running {color} container to make unhealthy"
    );
    for id in ids.split_whitespace() {
        on_node_ok(node, &format!("docker exec {id} touch {UNHEALTHY_FILE}"));
    }
}

/// `slipway deploy` whose new release is made unhealthy `UNHEALTHY_AFTER` after the tool's
/// switch line; returns the deploy and the moment the release turned unhealthy.
fn deploy_turning_unhealthy(project: &Project) -> (Change, Instant) {
    let started = Instant::now();
    let child = project.slipway().args(["deploy", &project.env]).spawn();
    let mut flipper = None;
    let mut change = Change::watch_lines(started, child, SWITCH_LINE, String::new(), |line| {
        let Some(color) = line.split(SWITCH_LINE).nth(1) else {
            return;
        };
        if flipper.is_none() {
            let (node, env) = (project.nodes[0].clone(), project.env.clone());
            let color = color.trim().to_string();
            flipper = Some(std::thread::spawn(move || {
                std::thread::sleep(UNHEALTHY_AFTER);
                make_unhealthy(&node, &env, &color);
                Instant::now()
            }));
        }
    });
    change.release = release_name(&change.run.stderr).unwrap_or_default();

    let flipper = flipper.unwrap_or_else(|| panic!("no switch line:\n{}", change.run.stderr));
    let flipped = flipper.join().expect("the release was made unhealthy");
    (change, flipped)
}

/// A release that turns unhealthy 10 s after the switch, under load: the watch switches
/// traffic back to the old color (still running) and the deploy exits 1. No request fails
/// but those the unhealthy release itself answered before the switch back.
#[test]
fn release_turning_unhealthy_after_the_switch_is_switched_back() {
    let mut project = Project::new("e2e-watch", 18114, 1);
    let v1 = project.deploy_first_release();

    project.set_watch_seconds(40);
    project.set_app_env("FAIL_HEALTH_FILE", UNHEALTHY_FILE);
    project.commit("v2 fails its health check once told to");
    let load = Load::start(&project.url(0, ""), load_options(1));
    std::thread::sleep(Duration::from_secs(2));
    let (change, flipped) = deploy_turning_unhealthy(&project);
    std::thread::sleep(Duration::from_millis(SLOW_MS + 1000));
    let report = load.stop();

    change
        .run
        .assert_code(1)
        .assert_stderr_has("step `watch` failed")
        .assert_stderr_has("turned unhealthy")
        .assert_stderr_has("traffic is back on the blue color");
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
    let v2 = change.release.as_str();
    assert!(!v2.is_empty() && v2 != v1, "no new release was built");

    let by_v2 = |s: &&Sample| s.version.as_deref() == Some(v2);
    let after_flip = report.between(flipped, change.finished);
    let unhealthy_answers = after_flip.samples.iter().filter(by_v2).count();
    let unhealthy_failures = after_flip.failures().into_iter().filter(by_v2).count();
    let others: Vec<String> = report
        .not_ok()
        .into_iter()
        .filter(|s| !by_v2(s))
        .map(|s| report.describe(s))
        .collect();
    let late_v2 = report
        .between(change.finished, Instant::now())
        .samples
        .iter()
        .filter(by_v2)
        .count();
    println!(
        "watch under load: {} requests, fast {}; the unhealthy release answered {unhealthy_answers} \
         requests sent after it turned unhealthy, {unhealthy_failures} of them failed; \
         {} other requests failed",
        report.count(),
        report.latency(false),
        others.len()
    );
    assert!(!report.hit_deadline, "the load stopped by itself");
    assert!(
        report.first_answer_from(v2, change.started).is_some(),
        "the new release never served"
    );
    assert!(
        others.is_empty(),
        "requests failed that the unhealthy release did not answer:\n{}",
        others.join("\n")
    );
    assert_eq!(
        late_v2, 0,
        "the unhealthy release answered after the deploy ended"
    );
}

/// The naive in-place update behind the same nginx: `docker compose up -d --force-recreate`
/// of the live color's project with `release`'s image (on a copy of the live bundle).
fn naive_update(project: &Project, release: &str) -> Change {
    let state = project.state_dir();
    let color = on_node_ok(&project.nodes[0], &format!("cat {state}/color"));
    let script = format!(
        "set -e; d={state}/naive; rm -rf $d; mkdir -p $d; \
         cp -a {state}/current/app.yml {state}/current/app.env {state}/current/secrets $d/; \
         sed -i 's#^    image: .*#    image: slipway/events:{release}#' $d/app.yml; \
         docker compose -p events-{env}-{color} -f $d/app.yml up -d --force-recreate \
           --no-build --pull never",
        env = project.env
    );
    let started = Instant::now();
    let child = Command::new("docker")
        .args(["exec", &project.nodes[0].container, "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker exec runs");
    Change::watch(started, child, " Started", release.to_string())
}

/// Median and range of some figures: `5.1 (4.8..6.0)`.
fn spread(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    match (values.first(), values.last()) {
        (Some(min), Some(max)) => format!("{:.1} ({min:.1}..{max:.1})", values[values.len() / 2]),
        _ => "-".into(),
    }
}

/// One line of the table: the requests sent during `changes` (or a quiet span).
fn table_row(mode: &str, report: &Report, changes: &[Change]) -> String {
    let fast = report.latency(false);
    let to_live: Vec<f64> = changes
        .iter()
        .filter_map(|c| Some((c.first_new(report)?.sent - c.started).as_secs_f64()))
        .collect();
    let windows: Vec<f64> = changes
        .iter()
        .filter_map(|c| Some(signed_ms(c.switched?, c.first_new(report)?.sent)))
        .collect();
    let late: usize = changes
        .iter()
        .filter(|c| c.switched.is_some())
        .map(|c| c.late_old(report, c.finished + SETTLE))
        .sum();
    format!(
        "{mode:<18} {:>3} {:>7} {:>6} {:>6} {:>6.1} {:>7.1} {:>7.1} {:>18} {:>22} {:>6}",
        changes.len(),
        report.count(),
        report.failures().len(),
        report.not_ok().len(),
        ms(fast.p50),
        ms(fast.p99),
        ms(fast.max),
        spread(to_live),
        spread(windows),
        late,
    )
}

/// The error log lines of nginx, counted by message (time, pid and client cut off).
fn nginx_summary(log: &str) -> String {
    let mut kinds = BTreeMap::<String, usize>::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let message = line.split_once(": *").map_or(line, |(_, rest)| rest);
        let message = message.split_once(' ').map_or(message, |(_, rest)| rest);
        let message = message.split(", client:").next().unwrap_or(message);
        *kinds.entry(message.to_string()).or_default() += 1;
    }
    let lines: Vec<String> = kinds
        .iter()
        .map(|(k, n)| format!("  {n:>5} x {k}"))
        .collect();
    if lines.is_empty() {
        "  (empty)".into()
    } else {
        lines.join("\n")
    }
}

/// What went wrong in one mode: failure causes, the failures themselves (up to `limit`),
/// and the nginx error log.
fn print_failures(mode: &str, report: &Report, nginx: &str, limit: usize) {
    println!("\n{mode}: failure causes");
    for (cause, n) in report.failure_causes() {
        println!("  {n:>5} x {cause}");
    }
    let failures = report.failures();
    for s in failures.iter().take(limit) {
        println!("  {}", report.describe(s));
    }
    if failures.len() > limit {
        println!("  ... and {} more", failures.len() - limit);
    }
    println!("{mode}: nginx error log\n{}", nginx_summary(nginx));
}

/// Deploys two new commits (`A`, then `B`) so that both releases are built and on the node;
/// returns their commits and release names, `B` being live.
fn two_built_releases(project: &Project) -> [(String, String); 2] {
    ["A", "B"].map(|name| {
        project.commit(&format!("bench release {name}"));
        let run = project.deploy();
        run.assert_code(0);
        let commit = project.git(&["rev-parse", "HEAD"]).trim().to_string();
        (commit, release_name(&run.stderr).expect("a release name"))
    })
}

#[test]
#[ignore = "benchmark: run by tests/bench"]
fn bench_zero_downtime_vs_naive() {
    let runs = env_count("SLIPWAY_BENCH_RUNS", 5).max(1);
    let project = draining_project("e2e-bench", 18121);
    let built = two_built_releases(&project);

    let load = Load::start(&project.url(0, ""), load_options(2 * runs));
    std::thread::sleep(Duration::from_secs(2));
    let steady = (Instant::now(), Instant::now() + Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(15));

    let since = SystemTime::now();
    let deploys: Vec<Change> = (0..runs)
        .map(|i| {
            let (commit, _) = &built[i % 2];
            let change = Change::deploy(&project, &["--ref", commit]);
            change.run.assert_code(0);
            std::thread::sleep(SETTLE);
            change
        })
        .collect();
    let deploy_log = nginx_errors(&project, since);

    // The deploys left built[(runs - 1) % 2] live; each rollback goes to the other one.
    let rollbacks: Vec<Change> = (0..runs)
        .map(|i| {
            let (_, release) = &built[(runs + i) % 2];
            let change = Change::rollback(&project, release);
            change.run.assert_code(0);
            std::thread::sleep(SETTLE);
            change
        })
        .collect();

    // The last rollback left built[1] live; the first naive update goes to built[0].
    let since = SystemTime::now();
    let naive: Vec<Change> = (0..runs)
        .map(|i| {
            let (_, release) = &built[i % 2];
            let change = naive_update(&project, release);
            change.run.assert_code(0);
            std::thread::sleep(SETTLE);
            change
        })
        .collect();
    let naive_log = nginx_errors(&project, since);
    std::thread::sleep(Duration::from_millis(SLOW_MS + 1000));
    let report = load.stop();
    assert!(
        !report.hit_deadline,
        "the load stopped by itself before the run was done"
    );

    let spans = |changes: &[Change]| changes.iter().map(Change::span).collect::<Vec<_>>();
    let (quiet, during, rolling_back, in_place) = (
        report.between(steady.0, steady.1),
        report.within(&spans(&deploys)),
        report.within(&spans(&rollbacks)),
        report.within(&spans(&naive)),
    );
    println!(
        "\nslipway benchmark on this machine: {} req/s through nginx on one harness node, \
         a {SLOW_MS} ms request every 0.5 s, drain {DRAIN_SECONDS} s; each change is charged \
         the requests sent from its command to {} s after it returned",
        load_options(0).rate,
        SETTLE.as_secs()
    );
    println!(
        "{:<18} {:>3} {:>7} {:>6} {:>6} {:>6} {:>7} {:>7} {:>18} {:>22} {:>6}",
        "mode",
        "n",
        "reqs",
        "failed",
        "!=200",
        "p50ms",
        "p99ms",
        "maxms",
        "to live s",
        "switch window ms",
        "old>1s"
    );
    println!("{}", table_row("steady (no deploy)", &quiet, &[]));
    println!("{}", table_row("slipway deploy", &during, &deploys));
    println!(
        "{}",
        table_row("slipway rollback", &rolling_back, &rollbacks)
    );
    println!("{}", table_row("naive compose up", &in_place, &naive));
    println!(
        "\nto live: command start to the first answer of the new version through nginx; \
         switch window: slipway's `switched to` line (naive: compose's `Started` line) to that \
         answer; old>1s: answers of the old version to requests sent >1 s after that line"
    );
    print_deploy_times(&deploys);
    print_rollback_times(&rollbacks);
    print_failures("slipway deploy", &during, &deploy_log, usize::MAX);
    print_failures("naive compose up", &in_place, &naive_log, 10);
}

/// How long slipway's rollbacks took to the previous version answering, and in all.
fn print_rollback_times(rollbacks: &[Change]) {
    let total: Vec<f64> = rollbacks
        .iter()
        .map(|c| (c.finished - c.started).as_secs_f64())
        .collect();
    let switched: Vec<f64> = rollbacks
        .iter()
        .filter_map(|c| Some((c.switched? - c.started).as_secs_f64()))
        .collect();
    println!(
        "slipway rollback to the previous release (its stopped container kept): `switched to` \
         line {} s after the command, command {} s (it then drains the other color)",
        spread(switched),
        spread(total)
    );
    if let Some((_, line)) = rollbacks
        .last()
        .and_then(|c| c.lines.iter().find(|(_, l)| l.contains("live: ")))
    {
        println!("last rollback: {line}");
    }
}

/// How long slipway's deploys took, and where the time went.
fn print_deploy_times(deploys: &[Change]) {
    let total: Vec<f64> = deploys
        .iter()
        .map(|c| (c.finished - c.started).as_secs_f64())
        .collect();
    let build: Vec<f64> = deploys
        .iter()
        .filter_map(|c| {
            let from = c.line_at("building release")?;
            Some((c.line_at("| preflight...")? - from).as_secs_f64())
        })
        .collect();
    println!(
        "\nslipway deploy of an already-built release (`--ref`, two built commits in turn): \
         command {} s, of which the local image step {} s",
        spread(total),
        spread(build)
    );
    if let Some((_, line)) = deploys
        .last()
        .and_then(|c| c.lines.iter().find(|(_, l)| l.contains("live: ")))
    {
        println!("last deploy: {line}");
    }
}
