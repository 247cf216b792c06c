//! A Confluent-compatible schema registry client: writer schemas by id
//! (`GET {url}/schemas/ids/{id}`), fetched once and cached. Plain HTTP only.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::avro::AvroType;

/// Writer schemas from a registry.
pub struct SchemaRegistry {
    host: String,
    port: u16,
    prefix: String,
    url: String,
    cache: Mutex<HashMap<u32, Result<Arc<AvroType>, String>>>,
}

impl SchemaRegistry {
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
        Ok(SchemaRegistry {
            host,
            port,
            prefix: prefix.to_string(),
            url: url.to_string(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The writer schema with `id` (an error is remembered too: a bad id stays bad).
    pub fn schema(&self, id: u32) -> Result<Arc<AvroType>, String> {
        if let Some(r) = self.cache.lock().ok().and_then(|c| c.get(&id).cloned()) {
            return r;
        }
        let result = self.fetch(id);
        if let Ok(mut c) = self.cache.lock() {
            // a registry that cannot be reached is asked again next time
            if result.is_ok()
                || !result
                    .as_ref()
                    .err()
                    .is_some_and(|e| e.contains("cannot reach"))
            {
                c.insert(id, result.clone());
            }
        }
        result
    }

    fn fetch(&self, id: u32) -> Result<Arc<AvroType>, String> {
        let path = format!("{}/schemas/ids/{id}", self.prefix);
        let body = self
            .get(&path)
            .map_err(|e| format!("schema registry {}: {e}", self.url))?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("schema registry {}: schema {id}: not JSON: {e}", self.url))?;
        let text = v
            .get("schema")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("schema registry {}: schema {id}: no `schema`", self.url))?;
        AvroType::parse(text)
            .map(Arc::new)
            .map_err(|e| format!("schema registry {}: schema {id}: {e}", self.url))
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, String> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot reach it: {e}"))?
            .next()
            .ok_or("cannot reach it: no address")?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("cannot reach it: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/vnd.schemaregistry.v1+json, application/json\r\nConnection: close\r\n\r\n",
            self.host, self.port
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
                "GET {path}: status {status}: {}",
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one response per connection, `n` times.
    fn serve(responses: Vec<&'static str>) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for r in responses {
                let (mut s, _) = l.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                s.write_all(r.as_bytes()).unwrap();
            }
        });
        port
    }

    #[test]
    fn fetches_once_dechunks_and_explains_errors() {
        let port = serve(vec![
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n{\"schema\":\"\\\"long\r\n4\r\n\\\"\"}\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\n\r\n{\"error_code\":40403}",
        ]);
        let r = SchemaRegistry::new(&format!("http://127.0.0.1:{port}/")).unwrap();
        let first = r.schema(1);
        assert!(matches!(first.as_deref(), Ok(AvroType::Long)), "{first:?}");
        // cached: the server would not answer a second time
        assert!(matches!(*r.schema(1).unwrap(), AvroType::Long));
        let e = r.schema(2).unwrap_err();
        assert!(e.contains("404") && e.contains("40403"), "{e}");
        assert!(SchemaRegistry::new("https://x").is_err());
    }
}
