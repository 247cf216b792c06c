//! Failed logins per client address, and the wait they earn.
//!
//! After `max_failed_logins` wrong passwords or tokens from one address, that address must
//! wait before its next attempt is even checked: 1 s, then twice as long after each further
//! failure, up to `login_lockout`. Attempts during the wait are refused at once (HTTP 429,
//! SQLSTATE 28P01 with the wait in the message), so guessing costs time and no CPU. A
//! success clears the address. The table is bounded ([`MAX_ADDRESSES`]): when it is full, the
//! addresses whose last failure is oldest are forgotten first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Addresses remembered at most.
pub const MAX_ADDRESSES: usize = 10_000;

/// Compares a secret given by a client with the expected one in constant time: both are
/// hashed first, so neither their contents nor their lengths show in the time taken.
pub fn secret_matches(given: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected);
    a.ct_eq(&b).into()
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failed logins by address.
#[derive(Debug)]
pub struct FailedLogins {
    max_failures: u32,
    max_lockout: Duration,
    table: Mutex<HashMap<IpAddr, Entry>>,
    /// Wrong passwords or tokens.
    pub failures: AtomicU64,
    /// Attempts refused because their address had to wait.
    pub refused: AtomicU64,
}

impl FailedLogins {
    pub fn new(max_failures: u32, max_lockout: Duration) -> Self {
        FailedLogins {
            max_failures: max_failures.max(1),
            max_lockout,
            table: Mutex::new(HashMap::new()),
            failures: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        // a panic elsewhere while holding it leaves a usable table
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(wait)` when `ip` must wait that long before its next attempt is checked.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let until = self.table().get(&ip).and_then(|e| e.locked_until);
        match until {
            Some(t) if t > now => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(t - now)
            }
            _ => Ok(()),
        }
    }

    /// Records a wrong password or token from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        self.failed_at(ip, Instant::now())
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut table = self.table();
        if table.len() >= MAX_ADDRESSES && !table.contains_key(&ip) {
            evict_oldest(&mut table, MAX_ADDRESSES / 10);
        }
        let e = table.entry(ip).or_insert(Entry {
            failures: 0,
            last: now,
            locked_until: None,
        });
        // failures long past are forgotten
        if now.duration_since(e.last) > self.max_lockout.saturating_mul(10) {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= self.max_failures {
            let doublings = (e.failures - self.max_failures).min(30);
            let wait = Duration::from_secs(1)
                .saturating_mul(1 << doublings)
                .min(self.max_lockout);
            e.locked_until = Some(now + wait);
        }
    }

    /// Clears `ip` after a successful login.
    pub fn succeeded(&self, ip: IpAddr) {
        self.table().remove(&ip);
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Forgets the `n` addresses whose last failure is oldest.
fn evict_oldest(table: &mut HashMap<IpAddr, Entry>, n: usize) {
    let mut by_age: Vec<(Instant, IpAddr)> = table.iter().map(|(ip, e)| (e.last, *ip)).collect();
    by_age.sort_unstable();
    for (_, ip) in by_age.into_iter().take(n.max(1)) {
        table.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn secrets_compare_by_value_whatever_their_length() {
        assert!(secret_matches(b"s3cret", b"s3cret"));
        assert!(!secret_matches(b"s3cres", b"s3cret"));
        assert!(!secret_matches(b"s3cretx", b"s3cret"));
        assert!(!secret_matches(b"", b"s3cret"));
    }

    #[test]
    fn an_address_waits_after_its_failures_longer_each_time_up_to_the_cap() {
        let logins = FailedLogins::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        let a = ip(1);
        logins.failed_at(a, t0);
        logins.failed_at(a, t0);
        assert!(logins.check_at(a, t0).is_ok(), "two failures: no wait yet");
        logins.failed_at(a, t0);
        assert_eq!(logins.check_at(a, t0), Err(Duration::from_secs(1)));
        assert!(
            logins.check_at(ip(2), t0).is_ok(),
            "other addresses are not held"
        );
        let t1 = t0 + Duration::from_secs(1);
        assert!(logins.check_at(a, t1).is_ok(), "the wait is over");
        logins.failed_at(a, t1);
        assert_eq!(logins.check_at(a, t1), Err(Duration::from_secs(2)));
        for _ in 0..10 {
            logins.failed_at(a, t1);
        }
        assert_eq!(
            logins.check_at(a, t1),
            Err(Duration::from_secs(5)),
            "capped"
        );
        logins.succeeded(a);
        assert!(logins.check_at(a, t1).is_ok());
        assert!(logins.refused.load(Ordering::Relaxed) >= 3);
    }

    #[test]
    fn the_table_stays_bounded() {
        let logins = FailedLogins::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        for n in 0..(MAX_ADDRESSES as u32 + 500) {
            logins.failed_at(ip(n), t0 + Duration::from_millis(n as u64));
        }
        assert!(logins.len() <= MAX_ADDRESSES);
        // the newest are kept
        assert!(logins.table().contains_key(&ip(MAX_ADDRESSES as u32 + 499)));
    }
}
