//! The subscription hub: one thread that turns new snapshots into change logs, the
//! subscriptions that read them, and the limits and drops.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use tokio::sync::{watch, Notify};
use weir_engine::live::{LiveKind, LiveSnapshot, LiveState};

use super::conn::{Switch, Switches};
use super::diff::{diff, Changes, Op, Side};
use super::filter::{Compiler, Filter};
use super::log::{change_message, json_array, json_lines, ChangeLog, Entry, Resume};
use super::{Request, SubscribeError, SubscribeLimits, CUT_AFTER};
use crate::engine::QueryEngine;

/// How often the hub looks for a new snapshot (the shortest `serve.refresh` is 50 ms).
const POLL: Duration = Duration::from_millis(20);

/// A table without subscribers for this long is no longer followed (its log is dropped).
const UNTRACK_AFTER: Duration = Duration::from_secs(60);

/// Entries a subscriber takes from the log at a time, and messages it sends at a time.
const TAKE_ENTRIES: usize = 16;
const MAX_MESSAGES: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Who a subscription counts against for `max_subscriptions_per_token`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// The token (the endpoint has one token).
    Token,
    /// The client's address, without a token.
    Address(IpAddr),
}

/// The tracked state of one table.
struct Tracked {
    /// The snapshot the log is up to (its rows are the state at the log's head).
    prev: Arc<LiveSnapshot>,
    log: ChangeLog,
    finished: bool,
}

/// One table's feed.
struct Feed {
    /// `None` until the table's first subscription.
    state: Mutex<Option<Tracked>>,
    /// (head, finished), sent after each append.
    head: watch::Sender<(u64, bool)>,
    subscribers: Mutex<Vec<Arc<Handle>>>,
    /// When its last subscriber left (it is untracked [`UNTRACK_AFTER`] later).
    idle_since: Mutex<Option<Instant>>,
    /// The newest position given, kept while the table is not followed.
    last_head: AtomicU64,
}

const LIVE: u8 = 0;
const BEHIND: u8 = 1;
const CLOSED: u8 = 2;

/// What the hub and a subscription share.
struct Handle {
    /// The newest position the subscription has handed to its connection.
    cursor: AtomicU64,
    state: AtomicU8,
    wake: Notify,
    switch: Option<Arc<Switch>>,
}

/// Subscriptions of a run's tables.
pub struct Hub {
    engine: Arc<QueryEngine>,
    live: Arc<LiveState>,
    limits: SubscribeLimits,
    /// Positions of this run start after it.
    base: u64,
    feeds: Vec<Feed>,
    compiler: Compiler,
    clients: Mutex<(usize, HashMap<Client, usize>)>,
    /// The HTTP connections, to cut those of subscribers that fell behind.
    pub switches: Arc<Switches>,
    cuts: Mutex<Vec<(Instant, Arc<Switch>)>>,
    started: Once,
    /// Held while a tick diffs: one diff per snapshot and table.
    ticking: Mutex<()>,
    untrack_after: Duration,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("base", &self.base).finish()
    }
}

impl Hub {
    /// A hub over the engine's live state; positions start at `1000 × now (Unix ms)`.
    pub fn new(engine: Arc<QueryEngine>, limits: SubscribeLimits) -> Arc<Self> {
        Self::build(engine, limits, UNTRACK_AFTER)
    }

    fn build(
        engine: Arc<QueryEngine>,
        limits: SubscribeLimits,
        untrack_after: Duration,
    ) -> Arc<Self> {
        let live = engine.live().clone();
        let base = (weir_engine::time::now_ms().max(0) as u64).saturating_mul(1000);
        let feeds = live
            .tables
            .iter()
            .map(|_| Feed {
                state: Mutex::new(None),
                head: watch::channel((base, false)).0,
                subscribers: Mutex::new(Vec::new()),
                idle_since: Mutex::new(None),
                last_head: AtomicU64::new(base),
            })
            .collect();
        Arc::new(Hub {
            compiler: Compiler::new(engine.limits().memory_bytes),
            engine,
            live,
            limits,
            base,
            feeds,
            clients: Mutex::new((0, HashMap::new())),
            switches: Arc::new(Switches::default()),
            cuts: Mutex::new(Vec::new()),
            started: Once::new(),
            ticking: Mutex::new(()),
            untrack_after,
        })
    }

    /// The position before this run's first change.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn stats(&self) -> &super::SubscriptionStats {
        &self.engine.stats.subscriptions
    }

    /// Starts the hub's thread (once); it stops when the hub is dropped.
    fn start(self: &Arc<Self>) {
        self.started.call_once(|| {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("weir-subscribe".into())
                .spawn(move || run(weak));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the subscription hub");
            }
        });
    }

    /// Opens a subscription of `client` on the connection from `peer`.
    pub fn subscribe(
        self: &Arc<Self>,
        req: &Request,
        client: Client,
        peer: SocketAddr,
    ) -> Result<Subscription, SubscribeError> {
        let table = self.table(&req.table)?;
        if self.live.starting() {
            return Err(SubscribeError::Starting);
        }
        let filter = match &req.filter {
            Some(sql) => {
                crate::limits::check_text(sql, self.engine.limits())?;
                Some(
                    self.compiler
                        .compile(sql, &self.live.tables[table].schema)?,
                )
            }
            None => None,
        };
        let window = matches!(self.live.tables[table].kind, LiveKind::Window { .. });
        let slot = self.take_slot(&client)?;
        self.start();
        let feed = &self.feeds[table];
        let mut state = lock(&feed.state);
        let tracked = state.get_or_insert_with(|| {
            let current = self.live.current();
            let head = feed.last_head.load(Ordering::Acquire);
            feed.head.send_replace((head, current.finished));
            Tracked {
                finished: current.finished,
                prev: current,
                log: ChangeLog::new(head, self.limits.retain_changes, self.limits.retain_bytes)
                    .since(self.base),
            }
        });
        let (prev, head) = (tracked.prev.clone(), tracked.log.head());
        let cursor = match req.from {
            Some(p) => match tracked.log.resume(p) {
                Resume::Ok => p,
                Resume::Expired { oldest } => {
                    return Err(SubscribeError::Expired {
                        position: p,
                        oldest,
                    })
                }
                Resume::Unknown { head } => {
                    return Err(SubscribeError::Unknown { position: p, head })
                }
            },
            None => head,
        };
        let handle = Arc::new(Handle {
            cursor: AtomicU64::new(cursor),
            state: AtomicU8::new(LIVE),
            wake: Notify::new(),
            switch: self.switches.get(&peer),
        });
        lock(&feed.subscribers).push(handle.clone());
        drop(state);
        let mut sub = Subscription {
            hub: self.clone(),
            table,
            filter,
            open: req.open,
            handle,
            rx: feed.head.subscribe(),
            first: None,
            _slot: slot,
            ended: false,
        };
        sub.rx.mark_changed();
        if req.snapshot {
            let open = req.open || !window;
            sub.first = Some(self.snapshot(&prev, head, table, sub.filter.as_ref(), open)?);
        }
        Ok(sub)
    }

    fn table(&self, name: &str) -> Result<usize, SubscribeError> {
        self.live
            .table(name)
            .ok_or_else(|| SubscribeError::UnknownTable {
                name: name.to_string(),
                tables: self
                    .live
                    .tables
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Counts a new subscription against the limits, until the slot is dropped.
    fn take_slot(self: &Arc<Self>, client: &Client) -> Result<Slot, SubscribeError> {
        let mut c = lock(&self.clients);
        if c.0 >= self.limits.max_subscriptions {
            return Err(SubscribeError::TooMany {
                max: self.limits.max_subscriptions,
            });
        }
        let mine = c.1.entry(client.clone()).or_default();
        if *mine >= self.limits.max_per_client {
            return Err(SubscribeError::TooManyForClient {
                max: self.limits.max_per_client,
            });
        }
        *mine += 1;
        c.0 += 1;
        self.stats().subscribers.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            hub: self.clone(),
            client: client.clone(),
        })
    }

    fn give_back(&self, client: &Client) {
        let mut c = lock(&self.clients);
        c.0 = c.0.saturating_sub(1);
        if let Some(n) = c.1.get_mut(client) {
            *n -= 1;
            if *n == 0 {
                c.1.remove(client);
            }
        }
        self.stats().subscribers.fetch_sub(1, Ordering::Relaxed);
    }

    /// The snapshot message: the rows at the log's head (matching `filter`; windows' open
    /// rows only with `open`), within the result limits of `/sql`.
    fn snapshot(
        &self,
        prev: &LiveSnapshot,
        head: u64,
        table: usize,
        filter: Option<&Filter>,
        open: bool,
    ) -> Result<String, SubscribeError> {
        let mut rows: Vec<RecordBatch> = Vec::new();
        let limits = self.engine.limits();
        let (mut n, mut bytes) = (0usize, 0usize);
        for b in prev.tables.get(table).into_iter().flatten() {
            let mut keep = vec![true; b.num_rows()];
            if !open && !super::diff::is_final(b) {
                continue;
            }
            if let Some(f) = filter {
                keep = f.matches(b).map_err(SubscribeError::Where)?;
            }
            let mask = arrow::array::BooleanArray::from(keep);
            let b = arrow::compute::filter_record_batch(b, &mask)
                .map_err(|e| SubscribeError::Internal(e.to_string()))?;
            n += b.num_rows();
            bytes += b.get_array_memory_size();
            if n > limits.max_result_rows || bytes > limits.max_result_bytes {
                return Err(SubscribeError::SnapshotTooLarge(format!(
                    "the snapshot has more than {} rows or {} bytes (serve.max_result_rows, \
                     serve.max_result_mb); narrow it with `where`, or subscribe without \
                     snapshot=true",
                    limits.max_result_rows, limits.max_result_bytes
                )));
            }
            rows.push(b);
        }
        let json = json_array(&rows).map_err(|e| SubscribeError::Internal(e.to_string()))?;
        Ok(format!(
            "{{\"op\":\"snapshot\",\"position\":{head},\"rows\":{json}}}"
        ))
    }

    /// Brings every tracked table up to the newest snapshot.
    fn tick(&self) {
        let _one = lock(&self.ticking);
        let snap = self.live.current();
        for (i, feed) in self.feeds.iter().enumerate() {
            let prev = match &*lock(&feed.state) {
                Some(t) if !Arc::ptr_eq(&t.prev, &snap) => t.prev.clone(),
                _ => continue,
            };
            let def = &self.live.tables[i];
            let changes = diff(def, &side(&prev, i), &side(&snap, i));
            self.advance(i, &snap, changes);
        }
        self.cut_due();
    }

    /// Appends the changes of table `i` up to `snap` and tells its subscribers.
    fn advance(
        &self,
        i: usize,
        snap: &Arc<LiveSnapshot>,
        changes: Result<Changes, arrow::error::ArrowError>,
    ) {
        let feed = &self.feeds[i];
        let name = &self.live.tables[i].name;
        // the changes are encoded outside the lock that subscribers' reads take (on the
        // SQL server's threads): only this thread appends, so the head stays where it was
        let Some(head_before) = lock(&feed.state).as_ref().map(|t| t.log.head()) else {
            return;
        };
        let prepared = changes.and_then(|c| {
            let n = c.len();
            ChangeLog::entry(head_before + 1, c).map(|e| (e, n))
        });
        let mut guard = lock(&feed.state);
        let Some(t) = guard.as_mut() else { return };
        // a subscriber has until the next snapshot to read this one's changes: it is behind
        // when it has not read those of the snapshots before, up to its buffer
        let read_by_now = t.log.head();
        let appended = prepared.and_then(|(entry, n)| {
            if t.log.head() != head_before {
                // the table was followed anew meanwhile: its subscribers start again
                return Err(arrow::error::ArrowError::ComputeError(
                    "the change log was started again while changes were encoded".into(),
                ));
            }
            if let Some(entry) = entry {
                t.log.push(entry);
            }
            Ok(n)
        });
        match appended {
            Ok(n) => self.stats().add_changes(name, n),
            Err(e) => {
                // the changes are lost: every subscriber must start again
                tracing::error!(table = %name, error = %e, "subscription changes failed");
                t.log = ChangeLog::new(
                    t.log.head() + 1,
                    self.limits.retain_changes,
                    self.limits.retain_bytes,
                );
            }
        }
        t.prev = snap.clone();
        t.finished = snap.finished;
        let (head, oldest, finished) = (t.log.head(), t.log.oldest(), t.finished);
        drop(guard);
        feed.head.send_replace((head, finished));
        let mut subs = lock(&feed.subscribers);
        subs.retain(|h| h.state.load(Ordering::Acquire) != CLOSED);
        for h in subs.iter() {
            let cursor = h.cursor.load(Ordering::Acquire);
            let behind =
                read_by_now.saturating_sub(cursor) > self.limits.buffer as u64 || cursor < oldest;
            if behind && h.state.load(Ordering::Acquire) == LIVE {
                h.state.store(BEHIND, Ordering::Release);
                h.wake.notify_one();
                self.stats().dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(s) = &h.switch {
                    lock(&self.cuts).push((Instant::now() + CUT_AFTER, s.clone()));
                }
            }
        }
        let idle = subs.is_empty();
        drop(subs);
        self.untrack_if_idle(i, idle, head);
    }

    /// Stops following table `i` once it has had no subscriber for `untrack_after`.
    fn untrack_if_idle(&self, i: usize, idle: bool, head: u64) {
        let feed = &self.feeds[i];
        let mut since = lock(&feed.idle_since);
        if !idle {
            *since = None;
            return;
        }
        let at = *since.get_or_insert_with(Instant::now);
        if at.elapsed() < self.untrack_after {
            return;
        }
        // a subscription registers under the state lock: none can come in between
        let mut state = lock(&feed.state);
        if lock(&feed.subscribers).is_empty() {
            feed.last_head.store(head, Ordering::Release);
            *state = None;
            *since = None;
            tracing::debug!(table = %self.live.tables[i].name, "no subscriber: not followed");
        }
    }

    /// Cuts the connections of dropped subscribers whose time to read is over.
    fn cut_due(&self) {
        let now = Instant::now();
        let mut cuts = lock(&self.cuts);
        cuts.retain(|(at, s)| {
            if *at <= now {
                s.cut();
                false
            } else {
                true
            }
        });
    }
}

/// Table `i` of a snapshot.
fn side(s: &LiveSnapshot, i: usize) -> Side<'_> {
    Side {
        batches: s.tables.get(i).map_or(&[][..], |b| b.as_slice()),
    }
}

fn run(hub: Weak<Hub>) {
    loop {
        std::thread::sleep(POLL);
        let Some(hub) = hub.upgrade() else { return };
        // a bug in a diff must not end every subscription: the tick is tried again
        let ticked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hub.tick()));
        if ticked.is_err() {
            tracing::error!("the subscription hub failed a tick (a panic, logged); it goes on");
        }
    }
}

/// What a subscription sends next.
#[derive(Debug)]
pub enum Next {
    /// Messages, in order.
    Messages(Vec<String>),
    /// The final message; the subscription is over.
    End(String),
}

/// An open subscription; dropping it closes it.
pub struct Subscription {
    hub: Arc<Hub>,
    table: usize,
    filter: Option<Filter>,
    open: bool,
    handle: Arc<Handle>,
    rx: watch::Receiver<(u64, bool)>,
    /// The snapshot message, sent first.
    pub first: Option<String>,
    _slot: Slot,
    ended: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.handle.state.store(CLOSED, Ordering::Release);
    }
}

/// A subscription counted against the limits.
struct Slot {
    hub: Arc<Hub>,
    client: Client,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hub.give_back(&self.client);
    }
}

fn error_message(code: &str, message: &str, position: u64) -> String {
    serde_json::json!({"error": {"code": code, "message": message}, "position": position})
        .to_string()
}

impl Subscription {
    /// The position of the last change handed over.
    pub fn position(&self) -> u64 {
        self.handle.cursor.load(Ordering::Acquire)
    }

    fn fell_behind(&self) -> String {
        error_message(
            "fell_behind",
            &format!(
                "this subscriber fell more than {} changes behind (serve.subscription_buffer) \
                 and is disconnected; resume with from={} while it is retained, or subscribe \
                 again with snapshot=true",
                self.hub.limits.buffer,
                self.position()
            ),
            self.position(),
        )
    }

    /// Waits for the next messages (cancel-safe: nothing is taken before it returns).
    pub async fn next(&mut self) -> Next {
        if self.ended {
            return std::future::pending().await;
        }
        loop {
            if self.handle.state.load(Ordering::Acquire) != LIVE {
                self.ended = true;
                return Next::End(self.fell_behind());
            }
            let (_, finished) = *self.rx.borrow_and_update();
            let cursor = self.position();
            let taken = {
                let state = lock(&self.hub.feeds[self.table].state);
                match state.as_ref() {
                    Some(t) => t.log.after(cursor, TAKE_ENTRIES).map(|e| (e, t.log.head())),
                    None => Ok((Vec::new(), cursor)),
                }
            };
            let (entries, head) = match taken {
                Ok(x) => x,
                Err(_) => {
                    self.ended = true;
                    return Next::End(self.fell_behind());
                }
            };
            if !entries.is_empty() {
                match self.messages(&entries, cursor) {
                    Ok(m) if m.is_empty() => continue,
                    Ok(m) => return Next::Messages(m),
                    Err(e) => {
                        self.ended = true;
                        return Next::End(error_message("where_failed", &e, self.position()));
                    }
                }
            }
            if finished && cursor >= head {
                self.ended = true;
                return Next::End(format!("{{\"op\":\"finished\",\"position\":{head}}}"));
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        // the hub is gone: the server stops
                        return std::future::pending().await;
                    }
                }
                _ = self.handle.wake.notified() => {}
            }
        }
    }

    /// The messages of `entries` after `cursor`, filtered; advances the cursor over every
    /// change looked at.
    fn messages(&mut self, entries: &[Arc<Entry>], mut cursor: u64) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for e in entries {
            let start = cursor.saturating_sub(e.first - 1) as usize;
            if start >= e.len() {
                continue;
            }
            // the filter sees only the rows not read yet, at most a batch of them: a large
            // entry read a batch at a time costs its size once, not once per batch
            let end = e.len().min(start + MAX_MESSAGES);
            let (new, old) = match &self.filter {
                Some(f) => (
                    Some(f.matches(&e.rows.slice(start, end - start))?),
                    e.old
                        .as_ref()
                        .map(|o| f.matches(&o.slice(start, end - start)))
                        .transpose()?,
                ),
                None => (None, None),
            };
            for i in start..end {
                let matches = new.as_ref().is_none_or(|m| m[i - start]);
                let matched = old.as_ref().is_some_and(|m| m[i - start]);
                match e.ops[i] {
                    Op::Update if !self.open => {}
                    _ if matches => out.push(e.message(i).to_string()),
                    // the row no longer matches: to this subscriber, it left
                    Op::Upsert if matched => {
                        let row = e.old.as_ref().map(|o| o.slice(i, 1));
                        let json = row.map(|r| json_lines(&r)).transpose();
                        let json = json.map_err(|e| e.to_string())?.unwrap_or_default();
                        let mut m = String::new();
                        change_message(&mut m, Op::Delete, e.first + i as u64, &json);
                        out.push(m);
                    }
                    _ => {}
                }
                cursor = e.first + i as u64;
                if out.len() >= MAX_MESSAGES {
                    break;
                }
            }
            if out.len() >= MAX_MESSAGES || end < e.len() {
                // the rest of this entry (or the next entries) at the next call
                break;
            }
        }
        self.handle.cursor.store(cursor, Ordering::Release);
        Ok(out)
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use weir_engine::live::LiveTableDef;

    pub fn hub(limits: SubscribeLimits) -> (Arc<LiveState>, Arc<Hub>) {
        hub_with(limits, UNTRACK_AFTER)
    }

    pub async fn wait_for(done: impl Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(5), "not within 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn hub_with(limits: SubscribeLimits, untrack: Duration) -> (Arc<LiveState>, Arc<Hub>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let live = Arc::new(LiveState::new(
            "p",
            vec![LiveTableDef::new(
                "v",
                LiveKind::View,
                &schema,
                vec!["k".into()],
            )],
        ));
        let engine = QueryEngine::new(live.clone(), Default::default()).unwrap();
        (live, Hub::build(Arc::new(engine), limits, untrack))
    }

    pub fn publish(live: &LiveState, seq: u64, rows: &[(&str, i64)]) {
        let def = &live.tables[0];
        let batch = RecordBatch::try_new(
            def.schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        live.publish(LiveSnapshot {
            seq,
            tables: vec![vec![batch]],
            indexes: vec![None],
            ..Default::default()
        });
    }

    pub fn request(query: &[(&str, &str)]) -> Request {
        Request::parse(query.iter().copied(), None).unwrap()
    }

    pub fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    pub async fn next(sub: &mut Subscription) -> Next {
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a message within 5 s")
    }

    pub fn values(messages: &[String]) -> Vec<serde_json::Value> {
        messages
            .iter()
            .map(|m| serde_json::from_str(m).unwrap())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    #[tokio::test]
    async fn a_subscriber_gets_the_snapshot_then_the_changes_and_resumes_exactly() {
        let (live, hub) = hub(SubscribeLimits::default());
        publish(&live, 1, &[("a", 1), ("b", 1)]);
        let client = Client::Address(peer().ip());
        let mut sub = hub
            .subscribe(
                &request(&[("table", "v"), ("snapshot", "true")]),
                client.clone(),
                peer(),
            )
            .unwrap();
        let first: serde_json::Value = serde_json::from_str(sub.first.as_ref().unwrap()).unwrap();
        assert_eq!(first["op"], "snapshot");
        assert_eq!(first["rows"].as_array().unwrap().len(), 2);
        let at = first["position"].as_u64().unwrap();
        assert_eq!(at, hub.base());
        // a filtered subscriber: b leaves it when its n no longer matches
        let mut some = hub
            .subscribe(
                &request(&[("table", "v"), ("where", "n < 5")]),
                client.clone(),
                peer(),
            )
            .unwrap();
        publish(&live, 2, &[("a", 1), ("b", 7), ("c", 3)]);
        let Next::Messages(m) = next(&mut sub).await else {
            panic!("changes")
        };
        let m = values(&m);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0]["op"].as_str(), m[0]["position"].as_u64()),
            (Some("upsert"), Some(at + 1))
        );
        assert_eq!(m[0]["row"]["k"], "b");
        assert_eq!(
            (m[1]["row"]["k"].as_str(), m[1]["position"].as_u64()),
            (Some("c"), Some(at + 2))
        );
        let Next::Messages(f) = next(&mut some).await else {
            panic!("changes")
        };
        let f = values(&f);
        assert_eq!(f[0]["op"], "delete", "{f:?}");
        assert_eq!(f[0]["row"]["k"], "b");
        assert_eq!(f[1]["row"]["k"], "c");
        // resuming after the first change gives exactly the second
        let mut resumed = hub
            .subscribe(
                &request(&[("table", "v"), ("from", &(at + 1).to_string())]),
                client,
                peer(),
            )
            .unwrap();
        let Next::Messages(r) = next(&mut resumed).await else {
            panic!("changes")
        };
        assert_eq!(values(&r), m[1..].to_vec());
        assert_eq!(hub.stats().subscribers.load(Ordering::Relaxed), 3);
        drop((sub, some, resumed));
        assert_eq!(hub.stats().subscribers.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_and_limits_refuse_the_next() {
        let limits = SubscribeLimits {
            buffer: 2,
            max_subscriptions: 2,
            max_per_client: 1,
            ..SubscribeLimits::default()
        };
        let (live, hub) = hub(limits);
        publish(&live, 1, &[]);
        let me = Client::Address(peer().ip());
        let mut slow = hub
            .subscribe(&request(&[("table", "v")]), me.clone(), peer())
            .unwrap();
        let again = hub.subscribe(&request(&[("table", "v")]), me, peer());
        assert!(matches!(
            again,
            Err(SubscribeError::TooManyForClient { max: 1 })
        ));
        let other = Client::Address("10.0.0.1".parse().unwrap());
        let _second = hub
            .subscribe(&request(&[("table", "v")]), other, peer())
            .unwrap();
        let third = hub.subscribe(&request(&[("table", "v")]), Client::Token, peer());
        assert!(matches!(third, Err(SubscribeError::TooMany { max: 2 })));
        // three changes while it reads nothing: more than its buffer of 2, but it has until the
        // next snapshot to read them
        publish(&live, 2, &[("a", 1), ("b", 1), ("c", 1)]);
        let started = Instant::now();
        while hub.feeds[0].head.borrow().0 < hub.base() + 3 {
            assert!(started.elapsed() < Duration::from_secs(5), "no changes");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(hub.stats().dropped.load(Ordering::Relaxed), 0);
        publish(&live, 3, &[("a", 2), ("b", 1), ("c", 1)]);
        while hub.stats().dropped.load(Ordering::Relaxed) == 0 {
            assert!(started.elapsed() < Duration::from_secs(5), "not dropped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Next::End(last) = next(&mut slow).await else {
            panic!("the end")
        };
        let last: serde_json::Value = serde_json::from_str(&last).unwrap();
        assert_eq!(last["error"]["code"], "fell_behind");
        assert_eq!(last["position"].as_u64(), Some(hub.base()));
        drop(slow);
        let unknown = hub.subscribe(
            &request(&[("table", "v"), ("from", "5")]),
            Client::Token,
            peer(),
        );
        assert!(matches!(unknown, Err(SubscribeError::Unknown { .. })));
    }
}

#[cfg(test)]
mod untrack_tests {
    use super::tests_support::*;
    use super::*;

    #[tokio::test]
    async fn a_table_without_subscribers_is_no_longer_followed_and_positions_go_on() {
        let (live, hub) = hub_with(SubscribeLimits::default(), Duration::ZERO);
        publish(&live, 1, &[("a", 1)]);
        let me = Client::Token;
        let sub = hub
            .subscribe(&request(&[("table", "v")]), me.clone(), peer())
            .unwrap();
        publish(&live, 2, &[("a", 2), ("b", 1)]);
        wait_for(|| hub.feeds[0].head.borrow().0 == hub.base() + 2).await;
        drop(sub);
        publish(&live, 3, &[("a", 3), ("b", 1)]);
        wait_for(|| lock(&hub.feeds[0].state).is_none()).await;
        assert_eq!(
            hub.feeds[0].last_head.load(Ordering::Acquire),
            hub.base() + 3
        );
        // its changes are gone: a resume from before is expired, not unknown
        let from = (hub.base() + 1).to_string();
        let old = hub.subscribe(
            &request(&[("table", "v"), ("from", &from)]),
            me.clone(),
            peer(),
        );
        assert!(
            matches!(old, Err(SubscribeError::Expired { .. })),
            "{:?}",
            old.err()
        );
        // followed again, its positions go on from where they were
        let again = hub
            .subscribe(
                &request(&[("table", "v"), ("snapshot", "true")]),
                me,
                peer(),
            )
            .unwrap();
        let first: serde_json::Value = serde_json::from_str(again.first.as_ref().unwrap()).unwrap();
        assert_eq!(first["position"].as_u64(), Some(hub.base() + 3));
    }
}
