//! Writer schemas of Avro records from a schema registry, by id, fetched once and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use weir_kafka::RegistryClient;

use crate::avro::AvroType;

/// Writer schemas from a registry.
pub struct SchemaRegistry {
    client: RegistryClient,
    cache: Mutex<HashMap<u32, Result<Arc<AvroType>, String>>>,
}

impl SchemaRegistry {
    /// A client of the registry at `url` (`http://host[:port][/prefix]`).
    pub fn new(url: &str) -> Result<Self, String> {
        Ok(SchemaRegistry {
            client: RegistryClient::new(url)?,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The writer schema with `id` (an error is remembered too, unless the registry could
    /// not be reached: a bad id stays bad, an outage is asked again).
    pub fn schema(&self, id: u32) -> Result<Arc<AvroType>, String> {
        if let Some(r) = self.cache.lock().ok().and_then(|c| c.get(&id).cloned()) {
            return r;
        }
        let result = self.client.schema_text(id).and_then(|text| {
            AvroType::parse(&text)
                .map(Arc::new)
                .map_err(|e| format!("schema registry {}: schema {id}: {e}", self.client.url()))
        });
        if let Ok(mut c) = self.cache.lock() {
            if !result
                .as_ref()
                .err()
                .is_some_and(|e| e.contains("cannot reach"))
            {
                c.insert(id, result.clone());
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
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
