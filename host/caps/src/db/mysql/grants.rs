//! What a MySQL / MariaDB account may do, read from `SHOW GRANTS` and judged against the
//! binding it serves: the account must reach no further than the bound schema (and, for a
//! binding the host restores, the sibling databases a restore creates), and hold no privilege
//! that reaches the server, other accounts or code that outlives a call.
//!
//! `SHOW GRANTS` lines are read with sqlparser's tokenizer (MySQL dialect). sqlparser's own
//! `GRANT` parser is not used: it does not know MariaDB's privileges (`FILE`, `SHOW VIEW`,
//! `LOCK TABLES`, `BINLOG MONITOR`, …), role grants, `PROXY` or the `IDENTIFIED BY PASSWORD` /
//! `REQUIRE` tails the server prints.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use sqlparser::dialect::MySqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};
use upshift_model::grants::Access;

use crate::CapError;
use crate::db::pg::RolePolicy;

/// The account a connection runs as, and every grant that applies to it: its own, those of
/// the roles granted to it (any of which it may enable with `SET ROLE`) and `PUBLIC`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    /// `CURRENT_USER()`, e.g. `merico@%`.
    pub name: String,
    /// Every `SHOW GRANTS` line that applies to it.
    pub lines: Vec<String>,
    /// Roles granted to it that Upshift could not read the privileges of (MySQL's roles).
    pub unread_roles: Vec<String>,
}

/// Where a privilege applies, as `SHOW GRANTS` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// `*.*`: the whole server.
    Global,
    /// `` `db`.* ``: a database name, in which unescaped `_` and `%` are wildcards.
    Database(String),
    /// `` `db`.`table` `` (or columns of it): the database name is literal.
    Table(String, String),
    /// `PROCEDURE` / `FUNCTION` / `PACKAGE` `` `db`.`name` ``.
    Routine(String, String),
    /// `PROXY ON user@host`.
    Proxy(String),
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Level::Global => write!(f, "*.*"),
            Level::Database(db) => write!(f, "{}.*", super::quote(db)),
            Level::Table(db, t) | Level::Routine(db, t) => {
                write!(f, "{}.{}", super::quote(db), super::quote(t))
            }
            Level::Proxy(who) => write!(f, "{who}"),
        }
    }
}

/// One line of `SHOW GRANTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantLine {
    /// `GRANT <privileges> ON <level> TO <grantee> [WITH GRANT OPTION]`.
    Privileges {
        /// Privilege names, upper case, one space between words (`LOCK TABLES`).
        privileges: Vec<String>,
        /// Where they apply.
        level: Level,
        /// `WITH GRANT OPTION`.
        grant_option: bool,
    },
    /// `GRANT <role>, … TO <grantee> [WITH ADMIN OPTION]`.
    Roles {
        /// The roles granted.
        roles: Vec<String>,
        /// Who holds them (`user@host`, a role, or `PUBLIC`).
        grantee: String,
        /// `WITH ADMIN OPTION`.
        admin_option: bool,
    },
    /// `SET DEFAULT ROLE …`: says which granted role is enabled at login; the role's own
    /// grants are judged either way.
    DefaultRole,
}

/// A `SHOW GRANTS` line Upshift cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the grant `{line}`: {why}")]
pub struct Unreadable {
    /// The line.
    pub line: String,
    /// What was not understood.
    pub why: String,
}

/// A token of a grant line: a word (quoted or not) or a symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A keyword or unquoted name, upper-cased.
    Bare(String),
    /// A quoted name or string, as written between the quotes.
    Quoted(String),
    Star,
    Dot,
    Comma,
    At,
    Open,
    Close,
    Other(String),
}

fn tokens(line: &str) -> Result<Vec<Tok>, Unreadable> {
    let unreadable = |why: String| Unreadable {
        line: line.to_string(),
        why,
    };
    let raw = Tokenizer::new(&MySqlDialect {}, line)
        .tokenize()
        .map_err(|e| unreadable(e.to_string()))?;
    let mut out = Vec::new();
    for t in raw {
        let tok = match t {
            Token::Whitespace(_) => continue,
            Token::Word(w) if w.quote_style.is_some() => Tok::Quoted(w.value),
            Token::Word(w) if w.keyword == Keyword::NoKeyword && w.value.contains('@') => {
                // `user@host` written without quotes tokenizes as one word.
                let (user, host) = w.value.split_once('@').unwrap_or((&w.value, ""));
                out.push(Tok::Quoted(user.to_string()));
                out.push(Tok::At);
                Tok::Quoted(host.to_string())
            }
            Token::Word(w) => Tok::Bare(w.value.to_ascii_uppercase()),
            Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => Tok::Quoted(s),
            Token::Mul => Tok::Star,
            Token::Period => Tok::Dot,
            Token::Comma => Tok::Comma,
            Token::AtSign => Tok::At,
            Token::LParen => Tok::Open,
            Token::RParen => Tok::Close,
            other => Tok::Other(other.to_string()),
        };
        out.push(tok);
    }
    Ok(out)
}

fn is_bare(t: Option<&Tok>, word: &str) -> bool {
    matches!(t, Some(Tok::Bare(w)) if w == word)
}

/// Whether `words` follow each other anywhere in `toks`.
fn has_words(toks: &[Tok], words: &[&str]) -> bool {
    toks.windows(words.len())
        .any(|w| w.iter().zip(words).all(|(t, word)| is_bare(Some(t), word)))
}

/// A name (quoted or not) at `toks[i]`.
fn name_at(toks: &[Tok], i: usize) -> Option<String> {
    match toks.get(i) {
        Some(Tok::Quoted(s)) => Some(s.clone()),
        Some(Tok::Bare(s)) => Some(s.to_ascii_lowercase()),
        _ => None,
    }
}

/// A grantee at `toks[i..]`: `user@host`, a role, or `PUBLIC`.
fn grantee_at(toks: &[Tok], i: usize) -> Option<String> {
    if is_bare(toks.get(i), "PUBLIC") {
        return Some("PUBLIC".into());
    }
    let user = name_at(toks, i)?;
    if toks.get(i + 1) == Some(&Tok::At) {
        let host = name_at(toks, i + 2)?;
        return Some(format!("{user}@{host}"));
    }
    Some(user)
}

/// Read one `SHOW GRANTS` line.
pub fn parse_line(line: &str) -> Result<GrantLine, Unreadable> {
    let unreadable = |why: &str| Unreadable {
        line: line.to_string(),
        why: why.to_string(),
    };
    let toks = tokens(line)?;
    if is_bare(toks.first(), "SET") && has_words(&toks, &["DEFAULT", "ROLE"]) {
        return Ok(GrantLine::DefaultRole);
    }
    if !is_bare(toks.first(), "GRANT") {
        return Err(unreadable("not a GRANT"));
    }
    // The privilege (or role) list runs to the first ON or TO outside parentheses.
    let mut depth = 0usize;
    let mut end = None;
    for (i, t) in toks.iter().enumerate().skip(1) {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => depth = depth.saturating_sub(1),
            Tok::Bare(w) if depth == 0 && (w == "ON" || w == "TO") => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end.ok_or_else(|| unreadable("no ON or TO"))?;
    let list = &toks[1..end];
    if is_bare(toks.get(end), "TO") {
        let roles = list
            .split(|t| *t == Tok::Comma)
            .map(|r| match r {
                [Tok::Quoted(n)] => Ok(n.clone()),
                [Tok::Bare(n)] => Ok(n.to_ascii_lowercase()),
                _ => Err(unreadable("a role grant names something other than roles")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let grantee = grantee_at(&toks, end + 1).ok_or_else(|| unreadable("no grantee"))?;
        return Ok(GrantLine::Roles {
            roles,
            grantee,
            admin_option: has_words(&toks[end..], &["WITH", "ADMIN", "OPTION"]),
        });
    }
    let mut privileges = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut depth = 0usize;
    for t in list.iter().chain(std::iter::once(&Tok::Comma)) {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            Tok::Comma => {
                if words.is_empty() {
                    return Err(unreadable("an empty privilege"));
                }
                privileges.push(words.join(" "));
                words.clear();
            }
            Tok::Bare(w) => words.push(w.clone()),
            _ => return Err(unreadable("a privilege that is not a word")),
        }
    }
    // The object: [TABLE | PROCEDURE | FUNCTION | PACKAGE [BODY]] then *.*, db.*, db.t or a
    // proxied user, up to TO.
    let mut i = end + 1;
    let mut routine = false;
    while let Some(Tok::Bare(w)) = toks.get(i) {
        match w.as_str() {
            "TABLE" => {}
            "PROCEDURE" | "FUNCTION" | "PACKAGE" | "BODY" => routine = true,
            _ => break,
        }
        i += 1;
    }
    let to = toks[i..]
        .iter()
        .position(|t| is_bare(Some(t), "TO"))
        .map(|p| p + i)
        .ok_or_else(|| unreadable("no TO"))?;
    let object = &toks[i..to];
    let level = if privileges.iter().any(|p| p == "PROXY") {
        Level::Proxy(grantee_at(&toks, i).ok_or_else(|| unreadable("no proxied account"))?)
    } else {
        match object {
            [Tok::Star, Tok::Dot, Tok::Star] | [Tok::Star] => Level::Global,
            [db, Tok::Dot, Tok::Star] => Level::Database(
                name_at(std::slice::from_ref(db), 0).ok_or_else(|| unreadable("no database"))?,
            ),
            [db, Tok::Dot, name] => {
                let db = name_at(std::slice::from_ref(db), 0)
                    .ok_or_else(|| unreadable("no database"))?;
                let name =
                    name_at(std::slice::from_ref(name), 0).ok_or_else(|| unreadable("no name"))?;
                if routine {
                    Level::Routine(db, name)
                } else {
                    Level::Table(db, name)
                }
            }
            _ => return Err(unreadable("an object that is not *.*, db.* or db.name")),
        }
    };
    Ok(GrantLine::Privileges {
        privileges,
        level,
        grant_option: has_words(&toks[to..], &["WITH", "GRANT", "OPTION"]),
    })
}

/// One character of a `LIKE` pattern (a database name in a database-level grant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pat {
    Char(char),
    /// `_`
    One,
    /// `%`
    Any,
}

/// A database-level grant's name as a pattern: `\` escapes the next character; `_` and `%`
/// are wildcards.
fn pattern(name: &str) -> Vec<Pat> {
    let mut out = Vec::new();
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '\\' => Pat::Char(chars.next().unwrap_or('\\')),
            '_' => Pat::One,
            '%' => Pat::Any,
            c => Pat::Char(c),
        });
    }
    out
}

/// The pattern matching exactly `literal_prefix` followed by anything.
fn prefix_pattern(literal_prefix: &str) -> Vec<Pat> {
    let mut p: Vec<Pat> = literal_prefix.chars().map(Pat::Char).collect();
    p.push(Pat::Any);
    p
}

fn matches(p: &[Pat], name: &[char]) -> bool {
    match p.split_first() {
        None => name.is_empty(),
        Some((Pat::Any, rest)) => (0..=name.len()).any(|k| matches(rest, &name[k..])),
        Some((Pat::One, rest)) => !name.is_empty() && matches(rest, &name[1..]),
        Some((Pat::Char(c), rest)) => name.first() == Some(c) && matches(rest, &name[1..]),
    }
}

fn literal(p: &[Pat]) -> Option<String> {
    p.iter()
        .map(|c| match c {
            Pat::Char(c) => Some(*c),
            _ => None,
        })
        .collect()
}

/// `name` escaped for a database-level grant (`_` and `%` taken literally).
pub fn escape_pattern(name: &str) -> String {
    name.replace('\\', "\\\\")
        .replace('_', "\\_")
        .replace('%', "\\%")
}

/// The databases a restore of `database` creates beside it (see the executor's restore and
/// `backup verify --restore-test`): `<db>_restoring_<tag>`, `<db>_pre_restore_<tag>` and
/// `upshift_verify_<id>`. A binding granted `restore` may hold privileges on exactly these
/// name patterns.
pub fn restore_siblings(database: &str) -> [String; 3] {
    [
        format!("{database}_restoring_"),
        format!("{database}_pre_restore_"),
        "upshift_verify_".to_string(),
    ]
}

/// How far a privilege reaches, in the order a binding's grants allow them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    /// Reads: any binding.
    Read,
    /// Changes rows: `write`.
    Write,
    /// Changes the schema: `ddl`, `backup`, `restore`.
    Schema,
}

fn tier(privilege: &str) -> Option<Tier> {
    Some(match privilege {
        "SELECT" | "SHOW VIEW" => Tier::Read,
        "INSERT"
        | "UPDATE"
        | "DELETE"
        | "LOCK TABLES"
        | "CREATE TEMPORARY TABLES"
        | "DELETE HISTORY" => Tier::Write,
        "CREATE" | "DROP" | "ALTER" | "INDEX" | "REFERENCES" | "CREATE VIEW" => Tier::Schema,
        _ => return None,
    })
}

/// Why a privilege outside every tier is refused.
fn danger(privilege: &str) -> &'static str {
    match privilege {
        "ALL" | "ALL PRIVILEGES" => {
            "every privilege, including TRIGGER, EVENT, routines and GRANT OPTION"
        }
        "FILE" => "reads and writes files on the database server",
        "SUPER" => "bypasses the server's limits and can run as any account",
        "PROCESS" => "sees every session's statements",
        "SHUTDOWN" => "stops the server",
        "RELOAD" => "flushes and reloads the server",
        "CREATE USER" => "creates and changes accounts",
        "GRANT OPTION" => "passes privileges to other accounts",
        "CREATE ROUTINE" | "ALTER ROUTINE" => "leaves stored code behind that outlives the call",
        "TRIGGER" => "leaves triggers behind that run on the product's writes",
        "EVENT" => "schedules statements that run after the call",
        "EXECUTE" => "runs stored routines with their definer's privileges",
        "PROXY" => "acts as another account",
        "SET USER" => "creates objects that run as another account",
        _ => "reaches beyond what an adapter needs",
    }
}

fn needed_tier(access: &[Access]) -> Tier {
    access
        .iter()
        .map(|a| match a {
            Access::Write => Tier::Write,
            Access::Ddl | Access::Backup | Access::Restore => Tier::Schema,
            _ => Tier::Read,
        })
        .max()
        .unwrap_or(Tier::Read)
}

/// Which database a grant's object is, for a binding of `database`.
enum Scope {
    Bound,
    Sibling,
    Other(String),
}

fn scope(level: &Level, database: &str, restores: bool) -> Scope {
    let siblings = restore_siblings(database);
    let chars = |s: &str| s.chars().collect::<Vec<char>>();
    let sibling_name = |name: &str| {
        restores
            && siblings
                .iter()
                .any(|s| matches(&prefix_pattern(s), &chars(name)))
    };
    match level {
        Level::Database(name) => {
            let p = pattern(name);
            match literal(&p) {
                Some(l) if l == database => Scope::Bound,
                Some(l) if sibling_name(&l) => Scope::Sibling,
                Some(_) => Scope::Other(String::new()),
                None if restores && siblings.iter().any(|s| p == prefix_pattern(s)) => {
                    Scope::Sibling
                }
                None if matches(&p, &chars(database)) => Scope::Other(format!(
                    "; `_` and `%` in a grant's database name are wildcards, so it also covers other schemas: grant ON `{}`.* instead",
                    escape_pattern(database)
                )),
                None => Scope::Other(String::new()),
            }
        }
        Level::Table(db, _) | Level::Routine(db, _) if db == database => Scope::Bound,
        Level::Table(db, _) if sibling_name(db) => Scope::Sibling,
        _ => Scope::Other(String::new()),
    }
}

/// Everything `account` holds that a binding of `database` with `policy` must not: each item
/// names the privilege, where it applies and why.
pub fn excess(policy: &RolePolicy, database: &str, account: &Account) -> Vec<String> {
    let restores = policy.access.contains(&Access::Restore);
    let needed = needed_tier(&policy.access);
    let grants_named = if policy.access.is_empty() {
        "read".to_string()
    } else {
        policy
            .access
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::new();
    let mut push = |item: String| {
        if !out.contains(&item) {
            out.push(item);
        }
    };
    for role in &account.unread_roles {
        push(format!(
            "role `{role}` (its privileges cannot be read on this server; grant privileges to the account directly)"
        ));
    }
    for line in &account.lines {
        let grant = match parse_line(line) {
            Ok(g) => g,
            Err(e) => {
                push(format!("{e} (unknown grants are refused)"));
                continue;
            }
        };
        match grant {
            GrantLine::DefaultRole => {}
            GrantLine::Roles {
                roles,
                admin_option,
                ..
            } => {
                if admin_option {
                    for role in roles {
                        push(format!(
                            "role `{role}` WITH ADMIN OPTION (grants the role to other accounts)"
                        ));
                    }
                }
            }
            GrantLine::Privileges {
                privileges,
                level,
                grant_option,
            } => {
                if grant_option {
                    push(format!(
                        "GRANT OPTION on {level} ({})",
                        danger("GRANT OPTION")
                    ));
                }
                let where_ = scope(&level, database, restores);
                for p in privileges.iter().filter(|p| *p != "USAGE") {
                    let why = match (&level, &where_, tier(p)) {
                        (Level::Global, _, _) => format!(
                            "a server-wide privilege{}",
                            tier(p).map_or_else(|| format!(": {}", danger(p)), |_| String::new())
                        ),
                        (Level::Proxy(_), _, _) => danger(p).to_string(),
                        (_, Scope::Other(hint), _) => {
                            format!("another schema than the bound `{database}`{hint}")
                        }
                        (_, _, None) => danger(p).to_string(),
                        (_, _, Some(t)) if t > needed => {
                            format!("more than a binding granted {grants_named} needs")
                        }
                        _ => continue,
                    };
                    push(format!("{p} on {level} ({why})"));
                }
            }
        }
    }
    out
}

impl RolePolicy {
    /// Whether a MySQL / MariaDB `account` may serve this binding of `database`: `Ok(None)`
    /// when it holds only what the binding's grants need, `Ok(Some(notice))` for more that
    /// the operator accepted (`privileged = true`), and a denial naming every excess privilege
    /// and the fix otherwise.
    pub fn judge_mysql(
        &self,
        database: &str,
        account: &Account,
    ) -> Result<Option<String>, CapError> {
        let excess = excess(self, database, account);
        if excess.is_empty() {
            return Ok(None);
        }
        let what = format!(
            "MySQL account `{}`, which holds {}",
            account.name,
            excess.join("; ")
        );
        if self.privileged {
            return Ok(Some(format!(
                "binding `{}` connects as {what} (privileged = true)",
                self.binding
            )));
        }
        Err(CapError::Denied(format!(
            "binding `{b}` connects as {what}; use an account with only the privileges the adapter needs (docs/least-privilege.md: e.g. GRANT {needs} ON `{db}`.* TO …), or set privileged = true on [instance.db.{b}]",
            b = self.binding,
            db = escape_pattern(database),
            needs = least_privileges(&self.access).join(", "),
        )))
    }
}

/// The privileges a binding with `access` needs on its schema.
pub fn least_privileges(access: &[Access]) -> Vec<&'static str> {
    let needed = needed_tier(access);
    [
        "SELECT",
        "SHOW VIEW",
        "INSERT",
        "UPDATE",
        "DELETE",
        "LOCK TABLES",
        "CREATE TEMPORARY TABLES",
        "CREATE",
        "DROP",
        "ALTER",
        "INDEX",
        "REFERENCES",
        "CREATE VIEW",
    ]
    .into_iter()
    .filter(|p| tier(p).is_some_and(|t| t <= needed))
    .collect()
}

fn failed(what: &str, e: impl std::fmt::Display) -> CapError {
    CapError::Failed(format!(
        "cannot check the database account's privileges ({what}): {e}"
    ))
}

/// Read the account of `conn` and every grant that applies to it. On MariaDB each role
/// granted to the account (or to `PUBLIC`) is enabled in turn (`SET ROLE`) and `SHOW GRANTS`
/// read again, which adds the role's grants and those of the roles granted to it; elsewhere
/// such roles are reported as unread. `conn` is left with roles changed: use it for nothing
/// else.
pub async fn read_account(conn: &mut Conn, mariadb: bool) -> Result<Account, CapError> {
    let name: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .map_err(|e| failed("CURRENT_USER()", e))?;
    let name = name.unwrap_or_default();
    let mut lines: Vec<String> = conn
        .query("SHOW GRANTS")
        .await
        .map_err(|e| failed("SHOW GRANTS", e))?;
    let mut unread_roles = Vec::new();
    let mut seen_roles: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Ok(GrantLine::Roles { roles, grantee, .. }) = parse_line(&lines[i])
            && (grantee == name || grantee == "PUBLIC")
        {
            for role in roles {
                if seen_roles.contains(&role) {
                    continue;
                }
                seen_roles.push(role.clone());
                if !mariadb {
                    unread_roles.push(role);
                    continue;
                }
                conn.query_drop(format!("SET ROLE {}", super::quote(&role)))
                    .await
                    .map_err(|e| failed(&format!("SET ROLE `{role}`"), e))?;
                let more: Vec<String> = conn
                    .query("SHOW GRANTS")
                    .await
                    .map_err(|e| failed(&format!("SHOW GRANTS with role `{role}`"), e))?;
                for line in more {
                    if !lines.contains(&line) {
                        lines.push(line);
                    }
                }
            }
        }
        i += 1;
    }
    Ok(Account {
        name,
        lines,
        unread_roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(access: &[Access]) -> RolePolicy {
        RolePolicy {
            binding: "lake".into(),
            access: access.to_vec(),
            ..RolePolicy::default()
        }
    }

    fn account(lines: &[&str]) -> Account {
        Account {
            name: "merico@%".into(),
            lines: lines.iter().map(|l| l.to_string()).collect(),
            unread_roles: vec![],
        }
    }

    const USAGE: &str = "GRANT USAGE ON *.* TO `merico`@`%` IDENTIFIED BY PASSWORD '*D821809F681A40A6E379B50D0463EFAE20BDD122'";

    #[test]
    fn mariadb_show_grants_lines_are_read() {
        assert_eq!(
            parse_line(USAGE),
            Ok(GrantLine::Privileges {
                privileges: vec!["USAGE".into()],
                level: Level::Global,
                grant_option: false
            })
        );
        assert_eq!(
            parse_line(
                "GRANT SELECT (`a`), INSERT, UPDATE (`a`, `b`), LOCK TABLES ON `lake`.`t1` TO `merico`@`%` WITH GRANT OPTION"
            ),
            Ok(GrantLine::Privileges {
                privileges: vec![
                    "SELECT".into(),
                    "INSERT".into(),
                    "UPDATE".into(),
                    "LOCK TABLES".into()
                ],
                level: Level::Table("lake".into(), "t1".into()),
                grant_option: true
            })
        );
        assert_eq!(
            parse_line("GRANT ALL PRIVILEGES ON `lake\\_restoring\\_%`.* TO `merico`@`%`"),
            Ok(GrantLine::Privileges {
                privileges: vec!["ALL PRIVILEGES".into()],
                level: Level::Database("lake\\_restoring\\_%".into()),
                grant_option: false
            })
        );
        assert_eq!(
            parse_line("GRANT SELECT ON `a``b`.* TO 'merico'@'%'"),
            Ok(GrantLine::Privileges {
                privileges: vec!["SELECT".into()],
                level: Level::Database("a`b".into()),
                grant_option: false
            })
        );
        assert_eq!(
            parse_line("GRANT EXECUTE ON PROCEDURE `lake`.`p` TO `merico`@`%`"),
            Ok(GrantLine::Privileges {
                privileges: vec!["EXECUTE".into()],
                level: Level::Routine("lake".into(), "p".into()),
                grant_option: false
            })
        );
        assert_eq!(
            parse_line("GRANT PROXY ON ``@`%` TO `root`@`localhost` WITH GRANT OPTION"),
            Ok(GrantLine::Privileges {
                privileges: vec!["PROXY".into()],
                level: Level::Proxy("@%".into()),
                grant_option: true
            })
        );
        assert_eq!(
            parse_line("GRANT `r2` TO `merico`@`%` WITH ADMIN OPTION"),
            Ok(GrantLine::Roles {
                roles: vec!["r2".into()],
                grantee: "merico@%".into(),
                admin_option: true
            })
        );
        assert_eq!(
            parse_line("GRANT `r2` TO `r1`"),
            Ok(GrantLine::Roles {
                roles: vec!["r2".into()],
                grantee: "r1".into(),
                admin_option: false
            })
        );
        assert_eq!(
            parse_line("SET DEFAULT ROLE `r1` FOR `merico`@`%`"),
            Ok(GrantLine::DefaultRole)
        );
        assert_eq!(
            parse_line(
                "GRANT RELOAD, SHUTDOWN, PROCESS, FILE, SUPER, BINLOG MONITOR, READ_ONLY ADMIN ON *.* TO `u2`@`%` REQUIRE SSL WITH MAX_QUERIES_PER_HOUR 10"
            )
            .map(|g| match g {
                GrantLine::Privileges { privileges, .. } => privileges,
                _ => vec![],
            }),
            Ok(vec![
                "RELOAD".into(),
                "SHUTDOWN".into(),
                "PROCESS".into(),
                "FILE".into(),
                "SUPER".into(),
                "BINLOG MONITOR".into(),
                "READ_ONLY ADMIN".into()
            ])
        );
        assert!(parse_line("REVOKE ALL").is_err());
        assert!(parse_line("GRANT SELECT ON lake TO x").is_err());
        assert!(parse_line("GRANT 'x' ON *.* TO y").is_err());
    }

    #[test]
    fn least_privilege_accounts_pass() {
        let read = account(&[USAGE, "GRANT SELECT, SHOW VIEW ON `lake`.* TO `merico`@`%`"]);
        assert_eq!(policy(&[Access::Read]).judge_mysql("lake", &read), Ok(None));
        let restore = account(&[
            USAGE,
            "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, LOCK TABLES ON `lake`.* TO `merico`@`%`",
            "GRANT SELECT, INSERT, CREATE, DROP, ALTER, INDEX, LOCK TABLES ON `lake\\_restoring\\_%`.* TO `merico`@`%`",
            "GRANT SELECT, INSERT, CREATE, DROP, ALTER ON `lake\\_pre\\_restore\\_%`.* TO `merico`@`%`",
            "GRANT SELECT, CREATE, DROP ON `upshift\\_verify\\_%`.* TO `merico`@`%`",
            "GRANT SELECT ON `lake_pre_restore_1`.`t` TO `merico`@`%`",
        ]);
        let access = [Access::Read, Access::Backup, Access::Restore];
        assert_eq!(policy(&access).judge_mysql("lake", &restore), Ok(None));
        // A binding not granted restore may not reach the siblings.
        let err = policy(&[Access::Read, Access::Backup])
            .judge_mysql("lake", &restore)
            .expect_err("siblings need restore");
        assert!(
            err.to_string().contains(
                "CREATE on `lake\\_restoring\\_%`.* (another schema than the bound `lake`)"
            ),
            "{err}"
        );
    }

    #[test]
    fn powers_beyond_the_schema_are_refused_and_named() {
        let refused = |lines: &[&str], access: &[Access]| -> String {
            match policy(access).judge_mysql("lake", &account(lines)) {
                Err(CapError::Denied(why)) => why,
                other => panic!("{lines:?} not refused: {other:?}"),
            }
        };
        let read = [Access::Read];
        let cases: &[(&[&str], &[Access], &str)] = &[
            (
                &["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"],
                &read,
                "ALL PRIVILEGES on *.* (a server-wide privilege: every privilege",
            ),
            (
                &["GRANT FILE ON *.* TO `merico`@`%`"],
                &read,
                "FILE on *.* (a server-wide privilege: reads and writes files",
            ),
            (
                &["GRANT PROCESS ON *.* TO `merico`@`%`"],
                &read,
                "PROCESS on *.*",
            ),
            (
                &["GRANT SELECT ON *.* TO `merico`@`%`"],
                &read,
                "SELECT on *.* (a server-wide privilege)",
            ),
            (
                &["GRANT SELECT ON `other`.* TO `merico`@`%`"],
                &read,
                "SELECT on `other`.* (another schema than the bound `lake`)",
            ),
            (
                &["GRANT SELECT ON `mysql`.`user` TO `merico`@`%`"],
                &read,
                "SELECT on `mysql`.`user` (another schema",
            ),
            (
                &["GRANT SELECT ON `la_e`.* TO `merico`@`%`"],
                &read,
                "wildcards, so it also covers other schemas: grant ON `lake`.* instead",
            ),
            (
                &["GRANT SELECT ON `l%`.* TO `merico`@`%`"],
                &read,
                "SELECT on `l%`.*",
            ),
            (
                &["GRANT TRIGGER, CREATE ROUTINE, EVENT ON `lake`.* TO `merico`@`%`"],
                &[Access::Read, Access::Write, Access::Ddl],
                "TRIGGER on `lake`.* (leaves triggers behind",
            ),
            (
                &["GRANT ALL PRIVILEGES ON `lake`.* TO `merico`@`%`"],
                &[Access::Read, Access::Backup, Access::Restore],
                "ALL PRIVILEGES on `lake`.*",
            ),
            (
                &["GRANT EXECUTE ON PROCEDURE `lake`.`p` TO `merico`@`%`"],
                &read,
                "EXECUTE on `lake`.`p` (runs stored routines",
            ),
            (
                &["GRANT INSERT, DROP ON `lake`.* TO `merico`@`%`"],
                &read,
                "DROP on `lake`.* (more than a binding granted read needs)",
            ),
            (
                &["GRANT SELECT ON `lake`.* TO `merico`@`%` WITH GRANT OPTION"],
                &read,
                "GRANT OPTION on `lake`.* (passes privileges",
            ),
            (
                &["GRANT PROXY ON `root`@`localhost` TO `merico`@`%`"],
                &read,
                "PROXY on root@localhost (acts as another account)",
            ),
            (
                &["GRANT `helper` TO `merico`@`%` WITH ADMIN OPTION"],
                &read,
                "role `helper` WITH ADMIN OPTION",
            ),
            (
                &["GRANT SELECT ON lake TO x"],
                &read,
                "cannot read the grant",
            ),
            (
                &["GRANT SELECT ON `other`.* TO PUBLIC"],
                &read,
                "SELECT on `other`.* (another schema",
            ),
        ];
        for (lines, access, why) in cases {
            let text = refused(lines, access);
            assert!(text.contains(why), "{lines:?}: expected `{why}` in: {text}");
            assert!(
                text.contains("privileged = true on [instance.db.lake]")
                    && text.contains("MySQL account `merico@%`"),
                "{text}"
            );
        }
        // The operator may accept it, and the notice names it.
        let mut accepted = policy(&read);
        accepted.privileged = true;
        let notice = accepted
            .judge_mysql("lake", &account(&["GRANT FILE ON *.* TO `merico`@`%`"]))
            .expect("accepted");
        assert_eq!(
            notice.as_deref(),
            Some(
                "binding `lake` connects as MySQL account `merico@%`, which holds FILE on *.* (a server-wide privilege: reads and writes files on the database server) (privileged = true)"
            )
        );
    }

    #[test]
    fn the_fix_names_the_least_privileges() {
        let err = policy(&[Access::Read])
            .judge_mysql("open_db", &account(&["GRANT FILE ON *.* TO `merico`@`%`"]))
            .expect_err("refused");
        assert!(
            err.to_string()
                .contains("GRANT SELECT, SHOW VIEW ON `open\\_db`.* TO …"),
            "{err}"
        );
        assert_eq!(
            least_privileges(&[Access::Read, Access::Write]),
            [
                "SELECT",
                "SHOW VIEW",
                "INSERT",
                "UPDATE",
                "DELETE",
                "LOCK TABLES",
                "CREATE TEMPORARY TABLES"
            ]
        );
    }
}
