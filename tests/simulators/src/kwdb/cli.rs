//! The client side of `kwbase`: `sql -e …`, `node status`, `node upgrade` (product-facts §2.4,
//! §2.5), talking to a running node over the wire protocol, so an image holding only the
//! simulator can be driven with `docker exec … ./kwbase sql --insecure -e "…"`.

use anyhow::{Context, anyhow, bail};

const VALUE_FLAGS: &[&str] = &[
    "execute",
    "e",
    "host",
    "port",
    "p",
    "user",
    "u",
    "database",
    "d",
    "format",
    "url",
    "certs-dir",
];
const BOOL_FLAGS: &[&str] = &["insecure", "echo-sql"];

/// What to do against a running node.
#[derive(Debug, Clone)]
pub enum Action {
    /// `kwbase sql -e <stmt>…` (statements in order; without `-e`, statements from stdin).
    Sql(Vec<String>),
    /// `kwbase node status`.
    NodeStatus,
    /// `kwbase node upgrade <id>`.
    NodeUpgrade(String),
}

/// A client invocation.
#[derive(Debug, Clone)]
pub struct Client {
    /// libpq-style connection string.
    pub conn: String,
    /// `tsv` (default) or `csv`.
    pub format: String,
    /// What to do.
    pub action: Action,
}

impl Client {
    /// `sub` is `sql` or `node`; `rest` the arguments after it.
    pub fn from_args_and_env(sub: &str, rest: &[String]) -> anyhow::Result<Client> {
        let (action, flag_args) = if sub == "node" {
            match rest.first().map(String::as_str) {
                Some("status") => (Action::NodeStatus, &rest[1..]),
                Some("upgrade") => {
                    let id = rest
                        .get(1)
                        .filter(|a| !a.starts_with('-'))
                        .cloned()
                        .ok_or_else(|| anyhow!("usage: kwbase node upgrade <node id> --host=…"))?;
                    (Action::NodeUpgrade(id), &rest[2..])
                }
                other => bail!("unknown node command {other:?} (simulated: status, upgrade)"),
            }
        } else {
            (Action::Sql(Vec::new()), rest)
        };
        let flags = super::parse_flags_with(flag_args, VALUE_FLAGS, BOOL_FLAGS)?;
        let get = |names: &[&str]| {
            flags
                .iter()
                .rev()
                .find(|(n, _)| names.contains(&n.as_str()))
                .and_then(|(_, v)| v.clone())
        };
        let action = match action {
            Action::Sql(_) => Action::Sql(
                flags
                    .iter()
                    .filter(|(n, _)| n == "execute" || n == "e")
                    .filter_map(|(_, v)| v.clone())
                    .collect(),
            ),
            other => other,
        };
        let url = get(&["url"]).or_else(|| std::env::var("KWBASE_URL").ok());
        let conn = match url {
            Some(u) => u,
            None => {
                let host = get(&["host"])
                    .or_else(|| std::env::var("KWBASE_HOST").ok())
                    .unwrap_or_else(|| "localhost".into());
                let (host, port_in_host) = match host.rsplit_once(':') {
                    Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
                        (h.to_string(), Some(p.to_string()))
                    }
                    _ => (host, None),
                };
                let port = get(&["port", "p"])
                    .or(port_in_host)
                    .or_else(|| std::env::var("KWBASE_PORT").ok())
                    .unwrap_or_else(|| "26257".into());
                let user = get(&["user", "u"])
                    .or_else(|| std::env::var("KWBASE_USER").ok())
                    .unwrap_or_else(|| "root".into());
                let db = get(&["database", "d"]).unwrap_or_else(|| "defaultdb".into());
                format!("host={host} port={port} user={user} dbname={db}")
            }
        };
        Ok(Client {
            conn,
            format: get(&["format"]).unwrap_or_else(|| "tsv".into()),
            action,
        })
    }

    /// Connect and act; output on stdout.
    pub async fn run(self) -> anyhow::Result<()> {
        let (client, conn) = tokio_postgres::connect(&self.conn, tokio_postgres::NoTls)
            .await
            .context("cannot dial server")?;
        tokio::spawn(conn);
        match &self.action {
            Action::Sql(stmts) => {
                let stmts = if stmts.is_empty() {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                    super::statements::split(&text)
                } else {
                    stmts.clone()
                };
                for s in stmts {
                    self.print(&client, &s).await?;
                }
                Ok(())
            }
            Action::NodeStatus => {
                let version: String = client.query_one("SELECT version()", &[]).await?.get(0);
                let build = version.split_whitespace().nth(1).unwrap_or("").to_string();
                let addr = self
                    .conn
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .filter(|(k, _)| *k == "host" || *k == "port")
                    .map(|(_, v)| v)
                    .collect::<Vec<_>>()
                    .join(":");
                let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S%.6f");
                println!(
                    "id\taddress\tsql_address\tbuild\tstarted_at\tupdated_at\tlocality\tstart_mode\tis_available\tis_live"
                );
                println!("1\t{addr}\t{addr}\t{build}\t{now}\t{now}\t\tsingle-node\ttrue\ttrue");
                Ok(())
            }
            Action::NodeUpgrade(_) => {
                client.query_one("SELECT 1", &[]).await?;
                bail!("Upgrade ternimated. Hint: upgrading is forbidden in the current start mode.")
            }
        }
    }

    async fn print(&self, client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<()> {
        let msgs = client
            .simple_query(sql)
            .await
            .map_err(|e| match e.as_db_error() {
                Some(db) => anyhow!("{}\nSQLSTATE: {}", db.message(), db.code().code()),
                None => anyhow!("{e}"),
            })?;
        let sep = if self.format == "csv" { b',' } else { b'\t' };
        let mut w = csv::WriterBuilder::new()
            .delimiter(sep)
            .quote_style(if sep == b'\t' {
                csv::QuoteStyle::Never
            } else {
                csv::QuoteStyle::Necessary
            })
            .from_writer(std::io::stdout());
        let mut had_rows = false;
        for m in msgs {
            match m {
                tokio_postgres::SimpleQueryMessage::RowDescription(cols) => {
                    w.write_record(cols.iter().map(|c| c.name()))?;
                    had_rows = true;
                }
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    w.write_record((0..r.len()).map(|i| r.get(i).unwrap_or("NULL")))?;
                }
                tokio_postgres::SimpleQueryMessage::CommandComplete(n) if !had_rows => {
                    w.flush()?;
                    let word = sql
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ")
                        .to_uppercase();
                    if matches!(word.split(' ').next(), Some("INSERT" | "UPDATE" | "DELETE")) {
                        println!("{} {n}", word.split(' ').next().unwrap_or(""));
                    } else {
                        println!("{word}");
                    }
                }
                _ => {}
            }
        }
        w.flush()?;
        Ok(())
    }
}
