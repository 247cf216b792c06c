//! The client of `weir sql`: sends a query to a running engine's HTTP endpoint and formats
//! the answer.

use arrow::record_batch::RecordBatch;

use crate::http::ARROW_STREAM;

/// How `weir sql` prints rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned table, for a terminal.
    Table,
    /// A JSON array of objects.
    Json,
    /// CSV with a header line.
    Csv,
}

/// Why `weir sql` failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The engine refused the query (bad SQL, read-only, limits): the user's to fix.
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    /// The engine could not answer (busy, starting, rebalancing, an internal failure) and
    /// still could not after [`UNAVAILABLE_PATIENCE`] of retries.
    #[error("{code}: {message}")]
    Unavailable {
        /// The HTTP status (503 is asked again).
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach {url}: {error}; is `weir run` serving SQL there (serve.http)?")]
    Unreachable { url: String, error: String },
    #[error(transparent)]
    Runtime(#[from] weir_engine::io::IoRuntimeError),
    /// The answer's body broke off.
    #[error(transparent)]
    Body(reqwest::Error),
    /// The answer is not an Arrow stream.
    #[error("cannot read the answer")]
    Answer(#[source] arrow::error::ArrowError),
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// Why rows cannot be formatted for printing.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Json(#[from] crate::encode::EncodeError),
    #[error(transparent)]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// How long `weir sql` retries an engine answering 503 (busy, starting, rebalancing), with
/// doubling pauses from 100 ms, before it gives up.
pub const UNAVAILABLE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs `sql` on the engine at `server` (e.g. `http://127.0.0.1:8080`) and formats the rows.
/// An answer of 503 is asked again for up to [`UNAVAILABLE_PATIENCE`].
pub fn query(
    server: &str,
    token: Option<&str>,
    sql: &str,
    format: OutputFormat,
) -> Result<String, ClientError> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match query_once(server, token, sql, format) {
            Err(ClientError::Unavailable { status: 503, .. })
                if started.elapsed() + pause < UNAVAILABLE_PATIENCE =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

fn query_once(
    server: &str,
    token: Option<&str>,
    sql: &str,
    format: OutputFormat,
) -> Result<String, ClientError> {
    let url = format!("{}/sql", server.trim_end_matches('/'));
    let runtime = weir_engine::io::runtime()?;
    let (status, body) = runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut req = client
            .post(&url)
            .header("accept", ARROW_STREAM)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "query": sql }).to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            error: e.to_string(),
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(ClientError::Body)?;
        Ok::<_, ClientError>((status, body))
    })?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let field = |k: &str| v["error"][k].as_str().map(str::to_string);
        let code = field("code").unwrap_or_else(|| status.to_string());
        let message =
            field("message").unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        // the engine's side (503 busy/starting/rebalancing, 500): a runtime failure
        return Err(if status.is_server_error() {
            ClientError::Unavailable {
                status: status.as_u16(),
                code,
                message,
            }
        } else {
            ClientError::Refused { code, message }
        });
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
        .map_err(ClientError::Answer)?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<RecordBatch>, _>>()
        .map_err(ClientError::Answer)?;
    Ok(format_rows(&schema, &batches, format)?)
}

/// Formats rows as `format` says.
pub fn format_rows(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    format: OutputFormat,
) -> Result<String, FormatError> {
    match format {
        OutputFormat::Table => {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let table = if batches.is_empty() {
                arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(
                    schema.clone(),
                )])
            } else {
                arrow::util::pretty::pretty_format_batches(batches)
            }?;
            Ok(format!(
                "{table}\n({rows} row{})\n",
                if rows == 1 { "" } else { "s" }
            ))
        }
        OutputFormat::Json => {
            let result = crate::engine::QueryResult {
                schema: schema.clone(),
                batches: batches.to_vec(),
            };
            let mut out = crate::encode::json_rows(&result, usize::MAX)?;
            out.push(b'\n');
            Ok(String::from_utf8(out)?)
        }
        OutputFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut builder = arrow::csv::WriterBuilder::new().with_header(true);
                if crate::encode::zones_utc(schema) {
                    builder =
                        builder.with_timestamp_tz_format(crate::encode::UTC_TIMESTAMP.to_string());
                }
                let mut w = builder.build(&mut out);
                for b in batches {
                    w.write(b)?;
                }
            }
            if batches.is_empty() {
                let header: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                out.extend_from_slice(header.join(",").as_bytes());
                out.push(b'\n');
            }
            Ok(String::from_utf8(out)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    /// An engine at a local port giving `replies` (status, content type, body), one per
    /// connection, in order.
    fn engine(replies: Vec<(&'static str, &'static str, Vec<u8>)>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for (status, content_type, body) in replies {
                let (mut s, _) = listener.accept().unwrap();
                read_request(&mut s);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            }
        });
        addr
    }

    /// Reads a request's head and body (answering before would reset the connection).
    fn read_request(s: &mut std::net::TcpStream) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap_or(0);
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    return;
                }
            }
            if n == 0 {
                return;
            }
        }
    }

    fn refusal(code: &str) -> Vec<u8> {
        format!(r#"{{"error": {{"code": "{code}", "message": "not now"}}}}"#).into_bytes()
    }

    #[test]
    fn an_engine_answering_503_is_asked_again_and_a_bad_query_is_not() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![7]))])
            .unwrap();
        let rows = crate::encode::arrow_stream(
            &crate::engine::QueryResult {
                schema,
                batches: vec![batch],
            },
            1 << 20,
        )
        .unwrap();
        let unavailable = "503 Service Unavailable";
        let json = "application/json";
        let server = engine(vec![
            (unavailable, json, refusal("starting")),
            (unavailable, json, refusal("rebalancing")),
            ("200 OK", ARROW_STREAM, rows),
        ]);
        let out = query(&server, None, "SELECT 7 AS n", OutputFormat::Json).unwrap();
        assert_eq!(out, "[{\"n\":7}]\n");
        // a refusal of the query itself is the user's: not asked again
        let server = engine(vec![("400 Bad Request", json, refusal("sql_error"))]);
        let got = query(&server, None, "SELEC", OutputFormat::Json);
        assert!(
            matches!(&got, Err(ClientError::Refused { code, .. }) if code == "sql_error"),
            "{got:?}"
        );
        // the engine failing is not
        let server = engine(vec![(
            "500 Internal Server Error",
            json,
            refusal("encoding"),
        )]);
        let got = query(&server, None, "SELECT 1", OutputFormat::Json);
        assert!(
            matches!(&got, Err(ClientError::Unavailable { code, .. }) if code == "encoding"),
            "{got:?}"
        );
    }
}
