//! Classifies one SQL statement as read, write or DDL so the db capability can check it against
//! the grant. Anything that is none of these (roles, databases, COPY, settings, procedural code)
//! is refused: database-level work is done by host actions, not adapter SQL.

use std::ops::ControlFlow;

use sqlparser::ast::{ObjectType, Statement, visit_expressions, visit_relations};
use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

use super::Engine;
use upshift_model::grants::Access;

/// Functions that reach outside the bound database or the server's normal data path.
const FORBIDDEN_FUNCTIONS: &[&str] = &[
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_send_query",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "lo_import",
    "lo_export",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "set_config",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_file_write",
    "load_file",
    "sys_exec",
    "sys_eval",
];

/// Why a statement is refused before it reaches the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlRefusal {
    /// Not parseable as PostgreSQL.
    #[error("cannot parse the SQL: {0}")]
    Unparseable(String),
    /// More or fewer than one statement.
    #[error(
        "expected exactly one SQL statement, found {0}; send statements one at a time (or use transaction)"
    )]
    NotOneStatement(usize),
    /// A statement kind the db capability never runs.
    #[error(
        "`{0}` statements are not allowed through the db capability; database-level work (backup, restore, clone, roles, settings) is done by host actions"
    )]
    Forbidden(String),
    /// A function that reaches outside the bound database.
    #[error(
        "function `{0}` is not allowed through the db capability (it reaches outside the bound database)"
    )]
    ForbiddenFunction(String),
    /// A KWDB `EXPORT` / `IMPORT` whose path leaves the node's extern directory.
    #[error("{0}")]
    KwdbPath(String),
}

/// The access one PostgreSQL statement needs.
pub fn classify(sql: &str) -> Result<Access, SqlRefusal> {
    classify_for(Engine::Postgres, sql)
}

/// The access one statement needs, parsed in the engine's dialect.
pub fn classify_for(engine: Engine, sql: &str) -> Result<Access, SqlRefusal> {
    if engine == Engine::Kwdb
        && let Some(kwdb_only) = super::kwdb::classify(sql)
    {
        return kwdb_only;
    }
    let parsed = match engine {
        Engine::Postgres | Engine::Kwdb => Parser::parse_sql(&PostgreSqlDialect {}, sql),
        Engine::MySql => Parser::parse_sql(&MySqlDialect {}, sql),
    };
    let statements = parsed.map_err(|e| SqlRefusal::Unparseable(e.to_string()))?;
    let [statement] = statements.as_slice() else {
        return Err(SqlRefusal::NotOneStatement(statements.len()));
    };
    check_functions(statement)?;
    statement_access(statement)
}

fn last_part(name: &str) -> String {
    name.rsplit('.')
        .next()
        .unwrap_or(name)
        .trim_matches('"')
        .to_ascii_lowercase()
}

fn check_functions(statement: &Statement) -> Result<(), SqlRefusal> {
    let forbidden = |name: String| {
        let short = last_part(&name);
        FORBIDDEN_FUNCTIONS
            .contains(&short.as_str())
            .then_some(short)
    };
    let mut found = None;
    let _ = visit_expressions(statement, |expr| {
        if let sqlparser::ast::Expr::Function(f) = expr
            && let Some(name) = forbidden(f.name.to_string())
        {
            found = Some(name);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if found.is_none() {
        let _ = visit_relations(statement, |relation| {
            if let Some(name) = forbidden(relation.to_string()) {
                found = Some(name);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
    }
    match found {
        Some(name) => Err(SqlRefusal::ForbiddenFunction(name)),
        None => Ok(()),
    }
}

/// Whether a query changes data: a data-modifying CTE (`WITH d AS (DELETE … RETURNING …)`),
/// anywhere in it, makes a "read" a write.
fn modifies(q: &sqlparser::ast::Query) -> bool {
    use sqlparser::ast::SetExpr;
    fn body(e: &SetExpr) -> bool {
        match e {
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                true
            }
            SetExpr::Query(q) => modifies(q),
            SetExpr::SetOperation { left, right, .. } => body(left) || body(right),
            _ => false,
        }
    }
    q.with
        .as_ref()
        .is_some_and(|w| w.cte_tables.iter().any(|c| modifies(&c.query)))
        || body(&q.body)
}

fn statement_access(statement: &Statement) -> Result<Access, SqlRefusal> {
    let kind = |s: &Statement| {
        let text = s.to_string();
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
            .to_uppercase()
    };
    match statement {
        Statement::Query(q)
            if statement
                .to_string()
                .to_ascii_uppercase()
                .contains(" INTO OUTFILE ")
                || statement
                    .to_string()
                    .to_ascii_uppercase()
                    .contains(" INTO DUMPFILE ") =>
        {
            let _ = q;
            Err(SqlRefusal::Forbidden("SELECT … INTO OUTFILE".into()))
        }
        Statement::Query(q) => {
            if q.locks.is_empty() && !modifies(q) {
                Ok(Access::Read)
            } else {
                Ok(Access::Write)
            }
        }
        Statement::Explain {
            statement, analyze, ..
        } => {
            if *analyze {
                statement_access(statement)
            } else {
                Ok(Access::Read)
            }
        }
        Statement::Insert(_)
        | Statement::Update { .. }
        | Statement::Delete(_)
        | Statement::Merge { .. } => Ok(Access::Write),
        Statement::CreateTable(_)
        | Statement::AlterTable { .. }
        | Statement::CreateIndex(_)
        | Statement::AlterIndex { .. }
        | Statement::CreateView { .. }
        | Statement::AlterView { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateType { .. }
        | Statement::Truncate { .. }
        | Statement::Comment { .. } => Ok(Access::Ddl),
        Statement::Drop { object_type, .. } => match object_type {
            ObjectType::Table
            | ObjectType::View
            | ObjectType::Index
            | ObjectType::Sequence
            | ObjectType::Type
            | ObjectType::MaterializedView => Ok(Access::Ddl),
            _ => Err(SqlRefusal::Forbidden(kind(statement))),
        },
        other => Err(SqlRefusal::Forbidden(kind(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_reads_writes_and_ddl() {
        assert_eq!(
            classify("SELECT version FROM instance_change_history ORDER BY id DESC LIMIT 1"),
            Ok(Access::Read)
        );
        assert_eq!(
            classify("WITH t AS (SELECT 1) SELECT * FROM t"),
            Ok(Access::Read)
        );
        assert_eq!(
            classify("SELECT * FROM principal FOR UPDATE"),
            Ok(Access::Write)
        );
        assert_eq!(
            classify("INSERT INTO setting (name) VALUES ($1)"),
            Ok(Access::Write)
        );
        assert_eq!(classify("DELETE FROM principal"), Ok(Access::Write));
        assert_eq!(
            classify("ALTER TABLE principal ADD COLUMN x int"),
            Ok(Access::Ddl)
        );
        assert_eq!(classify("DROP TABLE principal"), Ok(Access::Ddl));
        assert_eq!(
            classify("CREATE INDEX i ON principal (id)"),
            Ok(Access::Ddl)
        );
    }

    #[test]
    fn refuses_what_reaches_outside() {
        assert!(matches!(
            classify("DROP DATABASE metadb"),
            Err(SqlRefusal::Forbidden(_))
        ));
        assert!(matches!(
            classify("CREATE ROLE evil SUPERUSER"),
            Err(SqlRefusal::Forbidden(_))
        ));
        assert!(matches!(
            classify("COPY principal TO PROGRAM 'sh'"),
            Err(SqlRefusal::Forbidden(_))
        ));
        assert!(matches!(
            classify("SET ROLE postgres"),
            Err(SqlRefusal::Forbidden(_))
        ));
        assert!(matches!(
            classify("SELECT 1; DROP TABLE principal"),
            Err(SqlRefusal::NotOneStatement(2))
        ));
        assert_eq!(
            classify("SELECT * FROM dblink('dbname=other', 'select 1') AS t(a int)"),
            Err(SqlRefusal::ForbiddenFunction("dblink".into()))
        );
        assert_eq!(
            classify("SELECT pg_read_file('/etc/passwd')"),
            Err(SqlRefusal::ForbiddenFunction("pg_read_file".into()))
        );
        assert_eq!(
            classify("SELECT public.dblink_exec('x', 'y')"),
            Err(SqlRefusal::ForbiddenFunction("dblink_exec".into()))
        );
        assert!(matches!(
            classify("SELEC nonsense"),
            Err(SqlRefusal::Unparseable(_))
        ));
    }
}
