//! The Postgres wire protocol (pgwire): simple and extended queries on the live state, so
//! that `psql`, drivers (psycopg, JDBC, tokio-postgres) and Grafana's Postgres data source
//! connect as they do to Postgres.
//!
//! Read-only: a query that would change something gets SQLSTATE 25006. Session commands
//! clients send on connect (`SET`, `BEGIN`, `COMMIT`, `ROLLBACK`, `DISCARD`) are accepted
//! and change nothing. No TLS: put a TLS proxy in front of it when it leaves the machine.

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::common::{ParamValues, ScalarValue};
use futures::{stream, Sink, Stream, StreamExt};
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::engine::{QueryEngine, QueryError, QueryResult};
use crate::logins::secret_matches;

/// The Postgres type a column is sent as.
fn pg_type(t: &DataType) -> Type {
    match t {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 => Type::INT2,
        DataType::Int32 | DataType::UInt8 | DataType::UInt16 => Type::INT4,
        // an unsigned value of 2^63 or more fails the query (see `Column::new`): counters
        // never get there, and clients keep reading them as integers
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        // exact: a FLOAT8 rounds a decimal
        DataType::Decimal128(..) | DataType::Decimal256(..) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => Type::FLOAT8,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        _ => Type::VARCHAR,
    }
}

/// The Postgres type a parameter is described as: a result's type, but a decimal as FLOAT8
/// (parameters are read as the types `parameter` decodes, which NUMERIC is not).
fn parameter_type(t: &DataType) -> Type {
    match pg_type(t) {
        Type::NUMERIC => Type::FLOAT8,
        other => other,
    }
}

fn fields(schema: &SchemaRef, format: Option<&Format>) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let fmt = format.map_or(FieldFormat::Text, |x| x.format_for(i));
            FieldInfo::new(f.name().clone(), None, None, pg_type(f.data_type()), fmt)
        })
        .collect()
}

fn user_error(e: &QueryError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        e.sqlstate().to_owned(),
        e.to_string(),
    )))
}

/// One column of a result, converted to what its Postgres type encodes from.
enum Column {
    Bool(arrow::array::BooleanArray),
    Int(arrow::array::Int64Array),
    Float(arrow::array::Float64Array),
    /// Microseconds since the epoch.
    Time(arrow::array::TimestampMicrosecondArray, bool),
    /// Written in decimal by Arrow's formatter (unsigned integers, decimals).
    Numeric(ArrayRef),
    Text(ArrayRef),
}

impl Column {
    fn new(a: &ArrayRef) -> PgWireResult<Self> {
        let cast = |t: &DataType| {
            arrow::compute::cast(a, t).map_err(|e| PgWireError::ApiError(Box::new(e)))
        };
        Ok(match pg_type(a.data_type()) {
            Type::BOOL => Column::Bool(a.as_boolean().clone()),
            Type::INT2 | Type::INT4 | Type::INT8 => {
                // checked: an unsigned value over i64::MAX is an error, never a null
                let exact = arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                };
                let ints = arrow::compute::cast_with_options(a, &DataType::Int64, &exact).map_err(
                    |e| {
                        PgWireError::UserError(Box::new(ErrorInfo::new(
                            "ERROR".to_owned(),
                            "22003".to_owned(),
                            format!(
                                "a value does not fit in int8 (the Postgres protocol's widest \
                                 integer): {e}; read it over HTTP, or cast it to a decimal \
                                 (CAST(x AS DECIMAL(20, 0)))"
                            ),
                        )))
                    },
                )?;
                Column::Int(ints.as_primitive::<Int64Type>().clone())
            }
            Type::FLOAT8 => Column::Float(
                cast(&DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            ),
            Type::TIMESTAMPTZ | Type::TIMESTAMP => {
                let tz = matches!(a.data_type(), DataType::Timestamp(_, Some(_)));
                let t = cast(&DataType::Timestamp(TimeUnit::Microsecond, None))?;
                Column::Time(
                    t.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .clone(),
                    tz,
                )
            }
            Type::NUMERIC => Column::Numeric(a.clone()),
            _ => Column::Text(a.clone()),
        })
    }

    fn encode(
        &self,
        e: &mut DataRowEncoder,
        i: usize,
        text: &Option<ArrayFormatter>,
    ) -> PgWireResult<()> {
        match self {
            Column::Bool(a) => e.encode_field(&a.is_valid(i).then(|| a.value(i))),
            Column::Int(a) => e.encode_field(&a.is_valid(i).then(|| a.value(i))),
            Column::Float(a) => e.encode_field(&a.is_valid(i).then(|| a.value(i))),
            Column::Time(a, tz) => {
                let t = a
                    .is_valid(i)
                    .then(|| chrono::DateTime::from_timestamp_micros(a.value(i)))
                    .flatten();
                if *tz {
                    e.encode_field(&t)
                } else {
                    e.encode_field(&t.map(|t| t.naive_utc()))
                }
            }
            Column::Numeric(a) => {
                let v = match (a.is_valid(i), text) {
                    (true, Some(f)) => Some(crate::pg_numeric::Numeric(f.value(i).to_string())),
                    _ => None,
                };
                e.encode_field(&v)
            }
            Column::Text(a) => {
                let v = match (a.is_valid(i), text) {
                    (true, Some(f)) => Some(f.value(i).to_string()),
                    _ => None,
                };
                e.encode_field(&v)
            }
        }
    }
}

/// Rows encoded per step of the stream: a client fetching with a small `max_rows` (psql's
/// `FETCH_COUNT`, JDBC's `setFetchSize`) gets its rows without the whole result being encoded.
const ROWS_PER_STEP: usize = 1024;

/// One slice of a result as data rows.
fn encode_chunk(batch: &RecordBatch, fields: Arc<Vec<FieldInfo>>) -> PgWireResult<Vec<DataRow>> {
    let options = FormatOptions::default();
    let columns = batch
        .columns()
        .iter()
        .map(Column::new)
        .collect::<PgWireResult<Vec<_>>>()?;
    let texts = batch
        .columns()
        .iter()
        .zip(&columns)
        .map(|(a, c)| match c {
            Column::Text(_) | Column::Numeric(_) => {
                ArrayFormatter::try_new(a.as_ref(), &options).ok()
            }
            _ => None,
        })
        .collect::<Vec<_>>();
    let mut encoder = DataRowEncoder::new(fields);
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        for (c, t) in columns.iter().zip(&texts) {
            c.encode(&mut encoder, i, t)?;
        }
        rows.push(encoder.take_row());
    }
    Ok(rows)
}

/// The rows of a result, encoded a slice at a time as the client fetches them.
fn row_stream(
    result: QueryResult,
    fields: Arc<Vec<FieldInfo>>,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send + 'static {
    let slices: Vec<RecordBatch> = result
        .batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows())
                .step_by(ROWS_PER_STEP)
                .map(move |s| b.slice(s, ROWS_PER_STEP.min(b.num_rows() - s)))
        })
        .collect();
    stream::iter(slices).flat_map(move |slice| {
        let rows: Vec<PgWireResult<DataRow>> = match encode_chunk(&slice, fields.clone()) {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        stream::iter(rows)
    })
}

/// Session commands answered without doing anything.
fn session_command(sql: &str) -> Option<Response> {
    let first = sql
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()?
        .to_ascii_uppercase();
    match first.as_str() {
        "SET" | "DISCARD" | "RESET" => Some(Response::Execution(Tag::new(&first))),
        "BEGIN" | "START" => Some(Response::TransactionStart(Tag::new("BEGIN"))),
        "COMMIT" | "END" => Some(Response::TransactionEnd(Tag::new("COMMIT"))),
        "ROLLBACK" | "ABORT" => Some(Response::TransactionEnd(Tag::new("ROLLBACK"))),
        _ => None,
    }
}

/// A parsed statement of the extended protocol.
#[derive(Clone, Debug)]
pub struct Prepared {
    sql: String,
    /// Inferred types of `$1`, `$2`...
    params: Vec<DataType>,
    /// The result's schema (`None` for session commands).
    schema: Option<SchemaRef>,
}

/// Plans statements of the extended protocol to learn their parameter and result types.
pub struct Parser {
    engine: Arc<QueryEngine>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if sql.trim().trim_matches(';').trim().is_empty() {
            return Ok(None);
        }
        if session_command(sql).is_some() {
            return Ok(Some(Prepared {
                sql: sql.to_string(),
                params: Vec::new(),
                schema: None,
            }));
        }
        let (params, schema) = self
            .engine
            .describe(sql)
            .await
            .map_err(|e| user_error(&e))?;
        Ok(Some(Prepared {
            sql: sql.to_string(),
            params,
            schema: Some(schema),
        }))
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        Ok(stmt.params.iter().map(parameter_type).collect())
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(stmt
            .schema
            .as_ref()
            .map(|s| fields(s, column_format))
            .unwrap_or_default())
    }
}

/// Answers simple and extended queries.
pub struct PgHandler {
    engine: Arc<QueryEngine>,
    parser: Arc<Parser>,
}

impl PgHandler {
    async fn answer(
        &self,
        sql: &str,
        params: Option<ParamValues>,
        format: Option<&Format>,
    ) -> PgWireResult<Response> {
        if let Some(r) = session_command(sql) {
            return Ok(r);
        }
        let result = self
            .engine
            .query_with(sql, params)
            .await
            .map_err(|e| user_error(&e))?;
        let fields = Arc::new(fields(&result.schema, format));
        Ok(Response::Query(QueryResponse::new(
            fields.clone(),
            row_stream(result, fields),
        )))
    }
}

#[async_trait]
impl SimpleQueryHandler for PgHandler {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(vec![self.answer(query, None, None).await?])
    }
}

/// A parameter's value, decoded by the type the client sent it as and cast to the type the
/// query needs.
fn parameter(portal: &Portal<Prepared>, i: usize, want: &DataType) -> PgWireResult<ScalarValue> {
    let sent = portal
        .statement
        .parameter_types
        .get(i)
        .cloned()
        .flatten()
        .unwrap_or_else(|| pg_type(want));
    let value = match sent {
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, &sent)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, &sent)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, &sent)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, &sent)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, &sent)?),
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, &sent)?),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<chrono::DateTime<chrono::FixedOffset>>(i, &sent)?
                .map(|t| t.timestamp_micros()),
            Some("UTC".into()),
        ),
        _ => ScalarValue::Utf8(portal.parameter::<String>(i, &Type::VARCHAR)?),
    };
    value
        .cast_to(want)
        .map_err(|e| user_error(&QueryError::Sql(format!("parameter ${}: {e}", i + 1))))
}

#[async_trait]
impl ExtendedQueryHandler for PgHandler {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement.statement;
        let params = if stmt.params.is_empty() {
            None
        } else {
            let values = stmt
                .params
                .iter()
                .enumerate()
                .map(|(i, t)| parameter(portal, i, t))
                .collect::<PgWireResult<Vec<_>>>()?;
            Some(ParamValues::from(values))
        };
        self.answer(&stmt.sql, params, Some(&portal.result_column_format))
            .await
    }
}

/// The one password of `serve.password`, checked in constant time, with failed logins
/// counted per client address (see `logins`).
pub struct FixedPassword {
    password: String,
    engine: Arc<QueryEngine>,
}

impl Debug for FixedPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the password
        f.write_str("FixedPassword")
    }
}

#[async_trait]
impl AuthSource for FixedPassword {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Ok(Password::new(None, self.password.as_bytes().to_vec()))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<()>> {
        let logins = &self.engine.logins;
        let peer: Option<IpAddr> = login.host().parse().ok();
        if let Some(ip) = peer {
            if let Err(wait) = logins.check(ip) {
                return Err(crate::pg_conn::user_error(
                    "FATAL",
                    "28P01",
                    format!(
                        "too many failed logins from {ip}; try again in {:.1} s",
                        wait.as_secs_f64()
                    ),
                ));
            }
        }
        if secret_matches(presented, self.password.as_bytes()) {
            if let Some(ip) = peer {
                logins.succeeded(ip);
            }
            return Ok(None);
        }
        if let Some(ip) = peer {
            logins.failed(ip);
        }
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_owned(),
        ))
    }
}

/// Connections without authentication (only allowed on loopback).
pub struct Open;

impl NoopStartupHandler for Open {}

/// Authentication of a connection: none, or the password of `serve.password`.
pub enum Startup {
    Open(Open),
    Password(
        Box<CleartextPasswordAuthStartupHandler<FixedPassword, DefaultServerParameterProvider>>,
    ),
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Open(h) => h.on_startup(client, message).await,
            Startup::Password(h) => h.on_startup(client, message).await,
        }
    }
}

/// The handlers of one endpoint.
pub struct PgServer {
    handler: Arc<PgHandler>,
    startup: Arc<Startup>,
}

impl PgServer {
    pub fn new(engine: Arc<QueryEngine>, password: Option<String>) -> Self {
        let parser = Arc::new(Parser {
            engine: engine.clone(),
        });
        let startup = match password {
            Some(p) => {
                let mut params = DefaultServerParameterProvider::default();
                params.server_version = format!("16.0 (weir {})", env!("CARGO_PKG_VERSION"));
                Startup::Password(Box::new(CleartextPasswordAuthStartupHandler::new(
                    FixedPassword {
                        password: p,
                        engine: engine.clone(),
                    },
                    params,
                )))
            }
            None => Startup::Open(Open),
        };
        PgServer {
            handler: Arc::new(PgHandler { engine, parser }),
            startup: Arc::new(startup),
        }
    }
}

impl PgWireServerHandlers for PgServer {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handler.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handler.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}
