//! What an answer means for the rows a request carried: delivered, to send again (and
//! when), or refused for good; `Retry-After` parsing.

use std::time::{Duration, SystemTime};

/// How long a `Retry-After` may hold deliveries back (a longer one is cut to this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Bytes of a refusing answer's body kept in its dead letters.
pub const BODY_KEPT: usize = 1024;

/// What to do with the rows of a request after its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx: delivered.
    Delivered,
    /// 408, 429 and 5xx: sent again under the retry policy.
    Retry,
    /// 401 and 403: the receiver refuses the sink itself (a secret or token it does not
    /// accept, a rotated secret), not its rows: a failure of the sink, sent again under the
    /// retry policy (its circuit opens, sources slow down) until the credentials are fixed.
    Unauthorized,
    /// Any other answer (other 4xx, 3xx, 1xx): the rows go to the dead-letter output.
    Refused,
}

/// The class of a status code.
pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Delivered,
        408 | 429 | 500..=599 => Class::Retry,
        401 | 403 => Class::Unauthorized,
        _ => Class::Refused,
    }
}

/// The index in `weir_engine::stats::DELIVERY_FAILURE_CLASSES` of a failed answer's status
/// (`None` for no answer at all: the connection class, 0; a status outside 3xx, 4xx and
/// 5xx: `other`, 4).
pub fn failure_class(status: Option<u16>) -> usize {
    match status {
        None => 0,
        Some(300..=399) => 1,
        Some(400..=499) => 2,
        Some(500..=599) => 3,
        Some(_) => 4,
    }
}

/// The wait a `Retry-After` value asks for, at `now`: delay-seconds or an HTTP date (RFC
/// 9110: IMF-fixdate, and the obsolete RFC 850 and asctime forms); `None` when it cannot be
/// read. Capped at [`MAX_RETRY_AFTER`]; a date in the past is no wait.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    let wait = if v.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX).min(1 << 32))
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok().or_else(|| {
            // IMF-fixdate ends in `GMT`, which RFC 2822 parsing takes; the RFC 850 form
            // (`Sunday, 06-Nov-94 08:49:37 GMT`) is read as well
            chrono::NaiveDateTime::parse_from_str(v, "%A, %d-%b-%y %H:%M:%S GMT")
                .ok()
                // asctime (`Sun Nov  6 08:49:37 1994`), in UTC as RFC 9110 says
                .or_else(|| chrono::NaiveDateTime::parse_from_str(v, "%a %b %e %H:%M:%S %Y").ok())
                .map(|t| t.and_utc().fixed_offset())
        })?;
        let at =
            SystemTime::UNIX_EPOCH + Duration::from_millis(at.timestamp_millis().max(0) as u64);
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Whether an answer's header (a lowercase name) carries credentials (cookies, tokens),
/// whose values dead letters mask.
pub fn is_credential(name: &str) -> bool {
    matches!(
        name,
        "set-cookie" | "set-cookie2" | "authorization" | "proxy-authorization" | "cookie"
    ) || ["token", "api-key", "apikey", "secret", "session"]
        .iter()
        .any(|part| name.contains(part))
        || name.ends_with("-key")
}

/// The first [`BODY_KEPT`] bytes of a body as text (cut at a character boundary).
pub fn body_head(body: &[u8]) -> String {
    let head = &body[..body.len().min(BODY_KEPT)];
    match std::str::from_utf8(head) {
        Ok(s) => s.to_string(),
        Err(e) => {
            let valid = &head[..e.valid_up_to()];
            // a character cut by the limit is dropped; other bad bytes are replaced
            if head.len() - e.valid_up_to() < 4 && body.len() > BODY_KEPT {
                String::from_utf8_lossy(valid).into_owned()
            } else {
                String::from_utf8_lossy(head).into_owned()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_delivered_retried_or_refused() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify(s), Class::Delivered, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify(s), Class::Retry, "{s}");
        }
        for s in [100, 301, 302, 307, 400, 404, 409, 410, 413, 422, 451] {
            assert_eq!(classify(s), Class::Refused, "{s}");
        }
        // the receiver refuses the sink's credentials: a failure of the sink, not of rows
        assert_eq!(classify(401), Class::Unauthorized);
        assert_eq!(classify(403), Class::Unauthorized);
        assert_eq!(failure_class(None), 0);
        assert_eq!(failure_class(Some(302)), 1);
        assert_eq!(failure_class(Some(429)), 2);
        assert_eq!(failure_class(Some(401)), 2);
        assert_eq!(failure_class(Some(503)), 3);
        // 1xx is no 5xx
        assert_eq!(failure_class(Some(101)), 4);
        assert_eq!(
            weir_engine::stats::DELIVERY_FAILURE_CLASSES[failure_class(Some(101))],
            "other"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06 08:49:37 UTC
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after("Sunday, 06-Nov-94 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        // asctime, with its space-padded day
        assert_eq!(
            retry_after("Sun Nov  6 08:49:57 1994", now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            retry_after("Thu Nov 10 08:49:37 1994", now),
            Some(MAX_RETRY_AFTER)
        );
        // a date gone by: no wait
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "soon", "-1", "1.5", "Sun, 99 Nov 1994"] {
            assert_eq!(retry_after(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn credentials_in_answer_headers_are_told_apart() {
        for h in [
            "set-cookie",
            "authorization",
            "x-auth-token",
            "x-api-key",
            "x-client-secret",
        ] {
            assert!(is_credential(h), "{h}");
        }
        for h in [
            "content-type",
            "retry-after",
            "x-request-id",
            "www-authenticate",
        ] {
            assert!(!is_credential(h), "{h}");
        }
    }

    #[test]
    fn only_the_first_kib_of_a_body_is_kept() {
        assert_eq!(body_head(b"bad row"), "bad row");
        let long = "€".repeat(500); // 1500 bytes, a character cut at 1024
        let head = body_head(long.as_bytes());
        assert_eq!(head.len(), 1023);
        assert!(head.chars().all(|c| c == '€'));
        assert_eq!(body_head(&[b'a'; 5000]).len(), BODY_KEPT);
    }
}
