//! The query limits of a pipeline's `serve:` section, with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use weir_query::subscribe::SubscribeLimits;
use weir_query::QueryLimits;

use crate::model::ServeDoc;

const MIB: u64 = 1 << 20;

/// The limits `serve:` sets; what it leaves out keeps [`QueryLimits::default`]. `path`
/// resolves a folder against the pipeline file's.
pub fn limits(d: &ServeDoc, path: impl Fn(&str) -> PathBuf) -> QueryLimits {
    let base = QueryLimits::default();
    let mib = |v: u64| usize::try_from(v.max(1).saturating_mul(MIB)).unwrap_or(usize::MAX);
    let count = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    QueryLimits {
        timeout: d
            .query_timeout
            .map_or(base.timeout, |t| Duration::from_millis(t.0.max(1))),
        memory_bytes: d.query_memory_mb.map_or(base.memory_bytes, mib),
        max_concurrent: d
            .max_queries
            .map_or(base.max_concurrent, |m| m.clamp(1, 1024) as usize),
        max_connections: d
            .max_connections
            .map_or(base.max_connections, |m| m.clamp(1, 65_536) as usize),
        max_sql_bytes: d
            .max_sql_bytes
            .map_or(base.max_sql_bytes, |b| count(b.max(64))),
        max_sql_terms: d.max_sql_terms.map_or(base.max_sql_terms, count),
        max_result_rows: d.max_result_rows.map_or(base.max_result_rows, count),
        max_result_bytes: d.max_result_mb.map_or(base.max_result_bytes, mib),
        spill_dir: d.spill_dir.as_deref().map(path),
        spill_max_bytes: d
            .spill_max_mb
            .map_or(base.spill_max_bytes, |m| m.saturating_mul(MIB)),
        max_failed_logins: d.max_failed_logins.map_or(base.max_failed_logins, |n| {
            n.clamp(1, u32::MAX as u64) as u32
        }),
        max_lockout: d
            .login_lockout
            .map_or(base.max_lockout, |t| Duration::from_millis(t.0)),
        subscribe: subscribe_limits(d),
    }
}

/// The limits of live subscriptions `serve:` sets (at least 1 each).
fn subscribe_limits(d: &ServeDoc) -> SubscribeLimits {
    let base = SubscribeLimits::default();
    let count = |v: Option<u64>, default: usize| {
        v.map_or(default, |v| usize::try_from(v.max(1)).unwrap_or(usize::MAX))
    };
    SubscribeLimits {
        max_subscriptions: count(d.max_subscriptions, base.max_subscriptions),
        max_per_client: count(d.max_subscriptions_per_token, base.max_per_client),
        buffer: count(d.subscription_buffer, base.buffer),
        retain_changes: count(d.subscription_retain, base.retain_changes),
        retain_bytes: d.subscription_retain_mb.map_or(base.retain_bytes, |m| {
            usize::try_from(m.max(1).saturating_mul(MIB)).unwrap_or(usize::MAX)
        }),
    }
}

/// One line on the limits, for `weir validate`.
pub fn describe(l: &QueryLimits) -> String {
    let spill = match &l.spill_dir {
        Some(dir) => format!(
            "spilling to {} (at most {} MiB)",
            dir.display(),
            l.spill_max_bytes / MIB
        ),
        None => "no spilling".to_string(),
    };
    format!(
        "queries limited to {} ms, {} MiB, {} at once, {} bytes of SQL with {} operators, \
         {} rows and {} MiB of result, {spill}; {} failed logins per address before a wait \
         of up to {} s",
        l.timeout.as_millis(),
        l.memory_bytes as u64 / MIB,
        l.max_concurrent,
        l.max_sql_bytes,
        l.max_sql_terms,
        l.max_result_rows,
        l.max_result_bytes as u64 / MIB,
        l.max_failed_logins,
        l.max_lockout.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_limits_keep_their_defaults_and_set_ones_apply() {
        let doc: ServeDoc = serde_saphyr::from_str(
            "http: 127.0.0.1:0\nmax_sql_bytes: 4096\nmax_result_mb: 2\nspill_dir: spill\nlogin_lockout: 5s\n",
        )
        .unwrap();
        let l = limits(&doc, |p| PathBuf::from("/base").join(p));
        assert_eq!(l.max_sql_bytes, 4096);
        assert_eq!(l.max_result_bytes, 2 << 20);
        assert_eq!(l.spill_dir, Some(PathBuf::from("/base/spill")));
        assert_eq!(l.max_lockout, Duration::from_secs(5));
        let d = QueryLimits::default();
        assert_eq!(l.max_sql_terms, d.max_sql_terms);
        assert_eq!(l.timeout, d.timeout);
        assert!(describe(&l).contains("4096 bytes of SQL"));
    }

    #[test]
    fn subscription_limits_apply_and_keep_their_defaults() {
        let doc: ServeDoc = serde_saphyr::from_str(
            "http: 127.0.0.1:0\nmax_subscriptions: 5\nsubscription_retain_mb: 2\nsubscription_buffer: 0\n",
        )
        .unwrap();
        let s = limits(&doc, |p| PathBuf::from(p)).subscribe;
        assert_eq!(s.max_subscriptions, 5);
        assert_eq!(s.retain_bytes, 2 << 20);
        assert_eq!(s.buffer, 1, "at least one");
        assert_eq!(s.retain_changes, SubscribeLimits::default().retain_changes);
    }
}
