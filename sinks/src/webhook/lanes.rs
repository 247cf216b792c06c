//! Cutting the pending rows into lanes of requests, and sending them: lanes of URLs that
//! work first, then those of failing URLs, which get a bounded share of each send.
//!
//! A URL that is down without answering (a blackholed tenant endpoint) costs `timeout` per
//! request. With many such URLs, sending them all at every send would make one send last
//! minutes, hold the rows of the URLs that work behind them, and make a stop wait as long.
//! So the lanes of failing URLs go last, oldest attempt first, and none is started once
//! [`WebhookSink::failing_budget`] has passed since the first of them started: the rest
//! wait for a later send (their rows stay pending; the call fails as unavailable and the
//! retry policy sends again; a URL given up has its rows dead-lettered instead), and the
//! next send starts with the URLs this one did not reach.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::give_up::Calls;
use super::{body, public_url, Batching, Lane, Outcome, Request, WebhookSink};

/// Where a lane goes in a send: lanes of URLs that work first (`None`), then those of
/// failing URLs by their latest attempt, the oldest (or never tried) first.
type LaneRank = Option<Option<Instant>>;

impl WebhookSink {
    /// How long one send starts requests to URLs that are failing (known from earlier sends,
    /// or failed in this one), from the first of them: the request `timeout` (at least one
    /// second). A send then lasts at most the time its working URLs take, plus about twice
    /// `timeout`; the first failing URL in line is tried at every send.
    pub(super) fn failing_budget(&self) -> Duration {
        self.config.timeout.max(Duration::from_secs(1))
    }

    /// Whether `url` is failing: it failed at an earlier send and has not answered since
    /// (or was given up).
    fn failing(&self, url: &Arc<str>) -> bool {
        self.health
            .get(url)
            .is_some_and(|h| h.failing_since.is_some() || h.given_up)
    }

    /// The rank of `lane` in a send (see [`LaneRank`]): a lane with a failing URL among its
    /// requests goes with the failing ones.
    fn rank(&self, lane: &Lane) -> LaneRank {
        lane.iter()
            .filter(|r| self.failing(&r.url))
            .map(|r| self.health.get(&r.url).and_then(|h| h.tried_at))
            .min()
    }

    /// The lanes of the pending rows: per URL (in order of first appearance), the rows of
    /// each of `max_in_flight` lanes (by a hash of their key), cut by rows and bytes. A URL
    /// that names `window_start` sends one key's windows to several URLs, which must still
    /// arrive one after the other: its lanes go by the key's hash alone, each a sequence of
    /// requests to the URLs of its rows in turn.
    pub(super) fn lanes(&self) -> Vec<Lane> {
        let lanes = self.config.max_in_flight.max(1) as u64;
        let by_key_alone = self.config.url.columns().contains(&"window_start");
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut index: HashMap<(Option<Arc<str>>, u64), usize> = HashMap::new();
        for (i, r) in self.pending.rows.iter().enumerate() {
            let url = (!by_key_alone).then(|| r.url.clone());
            let k = *index.entry((url, r.lane % lanes)).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[k].push(i);
        }
        let max_rows = match self.config.batching {
            Batching::Single => 1,
            Batching::Array => self.config.batch_max_rows,
        };
        let mut lanes: Vec<Lane> = groups
            .into_iter()
            .map(|rows| {
                let mut lane = Vec::new();
                // runs of one URL, in the rows' order
                for run in
                    rows.chunk_by(|&a, &b| self.pending.rows[a].url == self.pending.rows[b].url)
                {
                    let url = self.pending.rows[run[0]].url.clone();
                    // (a URL that answered 413 takes smaller requests)
                    let max_rows = self
                        .health
                        .get(&url)
                        .and_then(|h| h.row_cap)
                        .map_or(max_rows, |cap| cap.min(max_rows));
                    let sizes: Vec<usize> = run
                        .iter()
                        .map(|&i| self.pending.rows[i].end - self.pending.rows[i].start)
                        .collect();
                    lane.extend(
                        body::cut(&sizes, max_rows, self.config.batch_max_bytes)
                            .into_iter()
                            .map(|range| Request {
                                url: url.clone(),
                                rows: run[range].to_vec(),
                            }),
                    );
                }
                lane
            })
            .collect();
        lanes.sort_by_cached_key(|lane| self.rank(lane));
        lanes
    }

    /// Sends the requests of `lanes`, up to `max_in_flight` lanes at a time, each lane one
    /// request at a time in order: after an answer asking to wait (408, 429, 5xx, 401, 403,
    /// no answer), the rest of its lane is not sent (an outcome to retry as well), so a
    /// key's later rows never overtake its earlier ones; other lanes go on. A URL that asked
    /// to wait (`Retry-After`) is sent nothing more until then, and one given up (see
    /// [`Self::judge`]) nothing more in this call. Once [`Self::failing_budget`] has passed
    /// since the first request to a failing URL started, the other requests to failing URLs
    /// are deferred ([`Outcome::Deferred`]) with the rest of their lanes. Outcomes in the order of `lanes.iter().flatten()`, and
    /// the URLs requests were sent to.
    pub(super) fn send_all(&self, lanes: &[Lane]) -> (Vec<Outcome>, HashSet<Arc<str>>) {
        // the workers are futures polled by one thread
        let next = &Cell::new(0usize);
        // when the first request to a failing URL started: the budget's clock
        let (failing_from, budget) = (&Cell::new(None), self.failing_budget());
        // (a URL given up holds nothing back: it is tried at each send)
        let held: HashMap<Arc<str>, Instant> = self
            .health
            .iter()
            .filter(|(_, h)| !h.given_up)
            .filter_map(|(url, h)| Some((url.clone(), h.not_before?)))
            .collect();
        let calls = RefCell::new(Calls {
            held,
            given_up: HashMap::new(),
            failed: HashSet::new(),
            tried: HashSet::new(),
        });
        let urls = &calls;
        // a worker takes one lane at a time and sends its requests in order
        let work = || async move {
            let mut done = Vec::new();
            loop {
                let i = next.replace(next.get() + 1);
                let Some(lane) = lanes.get(i) else {
                    return done;
                };
                let mut out = Vec::with_capacity(lane.len());
                for req in lane {
                    // (after a request that waits, the rest of its lane waits too)
                    let outcome = if matches!(
                        out.last(),
                        Some(Outcome::Retry { .. } | Outcome::TooLarge(_) | Outcome::Deferred(_))
                    ) {
                        Outcome::Retry {
                            reason: "not sent: an earlier request of its lane waits".into(),
                            after: None,
                            sent: false,
                        }
                    } else {
                        self.request(req, urls, failing_from, budget).await
                    };
                    out.push(outcome);
                }
                done.push((i, out));
            }
        };
        let workers = self.config.max_in_flight.clamp(1, lanes.len().max(1));
        let finished = self
            .runtime
            .block_on(futures::future::join_all((0..workers).map(|_| work())));
        let mut outcomes: Vec<Vec<Outcome>> = lanes.iter().map(|_| Vec::new()).collect();
        for (i, out) in finished.into_iter().flatten() {
            outcomes[i] = out;
        }
        (
            outcomes.into_iter().flatten().collect(),
            calls.into_inner().tried,
        )
    }

    /// What becomes of one request of a send (see [`Self::send_all`]): refused unsent when its
    /// URL was given up in this call, held by its URL's `Retry-After`, deferred (or given up:
    /// see [`Self::judge_deferred`]) when its URL is failing and the send's time for failing
    /// URLs, counted from `failing_from`, is spent, else sent.
    async fn request(
        &self,
        req: &Request,
        urls: &RefCell<Calls>,
        failing_from: &Cell<Option<Instant>>,
        budget: Duration,
    ) -> Outcome {
        let given_up = urls.borrow().given_up.get(&req.url).cloned();
        if let Some(error) = given_up {
            return Outcome::Refused(error);
        }
        let now = Instant::now();
        let hold = urls.borrow().held.get(&req.url).copied();
        if let Some(t) = hold.filter(|&t| t > now) {
            let outcome = Outcome::Retry {
                reason: format!(
                    "not sent: {} asked to wait (Retry-After)",
                    public_url(&req.url)
                ),
                after: Some(t - now),
                sent: false,
            };
            return self.judge(req, outcome, &mut urls.borrow_mut());
        }
        let failing = self.failing(&req.url) || urls.borrow().failed.contains(&req.url);
        if failing {
            let from = failing_from.get().unwrap_or(now);
            failing_from.set(Some(from));
            if now.duration_since(from) >= budget {
                let reason = format!(
                    "not sent: {} is failing, and this send gave failing URLs their {} s; \
                     it goes first at a later send",
                    public_url(&req.url),
                    budget.as_secs()
                );
                return self.judge_deferred(req, reason, &mut urls.borrow_mut());
            }
        }
        urls.borrow_mut().tried.insert(req.url.clone());
        let outcome = self.send(req).await;
        if matches!(outcome, Outcome::Retry { sent: true, .. }) {
            urls.borrow_mut().failed.insert(req.url.clone());
        }
        self.judge(req, outcome, &mut urls.borrow_mut())
    }
}
