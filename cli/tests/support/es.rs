//! Elasticsearch for the tests: the project's Elasticsearch-compatible test server
//! (`tests/es/es_server.py`, a process of its own on loopback), or a real cluster named by
//! `WEIR_TEST_ES_URL` (with `WEIR_TEST_ES_API_KEY` when it needs one) for the tests that do
//! not inject faults.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Es {
    child: Option<Child>,
    pub url: String,
    /// The API key requests need (the test server's, or WEIR_TEST_ES_API_KEY).
    pub api_key: Option<String>,
    client: reqwest::blocking::Client,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

impl Es {
    /// The test server, with `args` (`--api-key K`, `--refresh-interval S`...).
    pub fn server(args: &[&str]) -> Es {
        let port = weir_tests::free_port();
        let child = Command::new("python3")
            .arg(repo().join("tests/es/es_server.py"))
            .arg(port.to_string())
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let api_key = args
            .iter()
            .position(|a| *a == "--api-key")
            .map(|i| args[i + 1].to_string());
        let es = Es {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            api_key,
            client: reqwest::blocking::Client::new(),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the Elasticsearch test server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        es
    }

    /// A real cluster when WEIR_TEST_ES_URL is set, else the test server.
    pub fn for_test() -> Es {
        match std::env::var("WEIR_TEST_ES_URL") {
            Ok(url) => Es {
                child: None,
                url: url.trim_end_matches('/').to_string(),
                api_key: std::env::var("WEIR_TEST_ES_API_KEY").ok(),
                client: reqwest::blocking::Client::new(),
            },
            Err(_) => Es::server(&[]),
        }
    }

    /// The same cluster seen with another API key (the server stays owned by `self`).
    pub fn with_key(&self, key: &str) -> Es {
        Es {
            child: None,
            url: self.url.clone(),
            api_key: Some(key.to_string()),
            client: self.client.clone(),
        }
    }

    /// Whether this is the test server (faults can be injected).
    pub fn is_test_server(&self) -> bool {
        self.child.is_some()
    }

    /// A request; (status, JSON body).
    pub fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.client.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.url),
        );
        if let Some(k) = &self.api_key {
            r = r.header("Authorization", format!("ApiKey {k}"));
        }
        if let Some(b) = body {
            r = r
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Sets faults of the test server (`reject_ratio`, `unavailable_ms`, `refuse_ms` with or
    /// without `after_items`, `delay_ms`).
    pub fn faults(&self, faults: Value) {
        assert!(self.is_test_server());
        let (s, b) = self.request("PUT", "/_weir/faults", Some(faults));
        assert_eq!(s, 200, "{b}");
    }

    /// The test server's counters.
    pub fn stats(&self) -> Value {
        self.request("GET", "/_weir/stats", None).1
    }

    /// Whether the server accepts connections (the test server's `refuse_ms` closes its port).
    pub fn accepts(&self) -> bool {
        let addr = self.url.trim_start_matches("http://");
        std::net::TcpStream::connect(addr).is_ok()
    }

    /// Makes every document searchable.
    pub fn refresh(&self, index: &str) {
        let (s, b) = self.request("POST", &format!("/{index}/_refresh"), None);
        assert_eq!(s, 200, "{b}");
    }

    pub fn count(&self, index: &str) -> u64 {
        self.refresh(index);
        let (s, b) = self.request("GET", &format!("/{index}/_count"), None);
        assert_eq!(s, 200, "{b}");
        b["count"].as_u64().unwrap()
    }

    /// Every document of `index` (a pattern), through `_search`: (id, version, source).
    pub fn documents(&self, index: &str) -> Vec<(String, u64, serde_json::Map<String, Value>)> {
        self.refresh(index);
        let (s, b) = self.request(
            "POST",
            &format!("/{index}/_search"),
            Some(json!({"query": {"match_all": {}}, "size": 10000, "version": true, "track_total_hits": true})),
        );
        assert_eq!(s, 200, "{b}");
        let total = b["hits"]["total"]["value"].as_u64().unwrap();
        assert!(total <= 10000, "{total} documents: more than one page");
        b["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["_id"].as_str().unwrap().to_string(),
                    h["_version"].as_u64().unwrap_or(0),
                    h["_source"].as_object().unwrap().clone(),
                )
            })
            .collect()
    }
}

impl Drop for Es {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
