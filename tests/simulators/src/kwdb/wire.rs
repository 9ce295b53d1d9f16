//! The PostgreSQL wire protocol on `--listen-addr` (simple and extended query protocols, trust
//! authentication), with statements the simulator implements answered by [`Session::execute`]
//! and everything else passed through to the backing PostgreSQL.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use futures::{Sink, stream};
use pgwire::api::auth::StartupHandler;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{NoopQueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::types::ToSqlText;
use pgwire::types::format::FormatOptions;
use tokio::sync::Mutex;
use tokio_postgres::types::{FromSql, IsNull, ToSql};

use super::Shared;
use super::session::{Output, Session, SqlError, Val};
use super::statements::{self, ColType, Stmt};

/// Accept connections until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> anyhow::Result<()> {
    loop {
        let (socket, peer) = listener.accept().await?;
        let handlers = Arc::new(Handlers {
            handler: Arc::new(Handler {
                shared: shared.clone(),
                session: Mutex::new(None),
                parser: Arc::new(NoopQueryParser::new()),
            }),
        });
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                super::log('W', &format!("connection from {peer}: {e}"));
            }
        });
    }
}

struct Handlers {
    handler: Arc<Handler>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handler.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handler.clone()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.handler.clone()
    }
}

/// One connection's handler.
pub struct Handler {
    shared: Arc<Shared>,
    session: Mutex<Option<Session>>,
    parser: Arc<NoopQueryParser>,
}

#[async_trait]
impl NoopStartupHandler for Handler {}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

/// Map an error to what the client sees: SQLSTATE of a `SqlError` or of the backing server.
fn to_pg(e: anyhow::Error) -> PgWireError {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<SqlError>() {
            return user_error(s.code, s.message.clone());
        }
        if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>()
            && let Some(db) = pg.as_db_error()
        {
            return user_error(db.code().code(), db.message().to_string());
        }
    }
    user_error("XX000", format!("{e:#}"))
}

fn pg_type(t: &tokio_postgres::types::Type) -> Type {
    Type::from_oid(t.oid()).unwrap_or(Type::TEXT)
}

fn col_type(t: ColType) -> Type {
    match t {
        ColType::Text => Type::TEXT,
        ColType::Int => Type::INT8,
        ColType::Float => Type::FLOAT8,
    }
}

/// Bytes already encoded for the wire in the format the client asked for.
#[derive(Debug)]
struct Cell(Option<Vec<u8>>);

impl ToSql for Cell {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Some(b) => {
                out.put_slice(b);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }
    fn accepts(_ty: &tokio_postgres::types::Type) -> bool {
        true
    }
    tokio_postgres::types::to_sql_checked!();
}

impl ToSqlText for Cell {
    fn to_sql_text(
        &self,
        ty: &Type,
        out: &mut BytesMut,
        _options: &FormatOptions,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.to_sql(ty, out)
    }
}

/// A client's parameter, forwarded to the backing server as the client encoded it.
#[derive(Debug)]
struct RawParam {
    bytes: Option<bytes::Bytes>,
    binary: bool,
}

impl ToSql for RawParam {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.bytes {
            Some(b) => {
                out.put_slice(b);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }
    fn accepts(_ty: &tokio_postgres::types::Type) -> bool {
        true
    }
    fn encode_format(&self, _ty: &tokio_postgres::types::Type) -> tokio_postgres::types::Format {
        if self.binary {
            tokio_postgres::types::Format::Binary
        } else {
            tokio_postgres::types::Format::Text
        }
    }
    tokio_postgres::types::to_sql_checked!();
}

/// A backing value in binary form.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(
        _ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_ty: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// Binary → text for the types a text-format extended client may ask for.
fn binary_to_text(ty: &tokio_postgres::types::Type, raw: &[u8]) -> anyhow::Result<String> {
    use tokio_postgres::types::Type as T;
    type E = Box<dyn std::error::Error + Sync + Send>;
    let r: Result<String, E> = match *ty {
        T::BOOL => bool::from_sql(ty, raw).map(|b| if b { "t" } else { "f" }.to_string()),
        T::INT2 => i16::from_sql(ty, raw).map(|v| v.to_string()),
        T::INT4 => i32::from_sql(ty, raw).map(|v| v.to_string()),
        T::INT8 => i64::from_sql(ty, raw).map(|v| v.to_string()),
        T::OID => u32::from_sql(ty, raw).map(|v| v.to_string()),
        T::FLOAT4 => f32::from_sql(ty, raw).map(|v| v.to_string()),
        T::FLOAT8 => f64::from_sql(ty, raw).map(|v| v.to_string()),
        T::BYTEA => Ok(format!(
            "\\x{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )),
        T::TIMESTAMP | T::TIMESTAMPTZ => std::time::SystemTime::from_sql(ty, raw).map(|t| {
            let d: chrono::DateTime<chrono::Utc> = t.into();
            let s = d.format("%Y-%m-%d %H:%M:%S%.f").to_string();
            if *ty == T::TIMESTAMPTZ {
                format!("{s}+00")
            } else {
                s
            }
        }),
        _ => match String::from_utf8(raw.to_vec()) {
            Ok(s) if matches!(*ty, T::TEXT | T::VARCHAR | T::BPCHAR | T::NAME | T::UNKNOWN) => {
                Ok(s)
            }
            _ => Err(format!(
                "the simulator cannot send type {ty} in text format over the extended protocol; ask for binary results"
            )
            .into()),
        },
    };
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

fn encode_val(v: &Val, format: FieldFormat) -> Cell {
    let binary = format == FieldFormat::Binary;
    Cell(match v {
        Val::Null => None,
        Val::Text(s) => Some(s.as_bytes().to_vec()),
        Val::Int(i) if binary => Some(i.to_be_bytes().to_vec()),
        Val::Int(i) => Some(i.to_string().into_bytes()),
        Val::Float(f) if binary => Some(f.to_be_bytes().to_vec()),
        Val::Float(f) => Some(f.to_string().into_bytes()),
    })
}

fn output_response(out: Output, format: &Format) -> PgWireResult<Response> {
    match out {
        Output::Tag(tag, rows) => {
            let t = Tag::new(&tag);
            Ok(Response::Execution(match rows {
                Some(n) => t.with_rows(n),
                None => t,
            }))
        }
        Output::Rows { cols, rows } => {
            let fields: Vec<FieldInfo> = cols
                .iter()
                .enumerate()
                .map(|(i, (n, t))| {
                    FieldInfo::new(n.clone(), None, None, col_type(*t), format.format_for(i))
                })
                .collect();
            let schema = Arc::new(fields);
            let mut enc = DataRowEncoder::new(schema.clone());
            let mut data = Vec::new();
            for row in rows {
                for (i, v) in row.iter().enumerate() {
                    enc.encode_field(&encode_val(v, format.format_for(i)))?;
                }
                data.push(Ok(enc.take_row()));
            }
            Ok(Response::Query(QueryResponse::new(
                schema,
                stream::iter(data),
            )))
        }
    }
}

/// The command tag PostgreSQL would give a statement, from its leading keywords.
fn tag_for(sql: &str, rows: u64) -> Tag {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(|w| w.to_uppercase())
        .collect();
    let first = words.first().cloned().unwrap_or_default();
    match first.as_str() {
        "INSERT" => Tag::new("INSERT").with_oid(0).with_rows(rows as usize),
        "UPDATE" | "DELETE" | "SELECT" | "COPY" | "MOVE" | "FETCH" | "MERGE" => {
            Tag::new(&first).with_rows(rows as usize)
        }
        "CREATE" | "DROP" | "ALTER" | "COMMENT" => Tag::new(&words.join(" ")),
        _ => Tag::new(&first),
    }
}

impl Handler {
    async fn session<C: ClientInfo>(
        &self,
        client: &C,
    ) -> PgWireResult<tokio::sync::MutexGuard<'_, Option<Session>>> {
        let mut guard = self.session.lock().await;
        if guard.is_none() {
            let user = client
                .metadata()
                .get("user")
                .cloned()
                .unwrap_or_else(|| "root".into());
            let db = client
                .metadata()
                .get("database")
                .cloned()
                .unwrap_or_else(|| "defaultdb".into());
            *guard = Some(
                Session::connect(self.shared.clone(), &user, &db)
                    .await
                    .map_err(to_pg)?,
            );
        }
        Ok(guard)
    }

    async fn simple_one(&self, s: &mut Session, sql: &str) -> PgWireResult<Response> {
        let stmt = statements::classify(sql).map_err(|e| user_error("42601", format!("{e:#}")))?;
        match stmt {
            Stmt::Passthrough | Stmt::Begin | Stmt::End => {
                let msgs = s
                    .client
                    .simple_query(sql)
                    .await
                    .map_err(|e| to_pg(e.into()))?;
                let mut cols: Option<Arc<Vec<FieldInfo>>> = None;
                let mut rows = Vec::new();
                let mut count = 0;
                for m in msgs {
                    match m {
                        tokio_postgres::SimpleQueryMessage::RowDescription(desc) => {
                            cols = Some(Arc::new(
                                desc.iter()
                                    .map(|c| {
                                        FieldInfo::new(
                                            c.name().to_string(),
                                            None,
                                            None,
                                            Type::TEXT,
                                            FieldFormat::Text,
                                        )
                                    })
                                    .collect(),
                            ));
                        }
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            let schema = cols.clone().unwrap_or_default();
                            let mut enc = DataRowEncoder::new(schema);
                            for i in 0..r.len() {
                                enc.encode_field(&Cell(r.get(i).map(|v| v.as_bytes().to_vec())))?;
                            }
                            rows.push(Ok(enc.take_row()));
                        }
                        tokio_postgres::SimpleQueryMessage::CommandComplete(n) => count = n,
                        _ => {}
                    }
                }
                let tag = tag_for(sql, count);
                Ok(match (stmt, cols) {
                    (_, Some(schema)) => {
                        Response::Query(QueryResponse::new(schema, stream::iter(rows)))
                    }
                    (Stmt::Begin, None) => Response::TransactionStart(tag),
                    (Stmt::End, None) => Response::TransactionEnd(tag),
                    (_, None) => Response::Execution(tag),
                })
            }
            other => {
                let out = s.execute(sql, &other).await.map_err(to_pg)?;
                output_response(out, &Format::UnifiedText)
            }
        }
    }

    async fn prepare(
        &self,
        s: &mut Session,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<tokio_postgres::Statement> {
        if let Some(st) = s.prepared.get(sql) {
            return Ok(st.clone());
        }
        let types: Vec<tokio_postgres::types::Type> = types
            .iter()
            .map(|t| {
                t.as_ref()
                    .and_then(|t| tokio_postgres::types::Type::from_oid(t.oid()))
                    .unwrap_or(tokio_postgres::types::Type::UNKNOWN)
            })
            .collect();
        let st = s
            .client
            .prepare_typed(sql, &types)
            .await
            .map_err(|e| to_pg(e.into()))?;
        s.prepared.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    async fn describe(
        &self,
        s: &mut Session,
        sql: &str,
        types: &[Option<Type>],
        format: &Format,
    ) -> PgWireResult<(Vec<Type>, Vec<FieldInfo>)> {
        let stmt = statements::classify(sql).map_err(|e| user_error("42601", format!("{e:#}")))?;
        match stmt {
            Stmt::Passthrough => {
                let st = self.prepare(s, sql, types).await?;
                let params = st.params().iter().map(pg_type).collect();
                let fields = st
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        FieldInfo::new(
                            c.name().to_string(),
                            None,
                            None,
                            pg_type(c.type_()),
                            format.format_for(i),
                        )
                    })
                    .collect();
                Ok((params, fields))
            }
            other => {
                let params = types
                    .iter()
                    .map(|t| t.clone().unwrap_or(Type::UNKNOWN))
                    .collect();
                let fields = other
                    .columns()
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                    .map(|(i, (n, t))| {
                        FieldInfo::new(n.clone(), None, None, col_type(*t), format.format_for(i))
                    })
                    .collect();
                Ok((params, fields))
            }
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Handler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut guard = self.session(client).await?;
        let s = guard
            .as_mut()
            .ok_or_else(|| user_error("08006", "no session".into()))?;
        let mut out = Vec::new();
        for sql in statements::split(query) {
            match self.simple_one(s, &sql).await {
                Ok(r) => out.push(r),
                Err(PgWireError::UserError(info)) => {
                    out.push(Response::Error(info));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() {
            out.push(Response::EmptyQuery);
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handler {
    type Statement = String;
    type QueryParser = NoopQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        target: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut guard = self.session(client).await?;
        let s = guard
            .as_mut()
            .ok_or_else(|| user_error("08006", "no session".into()))?;
        let (params, fields) = self
            .describe(
                s,
                &target.statement,
                &target.parameter_types,
                &Format::UnifiedText,
            )
            .await?;
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut guard = self.session(client).await?;
        let s = guard
            .as_mut()
            .ok_or_else(|| user_error("08006", "no session".into()))?;
        let (_, fields) = self
            .describe(
                s,
                &portal.statement.statement,
                &portal.statement.parameter_types,
                &portal.result_column_format,
            )
            .await?;
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut guard = self.session(client).await?;
        let s = guard
            .as_mut()
            .ok_or_else(|| user_error("08006", "no session".into()))?;
        let sql = portal.statement.statement.as_str();
        let stmt = statements::classify(sql).map_err(|e| user_error("42601", format!("{e:#}")))?;
        match stmt {
            Stmt::Passthrough | Stmt::Begin | Stmt::End => {
                let st = self
                    .prepare(s, sql, &portal.statement.parameter_types)
                    .await?;
                let params: Vec<RawParam> = portal
                    .parameters
                    .iter()
                    .enumerate()
                    .map(|(i, b)| RawParam {
                        bytes: b.clone(),
                        binary: portal.parameter_format.format_for(i) == FieldFormat::Binary,
                    })
                    .collect();
                if st.columns().is_empty() {
                    let n = s
                        .client
                        .execute_raw(&st, params.iter().map(|p| p as &dyn ToSql))
                        .await
                        .map_err(|e| to_pg(e.into()))?;
                    let tag = tag_for(sql, n);
                    return Ok(match stmt {
                        Stmt::Begin => Response::TransactionStart(tag),
                        Stmt::End => Response::TransactionEnd(tag),
                        _ => Response::Execution(tag),
                    });
                }
                use futures::TryStreamExt;
                let rows: Vec<tokio_postgres::Row> = s
                    .client
                    .query_raw(&st, params.iter().map(|p| p as &dyn ToSql))
                    .await
                    .map_err(|e| to_pg(e.into()))?
                    .try_collect()
                    .await
                    .map_err(|e| to_pg(e.into()))?;
                let format = &portal.result_column_format;
                let schema = Arc::new(
                    st.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            FieldInfo::new(
                                c.name().to_string(),
                                None,
                                None,
                                pg_type(c.type_()),
                                format.format_for(i),
                            )
                        })
                        .collect::<Vec<_>>(),
                );
                let mut enc = DataRowEncoder::new(schema.clone());
                let mut data = Vec::new();
                for row in &rows {
                    for (i, c) in st.columns().iter().enumerate() {
                        let raw: Option<Raw> = row.try_get(i).map_err(|e| to_pg(e.into()))?;
                        let cell = match raw {
                            None => Cell(None),
                            Some(Raw(b)) if format.format_for(i) == FieldFormat::Binary => {
                                Cell(Some(b))
                            }
                            Some(Raw(b)) => Cell(Some(
                                binary_to_text(c.type_(), &b).map_err(to_pg)?.into_bytes(),
                            )),
                        };
                        enc.encode_field(&cell)?;
                    }
                    data.push(Ok(enc.take_row()));
                }
                Ok(Response::Query(QueryResponse::new(
                    schema,
                    stream::iter(data),
                )))
            }
            other => {
                let out = s.execute(sql, &other).await.map_err(to_pg)?;
                output_response(out, &portal.result_column_format)
            }
        }
    }
}
