//! The MySQL / MariaDB side of the SQL analysis ([`super::sql::analyze_bound`]).
//!
//! The MySQL server runs text the parser used by [`super::sql`] never sees as code: executable
//! comments (`/*! … */`, `/*M! … */`) and optimizer hints (`/*+ … */`) are dropped by the
//! tokenizer as comments, and `--` followed by a tab or a newline starts a comment on the server
//! but not in the tokenizer. So the raw text is checked first ([`check_raw`]), then the statement
//! must tokenize the same whatever the server's `sql_mode` ([`check_sql_mode_independent`]:
//! `NO_BACKSLASH_ESCAPES` moves where a string ends), then the tokens are checked
//! ([`check_tokens`]: user variables, `INTO OUTFILE`, `SET STATEMENT`, `HANDLER`, stored
//! programs, `DEFINER`, storage engines that reach files or other servers, functions), and the
//! parsed statement last ([`check_statement`], [`Scope`]: only the bound schema, and
//! `information_schema` for reads).
//!
//! What is refused on every grant (an upgrade adapter never needs it, and each is a way out of
//! the bound database or past the host's limits): executable comments and hints; `INTO OUTFILE`
//! / `INTO DUMPFILE`; `LOAD_FILE`; `LOAD DATA` / `LOAD XML`; `SET STATEMENT … FOR` and every other
//! `SET`; `SLEEP`, `BENCHMARK` and the replication waits; named locks (`GET_LOCK`, …);
//! `LOCK TABLES`; `HANDLER`; user variables (`@v`, `@v := …`, `INTO @v`); `DO`, `CALL`,
//! `PREPARE` / `EXECUTE`; `USE`; stored programs (triggers, procedures, functions, events) and
//! `DEFINER` clauses; tables on engines other than InnoDB, Aria, MyISAM and MEMORY
//! (`CONNECT`, `FEDERATED`, `SPIDER` … reach files and other servers), `DATA DIRECTORY` /
//! `INDEX DIRECTORY` and `CONNECTION`; names in any schema but the bound database. On a read
//! grant DDL (which MySQL commits implicitly, so the `READ ONLY` transaction does not stop it)
//! and `NEXTVAL` / `SETVAL` / `NEXT VALUE FOR` (they write the sequence) need their grant.

use std::any::TypeId;
use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    ObjectName, ObjectNamePart, Query, SetExpr, Statement, TableFactor, Visit, Visitor,
};
use sqlparser::dialect::{Dialect, MySqlDialect};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::sql::SqlRefusal;
use upshift_model::grants::Access;

const LOCKS: &str = "named locks are shared by every session on the server, so a lock the adapter holds can stall the product, and a call's connection ends with the call, so a lock cannot coordinate anything";
const WAITS: &str = "it waits on replication for as long as it is told";
const UDF: &str = "it is a user-defined function that runs programs on the database server";

/// Functions refused on every MySQL / MariaDB grant, with the reason. Names are compared in
/// lower case, quoted or not (MySQL function names are case-insensitive).
pub const MYSQL_FORBIDDEN_FUNCTIONS: &[(&str, &str)] = &[
    ("load_file", "it reads a file on the database server"),
    (
        "sleep",
        "it holds the connection (and any locks) without doing work",
    ),
    (
        "benchmark",
        "it burns the server's CPU for as long as it is told",
    ),
    ("get_lock", LOCKS),
    ("release_lock", LOCKS),
    ("release_all_locks", LOCKS),
    ("is_free_lock", LOCKS),
    ("is_used_lock", LOCKS),
    ("master_pos_wait", WAITS),
    ("master_gtid_wait", WAITS),
    ("source_pos_wait", WAITS),
    ("wait_for_executed_gtid_set", WAITS),
    ("wait_until_sql_thread_after_gtids", WAITS),
    ("sys_exec", UDF),
    ("sys_eval", UDF),
    ("sys_get", UDF),
    ("sys_set", UDF),
];

/// Functions that write a sequence: a statement calling them needs `write`.
const SEQUENCE_WRITERS: &[&str] = &["nextval", "setval"];

/// Storage engines a `CREATE` / `ALTER TABLE` may name: ones that keep rows in the server's own
/// data directory.
const LOCAL_ENGINES: &[&str] = &["innodb", "aria", "myisam", "memory", "heap"];

/// The one schema besides the bound database a read may name.
pub const INFORMATION_SCHEMA: &str = "information_schema";

fn refused(what: impl Into<String>, why: &str, instead: &str) -> SqlRefusal {
    SqlRefusal::Refused {
        what: what.into(),
        why: why.to_string(),
        instead: instead.to_string(),
    }
}

/// Checks of the raw text, before any tokenizer: executable comments and optimizer hints
/// anywhere (even inside what looks like a string: where a string ends can depend on the
/// server's `sql_mode`), control characters, and `--` followed by anything the server reads as
/// the start of a comment but the tokenizer does not.
pub fn check_raw(sql: &str) -> Result<(), SqlRefusal> {
    let bytes = sql.as_bytes();
    for (i, _) in sql.match_indices("/*") {
        let rest = &bytes[i + 2..];
        let form = match rest {
            [b'!', ..] => Some("/*!"),
            [b'M' | b'm', b'!', ..] => Some("/*M!"),
            [b'+', ..] => Some("/*+"),
            _ => None,
        };
        if let Some(form) = form {
            return Err(SqlRefusal::ExecutableComment(form.to_string()));
        }
    }
    if let Some(c) = sql
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(refused(
            format!("the control character {:?}", c),
            "MySQL and the host's parser do not agree on where it ends a token",
            "remove it, or pass the text as a parameter",
        ));
    }
    for i in 0..bytes.len().saturating_sub(1) {
        if bytes[i] == b'-' && bytes[i + 1] == b'-' {
            match bytes.get(i + 2) {
                Some(b' ') => {}
                Some(b) if !b.is_ascii_control() => {}
                _ => {
                    return Err(refused(
                        "`--` followed by a tab, a line break or the end of the statement",
                        "MySQL reads it as the start of a comment, the host's parser as two minus signs, so the two would see different statements",
                        "write comments as `-- ` (with a space) or `/* … */`, and `- -` for a double negation",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// MySQL's tokenizer with `NO_BACKSLASH_ESCAPES`: a backslash is an ordinary character.
#[derive(Debug)]
struct NoBackslashEscapes;

impl Dialect for NoBackslashEscapes {
    fn dialect(&self) -> TypeId {
        TypeId::of::<MySqlDialect>()
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        MySqlDialect {}.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        MySqlDialect {}.is_identifier_part(ch)
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        MySqlDialect {}.is_delimited_identifier_start(ch)
    }
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        MySqlDialect {}.identifier_quote_style(identifier)
    }
    fn supports_string_literal_backslash_escape(&self) -> bool {
        false
    }
    fn supports_string_literal_concatenation(&self) -> bool {
        true
    }
    fn supports_numeric_prefix(&self) -> bool {
        true
    }
    fn requires_single_line_comment_whitespace(&self) -> bool {
        true
    }
}

/// Refuse a statement whose tokens (where each string, identifier and comment starts and ends)
/// differ between the server's `sql_mode`s: with and without `NO_BACKSLASH_ESCAPES` (which also
/// covers `ANSI_QUOTES`, where `"…"` is an identifier that never takes backslash escapes).
pub fn check_sql_mode_independent(sql: &str, tokens: &[TokenWithSpan]) -> Result<(), SqlRefusal> {
    if !sql.contains('\\') {
        return Ok(());
    }
    let ambiguous = || {
        refused(
            "a backslash in a quoted string or identifier that changes where it ends",
            "the server reads it differently with `NO_BACKSLASH_ESCAPES` in its sql_mode, so the host cannot know which statement runs",
            "pass the value as a parameter (`?`)",
        )
    };
    let other = Tokenizer::new(&NoBackslashEscapes, sql)
        .tokenize_with_location()
        .map_err(|_| ambiguous())?;
    let shape = |t: &[TokenWithSpan]| -> Vec<_> {
        t.iter()
            .map(|t| (t.span, std::mem::discriminant(&t.token)))
            .collect()
    };
    if shape(tokens) != shape(&other) {
        return Err(ambiguous());
    }
    Ok(())
}

/// A name as MySQL may read it: an unquoted word (not a variable), a backquoted identifier, or
/// a double-quoted text (an identifier under `ANSI_QUOTES`). The value and whether quoted.
pub fn name_token(t: &Token) -> Option<(&str, bool)> {
    match t {
        Token::Word(w) if w.quote_style.is_some() => Some((&w.value, true)),
        Token::Word(w) if !w.value.starts_with('@') => Some((&w.value, false)),
        Token::DoubleQuotedString(s) => Some((s, true)),
        _ => None,
    }
}

fn keyword(t: Option<&&Token>) -> Option<String> {
    match t {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// What the tokens say beyond the refusals: the schema qualifiers they name.
#[derive(Debug, Default)]
pub struct TokenFacts {
    /// `(qualifier, as written)` of every `a.b.c` and of `a.b` where `a` may be a schema.
    pub qualifiers: Vec<Qualified>,
    /// The statement writes a sequence (`NEXTVAL`, `SETVAL`, `NEXT VALUE FOR`).
    pub writes_sequence: bool,
}

/// A qualified name seen in the tokens.
#[derive(Debug, Clone)]
pub struct Qualified {
    /// The first part, as the server compares it (quotes removed).
    pub qualifier: String,
    /// The whole name as written (for the message).
    pub shown: String,
    /// It may be `table.column` (two parts in an expression): it is a schema only when no
    /// table or alias of the statement has that name.
    pub maybe_column: bool,
}

/// Token-level refusals (on every grant) and facts.
pub fn check_tokens(tokens: &[TokenWithSpan]) -> Result<TokenFacts, SqlRefusal> {
    let sig: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .collect();
    let mut facts = TokenFacts::default();
    let first = keyword(sig.iter().find(|t| !matches!(t, Token::LParen)));
    let second = keyword(sig.get(1));
    check_statement_word(first.as_deref(), second.as_deref())?;
    let ddl = matches!(first.as_deref(), Some("CREATE" | "ALTER"));
    if matches!(first.as_deref(), Some("CREATE" | "ALTER" | "DROP")) {
        check_stored_program(&sig)?;
    }
    for (i, t) in sig.iter().enumerate() {
        match t {
            Token::AtSign | Token::AtAt => return Err(user_variable("@")),
            Token::Word(w)
                if w.quote_style.is_none()
                    && w.value.starts_with('@')
                    && !w.value.starts_with("@@") =>
            {
                return Err(user_variable(&w.value));
            }
            _ => {}
        }
        let word = keyword(Some(t));
        let next = keyword(sig.get(i + 1));
        match (word.as_deref(), next.as_deref()) {
            (Some("INTO"), Some(target @ ("OUTFILE" | "DUMPFILE"))) => {
                return Err(refused(
                    format!("`INTO {target}`"),
                    "it writes a file on the database server",
                    "select the rows and write them with the files capability",
                ));
            }
            (Some(dir @ ("DATA" | "INDEX")), Some("DIRECTORY")) => {
                return Err(refused(
                    format!("`{dir} DIRECTORY`"),
                    "it puts table files outside the server's data directory",
                    "create the table without it",
                ));
            }
            (Some("DEFINER"), _) if ddl && matches!(sig.get(i + 1), Some(Token::Eq)) => {
                return Err(refused(
                    "a `DEFINER` clause",
                    "it makes the object run with another account's privileges",
                    "leave it out: objects belong to the binding's own account",
                ));
            }
            (Some("ENGINE"), _) if ddl => check_engine(&sig[i + 1..])?,
            (Some("CONNECTION"), _)
                if ddl
                    && matches!(
                        sig.get(i + 1),
                        Some(Token::Eq | Token::SingleQuotedString(_))
                    ) =>
            {
                return Err(refused(
                    "a table `CONNECTION`",
                    "it makes the table a window on another server",
                    "create an ordinary table",
                ));
            }
            (Some("VALUE"), Some("FOR"))
                if i > 0 && keyword(sig.get(i - 1)).as_deref() == Some("NEXT") =>
            {
                facts.writes_sequence = true;
            }
            _ => {}
        }
    }
    facts.qualifiers = qualified_names(&sig);
    Ok(facts)
}

fn user_variable(name: &str) -> SqlRefusal {
    refused(
        format!("the user variable `{name}`"),
        "user variables are session state the host does not see, and the session ends with the call",
        "pass values as parameters (`?`) and read results from the rows a query returns",
    )
}

/// Statement kinds refused by their first word, with what to do instead.
fn check_statement_word(first: Option<&str>, second: Option<&str>) -> Result<(), SqlRefusal> {
    let (what, why, instead) = match (first, second) {
        (Some("SET"), Some("STATEMENT")) => (
            "`SET STATEMENT … FOR`",
            "it overrides the session limits the host sets (such as `max_statement_time`) for one statement",
            "run the statement without it; the host's limits apply to every call",
        ),
        (Some("SET"), _) => (
            "`SET`",
            "session and server settings are the host's, and the session ends with the call",
            "pass values as parameters (`?`)",
        ),
        (Some("HANDLER"), _) => (
            "`HANDLER`",
            "it reads a table through a cursor that outlives the statement",
            "use `SELECT` with `ORDER BY` and `LIMIT`",
        ),
        (Some("LOAD"), _) => (
            "`LOAD DATA` / `LOAD XML`",
            "it reads a file from the database server or the client",
            "read the file with the files capability and `INSERT` its rows",
        ),
        (Some("DO"), _) => (
            "`DO`",
            "it evaluates expressions for their side effects only",
            "use `SELECT`",
        ),
        (Some("CALL"), _) => (
            "`CALL`",
            "a stored procedure runs SQL the host cannot see (often with its definer's privileges)",
            "send the procedure's statements one by one",
        ),
        (Some("LOCK" | "UNLOCK"), _) => (
            "`LOCK TABLES` / `UNLOCK TABLES`",
            "table locks can stall the product, and the session ends with the call",
            "use a `transaction` (with `SELECT … FOR UPDATE` on a write grant)",
        ),
        (Some("USE"), _) => (
            "`USE`",
            "a binding reaches only its own database",
            "bind the other database separately in the fleet file",
        ),
        (Some("PREPARE" | "EXECUTE" | "DEALLOCATE"), _) => (
            "`PREPARE` / `EXECUTE`",
            "it runs SQL given as text, which the host cannot check",
            "send the statement itself, with parameters (`?`)",
        ),
        _ => return Ok(()),
    };
    Err(refused(what, why, instead))
}

/// `CREATE … TRIGGER / PROCEDURE / FUNCTION / EVENT` (after `OR REPLACE`, `DEFINER = …`,
/// `AGGREGATE`), and `ALTER` / `DROP` of one: refused on every grant.
fn check_stored_program(sig: &[&Token]) -> Result<(), SqlRefusal> {
    for t in sig.iter().skip(1).take(12) {
        match keyword(Some(t)).as_deref() {
            Some(
                "TABLE" | "VIEW" | "INDEX" | "UNIQUE" | "FULLTEXT" | "SPATIAL" | "SEQUENCE"
                | "TEMPORARY" | "DATABASE" | "SCHEMA" | "IF",
            ) => return Ok(()),
            Some(kind @ ("TRIGGER" | "PROCEDURE" | "FUNCTION" | "EVENT")) => {
                return Err(refused(
                    format!("a stored program (`{kind}`)"),
                    "its body runs later, as its definer, in statements the host never sees",
                    "send the statements the adapter needs directly",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `ENGINE [=] name`: only engines that keep rows in the server's own data directory.
fn check_engine(rest: &[&Token]) -> Result<(), SqlRefusal> {
    let mut rest = rest.iter();
    let mut value = rest.next();
    if matches!(value, Some(Token::Eq)) {
        value = rest.next();
    }
    let name = match value {
        Some(Token::Word(w)) => w.value.clone(),
        Some(Token::SingleQuotedString(s) | Token::DoubleQuotedString(s)) => s.clone(),
        _ => return Ok(()),
    };
    if LOCAL_ENGINES.contains(&name.to_ascii_lowercase().as_str()) {
        return Ok(());
    }
    Err(refused(
        format!("the storage engine `{name}`"),
        "engines such as CONNECT, FEDERATED and SPIDER read files or other servers",
        "use InnoDB (or Aria, MyISAM, MEMORY)",
    ))
}

/// Qualified names in the tokens: `a.b.c` (`a` is a schema), `a.b(` (a function in schema
/// `a`), `a.b` after `NEXTVAL(` / `VALUE FOR` (a sequence in schema `a`), and other `a.b`
/// (a column of table `a`, or object `b` of schema `a`).
fn qualified_names(sig: &[&Token]) -> Vec<Qualified> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < sig.len() {
        let Some((first, _)) = name_token(sig[i]) else {
            i += 1;
            continue;
        };
        let after_dot = i > 0 && matches!(sig[i - 1], Token::Period);
        let mut parts = vec![first.to_string()];
        let mut j = i + 1;
        while j + 1 < sig.len()
            && matches!(sig[j], Token::Period)
            && let Some((part, _)) = name_token(sig[j + 1])
        {
            parts.push(part.to_string());
            j += 2;
        }
        if parts.len() >= 2 && !after_dot {
            let call = matches!(sig.get(j), Some(Token::LParen));
            let before = |k: usize| i.checked_sub(k).and_then(|p| keyword(sig.get(p)));
            let sequence = matches!(sig.get(i.wrapping_sub(1)), Some(Token::LParen))
                && matches!(before(2).as_deref(), Some("NEXTVAL" | "SETVAL" | "LASTVAL"))
                || (before(1).as_deref() == Some("FOR") && before(2).as_deref() == Some("VALUE"));
            out.push(Qualified {
                qualifier: parts[0].clone(),
                shown: parts.join("."),
                maybe_column: parts.len() == 2 && !call && !sequence,
            });
        }
        i = j.max(i + 1);
    }
    out
}

/// Function names as MySQL resolves them: any quoting, any case. Refuses the forbidden ones and
/// names that are not plain ASCII (the server folds some other letters to ASCII ones); the
/// statement writes a sequence when it calls `NEXTVAL` / `SETVAL`.
pub fn check_function(name: &str) -> Result<bool, SqlRefusal> {
    if !name.is_ascii() {
        return Err(refused(
            format!("the function name `{name}`"),
            "function names with letters outside ASCII can match built-in functions the host refuses",
            "use the function's plain ASCII name",
        ));
    }
    let lower = name.to_ascii_lowercase();
    if let Some((_, why)) = MYSQL_FORBIDDEN_FUNCTIONS.iter().find(|(f, _)| *f == lower) {
        return Err(refused(
            format!("the function `{lower}`"),
            why,
            "leave it out: an upgrade adapter does not need it",
        ));
    }
    Ok(SEQUENCE_WRITERS.contains(&lower.as_str()))
}

/// Statement kinds the parser knows that are refused on MySQL with a clear reason.
pub fn check_statement(statement: &Statement) -> Result<(), SqlRefusal> {
    match statement {
        Statement::CreateTrigger(_)
        | Statement::CreateProcedure { .. }
        | Statement::CreateFunction(_)
        | Statement::DropTrigger(_)
        | Statement::DropProcedure { .. }
        | Statement::DropFunction { .. } => Err(refused(
            "a stored program",
            "its body runs later, as its definer, in statements the host never sees",
            "send the statements the adapter needs directly",
        )),
        Statement::Use(_) => check_statement_word(Some("USE"), None),
        Statement::LoadData { .. } => check_statement_word(Some("LOAD"), None),
        Statement::Call(_) => check_statement_word(Some("CALL"), None),
        Statement::LockTables { .. } | Statement::UnlockTables => {
            check_statement_word(Some("LOCK"), None)
        }
        Statement::Set(_) => check_statement_word(Some("SET"), None),
        _ => Ok(()),
    }
}

/// The tables, aliases and schema qualifiers the parsed statement names.
#[derive(Default)]
struct Names {
    /// Table names and aliases, in lower case: `a` of `a.b` in an expression is one of these.
    declared: BTreeSet<String>,
    /// `(qualifier, name as written)` of every qualified table-like name.
    qualified: Vec<(String, String)>,
}

impl Names {
    /// Record the qualifiers of `name`; the parts, as written.
    fn qualify(&mut self, name: &ObjectName) -> Vec<String> {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(id) => id.value.clone(),
                ObjectNamePart::Function(f) => f.name.value.clone(),
            })
            .collect();
        if parts.len() >= 2 {
            for q in &parts[..parts.len() - 1] {
                self.qualified.push((q.clone(), parts.join(".")));
            }
        }
        parts
    }

    /// A table in a FROM clause: its qualifiers, and its name as one `x.y` may refer to.
    fn object(&mut self, name: &ObjectName) {
        if let Some(last) = self.qualify(name).last() {
            self.declared.insert(last.to_lowercase());
        }
    }
}

impl Visitor for Names {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        // A relation outside a FROM clause (`CREATE TABLE x`, `ALTER TABLE x`) declares no
        // name that `x.y` elsewhere could mean: `ALTER TABLE other RENAME TO other.t` names
        // schema `other`.
        self.qualify(relation);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let alias = match factor {
            TableFactor::Table { name, alias, .. } => {
                self.object(name);
                alias
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::JsonTable { alias, .. }
            | TableFactor::NestedJoin { alias, .. }
            | TableFactor::TableFunction { alias, .. } => alias,
            _ => &None,
        };
        if let Some(alias) = alias {
            self.declared.insert(alias.name.value.to_lowercase());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.declared.insert(cte.alias.name.value.to_lowercase());
            }
        }
        if let SetExpr::Table(t) = query.body.as_ref()
            && let Some(schema) = &t.schema_name
        {
            self.qualified.push((
                schema.clone(),
                format!("{schema}.{}", t.table_name.clone().unwrap_or_default()),
            ));
        }
        ControlFlow::Continue(())
    }
}

/// Refuse any name outside the bound database: qualified names must name `database` (compared
/// exactly: schema names are case-sensitive on most servers), or `information_schema` on a
/// read. Without a bound database every qualifier but `information_schema` is refused.
pub fn check_scope(
    database: Option<&str>,
    access: Access,
    statement: &Statement,
    tokens: &TokenFacts,
) -> Result<(), SqlRefusal> {
    let mut names = Names::default();
    let _ = statement.visit(&mut names);
    // Object names the parser's visitor does not report as relations.
    match statement {
        Statement::CreateView { name, .. } | Statement::CreateSequence { name, .. } => {
            names.qualify(name);
        }
        Statement::Drop { names: dropped, .. } => {
            for name in dropped {
                names.qualify(name);
            }
        }
        Statement::CreateTable(create) => {
            if let Some(
                sqlparser::ast::CreateTableLikeKind::Parenthesized(like)
                | sqlparser::ast::CreateTableLikeKind::Plain(like),
            ) = &create.like
            {
                names.qualify(&like.name);
            }
        }
        _ => {}
    }
    let mut seen: Vec<(String, String)> = names.qualified;
    for q in &tokens.qualifiers {
        if q.maybe_column && names.declared.contains(&q.qualifier.to_lowercase()) {
            continue;
        }
        seen.push((q.qualifier.clone(), q.shown.clone()));
    }
    for (schema, shown) in seen {
        if database == Some(schema.as_str()) {
            continue;
        }
        let information = schema.eq_ignore_ascii_case(INFORMATION_SCHEMA);
        if information && shown.to_ascii_lowercase().contains("processlist") {
            return Err(refused(
                format!("`{shown}`"),
                "it lists other sessions' statements, which can carry secrets",
                "read the bound database's own tables",
            ));
        }
        if information && access == Access::Read {
            continue;
        }
        return Err(SqlRefusal::OutsideSchema {
            name: shown,
            schema,
            database: database.unwrap_or("(none)").to_string(),
            read_only_here: information,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_text_refusals() {
        for sql in [
            "/*!DROP TABLE IF EXISTS victim, `*/SELECT 1/*!`*/",
            "SELECT 1 /*!50000 , LOAD_FILE('/etc/hostname') */",
            "SELECT 1 /*M!100000 , 2 */",
            "SELECT 1 /*m!100000 , 2 */",
            "SELECT /*+ SET_VAR(max_execution_time=0) */ 1",
            "SELECT '/*!' AS x",
        ] {
            assert!(
                matches!(check_raw(sql), Err(SqlRefusal::ExecutableComment(_))),
                "{sql}"
            );
        }
        for sql in [
            "SELECT 1 --\tx\n, LOAD_FILE('/etc/hostname')",
            "SELECT 1 --\n, 2",
            "SELECT 1 --",
            "SELECT 1 ---\t2",
            "SELECT 1\0, 2",
            "SELECT 1 \x0b, 2",
        ] {
            assert!(
                matches!(check_raw(sql), Err(SqlRefusal::Refused { .. })),
                "{sql:?}"
            );
        }
        for sql in [
            "SELECT 1 -- a comment\n, 2",
            "SELECT 1 - -2",
            "SELECT 1 /* plain */ , 2",
            "SELECT 1 # hash\n",
            "SELECT a--b FROM t",
        ] {
            assert_eq!(check_raw(sql), Ok(()), "{sql:?}");
        }
    }
}
