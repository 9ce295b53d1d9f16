//! KWDB's own statements and dialect rules. KWDB (KaiwuDB) is derived from CockroachDB: it
//! speaks PostgreSQL's wire protocol and mostly its dialect, so statements are analysed like
//! PostgreSQL's ([`super::sql`]), after the checks here, on the tokens of the PostgreSQL
//! tokenizer (comments, strings and quoted identifiers as the server reads them).
//!
//! KWDB-only statements the PostgreSQL grammar does not know: `EXPORT` (needs `backup`),
//! `IMPORT` (needs `restore`) and `SHOW …` (a read). `EXPORT` / `IMPORT` paths must stay under
//! the node's extern directory (`nodelocal://1/<dir>`): `http://` targets and other nodes would
//! move data off the node, and `..` would leave the directory. Paths must be plain quoted
//! literals: an escape string (`e'http\x3a//…'`), a `U&'…'` or dollar-quoted string or a
//! parameter could name another target than the one checked. `SHOW` may not embed a query
//! (`SHOW JOBS SELECT …`, parentheses, `[…]`), nor list other sessions' statements
//! (`QUERIES`, `SESSIONS`, `STATEMENTS`, `TRANSACTIONS`, `TRACE`).
//!
//! Refused on every grant ([`check_tokens`]): `CANCEL` / `PAUSE` / `RESUME` (other sessions'
//! queries and jobs), `BACKUP` / `RESTORE` (their targets are not checked; use `EXPORT` /
//! `IMPORT`), changefeeds (they stream every change off the node), `SET` / `RESET` (session,
//! user-defined and cluster settings), `AS OF SYSTEM TIME` (past data), square-bracket statement
//! sources and numeric table references (`[DELETE … RETURNING …]`, `[53 AS t]`), functions in
//! `crdb_internal` / `kwdb_internal` (debugging and unsafe repair functions), tables there but
//! the status tables in [`INTERNAL_STATUS_TABLES`], and the `system` database (users' password
//! hashes, settings, jobs). A KWDB binding is cluster-wide (the adapter exports every
//! database), so other user databases are not refused.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::sql::SqlRefusal;
use upshift_model::grants::Access;

/// The one path prefix KWDB statements may name.
pub const NODELOCAL_PREFIX: &str = "nodelocal://1/";

/// The `crdb_internal` / `kwdb_internal` tables a statement may read: node and store status
/// (range health, versions, liveness), which an upgrade adapter checks.
pub const INTERNAL_STATUS_TABLES: &[&str] = &[
    "kv_store_status",
    "kv_node_status",
    "node_build_info",
    "gossip_liveness",
    "gossip_nodes",
];

const INTERNAL_SCHEMAS: &[&str] = &["crdb_internal", "kwdb_internal"];

fn refused(what: impl Into<String>, why: &str, instead: &str) -> SqlRefusal {
    SqlRefusal::Refused {
        what: what.into(),
        why: why.to_string(),
        instead: instead.to_string(),
    }
}

fn significant(tokens: &[TokenWithSpan]) -> Vec<&Token> {
    tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .collect()
}

fn keyword(t: Option<&&Token>) -> Option<String> {
    match t {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn name(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    }
}

/// Words that start a statement: after `[` they make a statement source.
const STATEMENT_WORDS: &[&str] = &[
    "SELECT", "WITH", "VALUES", "TABLE", "INSERT", "UPSERT", "UPDATE", "DELETE", "SHOW", "EXPLAIN",
    "CREATE", "ALTER", "DROP", "TRUNCATE", "IMPORT", "EXPORT", "GRANT", "REVOKE",
];

/// KWDB refusals on every grant (see the module documentation), on the statement's tokens.
pub fn check_tokens(tokens: &[TokenWithSpan]) -> Result<(), SqlRefusal> {
    let sig = significant(tokens);
    let first = keyword(sig.iter().find(|t| !matches!(t, Token::LParen)));
    let second = keyword(sig.get(1));
    match (first.as_deref(), second.as_deref()) {
        (Some(verb @ ("CANCEL" | "PAUSE" | "RESUME")), _) => {
            return Err(refused(
                format!("`{verb}`"),
                "it stops or changes other sessions' queries, sessions or jobs",
                "let running work finish, or ask the operator",
            ));
        }
        (Some(verb @ ("BACKUP" | "RESTORE")), _) => {
            return Err(refused(
                format!("`{verb}`"),
                "its storage targets are not checked by the host",
                "use `EXPORT` / `IMPORT` with a `nodelocal://1/<dir>` path",
            ));
        }
        (Some("CREATE"), Some("CHANGEFEED")) | (Some("EXPERIMENTAL"), _) => {
            return Err(refused(
                "a changefeed",
                "it streams every change to a sink outside the node",
                "read the rows the adapter needs with `SELECT`",
            ));
        }
        (Some(verb @ ("SET" | "RESET")), _) => {
            return Err(refused(
                format!("`{verb}`"),
                "session, user-defined and cluster settings (`SET CLUSTER SETTING` changes every node) are the operator's",
                "pass values as parameters; ask the operator for a setting the product needs",
            ));
        }
        _ => {}
    }
    for (i, t) in sig.iter().enumerate() {
        let word = keyword(Some(t));
        if word.as_deref() == Some("OF")
            && keyword(sig.get(i + 1)).as_deref() == Some("SYSTEM")
            && keyword(sig.get(i + 2)).as_deref() == Some("TIME")
        {
            return Err(refused(
                "`AS OF SYSTEM TIME`",
                "it reads the data as it was (rows since changed or deleted, within the garbage-collection window)",
                "read the current data",
            ));
        }
        if matches!(t, Token::LBracket) {
            let next = sig.get(i + 1);
            let statement = keyword(next).is_some_and(|w| STATEMENT_WORDS.contains(&w.as_str()));
            let numeric = matches!(next, Some(Token::Number(..)))
                && keyword(sig.get(i + 2)).as_deref() == Some("AS");
            if statement || numeric {
                return Err(refused(
                    "a square-bracket statement source or numeric table reference (`[DELETE …]`, `[SHOW …]`, `[53 AS t]`)",
                    "it runs a statement, or names a table by number, inside another one where the host's checks do not see it",
                    "send the statement on its own and name tables by name",
                ));
            }
        }
    }
    check_qualified(&sig)
}

/// `crdb_internal` / `kwdb_internal` functions and tables, and the `system` database.
fn check_qualified(sig: &[&Token]) -> Result<(), SqlRefusal> {
    let mut i = 0;
    while i < sig.len() {
        let Some(first) = name(sig[i]) else {
            i += 1;
            continue;
        };
        let mut parts = vec![first];
        let mut j = i + 1;
        while j + 1 < sig.len()
            && matches!(sig[j], Token::Period)
            && let Some(part) = name(sig[j + 1])
        {
            parts.push(part);
            j += 2;
        }
        let after_dot = i > 0 && matches!(sig[i - 1], Token::Period);
        if parts.len() >= 2 && !after_dot {
            let shown = parts.join(".");
            let call = matches!(sig.get(j), Some(Token::LParen));
            let qualifiers = &parts[..parts.len() - 1];
            let last = &parts[parts.len() - 1];
            if qualifiers
                .iter()
                .any(|q| INTERNAL_SCHEMAS.contains(&q.as_str()))
            {
                if call {
                    return Err(refused(
                        format!("the internal function `{shown}`"),
                        "crdb_internal / kwdb_internal functions include debugging and unsafe repair functions that act on the whole cluster",
                        "use SQL functions outside the internal schemas",
                    ));
                }
                if !INTERNAL_STATUS_TABLES.contains(&last.as_str()) {
                    return Err(refused(
                        format!("the internal table `{shown}`"),
                        "internal tables list other sessions' statements, settings and cluster metadata; only node and store status tables are readable",
                        &format!(
                            "read one of {} (or ask for another to be added, with its reason)",
                            INTERNAL_STATUS_TABLES.join(", ")
                        ),
                    ));
                }
            }
            if parts[0] == "system" && !call {
                return Err(refused(
                    format!("`{shown}` in the `system` database"),
                    "it holds the cluster's users (with password hashes), settings and jobs",
                    "use `SHOW` statements (`SHOW JOBS`, `SHOW DATABASES`)",
                ));
            }
        }
        i = j.max(i + 1);
    }
    Ok(())
}

/// Whether `path` stays under the extern directory of node 1.
fn path_allowed(path: &str) -> bool {
    let Some(rest) = path.strip_prefix(NODELOCAL_PREFIX) else {
        return false;
    };
    !rest.is_empty()
        && !rest.starts_with('/')
        && !rest.contains('\\')
        && rest.split('/').all(|part| part != ".." && part != ".")
}

/// The plain quoted literals of an `EXPORT` / `IMPORT` (`'…'` and `"…"`); any other string
/// form or a parameter is refused, because it could name another target than the one checked.
fn literals(verb: &str, sig: &[&Token]) -> Result<Vec<String>, SqlRefusal> {
    let mut out = Vec::new();
    for t in sig {
        match t {
            Token::SingleQuotedString(s) => out.push(s.clone()),
            Token::Word(w) if w.quote_style == Some('"') => out.push(w.value.clone()),
            Token::Placeholder(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::DollarQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_) => {
                return Err(SqlRefusal::KwdbPath(format!(
                    "{verb} may name paths and options only as plain quoted literals ('…' or \"…\"): `{t}` could name another target than the one the host checks; write the `{NODELOCAL_PREFIX}<dir>` path out"
                )));
            }
            _ => {}
        }
    }
    Ok(out)
}

fn check_paths(verb: &str, literals: &[String]) -> Result<(), SqlRefusal> {
    // Anything that could be a location (a scheme, a slash, a backslash) must be an allowed
    // path; option values (`delimiter = ';'`) are not locations.
    let paths: Vec<&String> = literals
        .iter()
        .filter(|l| l.contains(':') || l.contains('/') || l.contains('\\'))
        .collect();
    if paths.is_empty() {
        return Err(SqlRefusal::KwdbPath(format!(
            "{verb} names no `{NODELOCAL_PREFIX}<dir>` path"
        )));
    }
    match paths.iter().find(|p| !path_allowed(p)) {
        Some(bad) => Err(SqlRefusal::KwdbPath(format!(
            "{verb} path `{bad}` is outside the node's extern directory; use `{NODELOCAL_PREFIX}<dir>` without `..` (http:// and other nodes would move data off the node)"
        ))),
        None => Ok(()),
    }
}

/// `SHOW`: no embedded query, no other sessions' statements.
fn check_show(sig: &[&Token]) -> Result<(), SqlRefusal> {
    for t in sig.iter().skip(1) {
        if matches!(t, Token::LParen | Token::LBracket) {
            return Err(refused(
                "`SHOW` with parentheses or brackets",
                "it can embed a query the host does not parse",
                "send the query as a `SELECT` of its own",
            ));
        }
        match keyword(Some(t)).as_deref() {
            Some("SELECT" | "WITH" | "VALUES") => {
                return Err(refused(
                    "`SHOW … SELECT`",
                    "it embeds a query the host does not parse",
                    "send the query as a `SELECT` of its own",
                ));
            }
            Some(what @ ("QUERIES" | "SESSIONS" | "STATEMENTS" | "TRANSACTIONS" | "TRACE")) => {
                return Err(refused(
                    format!("`SHOW {what}`"),
                    "it lists other sessions' statements, which can carry secrets",
                    "check jobs with `SHOW JOBS`",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The access a KWDB-only statement needs, or `None` when it is ordinary SQL for the
/// PostgreSQL dialect (or does not tokenize: the PostgreSQL analysis then says why).
pub fn classify(sql: &str) -> Option<Result<Access, SqlRefusal>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    classify_tokens(&tokens)
}

/// [`classify`] on the statement's tokens.
pub fn classify_tokens(tokens: &[TokenWithSpan]) -> Option<Result<Access, SqlRefusal>> {
    let sig = significant(tokens);
    let first = keyword(sig.first())?;
    let access = match first.as_str() {
        "EXPORT" => Access::Backup,
        "IMPORT" => Access::Restore,
        "SHOW" => Access::Read,
        _ => return None,
    };
    let statements = sig
        .split(|t| matches!(t, Token::SemiColon))
        .filter(|s| !s.is_empty())
        .count();
    if statements != 1 {
        return Some(Err(SqlRefusal::NotOneStatement(statements)));
    }
    let checked = if access == Access::Read {
        check_show(&sig)
    } else {
        literals(&first, &sig).and_then(|l| check_paths(&first, &l))
    };
    Some(checked.map(|()| access))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_needs_backup_and_import_restore() {
        assert_eq!(
            classify(
                r#"EXPORT INTO CSV "nodelocal://1/upshift/export-1/shop" FROM DATABASE shop WITH privileges, comment"#
            ),
            Some(Ok(Access::Backup))
        );
        assert_eq!(
            classify(r#"export users to sql "nodelocal://1/upshift/export-1/users";"#),
            Some(Ok(Access::Backup))
        );
        assert_eq!(
            classify(
                r#"IMPORT DATABASE CSV DATA ("nodelocal://1/upshift/export-1/shop") WITH privileges"#
            ),
            Some(Ok(Access::Restore))
        );
        assert_eq!(classify("SHOW DATABASES"), Some(Ok(Access::Read)));
        assert_eq!(classify("  show jobs ;  "), Some(Ok(Access::Read)));
        assert_eq!(classify("SELECT version()"), None);
        assert_eq!(classify("CREATE TABLE t (a int)"), None);
    }

    #[test]
    fn paths_stay_under_the_extern_directory() {
        for bad in [
            r#"EXPORT INTO CSV "http://10.0.0.9:8000/x" FROM DATABASE shop"#,
            r#"EXPORT INTO CSV "nodelocal://2/x" FROM DATABASE shop"#,
            r#"EXPORT INTO CSV "nodelocal://1/../../etc" FROM DATABASE shop"#,
            r#"EXPORT INTO CSV "nodelocal://1//etc" FROM DATABASE shop"#,
            r#"IMPORT DATABASE CSV DATA ('nodelocal://1/a/../../b')"#,
            r#"EXPORT INTO CSV FROM DATABASE shop"#,
        ] {
            assert!(
                matches!(classify(bad), Some(Err(SqlRefusal::KwdbPath(_)))),
                "{bad} was not refused"
            );
        }
    }

    #[test]
    fn one_statement_at_a_time() {
        assert_eq!(
            classify(r#"SHOW DATABASES; DROP DATABASE shop"#),
            Some(Err(SqlRefusal::NotOneStatement(2)))
        );
        // A semicolon inside a quoted delimiter is not a statement break.
        assert_eq!(
            classify(
                r#"EXPORT INTO CSV "nodelocal://1/e/shop" FROM DATABASE shop WITH delimiter = ';'"#
            ),
            Some(Ok(Access::Backup))
        );
    }
}
