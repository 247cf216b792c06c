//! NATS JetStream: a stream read by a durable pull consumer, rows and dead letters published
//! with deterministic `Nats-Msg-Id`s. This module turns a source's or sink's `url`,
//! `credentials` and `tls` into a [`NatsEndpoint`], checked with the pipeline file's
//! positions by the caller.

mod connector;
/// Its YAML blocks, as a pipeline file writes them.
pub mod doc;
mod error;
pub(crate) mod pool;
pub mod sink;
pub(crate) mod source;

pub use connector::{NatsDeadLetter, NatsInput, NatsTarget, DEAD_LETTER, SINK, SOURCE};

use std::path::{Path, PathBuf};

use weir_nats::{NatsCredentials, NatsEndpoint, NatsTls};

use crate::model::OneOrMany;
use doc::{NatsCredentialsDoc, NatsTlsDoc};
pub(crate) use error::NatsConfigError;

/// The endpoint of a NATS connector, or what is wrong (the caller adds the file position). Relative files resolve against `dir`, the pipeline file's folder.
pub(crate) fn endpoint(
    url: &OneOrMany<String>,
    credentials: Option<&NatsCredentialsDoc>,
    tls: Option<&NatsTlsDoc>,
    dir: &Path,
    name: String,
) -> Result<NatsEndpoint, NatsConfigError> {
    let servers: Vec<String> = url.iter().map(|u| u.trim().to_string()).collect();
    if servers.is_empty() || servers.iter().any(String::is_empty) {
        return Err(NatsConfigError::NoServer);
    }
    let mut endpoint = NatsEndpoint::new(servers, name);
    endpoint.credentials = credentials_of(credentials, dir)?;
    endpoint.tls = tls_of(tls, dir)?;
    endpoint.validate()?;
    Ok(endpoint)
}

/// Secret values of a NATS connector's settings: passwords, tokens, seeds, URL passwords.
pub(crate) fn secrets(
    url: &OneOrMany<String>,
    credentials: Option<&NatsCredentialsDoc>,
) -> Vec<String> {
    let mut out: Vec<String> = credentials
        .iter()
        .flat_map(|c| [&c.password, &c.token, &c.nkey_seed])
        .flatten()
        .cloned()
        .collect();
    out.extend(url.iter().filter_map(|u| crate::secrets::url_password(u)));
    out
}

fn resolve(dir: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn existing_file(dir: &Path, key: &'static str, file: &str) -> Result<PathBuf, NatsConfigError> {
    let path = resolve(dir, file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(NatsConfigError::NotAFile { key, path })
    }
}

fn credentials_of(
    doc: Option<&NatsCredentialsDoc>,
    dir: &Path,
) -> Result<NatsCredentials, NatsConfigError> {
    let Some(d) = doc else {
        return Ok(NatsCredentials::None);
    };
    let given = [
        d.user.is_some() || d.password.is_some(),
        d.token.is_some(),
        d.creds_file.is_some(),
        d.nkey_seed.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(NatsConfigError::CredentialsChoice);
    }
    Ok(match d {
        NatsCredentialsDoc {
            user: Some(user),
            password: Some(password),
            ..
        } => NatsCredentials::UserPassword {
            user: user.clone(),
            password: password.clone(),
        },
        NatsCredentialsDoc { user: Some(_), .. }
        | NatsCredentialsDoc {
            password: Some(_), ..
        } => return Err(NatsConfigError::UserWithoutPassword),
        NatsCredentialsDoc {
            token: Some(token), ..
        } => NatsCredentials::Token(token.clone()),
        NatsCredentialsDoc {
            creds_file: Some(f),
            ..
        } => NatsCredentials::CredsFile(existing_file(dir, "creds_file", f)?),
        NatsCredentialsDoc {
            nkey_seed: Some(seed),
            ..
        } => NatsCredentials::NKeySeed(seed.clone()),
        _ => NatsCredentials::None,
    })
}

fn tls_of(doc: Option<&NatsTlsDoc>, dir: &Path) -> Result<NatsTls, NatsConfigError> {
    let Some(d) = doc else {
        return Ok(NatsTls::default());
    };
    let client_cert = match (&d.cert_file, &d.key_file) {
        (Some(c), Some(k)) => Some((
            existing_file(dir, "cert_file", c)?,
            existing_file(dir, "key_file", k)?,
        )),
        (None, None) => None,
        _ => return Err(NatsConfigError::CertWithoutKey),
    };
    Ok(NatsTls {
        required: d.required.unwrap_or(false),
        ca_file: d
            .ca_file
            .as_deref()
            .map(|f| existing_file(dir, "ca_file", f))
            .transpose()?,
        client_cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> OneOrMany<String> {
        OneOrMany::One(u.to_string())
    }

    #[test]
    fn one_way_of_authenticating_at_a_time() {
        let both = NatsCredentialsDoc {
            token: Some("t".into()),
            nkey_seed: Some("SU".into()),
            ..Default::default()
        };
        let e = endpoint(
            &url("nats://h:4222"),
            Some(&both),
            None,
            Path::new("."),
            "n".into(),
        );
        assert!(e.unwrap_err().to_string().contains("one of"));
        let half = NatsCredentialsDoc {
            user: Some("u".into()),
            ..Default::default()
        };
        let e = endpoint(
            &url("nats://h:4222"),
            Some(&half),
            None,
            Path::new("."),
            "n".into(),
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("both `user` and `password`"));
    }

    #[test]
    fn files_are_checked_and_resolved_against_the_pipeline_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let tls = NatsTlsDoc {
            required: Some(true),
            ca_file: Some("ca.pem".into()),
            ..Default::default()
        };
        let e = endpoint(
            &url("tls://h:4222"),
            None,
            Some(&tls),
            dir.path(),
            "n".into(),
        )
        .unwrap();
        assert_eq!(e.tls.ca_file, Some(dir.path().join("ca.pem")));
        assert!(e.tls.required);
        let missing = NatsCredentialsDoc {
            creds_file: Some("nope.creds".into()),
            ..Default::default()
        };
        let err = endpoint(
            &url("nats://h"),
            Some(&missing),
            None,
            dir.path(),
            "n".into(),
        );
        let err = err.unwrap_err();
        assert_eq!(err.kind(), weir_engine::ErrorKind::User);
        assert!(err.to_string().contains("is not a file"));
    }

    #[test]
    fn a_bad_server_url_keeps_the_clients_error() {
        let e = endpoint(&url("ftp://h:4222"), None, None, Path::new("."), "n".into());
        match e {
            Err(e @ NatsConfigError::Endpoint(_)) => {
                assert_eq!(e.kind(), weir_engine::ErrorKind::User);
                assert!(e.chain().starts_with("invalid NATS server URL"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn several_servers() {
        let urls = OneOrMany::Many(vec!["nats://a:4222".into(), "nats://b:4222".into()]);
        let e = endpoint(&urls, None, None, Path::new("."), "n".into()).unwrap();
        assert_eq!(e.servers.len(), 2);
    }
}
