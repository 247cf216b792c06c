//! Keeping one failing URL from holding the others back: what the sink remembers of the
//! URLs that failed (since when, and a `Retry-After`), and `give_up_after`, which sends the
//! requests of a URL failing too long (or rows failing too long) to the dead-letter output.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_engine::ErrorInfo;

use super::{public_url, Outcome, Request, WebhookSink};

/// What the sink remembers of a URL that failed: since when, until when it asked to be left
/// alone (a `Retry-After`), and how many rows it takes at most (a 413). A URL that answers
/// (2xx, or a refusal) has its failures forgotten, not its size.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct UrlHealth {
    pub(super) failing_since: Option<Instant>,
    /// Its latest failure to retry: a URL that has not failed for `give_up_after` is no
    /// longer failing (its clock starts again at its next failure).
    pub(super) last_failure: Option<Instant>,
    pub(super) not_before: Option<Instant>,
    /// The most rows a request to it carries since it answered 413 (halved at each).
    pub(super) row_cap: Option<usize>,
    /// Sends it answered since its `row_cap` was set or grew.
    pub(super) answered_at_cap: u32,
    /// When a request was last sent to it (which failing URLs go first at a send).
    pub(super) tried_at: Option<Instant>,
    /// Its rows were dead-lettered by `give_up_after`: it stays given up (no `Retry-After`
    /// waited, no clock started again) until it answers.
    pub(super) given_up: bool,
}

/// The error code of rows dead-lettered by `give_up_after`.
pub const UNDELIVERABLE: &str = "webhook_undeliverable";

/// The most URLs whose failures the sink remembers beyond those of pending rows.
const MAX_URL_HEALTH: usize = 10_000;

/// What one call learns of URLs as its requests are answered.
pub(super) struct Calls {
    /// No request to these URLs before then (`Retry-After`).
    pub(super) held: HashMap<Arc<str>, Instant>,
    /// URLs given up in this call: their other requests are refused unsent.
    pub(super) given_up: HashMap<Arc<str>, ErrorInfo>,
    /// URLs a request failed to (to retry) in this call.
    pub(super) failed: HashSet<Arc<str>>,
    /// URLs a request was sent to in this call.
    pub(super) tried: HashSet<Arc<str>>,
}

/// The most bytes of rows that URLs holding back with a `Retry-After` may keep pending while
/// the sink takes more rows for the other URLs (beyond, writes wait for them).
pub(super) const HELD_MAX_BYTES: usize = 64 << 20;

/// Sends a URL cut to smaller requests by a 413 answers before its requests grow back
/// (doubled, up to `batch_max_rows`).
const ANSWERS_TO_GROW: u32 = 16;

impl UrlHealth {
    /// After a send the URL answered: its size after a 413 doubles every
    /// [`ANSWERS_TO_GROW`] such sends (a receiver whose limit lies between two sizes sees a
    /// 413 that often, not at every send).
    pub(super) fn grow_row_cap(&mut self, max_rows: usize) {
        let Some(cap) = self.row_cap else {
            return;
        };
        self.answered_at_cap += 1;
        if self.answered_at_cap >= ANSWERS_TO_GROW {
            self.answered_at_cap = 0;
            self.row_cap = Some(cap * 2).filter(|&c| c < max_rows);
        }
    }
}

impl WebhookSink {
    /// Whether every pending row is one of a URL that asked to wait (`Retry-After`) and
    /// they hold at most [`HELD_MAX_BYTES`]: a write then need not wait for them.
    pub(super) fn only_held_rows_pending(&self) -> bool {
        self.held.0 == self.pending.rows.len() && self.pending.bytes.len() <= HELD_MAX_BYTES
    }

    /// Counts the pending rows of URLs that asked to wait (see [`Self::only_held_rows_pending`]);
    /// when they are all that is pending, the flush clock starts again: they make a write
    /// send at most every `flush_interval`.
    pub(super) fn count_held(&mut self, now: Instant) {
        let (mut rows, mut bytes) = (0, 0);
        for r in &self.pending.rows {
            let held = self.health.get(&r.url).and_then(|h| h.not_before);
            if held.is_some_and(|t| t > now) {
                rows += 1;
                bytes += r.end - r.start;
            }
        }
        self.held = (rows, bytes);
        if rows > 0 && rows == self.pending.rows.len() {
            self.pending.since = Some(now);
        }
    }

    /// Forgets the URLs that work again and whose `Retry-After` passed; beyond
    /// [`MAX_URL_HEALTH`] URLs, also the failing ones without pending rows (a URL failing
    /// again starts its clock again).
    pub(super) fn forget_health(&mut self, now: Instant) {
        let quiet = self.config.give_up_after.unwrap_or(Duration::ZERO);
        self.health.retain(|_, h| {
            // (not while it holds back: its wait is part of its failing)
            let held = h.not_before.is_some_and(|t| t > now);
            let quiet_long = h.last_failure.is_none_or(|t| now.duration_since(t) > quiet);
            if !held && !h.given_up && quiet_long {
                h.failing_since = None;
            }
            h.not_before = h.not_before.filter(|&t| t > now);
            h.failing_since.is_some() || h.not_before.is_some() || h.row_cap.is_some() || h.given_up
        });
        if self.health.len() > MAX_URL_HEALTH {
            // (URLs given up are kept longer: forgotten, they would hold the sink again)
            let pending: HashSet<&Arc<str>> = self.pending.rows.iter().map(|r| &r.url).collect();
            let keep_given_up = self.health.len() <= 4 * MAX_URL_HEALTH;
            self.health
                .retain(|url, h| pending.contains(url) || (keep_given_up && h.given_up));
        }
    }

    /// What becomes of a request to retry: its URL is held for a `Retry-After`; with
    /// `give_up_after`, it is refused (error code [`UNDELIVERABLE`]) when its URL has failed
    /// that long without an answer (the URL is then given up for the rest of the call: its other
    /// requests are refused unsent), or when rows it carries have (a request the receiver
    /// fails again and again while other requests go through).
    pub(super) fn judge(&self, req: &Request, outcome: Outcome, urls: &mut Calls) -> Outcome {
        let Outcome::Retry {
            reason,
            after,
            sent,
        } = &outcome
        else {
            return outcome;
        };
        if let Some(a) = after {
            urls.held.insert(req.url.clone(), Instant::now() + *a);
        }
        let given_up = self.health.get(&req.url).is_some_and(|h| h.given_up);
        if !sent && !given_up {
            // held by its URL's `Retry-After`: the receiver asked for that wait, which is
            // honoured before giving up (not after: a URL given up holds nothing back)
            return outcome;
        }
        match self.give_up(req, reason, urls) {
            Some(error) => Outcome::Refused(error),
            None => outcome,
        }
    }

    /// What becomes of a request deferred to a later send (its URL is failing and the send's
    /// time for failing URLs is spent): refused like a failure (see [`Self::judge`]) when its
    /// URL was given up or it failed for `give_up_after`, so that given-up URLs do not hold the
    /// checkpoints back; else [`Outcome::Deferred`].
    pub(super) fn judge_deferred(
        &self,
        req: &Request,
        reason: String,
        urls: &mut Calls,
    ) -> Outcome {
        match self.give_up(req, &reason, urls) {
            Some(error) => Outcome::Refused(error),
            None => Outcome::Deferred(reason),
        }
    }

    /// With `give_up_after`: the error of a request whose URL, or one of whose rows, has
    /// failed that long (`reason`: its last failure); its URL is then given up for the rest
    /// of the call.
    fn give_up(&self, req: &Request, reason: &str, urls: &mut Calls) -> Option<ErrorInfo> {
        let limit = self.config.give_up_after?;
        let since = |t: Option<Instant>| t.map_or(Duration::ZERO, |t| t.elapsed());
        let url_failing = since(self.health.get(&req.url).and_then(|h| h.failing_since));
        let rows_failing = req
            .rows
            .iter()
            .map(|&i| since(self.pending.rows[i].failing_since))
            .max()
            .unwrap_or_default();
        if url_failing.max(rows_failing) < limit {
            return None;
        }
        let url = public_url(&req.url);
        let what = if url_failing >= limit {
            format!("{url} has failed for {} s", url_failing.as_secs())
        } else {
            format!("these rows have failed for {} s", rows_failing.as_secs())
        };
        let error = ErrorInfo::new(
            UNDELIVERABLE,
            format!(
                "{what}, longer than `give_up_after` ({} s); last: {reason}",
                limit.as_secs()
            ),
        )
        .with("url", url)
        .with("failing_for_secs", url_failing.max(rows_failing).as_secs());
        if url_failing >= limit {
            urls.given_up.insert(req.url.clone(), error.clone());
        }
        Some(error)
    }
}
