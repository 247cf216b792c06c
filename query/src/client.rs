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

/// Runs `sql` on the engine at `server` (e.g. `http://127.0.0.1:8080`) and formats the rows.
pub fn query(
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
        return Err(ClientError::Refused {
            code: field("code").unwrap_or_else(|| status.to_string()),
            message: field("message")
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
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
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
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
