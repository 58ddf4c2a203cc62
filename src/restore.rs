//! Restoring a snapshot into the live database, while the app keeps its connections.
//!
//! How, and why this way rather than restoring into a new database and renaming it:
//!
//! - **Same database, one transaction.** The restore is a single transaction in the
//!   database the app is connected to: it locks every table, drops what the schema holds,
//!   and recreates it from the snapshot. Either all of it commits or none of it does; a
//!   failure (a bad dump, a lock that cannot be had, a full disk) leaves the database as it
//!   was. The app's pooled connections are never terminated: its queries wait on the
//!   restore's locks and then see the restored data. A restore into a new database would
//!   need every connection killed for the rename (requests fail meanwhile) and would lose
//!   the database's own settings and grants.
//! - **Extensions stay in place.** The snapshot's `EXTENSION` entries are left out of the
//!   restore, so PostGIS, pgvector and pg_trgm are never dropped: their versions stay
//!   exactly as they are, and their types keep their identity for the app's sessions (a
//!   re-created extension would be installed at the package's default version, which need
//!   not be the one in use). An extension the snapshot has and the database lacks is
//!   created first. Rows a user added to an extension's configuration table (PostGIS'
//!   `spatial_ref_sys`) are replaced by the snapshot's, as pg_dump recorded them.
//! - **Nothing newer than the snapshot survives.** Tables, views, sequences, types and
//!   functions that do not belong to an extension are dropped before the snapshot's are
//!   created, so a table a later migration created is gone, and the migration can run
//!   again. `pg_restore --clean --if-exists` removes whatever other kinds of object the
//!   snapshot itself holds.
//!
//! The cost: the app's queries wait while the restore runs (they are not refused), so a
//! large database stalls the app for the length of the restore. The restore waits for its
//! table locks at most `snapshot_lock_wait_seconds` and gives up, changing nothing, when a
//! long transaction holds them.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

use crate::host::Input;
use crate::node::{quote, Node};
use crate::snapshot;

/// Extension name -> installed version.
pub type Extensions = BTreeMap<String, String>;

/// The extensions installed in the environment's database.
pub async fn extensions(node: &Node) -> anyhow::Result<Extensions> {
    let rows = node
        .query("SELECT extname || '|' || extversion FROM pg_extension ORDER BY 1;")
        .await?;
    Ok(rows
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect())
}

/// The table of contents of a snapshot (`pg_restore --list`), which also proves that the
/// file is a readable dump.
pub async fn contents(node: &Node, name: &str) -> anyhow::Result<String> {
    let pg_restore = snapshot::sibling(&snapshot::server_pg_dump(node).await?, "pg_restore");
    let command = node.infra_exec(
        "db",
        &format!(
            "{} --list {}",
            quote(&pg_restore),
            quote(&format!("/snapshots/{name}"))
        ),
    );
    node.sh(&command)
        .await
        .with_context(|| format!("{}: snapshot {name} is not a readable dump", node.name))
}

/// Restores snapshot `name` into the environment's database in one transaction (see the
/// module's documentation). The caller holds the environment's lock.
pub async fn restore(node: &Node, name: &str) -> anyhow::Result<()> {
    let toc = contents(node, name).await?;
    let prelude = prelude(
        &extension_names(&toc),
        node.env.settings.snapshot_lock_wait_seconds.max(1),
    );
    let pg_restore = snapshot::sibling(&snapshot::server_pg_dump(node).await?, "pg_restore");
    let db = &node.env.settings.database;

    let inner = format!(
        "set -e; list=$(mktemp); rc=$(mktemp); trap 'rm -f \"$list\" \"$rc\"' EXIT; \
         {pg_restore} --list {file} | grep -v -E '{skip}' > \"$list\"; \
         {{ cat; if {pg_restore} --clean --if-exists --single-transaction \
            --use-list=\"$list\" --file=- {file}; then echo ok > \"$rc\"; fi; }} \
         | psql -X -q -v ON_ERROR_STOP=1 -U {user} -d {dbname}; \
         if [ \"$(cat \"$rc\")\" != ok ]; then \
           echo 'pg_restore could not read the whole snapshot; the transaction was rolled back' >&2; \
           exit 1; fi",
        pg_restore = quote(&pg_restore),
        file = quote(&format!("/snapshots/{name}")),
        skip = EXTENSION_ENTRIES,
        user = quote(&db.user),
        dbname = quote(&db.name),
    );
    let command = node.infra_exec_with("db", "-i -u postgres", &format!("sh -c {}", quote(&inner)));
    let out = node
        .run(&command, Input::Bytes(prelude.into_bytes()))
        .await?;
    if !out.success() {
        bail!(
            "{}: restoring {name} failed and was rolled back, so the database is as it was \
             before: {}",
            node.name,
            out.tail(6)
        );
    }

    node.query("ANALYZE;")
        .await
        .context("the restore committed, but ANALYZE failed")?;
    Ok(())
}

/// `pg_restore --list` lines of extensions and their comments, left out of the restore.
const EXTENSION_ENTRIES: &str = "^[0-9]+; [0-9]+ [0-9]+ (EXTENSION|COMMENT - EXTENSION) ";

/// The extension names in a snapshot's table of contents.
fn extension_names(toc: &str) -> Vec<String> {
    toc.lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words.len() >= 6 && words[3] == "EXTENSION" && words[4] == "-")
                .then(|| words[5].to_string())
        })
        .collect()
}

/// The SQL run in the restore's transaction before the snapshot's own: create missing
/// extensions, take every table's lock (waiting at most `lock_wait` seconds), then drop
/// every object of the schema that no extension owns, and the rows of extension
/// configuration tables that pg_dump would have dumped.
fn prelude(extensions: &[String], lock_wait: u64) -> String {
    let mut sql = String::from("BEGIN;\n");
    for name in extensions {
        sql.push_str(&format!(
            "CREATE EXTENSION IF NOT EXISTS \"{}\";\n",
            name.replace('"', "\"\"")
        ));
    }
    sql.push_str(&format!("SET LOCAL lock_timeout = '{lock_wait}s';\n"));
    sql.push_str(INDEX_BUILDS);
    sql.push_str(CLEAR_SCHEMA);
    sql
}

/// How the restore's index builds run. Without parallel workers: a parallel build needs
/// dynamic shared memory, which the container's default 64 MB `/dev/shm` cannot hold for an
/// HNSW index of a large table, and the failed build would roll the whole restore back. With
/// four times the default working memory, so a large HNSW graph spills to disk later (the
/// app waits for the restore, so its length is downtime), still modest for a small server.
const INDEX_BUILDS: &str =
    "SET LOCAL max_parallel_maintenance_workers = 0;\nSET LOCAL maintenance_work_mem = '256MB';\n";

/// Takes every user table's lock, then drops what no extension owns. Objects are found
/// in the catalogs, so names need no parsing; `CASCADE` takes dependants along, and each
/// drop checks the object still exists (an earlier one may have taken it).
const CLEAR_SCHEMA: &str = r#"
DO $slipway$
DECLARE
    r record;
    tables text;
BEGIN
    SELECT string_agg(c.oid::regclass::text, ', ') INTO tables
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%';
    IF tables IS NOT NULL THEN
        EXECUTE 'LOCK TABLE ' || tables || ' IN ACCESS EXCLUSIVE MODE';
    END IF;

    FOR r IN
        SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY c.relkind IN ('v', 'm') DESC
    LOOP
        IF EXISTS (SELECT 1 FROM pg_class WHERE oid = r.oid) THEN
            EXECUTE format('DROP %s %s CASCADE',
                CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                    WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
                r.oid::regclass);
        END IF;
    END LOOP;

    FOR r IN
        SELECT p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prokind IN ('f', 'p')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                          AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        IF EXISTS (SELECT 1 FROM pg_proc WHERE oid = r.oid) THEN
            EXECUTE format('DROP ROUTINE %s CASCADE', r.oid::regprocedure);
        END IF;
    END LOOP;

    FOR r IN
        SELECT t.oid FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE (t.typtype IN ('e', 'd', 'r', 'm')
               OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                          AND d.objid = t.oid AND d.deptype = 'e')
    LOOP
        IF EXISTS (SELECT 1 FROM pg_type WHERE oid = r.oid) THEN
            EXECUTE format('DROP TYPE %s CASCADE', r.oid::regtype);
        END IF;
    END LOOP;

    FOR r IN
        SELECT cfg::regclass AS tbl, cond
        FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS u(cfg, cond)
        WHERE (SELECT relkind FROM pg_class WHERE oid = cfg) = 'r'
    LOOP
        EXECUTE format('DELETE FROM %s %s', r.tbl, coalesce(r.cond, ''));
    END LOOP;
END
$slipway$;
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const TOC: &str = "\
;
; Archive created at 2026-01-01 10:00:00 UTC
;
3; 3079 16385 EXTENSION - pg_trgm
4432; 0 0 COMMENT - EXTENSION pg_trgm
2; 3079 16466 EXTENSION - postgis
5; 3079 17545 EXTENSION - vector
223; 1259 17872 TABLE public events events
4290; 0 17872 TABLE DATA public events events
";

    #[test]
    fn finds_the_extensions_of_a_snapshot() {
        assert_eq!(extension_names(TOC), ["pg_trgm", "postgis", "vector"]);
    }

    #[test]
    fn the_prelude_creates_missing_extensions_inside_the_transaction() {
        let sql = prelude(&["postgis".into()], 60);
        let begin = sql.find("BEGIN;").unwrap();
        let create = sql
            .find("CREATE EXTENSION IF NOT EXISTS \"postgis\";")
            .unwrap();
        assert!(begin < create);
        assert!(sql.contains("SET LOCAL lock_timeout = '60s';"));
        assert!(
            sql.contains("SET LOCAL max_parallel_maintenance_workers = 0;"),
            "a parallel index build would not fit the container's /dev/shm"
        );
        assert!(
            !sql.contains("COMMIT"),
            "only pg_restore's script may commit"
        );
    }
}
