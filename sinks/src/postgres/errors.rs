//! What a PostgreSQL error means for the sink, decided by its SQLSTATE class (never by the
//! text of its message, which the server translates).

/// How the sink reacts to an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The server or the connection failed (a restart, a dropped connection, too many
    /// clients, a deadlock): reconnect and make the same call again later.
    Retry(String),
    /// The server refused the rows for good (a constraint, a value out of range or of the
    /// wrong form): find the rows and send them to the dead-letter output.
    Refused { sqlstate: String, message: String },
    /// Anything else (a missing privilege, a table changed under the sink, bad
    /// credentials): the run fails.
    Fatal(String),
}

/// The fault of a SQLSTATE (five characters) with the server's message.
pub fn classify_sqlstate(sqlstate: &str, message: &str) -> Fault {
    let class = sqlstate.get(..2).unwrap_or("");
    let text = format!("{message} (SQLSTATE {sqlstate})");
    match class {
        // data exception (out of range, invalid text representation...), integrity
        // constraint violation (not null, check, unique, foreign key)
        "22" | "23" => Fault::Refused {
            sqlstate: sqlstate.to_string(),
            message: message.to_string(),
        },
        // program limit exceeded, by a row: an index entry larger than a btree page allows
        // (a key of a few kilobytes). The other class 54 errors (a statement too complex,
        // too many columns) are the sink's own and fail the run
        "54" if sqlstate == "54000" => Fault::Refused {
            sqlstate: sqlstate.to_string(),
            message: message.to_string(),
        },
        // connection exception, transaction rollback (serialization, deadlock), insufficient
        // resources (disk full, too many connections), operator intervention (shutdown,
        // cannot connect now), system error
        "08" | "40" | "53" | "57" | "58" => Fault::Retry(text),
        // lock not available, object in use
        "55" if sqlstate == "55P03" || sqlstate == "55006" => Fault::Retry(text),
        _ => Fault::Fatal(text),
    }
}

/// The fault of an error of the driver.
pub fn classify(e: &sqlx::Error) -> Fault {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => classify_sqlstate(&code, db.message()),
            None => Fault::Fatal(db.message().to_string()),
        },
        // a certificate the server's TLS does not pass (rustls reports it as invalid data)
        sqlx::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            ) =>
        {
            Fault::Fatal(e.to_string())
        }
        // the connection: refused, reset, closed by a restarting server, timed out
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Fault::Retry(e.to_string()),
        _ => Fault::Fatal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_the_data_and_constraint_classes() {
        for code in [
            "23514", "23505", "23502", "23503", "22003", "22P02", "22001", "54000",
        ] {
            assert!(
                matches!(classify_sqlstate(code, "m"), Fault::Refused { ref sqlstate, .. } if sqlstate == code),
                "{code}"
            );
        }
    }

    #[test]
    fn restarts_and_dropped_connections_are_retried() {
        for code in [
            "57P01", "57P03", "08006", "08001", "40001", "40P01", "53300", "53100", "55P03",
        ] {
            assert!(
                matches!(classify_sqlstate(code, "m"), Fault::Retry(_)),
                "{code}"
            );
        }
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(classify(&io), Fault::Retry(_)));
    }

    #[test]
    fn everything_else_fails_the_run() {
        for code in [
            "42P01", "42703", "42501", "28P01", "3D000", "25P02", "XX000", "55000", "54001",
        ] {
            assert!(
                matches!(classify_sqlstate(code, "m"), Fault::Fatal(_)),
                "{code}"
            );
        }
        assert_eq!(
            classify_sqlstate("42501", "permission denied for table t"),
            Fault::Fatal("permission denied for table t (SQLSTATE 42501)".into())
        );
        let tls = sqlx::Error::Tls("invalid peer certificate".into());
        assert!(matches!(classify(&tls), Fault::Fatal(_)));
        let cert = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ));
        assert!(matches!(classify(&cert), Fault::Fatal(_)));
    }
}
