//! KWDB's own statements, which the PostgreSQL grammar does not know: `EXPORT` (needs
//! `backup`), `IMPORT` (needs `restore`) and `SHOW …` (a read). Their file paths must stay under
//! the node's extern directory (`nodelocal://1/<dir>`): `http://` targets and other nodes would
//! move data off the node, and `..` would leave the directory. Everything else is classified by
//! the PostgreSQL dialect like any PostgreSQL statement.

use super::sql::SqlRefusal;
use upshift_model::grants::Access;

/// The one path prefix KWDB statements may name.
pub const NODELOCAL_PREFIX: &str = "nodelocal://1/";

/// A statement split into its words outside quotes and its quoted literals.
struct Scanned {
    first_word: String,
    literals: Vec<String>,
    statements: usize,
}

fn scan(sql: &str) -> Scanned {
    let first_word = sql
        .trim_start()
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_uppercase();
    let mut literals = Vec::new();
    let mut segments = vec![String::new()];
    let mut quote: Option<char> = None;
    let mut current = String::new();
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => {
                literals.push(std::mem::take(&mut current));
                quote = None;
            }
            Some(_) => current.push(c),
            None if c == ';' => segments.push(String::new()),
            None => {
                if c == '\'' || c == '"' {
                    quote = Some(c);
                }
                if let Some(segment) = segments.last_mut() {
                    segment.push(c);
                }
            }
        }
    }
    Scanned {
        first_word,
        literals,
        statements: segments.iter().filter(|s| !s.trim().is_empty()).count(),
    }
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

fn check_paths(verb: &str, literals: &[String]) -> Result<(), SqlRefusal> {
    let paths: Vec<&String> = literals.iter().filter(|l| l.contains("://")).collect();
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

/// The access a KWDB-only statement needs, or `None` when it is ordinary SQL for the
/// PostgreSQL dialect.
pub fn classify(sql: &str) -> Option<Result<Access, SqlRefusal>> {
    let scanned = scan(sql);
    let access = match scanned.first_word.as_str() {
        "EXPORT" => Access::Backup,
        "IMPORT" => Access::Restore,
        "SHOW" => Access::Read,
        _ => return None,
    };
    if scanned.statements != 1 {
        return Some(Err(SqlRefusal::NotOneStatement(scanned.statements)));
    }
    if access != Access::Read
        && let Err(e) = check_paths(&scanned.first_word, &scanned.literals)
    {
        return Some(Err(e));
    }
    Some(Ok(access))
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
