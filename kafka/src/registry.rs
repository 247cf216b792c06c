//! A client of a Confluent-compatible schema registry (plain HTTP): writer schemas by id, and
//! registering a subject's schema.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A schema registry at one URL.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    host: String,
    port: u16,
    prefix: String,
    url: String,
}

impl RegistryClient {
    /// A client of the registry at `url` (`http://host[:port][/prefix]`).
    pub fn new(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("schema registry `{url}`: only http:// URLs are supported"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("schema registry `{url}`: bad port"))?,
            ),
            None => (authority.to_string(), 80),
        };
        Ok(RegistryClient {
            host,
            port,
            prefix: prefix.to_string(),
            url: url.to_string(),
        })
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The text of the schema with `id`. Errors say `cannot reach` when the registry could
    /// not be asked at all.
    pub fn schema_text(&self, id: u32) -> Result<String, String> {
        let path = format!("{}/schemas/ids/{id}", self.prefix);
        let body = self
            .request("GET", &path, None)
            .map_err(|e| format!("schema registry {}: {e}", self.url))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("schema registry {}: schema {id}: not JSON: {e}", self.url))?;
        v.get("schema")
            .and_then(|s| s.as_str())
            .map(String::from)
            .ok_or_else(|| format!("schema registry {}: schema {id}: no `schema`", self.url))
    }

    /// Registers `schema` (Avro schema text) under `subject`; returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, String> {
        let path = format!("{}/subjects/{subject}/versions", self.prefix);
        let body = serde_json::json!({ "schema": schema }).to_string();
        let answer = self
            .request("POST", &path, Some(&body))
            .map_err(|e| format!("schema registry {}: registering `{subject}`: {e}", self.url))?;
        let v: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|e| format!("schema registry {}: not JSON: {e}", self.url))?;
        v.get("id")
            .and_then(|i| i.as_u64())
            .map(|i| i as u32)
            .ok_or_else(|| format!("schema registry {}: no `id` in {v}", self.url))
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<Vec<u8>, String> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot reach it: {e}"))?
            .next()
            .ok_or("cannot reach it: no address")?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("cannot reach it: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/vnd.schemaregistry.v1+json, application/json\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            self.port,
            body.len()
        );
        s.write_all(request.as_bytes())
            .map_err(|e| format!("cannot reach it: {e}"))?;
        let mut response = Vec::new();
        s.read_to_end(&mut response)
            .map_err(|e| format!("cannot reach it: {e}"))?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("a response without headers")?;
        let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
        let body = &response[split + 4..];
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or("a response without a status")?;
        let body = if head.contains("transfer-encoding: chunked") {
            dechunk(body)?
        } else {
            body.to_vec()
        };
        if status != 200 {
            return Err(format!(
                "{method} {path}: status {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body)
    }
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a bad chunked body")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "a bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or("a truncated chunk")?);
        b = b.get(size + 2..).ok_or("a truncated chunk")?;
    }
}
