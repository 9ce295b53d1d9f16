//! The logical backup and the move to a new instance (product-facts §2.7, "What an adapter
//! must encode → KWDB"): EXPORT every user database, the users and the cluster settings into
//! `nodelocal://1/upshift/export-N/` with the row count of every table, strip `PARTITION
//! INTERVAL` for 3.1+, IMPORT into the new instance, and compare the counts table by table.

use std::collections::BTreeMap;

use upshift_adapter_sdk::{
    AdapterError, StepOutput, Value, error, files, info, live, progress, value_text,
};

use crate::detect::{NEXT_SQL, SQL, user_databases};
use crate::rules::strip_partition_interval;

/// The extern directory binding (where `nodelocal://1/…` lands, shared with `next`).
pub const EXTERN: &str = "extern";
/// Exports live under this directory of the extern directory.
const ROOT: &str = "upshift";
/// The counts taken at export time, beside the export.
const COUNTS: &str = "upshift-counts.json";

fn cap(what: &str, e: &upshift_adapter_sdk::CapError) -> AdapterError {
    error(format!(
        "{what}: {}",
        upshift_adapter_sdk::describe_cap_error(e)
    ))
}

/// Names of the exports made so far, oldest first.
fn exports() -> Result<Vec<u32>, AdapterError> {
    if !files::exists(EXTERN, ROOT).map_err(|e| cap("cannot read the extern directory", &e))? {
        return Ok(Vec::new());
    }
    let mut n: Vec<u32> = files::list_dir(EXTERN, ROOT)
        .map_err(|e| cap("cannot list the exports", &e))?
        .into_iter()
        .filter_map(|e| e.name.strip_prefix("export-")?.parse().ok())
        .collect();
    n.sort_unstable();
    Ok(n)
}

/// The newest export's directory, relative to the extern directory.
pub fn latest() -> Result<String, AdapterError> {
    exports()?
        .last()
        .map(|n| format!("{ROOT}/export-{n}"))
        .ok_or_else(|| error("no export found under the extern directory's upshift/ (the export step must run first)"))
}

fn tables_of(dir: &str, database: &str) -> Result<Vec<String>, AdapterError> {
    let public = format!("{dir}/{database}/public");
    if !files::exists(EXTERN, &public).map_err(|e| cap("cannot read the export", &e))? {
        return Ok(Vec::new());
    }
    Ok(files::list_dir(EXTERN, &public)
        .map_err(|e| cap("cannot list the exported tables", &e))?
        .into_iter()
        .filter(|e| e.is_dir)
        .map(|e| e.name)
        .collect())
}

fn is_plain(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Row counts of every table of `databases` on `binding`, keyed `db.table`.
fn counts(
    binding: &str,
    dir: &str,
    databases: &[String],
) -> Result<BTreeMap<String, u64>, AdapterError> {
    let mut out = BTreeMap::new();
    for db in databases {
        for table in tables_of(dir, db)? {
            if !is_plain(db) || !is_plain(&table) {
                return Err(error(format!(
                    "`{db}.{table}` is not a plain name; count it by hand"
                )));
            }
            out.insert(
                format!("{db}.{table}"),
                live::count(binding, &format!("SELECT count(*) FROM {db}.{table}"), &[])?,
            );
        }
    }
    Ok(out)
}

fn run(binding: &str, sql: &str) -> Result<(Vec<String>, Vec<Vec<Value>>), AdapterError> {
    upshift_adapter_sdk::db::query(binding, sql, &[])
        .map(|r| (r.columns, r.rows))
        .map_err(|e| cap(&format!("`{sql}` failed"), &e))
}

/// EXPORT everything into a new `upshift/export-N` and record the counts.
pub fn export() -> Result<StepOutput, AdapterError> {
    let n = exports()?.last().map_or(1, |n| n + 1);
    let dir = format!("{ROOT}/export-{n}");
    let databases = user_databases(SQL)?;
    for (i, db) in databases.iter().enumerate() {
        if !is_plain(db) {
            return Err(error(format!(
                "database `{db}` is not a plain name; export it by hand"
            )));
        }
        progress::report(
            i as u64,
            databases.len() as u64 + 2,
            &format!("exporting {db}"),
        );
        run(
            SQL,
            &format!(
                "EXPORT INTO CSV \"nodelocal://1/{dir}/{db}\" FROM DATABASE {db} WITH privileges, comment"
            ),
        )?;
    }
    run(
        SQL,
        &format!("EXPORT USERS TO SQL \"nodelocal://1/{dir}/users\""),
    )?;
    run(
        SQL,
        &format!("EXPORT CLUSTER SETTING TO SQL \"nodelocal://1/{dir}/settings\""),
    )?;
    let counted = counts(SQL, &dir, &databases)?;
    let record = serde_json::json!({ "databases": databases, "tables": counted });
    live::write_text(EXTERN, &format!("{dir}/{COUNTS}"), &record.to_string())?;
    let rows: u64 = counted.values().sum();
    Ok(StepOutput {
        summary: format!(
            "exported {} database(s), {} table(s), {rows} row(s) into nodelocal://1/{dir} (users: no passwords)",
            databases.len(),
            counted.len()
        ),
    })
}

/// What the export recorded: databases and per-table counts.
fn recorded(dir: &str) -> Result<(Vec<String>, BTreeMap<String, u64>), AdapterError> {
    let text = live::read_text(EXTERN, &format!("{dir}/{COUNTS}"))?.ok_or_else(|| {
        error(format!(
            "{dir}/{COUNTS} is missing: the export did not finish"
        ))
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| error(format!("{dir}/{COUNTS} is damaged: {e}")))?;
    let databases = v["databases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let tables = v["tables"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok((databases, tables))
}

/// Remove `PARTITION INTERVAL` from every exported `meta.sql` (keeping the original beside it).
pub fn prepare_meta() -> Result<StepOutput, AdapterError> {
    let dir = latest()?;
    let (databases, _) = recorded(&dir)?;
    let mut changed = 0;
    for db in &databases {
        let path = format!("{dir}/{db}/meta.sql");
        let Some(meta) = live::read_text(EXTERN, &path)? else {
            continue;
        };
        let (stripped, removed) = strip_partition_interval(&meta);
        if removed > 0 {
            live::write_text(EXTERN, &format!("{path}.orig"), &meta)?;
            live::write_text(EXTERN, &path, &stripped)?;
            changed += removed;
        }
    }
    Ok(StepOutput {
        summary: format!(
            "removed {changed} PARTITION INTERVAL clause(s) from meta.sql (originals kept as meta.sql.orig)"
        ),
    })
}

fn column_u64(columns: &[String], row: &[Value], name: &str) -> Option<u64> {
    let i = columns.iter().position(|c| c == name)?;
    value_text(row.get(i)?)?.trim().parse().ok()
}

/// IMPORT the export into the new instance; any rejected or abandoned row fails the step.
pub fn import() -> Result<StepOutput, AdapterError> {
    let dir = latest()?;
    let (databases, _) = recorded(&dir)?;
    let mut imported = 0;
    for (i, db) in databases.iter().enumerate() {
        progress::report(i as u64, databases.len() as u64, &format!("importing {db}"));
        // `WITH privileges` fails ("NO PRIVILEGES statement in the SQL file") when the export
        // carries no GRANT, so it is asked for only when meta.sql has one (§2.7).
        let meta = live::read_text(EXTERN, &format!("{dir}/{db}/meta.sql"))?.unwrap_or_default();
        let grants = meta
            .lines()
            .any(|l| l.trim_start().to_ascii_uppercase().starts_with("GRANT "));
        let with = if grants { " WITH privileges" } else { "" };
        let (columns, rows) = run(
            NEXT_SQL,
            &format!("IMPORT DATABASE CSV DATA (\"nodelocal://1/{dir}/{db}\"){with}"),
        )?;
        for row in &rows {
            let rejected = column_u64(&columns, row, "reject_rows").unwrap_or(0);
            let abandoned = column_u64(&columns, row, "abandon_rows").unwrap_or(0);
            if rejected > 0 || abandoned > 0 {
                return Err(error(format!(
                    "importing {db}: {rejected} rejected and {abandoned} abandoned row(s) (see reject.txt beside the CSV files)"
                )));
            }
            imported += column_u64(&columns, row, "rows").unwrap_or(0);
        }
    }
    run(
        NEXT_SQL,
        &format!("IMPORT USERS SQL DATA (\"nodelocal://1/{dir}/users/users.sql\")"),
    )?;
    run(
        NEXT_SQL,
        &format!(
            "IMPORT CLUSTER SETTING SQL DATA (\"nodelocal://1/{dir}/settings/clustersetting.sql\")"
        ),
    )?;
    info("users were imported without passwords: reset them on the new instance");
    Ok(StepOutput {
        summary: format!(
            "imported {} database(s), {imported} row(s), the users and the cluster settings",
            databases.len()
        ),
    })
}

/// Compare every table's row count on `binding` with the export's.
pub fn compare(binding: &str) -> Result<StepOutput, AdapterError> {
    let binding = if binding == NEXT_SQL { NEXT_SQL } else { SQL };
    let dir = latest()?;
    let (databases, expected) = recorded(&dir)?;
    let now = counts(binding, &dir, &databases)?;
    let differing: Vec<String> = expected
        .iter()
        .filter(|(t, n)| now.get(*t) != Some(n))
        .map(|(t, n)| {
            format!(
                "{t}: {n} exported, {} now",
                now.get(t).map_or("missing".to_string(), |c| c.to_string())
            )
        })
        .collect();
    if !differing.is_empty() {
        return Err(error(format!(
            "row counts differ (KWDB has had wrong-count bugs after upgrades, !1304): {}",
            differing.join("; ")
        )));
    }
    Ok(StepOutput {
        summary: format!(
            "{} table(s), {} row(s): every count matches the export",
            expected.len(),
            expected.values().sum::<u64>()
        ),
    })
}
