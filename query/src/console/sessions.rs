//! The console's sign-in sessions: random ids kept server-side, so a cookie is worth nothing
//! once it is signed out, expired, or the process restarted, and never holds the token or
//! anything derived from it.
//!
//! An id is 32 bytes from the operating system's CSPRNG (`getrandom`), sent to the browser as
//! 64 hex digits in the cookie `weir_console_<port>`. The table keeps only each id's SHA-256
//! digest and looks it up by that digest, so neither the ids nor the time a comparison takes
//! reveal anything. A session ends after [`IDLE`] without a request, [`LIFETIME`] after it
//! began, or on *Sign out*. The table holds at most [`MAX_SESSIONS`]: when it is full, the
//! session used longest ago ends to make room.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Sessions kept at most; beyond, the one used longest ago ends.
pub const MAX_SESSIONS: usize = 1000;
/// A session unused this long ends (12 hours).
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// A session ends this long after it began, used or not (7 days); the cookie's `Max-Age`.
pub const LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Copy)]
struct Session {
    began: Instant,
    used: Instant,
}

/// The sessions of one HTTP endpoint.
#[derive(Debug)]
pub struct Sessions {
    cookie: String,
    table: Mutex<HashMap<[u8; 32], Session>>,
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// The sessions of the endpoint on `port` (its cookie is `weir_console_<port>`, so two
    /// processes on one host keep their own).
    pub fn new(port: u16) -> Self {
        Sessions {
            cookie: format!("weir_console_{port}"),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// The cookie's name.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session's id; `None` when the operating system gives no random bytes.
    pub fn open(&self) -> Option<String> {
        self.open_at(Instant::now())
    }

    fn open_at(&self, now: Instant) -> Option<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).ok()?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut table = self.table();
        table.retain(|_, s| live(s, now));
        if table.len() >= MAX_SESSIONS {
            let oldest = table.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| *k);
            if let Some(k) = oldest {
                table.remove(&k);
            }
        }
        table.insert(
            digest(&id),
            Session {
                began: now,
                used: now,
            },
        );
        Some(id)
    }

    /// Whether `id` is a live session (and marks it used).
    pub fn check(&self, id: &str) -> bool {
        self.check_at(id, Instant::now())
    }

    fn check_at(&self, id: &str, now: Instant) -> bool {
        let key = digest(id);
        let mut table = self.table();
        match table.get_mut(&key) {
            Some(s) if live(s, now) => {
                s.used = now;
                true
            }
            Some(_) => {
                table.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Ends the session `id` (signing out).
    pub fn close(&self, id: &str) {
        self.table().remove(&digest(id));
    }

    /// Sessions kept now.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.used) < IDLE
        && now.saturating_duration_since(s.began) < LIFETIME
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_expire_and_end_on_sign_out() {
        let s = Sessions::new(8080);
        assert_eq!(s.cookie(), "weir_console_8080");
        let t0 = Instant::now();
        let a = s.open_at(t0).unwrap();
        let b = s.open_at(t0).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(s.check_at(&a, t0) && s.check_at(&b, t0));
        assert!(!s.check_at("not-a-session", t0));
        // idle: used within 12 h it lives on, up to 7 days
        let mut t = t0;
        for _ in 0..15 {
            t += IDLE - Duration::from_secs(60);
            assert!(s.check_at(&a, t) == (t - t0 < LIFETIME), "{:?}", t - t0);
        }
        assert!(!s.check_at(&b, t0 + IDLE), "b idled out");
        s.close(&a);
        assert!(!s.check_at(&a, t0));
        assert!(s.is_empty());
    }

    #[test]
    fn sessions_are_bounded_and_the_least_recently_used_goes_first() {
        let s = Sessions::new(1);
        let t0 = Instant::now();
        let first = s.open_at(t0).unwrap();
        let second = s.open_at(t0 + Duration::from_secs(1)).unwrap();
        assert!(s.check_at(&first, t0 + Duration::from_secs(2)));
        for i in 0..MAX_SESSIONS {
            s.open_at(t0 + Duration::from_secs(3 + i as u64)).unwrap();
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        let now = t0 + Duration::from_secs(5000);
        assert!(!s.check_at(&second, now), "the least recently used ended");
        assert!(!s.check_at(&first, now), "then the next");
    }
}
