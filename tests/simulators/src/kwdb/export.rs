//! EXPORT and IMPORT (product-facts §2.7): `meta.sql` + `public/<table>/n1.0.csv`, `users.sql`,
//! `clustersetting.sql`, `reject.txt`, and the 2.x `PARTITION INTERVAL` trap of §2.2.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::session::{Output, Session, Val, literal, search_path, sql_err};
use super::statements::{self, EXPORT_COLUMNS, IMPORT_COLUMNS, Stmt, qi, ql};

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() { count_files(&p) } else { 1 }
        })
        .sum()
}

/// Resolve an export target and refuse a non-empty one with KWDB's message.
fn export_dir(session: &Session, path: &str) -> anyhow::Result<PathBuf> {
    let dir = statements::resolve_path(path, &session.shared.external_io_dir)
        .map_err(|e| sql_err("0A000", format!("{e:#}")))?;
    let n = count_files(&dir);
    if n > 0 {
        return Err(sql_err(
            "XXUUU",
            format!(
                "export path {path} is not empty (contains {n} files), please use an empty directory to prevent data loss"
            ),
        ));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn import_dir(session: &Session, path: &str) -> anyhow::Result<PathBuf> {
    statements::resolve_path(path, &session.shared.external_io_dir)
        .map_err(|e| sql_err("0A000", format!("{e:#}")))
}

fn export_output(rows: i64, files: i64) -> Output {
    Output::Rows {
        cols: EXPORT_COLUMNS
            .iter()
            .map(|(n, t)| (n.to_string(), *t))
            .collect(),
        rows: vec![vec![
            Val::Text("succeed".into()),
            Val::Int(rows),
            Val::Int(1),
            Val::Int(files),
        ]],
    }
}

fn import_output(job: i64, rows: i64, rejected: i64, note: &str) -> Output {
    Output::Rows {
        cols: IMPORT_COLUMNS
            .iter()
            .map(|(n, t)| (n.to_string(), *t))
            .collect(),
        rows: vec![vec![
            Val::Int(job),
            Val::Text("succeeded".into()),
            Val::Float(1.0),
            Val::Int(rows),
            Val::Int(0),
            Val::Int(rejected),
            Val::Text(note.into()),
        ]],
    }
}

async fn tables_of(session: &Session, db: &str) -> anyhow::Result<Vec<String>> {
    Ok(session
        .client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY table_name",
            &[&db],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

async fn table_ddl(session: &Session, db: &str, table: &str) -> anyhow::Result<String> {
    let cols: Vec<(String, String, bool)> = session
        .client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&db, &table],
        )
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    if let Some(r) = session
        .client
        .query_opt(
            "SELECT create_sql FROM kwdb_sim.tables WHERE db = $1 AND name = $2",
            &[&db, &table],
        )
        .await?
    {
        // The KWDB DDL as created, unless the table changed since (ALTER TABLE passed through).
        let recorded: String = r.get(0);
        let names: Vec<&str> = cols.iter().map(|(n, _, _)| n.as_str()).collect();
        if statements::column_names(&recorded) == names {
            return Ok(recorded);
        }
    }
    // Created or altered some other way: describe it from the backing catalog.
    let defs: Vec<String> = cols
        .iter()
        .map(|(name, ty, nn)| format!("{name} {ty}{}", if *nn { " NOT NULL" } else { "" }))
        .collect();
    Ok(format!("CREATE TABLE {table} ({})", defs.join(", ")))
}

/// `EXPORT INTO CSV "<path>" FROM DATABASE <db> [WITH …]`.
pub async fn export_database(
    session: &mut Session,
    path: &str,
    db: &str,
    options: &[String],
) -> anyhow::Result<Output> {
    let (kind, interval, comment) = session
        .database(db)
        .await?
        .ok_or_else(|| sql_err("3D000", format!("database \"{db}\" does not exist")))?;
    let dir = export_dir(session, path)?;
    let has = |o: &str| options.iter().any(|x| x == o);
    let tables = tables_of(session, db).await?;
    let mut files = 0i64;
    let mut total = 0i64;
    if !has("data_only") {
        let mut meta = String::new();
        if kind == "ts" {
            meta.push_str(&format!("CREATE TS DATABASE {db}"));
            if session.shared.release.keeps_partition_interval() {
                meta.push_str(&format!(
                    " PARTITION INTERVAL {}",
                    interval.as_deref().unwrap_or("10d")
                ));
            }
            meta.push_str(";\n");
        } else {
            meta.push_str(&format!("CREATE DATABASE {db};\n"));
        }
        for t in &tables {
            meta.push_str(&table_ddl(session, db, t).await?);
            meta.push_str(";\n");
        }
        if has("privileges") {
            for r in session
                .client
                .query(
                    "SELECT kind, object, grantee, privileges FROM kwdb_sim.grants
                     WHERE (kind = 'DATABASE' AND object = $1) OR (kind = 'TABLE' AND object LIKE $1 || '.%')
                     ORDER BY kind, object, grantee",
                    &[&db],
                )
                .await?
            {
                let kind: String = r.get(0);
                let object: String = r.get(1);
                let object = if kind == "TABLE" {
                    object
                        .split_once('.')
                        .map(|(_, t)| t.to_string())
                        .unwrap_or(object)
                } else {
                    object
                };
                meta.push_str(&format!(
                    "GRANT {} ON {kind} {object} TO {};\n",
                    r.get::<_, String>(3),
                    r.get::<_, String>(2)
                ));
            }
        }
        if has("comment") {
            if let Some(c) = &comment {
                meta.push_str(&format!("COMMENT ON DATABASE {db} IS {};\n", literal(c)));
            }
            for r in session
                .client
                .query(
                    "SELECT c.relname::text, d.description FROM pg_description d
                     JOIN pg_class c ON c.oid = d.objoid AND d.objsubid = 0
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 ORDER BY 1",
                    &[&db],
                )
                .await?
            {
                meta.push_str(&format!(
                    "COMMENT ON TABLE {} IS {};\n",
                    r.get::<_, String>(0),
                    literal(&r.get::<_, String>(1))
                ));
            }
        }
        std::fs::write(dir.join("meta.sql"), meta).context("cannot write meta.sql")?;
    }
    if !has("meta_only") {
        for t in &tables {
            let tdir = dir.join("public").join(t);
            std::fs::create_dir_all(&tdir)?;
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_path(tdir.join("n1.0.csv"))
                .context("cannot create the CSV file")?;
            let msgs = session
                .client
                .simple_query(&format!("SELECT * FROM {}.{}", qi(db), qi(t)))
                .await?;
            for m in msgs {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                    let fields: Vec<&str> =
                        (0..row.len()).map(|i| row.get(i).unwrap_or("")).collect();
                    w.write_record(&fields)?;
                    total += 1;
                }
            }
            w.flush()?;
            files += 1;
        }
    }
    super::log(
        'I',
        &format!("exported database {db} to {} ({total} rows)", dir.display()),
    );
    Ok(export_output(total, files))
}

/// `EXPORT USERS TO SQL "<path>"`: `users.sql`, no passwords.
pub async fn export_users(session: &mut Session, path: &str) -> anyhow::Result<Output> {
    let dir = export_dir(session, path)?;
    let mut text = String::new();
    let mut n = 0;
    for r in session
        .client
        .query(
            "SELECT name FROM kwdb_sim.users WHERE name <> 'root' ORDER BY name",
            &[],
        )
        .await?
    {
        text.push_str(&format!("CREATE USER {};\n", r.get::<_, String>(0)));
        n += 1;
    }
    std::fs::write(dir.join("users.sql"), text).context("cannot write users.sql")?;
    Ok(export_output(n, 1))
}

/// `EXPORT CLUSTER SETTING TO SQL "<path>"`: `clustersetting.sql`.
pub async fn export_settings(session: &mut Session, path: &str) -> anyhow::Result<Output> {
    let dir = export_dir(session, path)?;
    let mut text = String::new();
    let mut n = 0;
    for r in session
        .client
        .query(
            "SELECT name, value FROM kwdb_sim.settings ORDER BY name",
            &[],
        )
        .await?
    {
        text.push_str(&format!(
            "SET CLUSTER SETTING {} = {};\n",
            r.get::<_, String>(0),
            ql(&r.get::<_, String>(1))
        ));
        n += 1;
    }
    std::fs::write(dir.join("clustersetting.sql"), text)
        .context("cannot write clustersetting.sql")?;
    Ok(export_output(n, 1))
}

fn read_sql(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| sql_err("58030", format!("cannot read {}: {e}", path.display())))?;
    Ok(statements::split(&text))
}

fn starts_with_kw(s: &str, kw: &str) -> bool {
    s.get(..kw.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(kw))
}

/// Load one table's CSV files; returns (rows, rejected).
async fn load_table(
    session: &Session,
    db: &str,
    table: &str,
    tdir: &Path,
) -> anyhow::Result<(i64, i64)> {
    let ncols: i64 = session
        .client
        .query_one(
            "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&db, &table],
        )
        .await?
        .get(0);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(tdir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    let target = format!("{}.{}", qi(db), qi(table));
    let mut loaded = 0i64;
    let mut rejects: Vec<String> = Vec::new();
    for f in files {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(&f)
            .with_context(|| format!("cannot read {}", f.display()))?;
        let mut batch: Vec<(String, String)> = Vec::new();
        for rec in reader.records() {
            match rec {
                Ok(r) if r.len() as i64 == ncols => {
                    let values: Vec<String> = r
                        .iter()
                        .map(|v| if v.is_empty() { "NULL".into() } else { ql(v) })
                        .collect();
                    let raw = r.iter().collect::<Vec<_>>().join(",");
                    batch.push((format!("({})", values.join(", ")), raw));
                }
                Ok(r) => rejects.push(r.iter().collect::<Vec<_>>().join(",")),
                Err(e) => rejects.push(format!("{e}")),
            }
            if batch.len() >= 500 {
                let (l, mut rj) =
                    insert_batch(session, &target, std::mem::take(&mut batch)).await?;
                loaded += l;
                rejects.append(&mut rj);
            }
        }
        let (l, mut rj) = insert_batch(session, &target, batch).await?;
        loaded += l;
        rejects.append(&mut rj);
    }
    if !rejects.is_empty() {
        std::fs::write(tdir.join("reject.txt"), rejects.join("\n") + "\n")
            .context("cannot write reject.txt")?;
    }
    Ok((loaded, rejects.len() as i64))
}

/// Insert a batch inside a savepoint; on failure insert row by row, rejecting failing rows.
async fn insert_batch(
    session: &Session,
    target: &str,
    batch: Vec<(String, String)>,
) -> anyhow::Result<(i64, Vec<String>)> {
    if batch.is_empty() {
        return Ok((0, Vec::new()));
    }
    let c = &session.client;
    c.batch_execute("SAVEPOINT kwdb_sim_batch").await?;
    let all = batch
        .iter()
        .map(|(v, _)| v.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if c.batch_execute(&format!("INSERT INTO {target} VALUES {all}"))
        .await
        .is_ok()
    {
        c.batch_execute("RELEASE SAVEPOINT kwdb_sim_batch").await?;
        return Ok((batch.len() as i64, Vec::new()));
    }
    c.batch_execute("ROLLBACK TO SAVEPOINT kwdb_sim_batch")
        .await?;
    let mut ok = 0;
    let mut rejected = Vec::new();
    for (values, raw) in batch {
        c.batch_execute("SAVEPOINT kwdb_sim_row").await?;
        match c
            .batch_execute(&format!("INSERT INTO {target} VALUES {values}"))
            .await
        {
            Ok(()) => {
                c.batch_execute("RELEASE SAVEPOINT kwdb_sim_row").await?;
                ok += 1;
            }
            Err(_) => {
                c.batch_execute("ROLLBACK TO SAVEPOINT kwdb_sim_row")
                    .await?;
                rejected.push(raw);
            }
        }
    }
    c.batch_execute("RELEASE SAVEPOINT kwdb_sim_batch").await?;
    Ok((ok, rejected))
}

/// `IMPORT DATABASE CSV DATA ("<path>") [WITH privileges, comment]`.
pub async fn import_database(
    session: &mut Session,
    statement: &str,
    path: &str,
    options: &[String],
) -> anyhow::Result<Output> {
    session.client.batch_execute("BEGIN").await?;
    let outcome = import_database_tx(session, path, options).await;
    match outcome {
        Ok((db, rows, rejected)) => {
            session.client.batch_execute("COMMIT").await?;
            let job = session
                .record_job("IMPORT", statement, "succeeded", "")
                .await?;
            super::log(
                'I',
                &format!("import job {job}: database {db}, {rows} rows, {rejected} rejected"),
            );
            let note = if rejected > 0 {
                "rejected rows written to reject.txt"
            } else {
                "None"
            };
            Ok(import_output(job, rows, rejected, note))
        }
        Err(e) => {
            let _ = session.client.batch_execute("ROLLBACK").await;
            let _ = session
                .record_job("IMPORT", statement, "failed", &format!("{e:#}"))
                .await;
            Err(e)
        }
    }
}

async fn import_database_tx(
    session: &mut Session,
    path: &str,
    options: &[String],
) -> anyhow::Result<(String, i64, i64)> {
    let dir = import_dir(session, path)?;
    let stmts = read_sql(&dir.join("meta.sql"))?;
    let has = |o: &str| options.iter().any(|x| x == o);
    let first = stmts
        .first()
        .ok_or_else(|| sql_err("XXUUU", "meta.sql is empty"))?;
    let Stmt::CreateDatabase {
        name, ts, interval, ..
    } = statements::classify(first)?
    else {
        return Err(sql_err(
            "XXUUU",
            format!("meta.sql must start with CREATE [TS] DATABASE, found {first:?}"),
        ));
    };
    let release = session.shared.release;
    if let Some(i) = &interval
        && release.refuses_partition_interval()
    {
        return Err(sql_err(
            "0A000",
            format!(
                "import failed: meta.sql: \"PARTITION INTERVAL {i}\" is deprecated and no longer supported in KaiwuDB {}; delete it from meta.sql before import",
                release.tag()
            ),
        ));
    }
    let grants: Vec<&String> = stmts
        .iter()
        .filter(|s| starts_with_kw(s, "GRANT"))
        .collect();
    let comments: Vec<&String> = stmts
        .iter()
        .filter(|s| starts_with_kw(s, "COMMENT"))
        .collect();
    if has("privileges") && grants.is_empty() {
        return Err(sql_err("XXUUU", "NO PRIVILEGES statement in the SQL file"));
    }
    if has("comment") && comments.is_empty() {
        return Err(sql_err("XXUUU", "NO COMMENT statement in the SQL file"));
    }
    session
        .create_database(&name, ts, interval.as_deref(), false)
        .await?;
    let mut tables = Vec::new();
    for s in stmts.iter().skip(1) {
        if starts_with_kw(s, "CREATE TABLE") {
            tables.push(session.create_table(s, &name).await?);
        }
    }
    if has("privileges") {
        for g in &grants {
            if let Stmt::Grant {
                privileges,
                kind,
                objects,
                grantees,
            } = statements::classify(g)?
            {
                let objects: Vec<String> = if kind == "TABLE" {
                    objects
                        .iter()
                        .map(|o| {
                            if o.contains('.') {
                                o.clone()
                            } else {
                                format!("{name}.{o}")
                            }
                        })
                        .collect()
                } else {
                    objects
                };
                session
                    .grant(&kind, &objects, &grantees, &privileges, false)
                    .await?;
            }
        }
    }
    if has("comment") {
        session
            .client
            .batch_execute(&format!("SET LOCAL search_path TO {}", search_path(&name)))
            .await?;
        for c in &comments {
            match statements::classify(c)? {
                Stmt::CommentDatabase { comment, .. } => {
                    session
                        .client
                        .execute(
                            "UPDATE kwdb_sim.databases SET comment = $2 WHERE name = $1",
                            &[&name, &comment],
                        )
                        .await?;
                }
                _ => session.client.batch_execute(c).await?,
            }
        }
        session
            .client
            .batch_execute(&format!(
                "SET LOCAL search_path TO {}",
                search_path(&session.db)
            ))
            .await?;
    }
    let mut rows = 0;
    let mut rejected = 0;
    for t in &tables {
        let (r, j) = load_table(session, &name, t, &dir.join("public").join(t)).await?;
        rows += r;
        rejected += j;
        inject_fault(session, &name, t).await?;
    }
    Ok((name, rows, rejected))
}

/// Apply `KWDB_SIM_IMPORT_FAULT` to one imported table.
async fn inject_fault(session: &Session, db: &str, table: &str) -> anyhow::Result<()> {
    let target = format!("{}.{}", qi(db), qi(table));
    match session.shared.import_fault {
        None => {}
        Some(super::ImportFault::LoseRows(n)) => {
            session
                .client
                .batch_execute(&format!(
                    "DELETE FROM {target} WHERE ctid IN (SELECT ctid FROM {target} LIMIT {n})"
                ))
                .await?;
        }
        Some(super::ImportFault::TruncateTimestamps) => {
            let cols: Vec<String> = session
                .client
                .query(
                    "SELECT column_name::text FROM information_schema.columns
                     WHERE table_schema = $1 AND table_name = $2
                       AND data_type IN ('timestamp without time zone', 'timestamp with time zone')",
                    &[&db, &table],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !cols.is_empty() {
                let sets: Vec<String> = cols
                    .iter()
                    .map(|c| format!("{} = date_trunc('second', {})", qi(c), qi(c)))
                    .collect();
                session
                    .client
                    .batch_execute(&format!("UPDATE {target} SET {}", sets.join(", ")))
                    .await?;
            }
        }
    }
    Ok(())
}

/// `IMPORT USERS SQL DATA ("<…/users.sql>")`.
pub async fn import_users(
    session: &mut Session,
    statement: &str,
    path: &str,
) -> anyhow::Result<Output> {
    let file = import_dir(session, path)?;
    let file = if file.is_dir() {
        file.join("users.sql")
    } else {
        file
    };
    let mut n = 0;
    for s in read_sql(&file)? {
        match statements::classify(&s)? {
            Stmt::CreateUser { name, password, .. } => {
                if session
                    .create_user(&name, password.as_deref(), true)
                    .await?
                {
                    n += 1;
                }
            }
            _ => {
                return Err(sql_err(
                    "XXUUU",
                    format!(
                        "{} holds a statement that is not CREATE USER: {s}",
                        file.display()
                    ),
                ));
            }
        }
    }
    let job = session
        .record_job("IMPORT", statement, "succeeded", "")
        .await?;
    Ok(import_output(job, n, 0, "None"))
}

/// `IMPORT CLUSTER SETTING SQL DATA ("<…/clustersetting.sql>")`.
pub async fn import_settings(
    session: &mut Session,
    statement: &str,
    path: &str,
) -> anyhow::Result<Output> {
    let file = import_dir(session, path)?;
    let file = if file.is_dir() {
        file.join("clustersetting.sql")
    } else {
        file
    };
    let mut n = 0;
    for s in read_sql(&file)? {
        match statements::classify(&s)? {
            Stmt::SetClusterSetting { name, value } => {
                session.set_setting(&name, &value).await?;
                n += 1;
            }
            _ => {
                return Err(sql_err(
                    "XXUUU",
                    format!(
                        "{} holds a statement that is not SET CLUSTER SETTING: {s}",
                        file.display()
                    ),
                ));
            }
        }
    }
    let job = session
        .record_job("IMPORT", statement, "succeeded", "")
        .await?;
    Ok(import_output(job, n, 0, "None"))
}
