//! NATS credentials and TLS against a real `nats-server` (a throwaway one per case, with a
//! configuration file): user/password, token, NKey seed, and TLS with a CA and a server
//! certificate made here with the `openssl` command. Each case runs a pipeline that reads a
//! stream with the right secret taken from `${ENV}` (every event counted), then with a wrong
//! one: the run fails with a clear message, and no secret appears in its output.

#[path = "support/crash.rs"]
mod crash;
#[path = "support/nats.rs"]
mod nats_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use nats_support::{nats_py, NatsServer};
use weir_tests::{generate, read_ndjson, weir_bin};

const EVENTS: u64 = 2000;

/// Publishes `EVENTS` events to a stream `EVENTS` over `auth.>` with nats-py, connected at
/// `url` (credentials in the URL, or through a plain listener of the server).
fn stream_with_events(url: &str, d: &Path) {
    let events = d.join("events.ndjson");
    generate(&events, &[&EVENTS.to_string(), "--seed", "3"]);
    nats_py(url, &["create", "EVENTS", "auth.>"]);
    nats_py(url, &["publish", events.to_str().unwrap(), "auth.events"]);
}

/// A pipeline reading the stream with `auth` (YAML lines under `nats:`), counting events.
fn pipeline(d: &Path, url: &str, auth: &str) -> PathBuf {
    let yaml = format!(
        r#"name: nats-auth
sources:
  events:
    nats:
      url: "{url}"
      stream: EVENTS
      consumer: weir-auth
{auth}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  all:
    from: events
    key: [datasetName]
    tumbling: 1d
    aggregates: {{ events: count(*) }}
    sinks: [out]
sinks:
  out: {{ file: {{ path: out/all.ndjson }} }}
"#
    );
    let p = d.join("pipeline.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// Runs the pipeline to the stream's end with `env`; (success, stdout + stderr).
fn run(p: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(weir_bin())
        .args(["run", p.to_str().unwrap(), "--until-caught-up"])
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The right secret reads every event; a wrong one fails clearly; no secret is printed.
fn check_case(d: &Path, p: &Path, var: &str, (right, wrong): (&str, &str), label: &str) {
    let (ok, text) = run(p, &[(var, right)]);
    assert!(ok, "{label}: the run with the right secret failed:\n{text}");
    assert!(
        !text.contains(right),
        "{label}: the secret was printed:\n{text}"
    );
    let rows = read_ndjson(&d.join("out/all.ndjson"));
    let total: u64 = rows.iter().map(|r| r["events"].as_u64().unwrap()).sum();
    assert_eq!(total, EVENTS, "{label}: events counted");
    let (ok, text) = run(p, &[(var, wrong)]);
    assert!(
        !ok,
        "{label}: the run with a wrong secret succeeded:\n{text}"
    );
    assert!(
        text.contains("cannot connect to NATS"),
        "{label}: no clear message:\n{text}"
    );
    assert!(
        !text.contains(wrong) && !text.contains(right),
        "{label}: a secret was printed:\n{text}"
    );
}

#[test]
fn user_and_password_from_the_environment() {
    let password = "pw-8c1f0e77-right";
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ user: weir, password: \"{password}\" }}\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = server.port;
    stream_with_events(&format!("nats://weir:{password}@127.0.0.1:{port}"), d);
    let auth = "      credentials: { user: weir, password: \"${NATS_TEST_PASSWORD}\" }";
    let p = pipeline(d, &server.url(), auth);
    let wrong = "pw-wrong-5d2e";
    check_case(
        d,
        &p,
        "NATS_TEST_PASSWORD",
        (password, wrong),
        "user/password",
    );
}

#[test]
fn token_from_the_environment() {
    let token = "tok-41b7aa90-right";
    let server =
        NatsServer::start_with_config(&format!("authorization {{ token: \"{token}\" }}\n"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stream_with_events(&format!("nats://{token}@127.0.0.1:{}", server.port), d);
    let auth = "      credentials: { token: \"${NATS_TEST_TOKEN}\" }";
    let p = pipeline(d, &server.url(), auth);
    check_case(d, &p, "NATS_TEST_TOKEN", (token, "tok-wrong-77"), "token");
}

#[test]
fn nkey_seed_from_the_environment() {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let admin = "adm-pw-0a9d";
    // the weir user by its NKey; an admin user by password sets the stream up (nats-py)
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }}, {{ user: admin, password: \"{admin}\" }} ] }}\n",
        user.public_key()
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stream_with_events(
        &format!("nats://admin:{admin}@127.0.0.1:{}", server.port),
        d,
    );
    let auth = "      credentials: { nkey_seed: \"${NATS_TEST_SEED}\" }";
    let p = pipeline(d, &server.url(), auth);
    let (seed, wrong) = (user.seed().unwrap(), stranger.seed().unwrap());
    check_case(d, &p, "NATS_TEST_SEED", (&seed, &wrong), "nkey");
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate for 127.0.0.1 it signed, in `dir`: `ca.pem`,
/// `server.pem`, `server-key.pem`; and an unrelated CA, `other-ca.pem`.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "weir test CA"), ("other-ca", "another CA")] {
        let (key, pem, subj) = (
            format!("{name}-key.pem"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        openssl(dir, &args);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

/// TLS with the test CA: read with `tls: { required, ca_file }` (the CA's path from
/// `${ENV}`); trusting another CA fails on the certificate, clearly.
#[test]
fn tls_with_a_ca_made_by_the_test() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let c = |f: &str| certs.path().join(f).display().to_string();
    // plain clients still allowed: nats-py sets the stream up without the CA
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\nallow_non_tls: true\n",
        c("server.pem"),
        c("server-key.pem")
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stream_with_events(&server.url(), d);
    let auth = "      tls: { required: true, ca_file: \"${NATS_TEST_CA}\" }";
    let p = pipeline(d, &server.url(), auth);
    let (ok, text) = run(&p, &[("NATS_TEST_CA", &c("ca.pem"))]);
    assert!(ok, "TLS: the run with the right CA failed:\n{text}");
    let rows = read_ndjson(&d.join("out/all.ndjson"));
    let total: u64 = rows.iter().map(|r| r["events"].as_u64().unwrap()).sum();
    assert_eq!(total, EVENTS, "TLS: events counted");
    let (ok, text) = run(&p, &[("NATS_TEST_CA", &c("other-ca.pem"))]);
    assert!(!ok, "TLS: the run trusting another CA succeeded:\n{text}");
    assert!(text.contains("cannot connect to NATS"), "TLS: {text}");
}
