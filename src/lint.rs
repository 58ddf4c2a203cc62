//! Checks of pending migrations before anything changes on a node.
//!
//! Two kinds, both on squawk's PostgreSQL parser:
//!
//! - the file's shape ([`check_shape`]): a file must run the way slipway runs it. A
//!   transactional file may not open or end transactions itself nor hold a statement that
//!   Postgres refuses inside one; a non-transactional file holds at most one statement. These
//!   are never acknowledged away.
//! - lint findings ([`findings`]): squawk rules for changes that break the release still
//!   serving until the switch (dropping or renaming a column or table, a new required column,
//!   a changed column type) or that hold locks stalling it (a non-concurrent index build, a
//!   constraint validated under lock, ...). `migrations.acknowledge` lets a file's findings of
//!   a given rule pass.

use std::fmt;

use anyhow::bail;
use squawk_linter::{Linter, Rule};
use squawk_syntax::ast::{self, AstNode};
use squawk_syntax::{Parse, SourceFile, SyntaxNode};

use crate::config::Migrations;
use crate::migrate::{Migration, NO_TRANSACTION};

/// The squawk rules slipway checks.
const RULES: [Rule; 13] = [
    Rule::BanDropColumn,
    Rule::BanDropTable,
    Rule::BanDropDatabase,
    Rule::RenamingColumn,
    Rule::RenamingTable,
    Rule::ChangingColumnType,
    Rule::AddingRequiredField,
    Rule::AddingNotNullableField,
    Rule::AddingFieldWithDefault,
    Rule::AddingSerialPrimaryKeyField,
    Rule::ConstraintMissingNotValid,
    Rule::DisallowedUniqueConstraint,
    Rule::RequireConcurrentIndexCreation,
];

/// The finding for SQL that squawk's parser does not read: a syntax error would fail the
/// migration halfway, so it stops the deploy too (acknowledge it for SQL Postgres accepts).
pub const SYNTAX_ERROR: &str = "syntax-error";

/// The Postgres major version the rules judge by (the database image's).
const PG_VERSION: &str = "17";

/// The names of every rule a migration can be acknowledged for.
pub fn rule_names() -> Vec<String> {
    RULES
        .iter()
        .map(Rule::to_string)
        .chain([SYNTAX_ERROR.to_string()])
        .collect()
}

pub fn is_rule(name: &str) -> bool {
    rule_names().iter().any(|r| r == name)
}

/// One lint finding in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub version: u64,
    pub path: String,
    pub line: usize,
    pub rule: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.path, self.line, self.rule, self.message
        )
    }
}

/// What preflight runs: the shape check, then, when the database already has a schema
/// that a release serves against (`in_use`), the lint; one error names every problem and
/// the fix. An empty database has no reader to break and no live queries to stall.
pub fn check(pending: &[Migration], settings: &Migrations, in_use: bool) -> anyhow::Result<()> {
    check_shape(pending)?;
    if !in_use {
        return Ok(());
    }

    let open = findings(pending, settings);
    if open.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = open.iter().map(|f| format!("  {f}")).collect();
    bail!(
        "{} lint finding(s) in pending migrations: changes that break the release still \
         serving until the switch, or that lock out its queries:\n{}\n\
         nothing was changed. Make the change backward compatible across two releases \
         (expand/contract, README: Migrations), or, when the serving release does not depend \
         on it, acknowledge the finding in inventory/all.yml or the environment's file:\n{}",
        open.len(),
        list.join("\n"),
        acknowledgement(&open)
    )
}

/// The `migrations.acknowledge` entry that would let `open` pass.
fn acknowledgement(open: &[Finding]) -> String {
    let mut lines = vec!["  migrations:".to_string(), "    acknowledge:".to_string()];
    let mut versions: Vec<u64> = open.iter().map(|f| f.version).collect();
    versions.dedup();
    for v in versions {
        let mut rules: Vec<&str> = open
            .iter()
            .filter(|f| f.version == v)
            .map(|f| f.rule.as_str())
            .collect();
        rules.sort_unstable();
        rules.dedup();
        lines.push(format!("      \"{v}\": [{}]", rules.join(", ")));
    }
    lines.join("\n")
}

/// Refuses a file that cannot run the way slipway would run it, naming the file, the line
/// and what to change. Runs before anything changes, and again before migrating.
pub fn check_shape(pending: &[Migration]) -> anyhow::Result<()> {
    for m in pending {
        let parse = SourceFile::parse(&m.up);
        misplaced_marker(m)?;
        if m.transactional() {
            transactional_shape(m, &parse)?;
        } else {
            single_statement(m, &parse)?;
        }
    }
    Ok(())
}

/// The marker anywhere but the first line would silently leave the file transactional.
fn misplaced_marker(m: &Migration) -> anyhow::Result<()> {
    let found =
        m.up.lines()
            .enumerate()
            .skip(1)
            .find(|(_, line)| line.trim() == NO_TRANSACTION);
    if let Some((n, _)) = found {
        bail!(
            "{} line {}: `{NO_TRANSACTION}` only counts on the file's first line; move it there \
             (or remove it to run the file in one transaction)",
            m.path(),
            n + 1
        );
    }
    Ok(())
}

fn transactional_shape(m: &Migration, parse: &Parse<SourceFile>) -> anyhow::Result<()> {
    for stmt in parse.tree().stmts() {
        let line = line_of(&m.up, start(stmt.syntax()));
        if matches!(
            stmt,
            ast::Stmt::Begin(_) | ast::Stmt::Commit(_) | ast::Stmt::Rollback(_)
        ) {
            bail!(
                "{} line {line}: the file controls its own transaction (BEGIN/COMMIT/ROLLBACK), \
                 but slipway runs each file in one transaction and records it as applied only \
                 when all of it committed; remove that statement (split the file in two if it \
                 needs two transactions)",
                m.path()
            );
        }
        if let Some(what) = refused_in_transaction(&stmt) {
            bail!(
                "{} line {line}: {what} cannot run inside a transaction; put it alone in its own \
                 file whose first line is `{NO_TRANSACTION}`",
                m.path()
            );
        }
    }
    Ok(())
}

/// Statements Postgres refuses inside a transaction block.
fn refused_in_transaction(stmt: &ast::Stmt) -> Option<&'static str> {
    match stmt {
        ast::Stmt::CreateIndex(s) if s.concurrently_token().is_some() => {
            Some("CREATE INDEX CONCURRENTLY")
        }
        ast::Stmt::DropIndex(s) if s.concurrently_token().is_some() => {
            Some("DROP INDEX CONCURRENTLY")
        }
        ast::Stmt::Vacuum(_) => Some("VACUUM"),
        ast::Stmt::CreateDatabase(_) => Some("CREATE DATABASE"),
        ast::Stmt::DropDatabase(_) => Some("DROP DATABASE"),
        _ => None,
    }
}

/// A non-transactional file runs statement by statement in autocommit mode: with two, a
/// failure of the second leaves the first applied and the version dirty, so only one is
/// allowed. Counted on the parse tree, so `;` inside strings, comments and function bodies
/// does not count.
fn single_statement(m: &Migration, parse: &Parse<SourceFile>) -> anyhow::Result<()> {
    if let Some(error) = parse.errors().first() {
        bail!(
            "{} line {}: the file is marked `{NO_TRANSACTION}`, and its statements cannot be \
             counted because it does not parse: {}",
            m.path(),
            line_of(&m.up, error.range().start().into()),
            error.message()
        );
    }
    let count = statement_count(parse);
    if count > 1 {
        bail!(
            "{} holds {count} statements but is marked `{NO_TRANSACTION}`: a file that runs \
             outside a transaction must hold exactly one, so a failure cannot leave it half \
             applied; split it into one file per statement (each with the marker if it needs it)",
            m.path()
        );
    }
    Ok(())
}

/// The number of SQL statements in `parse` (comments and empty statements not counted).
pub fn statement_count(parse: &Parse<SourceFile>) -> usize {
    parse.tree().stmts().count()
}

/// Lint findings of the pending files that no acknowledgement lets pass, in file order.
pub fn findings(pending: &[Migration], settings: &Migrations) -> Vec<Finding> {
    pending
        .iter()
        .flat_map(lint_file)
        .filter(|f| !settings.acknowledged(f.version, &f.rule))
        .collect()
}

/// Every finding in one file, acknowledged or not.
fn lint_file(m: &Migration) -> Vec<Finding> {
    let parse = SourceFile::parse(&m.up);
    let finding = |offset: usize, rule: String, message: String| Finding {
        version: m.version,
        path: m.path(),
        line: line_of(&m.up, offset),
        rule,
        message,
    };

    let syntax = parse.errors().into_iter().map(|e| {
        let message = format!("squawk's parser does not read this: {}", e.message());
        finding(e.range().start().into(), SYNTAX_ERROR.into(), message)
    });
    let mut all: Vec<Finding> = syntax.collect();

    let mut linter = Linter::from(RULES);
    linter.settings.assume_in_transaction = m.transactional();
    if let Ok(version) = PG_VERSION.parse() {
        linter.settings.pg_version = version;
    }
    for v in linter.lint(&parse, &m.up) {
        let message = match &v.help {
            Some(help) => format!("{} {help}", v.message),
            None => v.message.clone(),
        };
        all.push(finding(
            v.text_range.start().into(),
            v.code.to_string(),
            message,
        ));
    }
    all
}

/// Where the statement's first non-comment token starts.
fn start(node: &SyntaxNode) -> usize {
    node.children_with_tokens()
        .find(|t| !t.kind().is_trivia())
        .map_or(node.text_range().start(), |t| t.text_range().start())
        .into()
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(version: u64, up: &str) -> Migration {
        Migration {
            version,
            name: format!("m{version}"),
            file: format!("{version:06}_m{version}.up.sql"),
            up: up.to_string(),
            down: None,
        }
    }

    fn acknowledging(version: u64, rule: &str) -> Migrations {
        let yaml = format!("acknowledge:\n  \"{version:06}\": [{rule}]\n");
        serde_yaml::from_str(&yaml).unwrap()
    }

    fn count(sql: &str) -> usize {
        statement_count(&SourceFile::parse(sql))
    }

    #[test]
    fn counts_statements_not_semicolons() {
        assert_eq!(count("CREATE INDEX CONCURRENTLY i ON events (name);"), 1);
        assert_eq!(count("-- a; comment; with; semicolons\nSELECT 1;\n"), 1);
        assert_eq!(count("SELECT 'a;b;c';"), 1);
        assert_eq!(
            count("DO $$ BEGIN PERFORM 1; PERFORM 2; END $$;\nSELECT 1"),
            2
        );
        assert_eq!(
            count("CREATE FUNCTION f() RETURNS int AS $b$ SELECT 1; SELECT 2 $b$ LANGUAGE sql;"),
            1
        );
        assert_eq!(count("/* one; */ SELECT 1; SELECT 2;\nSELECT 3;"), 3);
        assert_eq!(count("-- nothing here\n"), 0);
    }

    #[test]
    fn a_non_transactional_file_holds_one_statement() {
        let one = file(
            4,
            "-- slipway:no-transaction\nCREATE INDEX CONCURRENTLY events_starts ON events (starts_at);\n",
        );
        assert!(!one.transactional());
        check_shape(&[one]).unwrap();

        let two = file(
            5,
            "-- slipway:no-transaction\nCREATE INDEX CONCURRENTLY a ON events (name);\n\
             CREATE INDEX CONCURRENTLY b ON events (starts_at);\n",
        );
        let err = check_shape(&[two]).unwrap_err().to_string();
        assert!(
            err.contains("migrations/000005_m5.up.sql holds 2 statements"),
            "{err}"
        );
    }

    #[test]
    fn the_marker_counts_only_on_the_first_line() {
        let late = file(4, "SELECT 1;\n-- slipway:no-transaction\n");
        assert!(late.transactional());
        let err = check_shape(&[late]).unwrap_err().to_string();
        assert!(err.contains("000004_m4.up.sql line 2"), "{err}");
    }

    #[test]
    fn a_transactional_file_may_not_manage_its_own_transaction() {
        for sql in [
            "BEGIN;\nALTER TABLE events ADD COLUMN note text;\nCOMMIT;\n",
            "ALTER TABLE events ADD COLUMN note text;\nCOMMIT;\n",
            "SELECT 1;\n\nROLLBACK;\n",
        ] {
            let err = check_shape(&[file(4, sql)]).unwrap_err().to_string();
            assert!(err.contains("controls its own transaction"), "{sql}: {err}");
        }
        let err = check_shape(&[file(4, "SELECT 1;\nSTART TRANSACTION;\n")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("000004_m4.up.sql line 2"), "{err}");
    }

    #[test]
    fn a_transactional_file_may_not_hold_what_needs_no_transaction() {
        let err = check_shape(&[file(4, "CREATE INDEX CONCURRENTLY i ON events (name);")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CREATE INDEX CONCURRENTLY cannot run inside"),
            "{err}"
        );
        assert!(err.contains(NO_TRANSACTION), "{err}");
    }

    /// One failing migration per rule slipway enables.
    const FAILING: [(&str, &str); 14] = [
        (
            "ban-drop-column",
            "ALTER TABLE events DROP COLUMN capacity;",
        ),
        ("ban-drop-table", "DROP TABLE events;"),
        ("ban-drop-database", "DROP DATABASE IF EXISTS old_events;"),
        (
            "renaming-column",
            "ALTER TABLE events RENAME COLUMN name TO title;",
        ),
        ("renaming-table", "ALTER TABLE events RENAME TO happenings;"),
        (
            "changing-column-type",
            "ALTER TABLE events ALTER COLUMN name TYPE varchar(300);",
        ),
        (
            "adding-required-field",
            "ALTER TABLE events ADD COLUMN seats integer NOT NULL;",
        ),
        (
            "adding-not-nullable-field",
            "ALTER TABLE events ALTER COLUMN name SET NOT NULL;",
        ),
        (
            "adding-field-with-default",
            "ALTER TABLE events ADD COLUMN token uuid DEFAULT gen_random_uuid();",
        ),
        (
            "adding-serial-primary-key-field",
            "ALTER TABLE events ADD PRIMARY KEY (id);",
        ),
        (
            "constraint-missing-not-valid",
            "ALTER TABLE events ADD CONSTRAINT positive CHECK (id > 0);",
        ),
        (
            "disallowed-unique-constraint",
            "ALTER TABLE events ADD CONSTRAINT one_name UNIQUE (name);",
        ),
        (
            "require-concurrent-index-creation",
            "CREATE INDEX events_starts ON events (starts_at);",
        ),
        ("syntax-error", "ALTER TABLE events ADD COLUMN;"),
    ];

    #[test]
    fn each_rule_stops_its_migration_until_acknowledged() {
        let mut covered: Vec<String> = FAILING.iter().map(|(r, _)| r.to_string()).collect();
        covered.sort();
        let mut all = rule_names();
        all.sort();
        assert_eq!(covered, all, "one failing migration per rule");

        for (rule, sql) in FAILING {
            // DROP DATABASE cannot run in a transaction at all.
            let first_line = match rule {
                "ban-drop-database" => NO_TRANSACTION,
                _ => "-- why",
            };
            let m = file(7, &format!("{first_line}\n{sql}\n"));
            let open = findings(std::slice::from_ref(&m), &Migrations::default());
            assert!(
                open.iter().any(|f| f.rule == rule && f.line == 2),
                "{rule}: {sql} gave {open:?}"
            );
            let err = check(std::slice::from_ref(&m), &Migrations::default(), true)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("migrations/000007_m7.up.sql:2: {rule}: ")),
                "{err}"
            );
            let ack = err.split("acknowledge:").nth(1).unwrap_or_default();
            assert!(ack.contains("\"7\": [") && ack.contains(rule), "{err}");

            let acknowledged = acknowledging(7, rule);
            let rest = findings(std::slice::from_ref(&m), &acknowledged);
            assert!(rest.iter().all(|f| f.rule != rule), "{rule}: {rest:?}");
            let other = findings(&[file(8, sql)], &acknowledged);
            assert!(
                other.iter().any(|f| f.rule == rule),
                "{rule} acknowledged for 7 only"
            );
        }
    }

    #[test]
    fn compatible_changes_pass() {
        for sql in [
            "ALTER TABLE events ADD COLUMN capacity integer;",
            "ALTER TABLE events ADD COLUMN seats integer NOT NULL DEFAULT 0;",
            "CREATE TABLE tags (id bigint PRIMARY KEY, name text NOT NULL);\n\
             CREATE INDEX tags_name ON tags (name);",
            "ALTER TABLE events ADD CONSTRAINT positive CHECK (id > 0) NOT VALID;",
            "SELECT pg_sleep(1);",
        ] {
            let open = findings(&[file(4, sql)], &Migrations::default());
            assert!(open.is_empty(), "{sql}: {open:?}");
        }
        let concurrent = file(
            4,
            "-- slipway:no-transaction\nCREATE INDEX CONCURRENTLY e ON events (starts_at);",
        );
        check(&[concurrent], &Migrations::default(), true).unwrap();
    }

    #[test]
    fn the_projects_own_migrations_pass() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut ups: Vec<Migration> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                let version = name.split('_').next()?.parse().ok()?;
                name.ends_with(".up.sql").then(|| Migration {
                    version,
                    name: name.clone(),
                    up: std::fs::read_to_string(format!("{dir}/{name}")).unwrap(),
                    down: None,
                    file: name,
                })
            })
            .collect();
        ups.sort_by_key(|m| m.version);
        assert_eq!(ups.len(), 3);
        check(&ups, &Migrations::default(), true).unwrap();
    }

    #[test]
    fn an_empty_database_gets_the_shape_check_only() {
        let drop = file(4, "ALTER TABLE events DROP COLUMN capacity;");
        check(std::slice::from_ref(&drop), &Migrations::default(), false).unwrap();
        let two = file(5, "-- slipway:no-transaction\nSELECT 1;\nSELECT 2;");
        assert!(check(&[two], &Migrations::default(), false).is_err());
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
