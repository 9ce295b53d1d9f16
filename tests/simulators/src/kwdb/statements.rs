//! Recognising the statements the simulator implements itself (everything else goes to the
//! backing PostgreSQL), and rewriting KWDB `CREATE TABLE` into PostgreSQL.

use anyhow::{Context, anyhow, bail};

/// A lexical token.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A bare word: keyword, identifier, number, dotted name (`d.t`, `ts.wal.wal_level`).
    Word(String),
    /// `'…'`.
    Str(String),
    /// `"…"`.
    Quoted(String),
    /// Any other character.
    Punct(char),
}

impl Tok {
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }
}

/// Tokens of a statement (comments dropped).
pub fn lex(sql: &str) -> anyhow::Result<Vec<Tok>> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => bail!("unterminated quoted string in {sql:?}"),
                    Some(&q) if q == c => {
                        if chars.get(i + 1) == Some(&c) {
                            s.push(c);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(if c == '\'' {
                Tok::Str(s)
            } else {
                Tok::Quoted(s)
            });
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let mut s = String::new();
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | '$'))
            {
                s.push(chars[i]);
                i += 1;
            }
            out.push(Tok::Word(s));
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    while matches!(out.last(), Some(Tok::Punct(';'))) {
        out.pop();
    }
    Ok(out)
}

/// Split a batch on `;` outside quotes and comments; empty statements are dropped.
pub fn split(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    cur.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    for n in chars.by_ref() {
                        if n == '\n' {
                            cur.push('\n');
                            break;
                        }
                    }
                }
                ';' => {
                    if !cur.trim().is_empty() {
                        out.push(cur.trim().to_string());
                    }
                    cur.clear();
                }
                _ => cur.push(c),
            },
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// A statement the simulator implements, or `Passthrough`.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    Version,
    CreateDatabase {
        name: String,
        ts: bool,
        interval: Option<String>,
        if_not_exists: bool,
    },
    DropDatabase {
        name: String,
        if_exists: bool,
        restrict: bool,
    },
    Use(String),
    ShowDatabases,
    CreateUser {
        name: String,
        password: Option<String>,
        if_not_exists: bool,
    },
    Grant {
        privileges: String,
        kind: String,
        objects: Vec<String>,
        grantees: Vec<String>,
    },
    CommentDatabase {
        name: String,
        comment: String,
    },
    SetClusterSetting {
        name: String,
        value: String,
    },
    ShowClusterSetting(String),
    ShowJobs,
    ShowTables(Option<String>),
    ShowUsers,
    KvStoreStatus {
        sums: bool,
    },
    Ranges,
    CreateTable,
    ExportDatabase {
        path: String,
        db: String,
        options: Vec<String>,
    },
    ExportUsers(String),
    ExportSettings(String),
    ImportDatabase {
        path: String,
        options: Vec<String>,
    },
    ImportUsers(String),
    ImportSettings(String),
    Unsupported(String),
    Begin,
    End,
    Passthrough,
}

/// The type of a result column of an implemented statement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColType {
    Text,
    Int,
    Float,
}

/// Columns of the job-style result of IMPORT (§2.7).
pub const IMPORT_COLUMNS: &[(&str, ColType)] = &[
    ("job_id", ColType::Int),
    ("status", ColType::Text),
    ("fraction_completed", ColType::Float),
    ("rows", ColType::Int),
    ("abandon_rows", ColType::Int),
    ("reject_rows", ColType::Int),
    ("note", ColType::Text),
];

/// Columns of the EXPORT result.
pub const EXPORT_COLUMNS: &[(&str, ColType)] = &[
    ("result", ColType::Text),
    ("rows", ColType::Int),
    ("node_id", ColType::Int),
    ("file_num", ColType::Int),
];

/// Columns of `SHOW JOBS` (a subset of KWDB's).
pub const JOB_COLUMNS: &[(&str, ColType)] = &[
    ("job_id", ColType::Int),
    ("job_type", ColType::Text),
    ("description", ColType::Text),
    ("user_name", ColType::Text),
    ("status", ColType::Text),
    ("created", ColType::Text),
    ("finished", ColType::Text),
    ("fraction_completed", ColType::Float),
    ("error", ColType::Text),
];

/// Columns of `kwdb_internal.ranges` (a subset).
pub const RANGE_COLUMNS: &[(&str, ColType)] = &[
    ("range_id", ColType::Int),
    ("start_pretty", ColType::Text),
    ("end_pretty", ColType::Text),
    ("database_name", ColType::Text),
    ("table_name", ColType::Text),
    ("replicas", ColType::Text),
    ("lease_holder", ColType::Int),
    ("range_size", ColType::Int),
];

impl Stmt {
    /// The result columns, for `Describe` before execution; `None` = no rows (a command tag).
    pub fn columns(&self) -> Option<Vec<(String, ColType)>> {
        let owned = |cols: &[(&str, ColType)]| {
            Some(
                cols.iter()
                    .map(|(n, t)| (n.to_string(), *t))
                    .collect::<Vec<_>>(),
            )
        };
        match self {
            Stmt::Version => owned(&[("version", ColType::Text)]),
            Stmt::ShowDatabases => owned(&[
                ("database_name", ColType::Text),
                ("engine_type", ColType::Text),
            ]),
            Stmt::ShowClusterSetting(name) => Some(vec![(name.clone(), ColType::Text)]),
            Stmt::ShowJobs => owned(JOB_COLUMNS),
            Stmt::ShowTables(_) => {
                owned(&[("table_name", ColType::Text), ("table_type", ColType::Text)])
            }
            Stmt::ShowUsers => owned(&[
                ("username", ColType::Text),
                ("options", ColType::Text),
                ("member_of", ColType::Text),
            ]),
            Stmt::KvStoreStatus { sums: true } => {
                owned(&[("sum", ColType::Int), ("sum", ColType::Int)])
            }
            Stmt::KvStoreStatus { sums: false } => owned(&[
                ("node_id", ColType::Int),
                ("store_id", ColType::Int),
                ("metrics", ColType::Text),
            ]),
            Stmt::Ranges => owned(RANGE_COLUMNS),
            Stmt::ExportDatabase { .. } | Stmt::ExportUsers(_) | Stmt::ExportSettings(_) => {
                owned(EXPORT_COLUMNS)
            }
            Stmt::ImportDatabase { .. } | Stmt::ImportUsers(_) | Stmt::ImportSettings(_) => {
                owned(IMPORT_COLUMNS)
            }
            _ => None,
        }
    }
}

struct P {
    toks: Vec<Tok>,
    i: usize,
}

impl P {
    fn peek_kw(&self, kw: &str) -> bool {
        self.toks.get(self.i).is_some_and(|t| t.is_kw(kw))
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek_kw(kw) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn eat_kws(&mut self, kws: &[&str]) -> bool {
        let save = self.i;
        for kw in kws {
            if !self.eat_kw(kw) {
                self.i = save;
                return false;
            }
        }
        true
    }
    fn expect_kw(&mut self, kw: &str) -> anyhow::Result<()> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            bail!("syntax error: expected {kw} at {:?}", self.toks.get(self.i))
        }
    }
    fn eat_punct(&mut self, c: char) -> bool {
        if self.toks.get(self.i) == Some(&Tok::Punct(c)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> anyhow::Result<String> {
        match self.toks.get(self.i) {
            Some(Tok::Word(w)) => {
                self.i += 1;
                Ok(w.to_lowercase())
            }
            Some(Tok::Quoted(q)) => {
                self.i += 1;
                Ok(q.clone())
            }
            other => bail!("syntax error: expected a name, found {other:?}"),
        }
    }
    fn string(&mut self) -> anyhow::Result<String> {
        match self.toks.get(self.i) {
            Some(Tok::Str(s)) | Some(Tok::Quoted(s)) => {
                self.i += 1;
                Ok(s.clone())
            }
            other => bail!("syntax error: expected a quoted path, found {other:?}"),
        }
    }
    fn done(&self) -> bool {
        self.i >= self.toks.len()
    }
    /// `WITH a, b = 'x', c` → lowercase option names.
    fn options(&mut self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        if !self.eat_kw("WITH") {
            return Ok(out);
        }
        while !self.done() {
            if self.eat_punct(',') {
                continue;
            }
            let name = self.ident()?;
            if self.eat_punct('=') {
                self.i += 1;
            }
            out.push(name);
        }
        Ok(out)
    }
    /// `( "path" )`.
    fn paren_path(&mut self) -> anyhow::Result<String> {
        let open = self.eat_punct('(');
        let s = self.string()?;
        if open && !self.eat_punct(')') {
            bail!("syntax error: expected ) after {s:?}");
        }
        Ok(s)
    }
}

/// Classify one statement.
pub fn classify(sql: &str) -> anyhow::Result<Stmt> {
    let toks = lex(sql)?;
    if toks.is_empty() {
        return Ok(Stmt::Passthrough);
    }
    let lower = sql.to_lowercase();
    if lower.contains("kwdb_internal.kv_store_status") {
        return Ok(Stmt::KvStoreStatus {
            sums: lower.contains("ranges.unavailable"),
        });
    }
    if lower.contains("kwdb_internal.ranges") {
        return Ok(Stmt::Ranges);
    }
    let mut p = P { toks, i: 0 };
    if p.eat_kw("SELECT") {
        if p.eat_kw("version") && p.eat_punct('(') && p.eat_punct(')') && p.done() {
            return Ok(Stmt::Version);
        }
        return Ok(Stmt::Passthrough);
    }
    if p.eat_kw("BEGIN") || p.eat_kws(&["START", "TRANSACTION"]) {
        return Ok(Stmt::Begin);
    }
    if p.eat_kw("COMMIT") || p.eat_kw("ROLLBACK") || p.eat_kw("END") {
        return Ok(Stmt::End);
    }
    if p.eat_kw("CREATE") {
        let ts = p.eat_kw("TS");
        if p.eat_kw("DATABASE") {
            let if_not_exists = p.eat_kws(&["IF", "NOT", "EXISTS"]);
            let name = p.ident()?;
            let mut interval = None;
            while !p.done() {
                if p.eat_kws(&["PARTITION", "INTERVAL"]) {
                    interval = Some(p.ident()?);
                } else {
                    p.i += 1;
                }
            }
            return Ok(Stmt::CreateDatabase {
                name,
                ts,
                interval,
                if_not_exists,
            });
        }
        if ts {
            bail!("syntax error at or near \"ts\"");
        }
        if p.eat_kw("USER") || p.eat_kw("ROLE") {
            let if_not_exists = p.eat_kws(&["IF", "NOT", "EXISTS"]);
            let name = p.ident()?;
            p.eat_kw("WITH");
            let mut password = None;
            if p.eat_kw("PASSWORD") && !p.eat_kw("NULL") {
                password = Some(p.string()?);
            }
            return Ok(Stmt::CreateUser {
                name,
                password,
                if_not_exists,
            });
        }
        if p.eat_kw("TABLE") {
            return Ok(Stmt::CreateTable);
        }
        return Ok(Stmt::Passthrough);
    }
    if p.eat_kws(&["DROP", "DATABASE"]) {
        let if_exists = p.eat_kws(&["IF", "EXISTS"]);
        let name = p.ident()?;
        let restrict = p.eat_kw("RESTRICT");
        return Ok(Stmt::DropDatabase {
            name,
            if_exists,
            restrict,
        });
    }
    if p.eat_kw("USE") {
        return Ok(Stmt::Use(p.ident()?));
    }
    if p.eat_kws(&["SET", "CLUSTER", "SETTING"]) {
        let name = p.ident()?;
        if !(p.eat_punct('=') || p.eat_kw("TO")) {
            bail!("syntax error: expected = after SET CLUSTER SETTING {name}");
        }
        let value = match p.toks.get(p.i) {
            Some(Tok::Str(s)) | Some(Tok::Word(s)) | Some(Tok::Quoted(s)) => s.clone(),
            other => bail!("syntax error: expected a value, found {other:?}"),
        };
        return Ok(Stmt::SetClusterSetting { name, value });
    }
    if p.eat_kws(&["SET", "DATABASE"]) {
        if !(p.eat_punct('=') || p.eat_kw("TO")) {
            bail!("syntax error: expected = after SET database");
        }
        return Ok(Stmt::Use(match p.toks.get(p.i) {
            Some(Tok::Str(s)) => s.clone(),
            _ => p.ident()?,
        }));
    }
    if p.eat_kws(&["SHOW", "DATABASES"]) {
        return Ok(Stmt::ShowDatabases);
    }
    if p.eat_kws(&["SHOW", "CLUSTER", "SETTING"]) {
        return Ok(Stmt::ShowClusterSetting(p.ident()?));
    }
    if p.eat_kws(&["SHOW", "JOBS"]) {
        return Ok(Stmt::ShowJobs);
    }
    if p.eat_kws(&["SHOW", "TABLES"]) {
        return Ok(Stmt::ShowTables(if p.eat_kw("FROM") {
            Some(p.ident()?)
        } else {
            None
        }));
    }
    if p.eat_kws(&["SHOW", "USERS"]) {
        return Ok(Stmt::ShowUsers);
    }
    if p.eat_kws(&["COMMENT", "ON", "DATABASE"]) {
        let name = p.ident()?;
        p.expect_kw("IS")?;
        let comment = p.string()?;
        return Ok(Stmt::CommentDatabase { name, comment });
    }
    if p.eat_kw("GRANT") {
        let mut privs = Vec::new();
        while !p.done() && !p.peek_kw("ON") {
            if let Some(Tok::Word(w)) = p.toks.get(p.i) {
                privs.push(w.to_uppercase());
            }
            p.i += 1;
        }
        p.expect_kw("ON")?;
        let kind = if p.eat_kw("DATABASE") {
            "DATABASE"
        } else {
            p.eat_kw("TABLE");
            "TABLE"
        };
        let mut objects = Vec::new();
        while !p.done() && !p.peek_kw("TO") {
            if !p.eat_punct(',') {
                objects.push(p.ident()?);
            }
        }
        p.expect_kw("TO")?;
        let mut grantees = Vec::new();
        while !p.done() {
            if !p.eat_punct(',') {
                grantees.push(p.ident()?);
            }
        }
        return Ok(Stmt::Grant {
            privileges: privs.join(", "),
            kind: kind.into(),
            objects,
            grantees,
        });
    }
    if p.eat_kw("EXPORT") {
        if p.eat_kws(&["INTO", "CSV"]) {
            let path = p.string()?;
            p.expect_kw("FROM")?;
            if p.eat_kw("DATABASE") {
                let db = p.ident()?;
                let options = p.options()?;
                return Ok(Stmt::ExportDatabase { path, db, options });
            }
            return Ok(Stmt::Unsupported(
                "the simulator exports whole databases only (EXPORT INTO CSV … FROM DATABASE)"
                    .into(),
            ));
        }
        if p.eat_kws(&["USERS", "TO", "SQL"]) {
            return Ok(Stmt::ExportUsers(p.string()?));
        }
        if p.eat_kws(&["CLUSTER", "SETTING", "TO", "SQL"]) {
            return Ok(Stmt::ExportSettings(p.string()?));
        }
        return Ok(Stmt::Unsupported(
            "this EXPORT form is not simulated (CSV databases, USERS, CLUSTER SETTING only)".into(),
        ));
    }
    if p.eat_kw("IMPORT") {
        if p.eat_kws(&["DATABASE", "CSV", "DATA"]) {
            let path = p.paren_path()?;
            let options = p.options()?;
            return Ok(Stmt::ImportDatabase { path, options });
        }
        if p.eat_kws(&["USERS", "SQL", "DATA"]) {
            return Ok(Stmt::ImportUsers(p.paren_path()?));
        }
        if p.eat_kws(&["CLUSTER", "SETTING", "SQL", "DATA"]) {
            return Ok(Stmt::ImportSettings(p.paren_path()?));
        }
        return Ok(Stmt::Unsupported(
            "this IMPORT form is not simulated (DATABASE CSV, USERS, CLUSTER SETTING only)".into(),
        ));
    }
    Ok(Stmt::Passthrough)
}

/// A KWDB `CREATE TABLE` split into what the simulator needs.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateTable {
    /// The database (schema) it goes into.
    pub db: String,
    /// The table name.
    pub table: String,
    /// The statement as KWDB would print it in `meta.sql` (unqualified name, TAGS kept).
    pub kwdb_sql: String,
    /// The PostgreSQL statement (schema-qualified; tag columns appended as plain columns).
    pub pg_sql: String,
}

fn matching_paren(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (i, &c) in chars.iter().enumerate().skip(open) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            },
        }
    }
    None
}

/// Quote an identifier for PostgreSQL.
pub fn qi(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote a string literal for PostgreSQL/KWDB.
pub fn ql(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Split at top-level commas (outside parentheses and quotes).
fn split_top(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                cur.push(c);
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    cur.push(c);
                }
                '(' => {
                    depth += 1;
                    cur.push(c);
                }
                ')' => {
                    depth -= 1;
                    cur.push(c);
                }
                ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            },
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// PostgreSQL spelling of a KWDB type name (upper case), and whether its `(n)` is dropped.
fn pg_type_name(upper: &str, has_len: bool) -> Option<(&'static str, bool)> {
    Some(match upper {
        "STRING" if has_len => ("VARCHAR", false),
        "STRING" => ("TEXT", false),
        "BYTES" | "VARBYTES" | "BLOB" => ("BYTEA", true),
        "INT" | "INTEGER" | "INT64" => ("BIGINT", false),
        "INT32" => ("INTEGER", false),
        "TINYINT" | "INT16" => ("SMALLINT", false),
        "NCHAR" => ("CHAR", false),
        "NVARCHAR" => ("VARCHAR", false),
        "GEOMETRY" | "CLOB" => ("TEXT", false),
        "DOUBLE" => ("DOUBLE PRECISION", false),
        _ => return None,
    })
}

/// Rewrite the KWDB column types of a column list to PostgreSQL ones (only the word in type
/// position of each column definition; constraints pass through).
pub fn rewrite_types(cols: &str) -> String {
    const CONSTRAINTS: &[&str] = &[
        "PRIMARY",
        "CONSTRAINT",
        "UNIQUE",
        "CHECK",
        "FOREIGN",
        "INDEX",
        "FAMILY",
        "EXCLUDE",
    ];
    let mut out = Vec::new();
    for def in split_top(cols) {
        let d = def.trim();
        let chars: Vec<char> = d.chars().collect();
        // The column name: a quoted or bare word.
        let mut i = 0;
        if chars.first() == Some(&'"') {
            i = 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1;
            }
            i = (i + 1).min(chars.len());
        } else {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        }
        let name: String = chars[..i].iter().collect();
        if CONSTRAINTS.contains(&name.to_uppercase().as_str()) {
            out.push(d.to_string());
            continue;
        }
        let mut j = i;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        let mut k = j;
        while k < chars.len() && (chars[k].is_alphanumeric() || chars[k] == '_') {
            k += 1;
        }
        let ty: String = chars[j..k].iter().collect();
        let mut m = k;
        while m < chars.len() && chars[m] == ' ' {
            m += 1;
        }
        let has_len = chars.get(m) == Some(&'(');
        let rest_from = |from: usize| chars[from..].iter().collect::<String>();
        let upper = ty.to_uppercase();
        let after_double = rest_from(k).trim_start().to_uppercase();
        match pg_type_name(&upper, has_len) {
            Some(("DOUBLE PRECISION", _)) if after_double.starts_with("PRECISION") => {
                out.push(d.to_string())
            }
            Some((pg, drop_len)) => {
                let after = if drop_len && has_len {
                    match matching_paren(&chars, m) {
                        Some(end) => rest_from(end + 1),
                        None => rest_from(k),
                    }
                } else {
                    rest_from(k)
                };
                out.push(format!("{name} {pg}{after}"));
            }
            None => out.push(d.to_string()),
        }
    }
    out.join(", ")
}

/// The column names (columns, then tags) a KWDB `CREATE TABLE` defines, lower-cased unless quoted.
pub fn column_names(create_sql: &str) -> Vec<String> {
    let Ok(t) = parse_create_table(create_sql, "x") else {
        return Vec::new();
    };
    let Some(open) = t.pg_sql.find('(') else {
        return Vec::new();
    };
    let rest = t.pg_sql[open + 1..].trim_end();
    let inner = rest.strip_suffix(')').unwrap_or(rest);
    const CONSTRAINTS: &[&str] = &[
        "PRIMARY",
        "CONSTRAINT",
        "UNIQUE",
        "CHECK",
        "FOREIGN",
        "INDEX",
        "FAMILY",
        "EXCLUDE",
    ];
    split_top(inner)
        .iter()
        .filter_map(|d| {
            let d = d.trim();
            if let Some(q) = d.strip_prefix('"') {
                return q.split('"').next().map(str::to_string);
            }
            let w: String = d
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!w.is_empty() && !CONSTRAINTS.contains(&w.to_uppercase().as_str()))
                .then(|| w.to_lowercase())
        })
        .collect()
}

/// Split `CREATE TABLE [IF NOT EXISTS] [db.][public.]t (cols) [TAGS (tags) PRIMARY TAGS (…)] …`.
pub fn parse_create_table(sql: &str, current_db: &str) -> anyhow::Result<CreateTable> {
    let chars: Vec<char> = sql.trim().chars().collect();
    let open = chars
        .iter()
        .position(|&c| c == '(')
        .context("CREATE TABLE needs a column list")?;
    let head: String = chars[..open].iter().collect();
    let toks = lex(&head)?;
    let mut p = P { toks, i: 0 };
    p.expect_kw("CREATE")?;
    p.expect_kw("TABLE")?;
    let if_not_exists = p.eat_kws(&["IF", "NOT", "EXISTS"]);
    let raw_name = match p.toks.get(p.i) {
        Some(Tok::Word(w)) => w.to_lowercase(),
        Some(Tok::Quoted(q)) => q.clone(),
        other => bail!("syntax error: expected a table name, found {other:?}"),
    };
    let parts: Vec<&str> = raw_name.split('.').collect();
    let (db, table) = match parts.as_slice() {
        [t] => (current_db.to_string(), t.to_string()),
        [d, t] => (d.to_string(), t.to_string()),
        [d, _schema, t] => (d.to_string(), t.to_string()),
        _ => bail!("invalid table name {raw_name}"),
    };
    let close = matching_paren(&chars, open).context("unbalanced parentheses in CREATE TABLE")?;
    let cols: String = chars[open + 1..close].iter().collect();
    let rest: String = chars[close + 1..].iter().collect();
    let mut tags = None;
    let rest_trim = rest.trim_start();
    if rest_trim
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case("TAGS"))
    {
        let rc: Vec<char> = rest_trim.chars().collect();
        let o = rc
            .iter()
            .position(|&c| c == '(')
            .context("TAGS needs a list")?;
        let c = matching_paren(&rc, o).context("unbalanced parentheses in TAGS")?;
        tags = Some(rc[o + 1..c].iter().collect::<String>());
    }
    let ine = if if_not_exists { "IF NOT EXISTS " } else { "" };
    let kwdb_sql = format!(
        "CREATE TABLE {ine}{table} ({}){}",
        cols.trim(),
        if rest.trim().is_empty() {
            String::new()
        } else {
            format!(" {}", rest.trim())
        }
    );
    let mut pg_cols = rewrite_types(cols.trim());
    if let Some(t) = tags {
        pg_cols.push_str(", ");
        pg_cols.push_str(&rewrite_types(t.trim()));
    }
    let pg_sql = format!("CREATE TABLE {ine}{}.{} ({pg_cols})", qi(&db), qi(&table));
    Ok(CreateTable {
        db,
        table,
        kwdb_sql,
        pg_sql,
    })
}

/// Resolve `nodelocal://<node>/<dir>` under the external IO directory.
pub fn resolve_path(
    path: &str,
    extern_dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    if let Some(rest) = path.strip_prefix("nodelocal://") {
        let (_node, dir) = rest.split_once('/').ok_or_else(|| {
            anyhow!("invalid nodelocal path {path:?}: expected nodelocal://<node_id>/<dir>")
        })?;
        let rel = std::path::Path::new(dir);
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!(
                "invalid nodelocal path {path:?}: the directory must stay inside the external IO directory"
            );
        }
        return Ok(extern_dir.join(rel));
    }
    if path.starts_with("http://") || path.starts_with("https://") {
        bail!(
            "http export/import paths are not supported by the simulator (use nodelocal://1/<dir>)"
        );
    }
    bail!("unsupported path {path:?}: expected nodelocal://<node_id>/<dir>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_recognised_case_insensitively() {
        assert_eq!(classify("select VERSION();").ok(), Some(Stmt::Version));
        assert_eq!(
            classify("create ts database Sensors partition interval 10d").ok(),
            Some(Stmt::CreateDatabase {
                name: "sensors".into(),
                ts: true,
                interval: Some("10d".into()),
                if_not_exists: false
            })
        );
        assert_eq!(
            classify(
                "EXPORT INTO CSV 'nodelocal://1/b/shop' FROM DATABASE shop WITH privileges, comment"
            )
            .ok(),
            Some(Stmt::ExportDatabase {
                path: "nodelocal://1/b/shop".into(),
                db: "shop".into(),
                options: vec!["privileges".into(), "comment".into()]
            })
        );
        assert_eq!(
            classify("IMPORT DATABASE CSV DATA (\"nodelocal://1/b/shop\") WITH privileges").ok(),
            Some(Stmt::ImportDatabase {
                path: "nodelocal://1/b/shop".into(),
                options: vec!["privileges".into()]
            })
        );
        assert_eq!(
            classify("SET CLUSTER SETTING ts.raft_log.sync_period = '0s'").ok(),
            Some(Stmt::SetClusterSetting {
                name: "ts.raft_log.sync_period".into(),
                value: "0s".into()
            })
        );
        assert_eq!(classify("SELECT 1").ok(), Some(Stmt::Passthrough));
        assert!(classify("EXPORT INTO CSV 'x").is_err());
    }

    #[test]
    fn ts_tables_become_plain_tables_with_their_tags() {
        let t = parse_create_table(
            "CREATE TABLE readings (ts TIMESTAMP NOT NULL, v FLOAT, raw BYTES(10), s STRING) TAGS (dev INT NOT NULL, site VARCHAR(10)) PRIMARY TAGS (dev)",
            "sensors",
        )
        .expect("parse");
        assert_eq!(t.db, "sensors");
        assert_eq!(
            t.pg_sql,
            "CREATE TABLE \"sensors\".\"readings\" (ts TIMESTAMP NOT NULL, v FLOAT, raw BYTEA, s TEXT, dev BIGINT NOT NULL, site VARCHAR(10))"
        );
        assert!(t.kwdb_sql.ends_with("PRIMARY TAGS (dev)"), "{}", t.kwdb_sql);
        assert_eq!(
            column_names(&t.kwdb_sql),
            vec!["ts", "v", "raw", "s", "dev", "site"]
        );
        let q = parse_create_table("create table shop.orders (id INT PRIMARY KEY)", "defaultdb")
            .expect("parse");
        assert_eq!((q.db.as_str(), q.table.as_str()), ("shop", "orders"));
        assert_eq!(
            rewrite_types("blob BYTES, int INT, d DOUBLE PRECISION, e DOUBLE, PRIMARY KEY (int)"),
            "blob BYTEA, int BIGINT, d DOUBLE PRECISION, e DOUBLE PRECISION, PRIMARY KEY (int)"
        );
    }

    #[test]
    fn paths_resolve_under_the_external_io_dir() {
        let base = std::path::Path::new("/x/extern");
        assert_eq!(
            resolve_path("nodelocal://1/b/shop", base).ok(),
            Some(base.join("b/shop"))
        );
        assert!(resolve_path("nodelocal://1/../etc", base).is_err());
        assert!(resolve_path("http://h:1/b", base).is_err());
    }

    #[test]
    fn batches_split_outside_quotes() {
        assert_eq!(split("a ';' ; b;; -- c;\n d"), vec!["a ';'", "b", "d"]);
    }
}
