//! One retry policy for every sink and the dead-letter output: exponential backoff with
//! jitter, a circuit breaker per output, and no row dropped.
//!
//! An output reports a failure it can take again as [`EngineError::Unavailable`]: the call
//! changed nothing, so the same call can be made again with the same input (a full disk, a
//! read-only folder, a broker or cluster that does not answer). Any other error fails the run
//! at once (a checkpointed run restarted by its supervisor then recovers from its last
//! checkpoint). While an output retries, its thread does not take rows, its bounded channel
//! fills and the sources stop reading (Kafka partitions are paused): memory stays bounded.
//!
//! The circuit breaker opens after `failures` consecutive failures: while open, the output is
//! not called at all for `open_for`; then one probe call is made (half-open) that closes the
//! circuit when it succeeds and opens it again when it fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::EngineError;

/// How an output retries.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// Each wait is the previous one times this.
    pub multiplier: f64,
    /// Each wait is randomly shortened or lengthened by up to this fraction (0 to 1).
    pub jitter: f64,
    /// Give up (fail the run) after this many retries of one call; `None` retries until the
    /// output comes back or the run is stopped.
    pub max_retries: Option<u32>,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before a probe.
    pub breaker_open_for: Duration,
}

impl Default for RetryPolicy {
    /// 1 s, 2 s, 4 s, 8 s, 16 s, then 16 s; ±10 % jitter; retries without limit; the circuit
    /// opens after 5 consecutive failures and probes every 30 s.
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(16),
            multiplier: 2.0,
            jitter: 0.1,
            max_retries: None,
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first), before jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(retry.min(64) as i32);
        let secs = self.initial_backoff.as_secs_f64() * factor;
        Duration::from_secs_f64(secs.min(self.max_backoff.as_secs_f64()))
    }

    /// `d` shortened or lengthened by up to `jitter` of itself, from a random `unit` in [0, 1).
    fn jittered(&self, d: Duration, unit: f64) -> Duration {
        let j = self.jitter.clamp(0.0, 1.0);
        d.mul_f64(1.0 - j + 2.0 * j * unit)
    }
}

/// The state of a circuit breaker, as the `weir_sink_circuit_state` gauge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// Counters and state of one output's retries, read by `/metrics` and `/ready`.
#[derive(Debug, Default)]
pub struct OutputHealth {
    /// Failed calls (retried or not).
    pub errors: AtomicU64,
    /// Calls made again after a failure.
    pub retries: AtomicU64,
    /// [`CircuitState`] as a number.
    pub circuit: AtomicU64,
    /// Unix ms of the last failure (0 = none).
    pub last_error_ms: AtomicU64,
    /// Rows the output refused for good (sent to the dead-letter output).
    pub rejected: AtomicU64,
}

impl OutputHealth {
    /// The circuit breaker's state.
    pub fn circuit(&self) -> CircuitState {
        match self.circuit.load(Ordering::Relaxed) {
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }

    fn set_circuit(&self, s: CircuitState) {
        self.circuit.store(s as u64, Ordering::Relaxed);
    }
}

/// Calls an output under a [`RetryPolicy`], with its circuit breaker.
pub struct Retrier<'a> {
    output: String,
    policy: RetryPolicy,
    health: &'a OutputHealth,
    cancel: &'a AtomicBool,
    consecutive: u32,
    open_until: Option<Instant>,
    rng: u64,
}

impl<'a> Retrier<'a> {
    /// A retrier for the output named `output` (as logs name it).
    pub fn new(
        output: &str,
        policy: RetryPolicy,
        health: &'a OutputHealth,
        cancel: &'a AtomicBool,
    ) -> Self {
        // a per-output seed: outputs that fail together do not retry in lockstep
        let seed = output.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
        }) ^ crate::time::now_ms() as u64;
        Retrier {
            output: output.to_string(),
            policy,
            health,
            cancel,
            consecutive: 0,
            open_until: None,
            rng: seed | 1,
        }
    }

    /// A random number in [0, 1) (xorshift).
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Runs `call` until it succeeds, fails with an error that cannot be retried, runs out of
    /// retries, or the run is stopped. `what` names the call in logs (`write`, `commit`).
    pub fn call<T>(
        &mut self,
        what: &str,
        mut call: impl FnMut() -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let _span = tracing::info_span!("output", output = %self.output, call = what).entered();
        let mut retry = 0u32;
        loop {
            if let Some(until) = self.open_until {
                self.sleep_until(until)?;
                self.open_until = None;
                self.health.set_circuit(CircuitState::HalfOpen);
                tracing::info!(output = %self.output, "circuit half-open: probing");
            }
            let result = call();
            let e = match result {
                Ok(v) => {
                    if self.consecutive > 0 {
                        tracing::info!(
                            output = %self.output,
                            after_failures = self.consecutive,
                            "output recovered"
                        );
                    }
                    self.consecutive = 0;
                    self.health.set_circuit(CircuitState::Closed);
                    return Ok(v);
                }
                Err(e) => e,
            };
            self.health.errors.fetch_add(1, Ordering::Relaxed);
            self.health
                .last_error_ms
                .store(crate::time::now_ms().max(0) as u64, Ordering::Relaxed);
            let at_least = e.retry_after();
            let EngineError::Unavailable(inner) = e else {
                return Err(e);
            };
            let inner = match *inner {
                EngineError::RetryAfter(d) => Box::new(d.error),
                other => Box::new(other),
            };
            if self.policy.max_retries.is_some_and(|m| retry >= m) {
                tracing::error!(output = %self.output, call = what, retries = retry, error = %inner.chain(), "giving up");
                return Err(*inner);
            }
            self.consecutive += 1;
            let unit = self.unit();
            // an output that asked for a least wait (`Retry-After`) gets the longer of the two
            let wait = self
                .policy
                .jittered(self.policy.backoff(retry), unit)
                .max(at_least.unwrap_or_default());
            let reopen = self.health.circuit() == CircuitState::HalfOpen
                || self.consecutive >= self.policy.breaker_failures.max(1);
            let wait = if reopen {
                self.health.set_circuit(CircuitState::Open);
                let open_for = self.policy.breaker_open_for.max(wait);
                tracing::warn!(
                    output = %self.output,
                    call = what,
                    consecutive_failures = self.consecutive,
                    open_for_ms = open_for.as_millis() as u64,
                    error = %inner.chain(),
                    "circuit open"
                );
                self.open_until = Some(Instant::now() + open_for);
                Duration::ZERO
            } else {
                tracing::warn!(
                    output = %self.output,
                    call = what,
                    retry = retry + 1,
                    backoff_ms = wait.as_millis() as u64,
                    error = %inner.chain(),
                    "retrying"
                );
                wait
            };
            self.sleep_until(Instant::now() + wait)?;
            retry += 1;
            self.health.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sleeps until `until` in short steps, ending early when the run is stopped.
    fn sleep_until(&self, until: Instant) -> Result<(), EngineError> {
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            multiplier: 2.0,
            jitter: 0.0,
            max_retries: None,
            breaker_failures: 100,
            breaker_open_for: Duration::from_millis(100),
        }
    }

    fn unavailable() -> EngineError {
        EngineError::sink("out", "disk full").unavailable()
    }

    #[test]
    fn the_default_schedule_doubles_from_one_second_up_to_sixteen() {
        let p = RetryPolicy::default();
        let waits: Vec<u64> = (0..7).map(|r| p.backoff(r).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 16, 16]);
        let jittered = p.jittered(Duration::from_secs(10), 0.999);
        assert!(jittered > Duration::from_secs(10) && jittered <= Duration::from_secs(11));
        let jittered = p.jittered(Duration::from_secs(10), 0.0);
        assert_eq!(jittered, Duration::from_secs(9));
    }

    #[test]
    fn unavailable_calls_are_retried_on_the_schedule_until_they_succeed() {
        let health = OutputHealth::default();
        let cancel = AtomicBool::new(false);
        let mut r = Retrier::new("out", quick(), &health, &cancel);
        let calls = Cell::new(0);
        let started = Instant::now();
        let v = r
            .call("write", || {
                calls.set(calls.get() + 1);
                if calls.get() <= 4 {
                    Err(unavailable())
                } else {
                    Ok(7)
                }
            })
            .unwrap();
        assert_eq!(v, 7);
        assert_eq!(calls.get(), 5);
        assert_eq!(health.retries.load(Ordering::Relaxed), 4);
        assert_eq!(health.errors.load(Ordering::Relaxed), 4);
        // 10 + 20 + 40 + 40 ms
        assert!(started.elapsed() >= Duration::from_millis(110));
        assert_eq!(health.circuit(), CircuitState::Closed);
    }

    #[test]
    fn other_errors_fail_at_once_and_retries_can_be_limited() {
        let health = OutputHealth::default();
        let cancel = AtomicBool::new(false);
        let mut r = Retrier::new("out", quick(), &health, &cancel);
        let e = r
            .call("write", || -> Result<(), _> {
                Err(EngineError::sink("out", "bad schema"))
            })
            .unwrap_err();
        assert!(e.to_string().contains("bad schema"));
        assert_eq!(health.retries.load(Ordering::Relaxed), 0);

        let policy = RetryPolicy {
            max_retries: Some(2),
            ..quick()
        };
        let mut r = Retrier::new("out", policy, &health, &cancel);
        let calls = Cell::new(0);
        let e = r
            .call("write", || -> Result<(), _> {
                calls.set(calls.get() + 1);
                Err(unavailable())
            })
            .unwrap_err();
        assert_eq!(calls.get(), 3);
        assert!(!matches!(e, EngineError::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("disk full"));
    }

    #[test]
    fn the_circuit_opens_after_consecutive_failures_and_a_probe_closes_it() {
        let health = OutputHealth::default();
        let cancel = AtomicBool::new(false);
        let policy = RetryPolicy {
            breaker_failures: 2,
            ..quick()
        };
        let mut r = Retrier::new("out", policy, &health, &cancel);
        let calls = Cell::new(0);
        let mut seen = Vec::new();
        let started = Instant::now();
        r.call("write", || {
            calls.set(calls.get() + 1);
            seen.push((health.circuit(), started.elapsed()));
            if calls.get() <= 3 {
                Err(unavailable())
            } else {
                Ok(())
            }
        })
        .unwrap();
        let states: Vec<CircuitState> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            states,
            [
                CircuitState::Closed,
                CircuitState::Closed,
                CircuitState::HalfOpen, // the probe after the circuit opened, fails
                CircuitState::HalfOpen, // opened again, probed again: succeeds
            ]
        );
        // the probes wait out the open period
        assert!(seen[2].1 - seen[1].1 >= Duration::from_millis(100));
        assert!(seen[3].1 - seen[2].1 >= Duration::from_millis(100));
        assert_eq!(health.circuit(), CircuitState::Closed);
    }

    #[test]
    fn a_least_wait_asked_by_the_output_replaces_a_shorter_backoff_and_is_not_added() {
        let health = OutputHealth::default();
        let cancel = AtomicBool::new(false);
        let wait_once = |backoff_ms: u64, asked_ms: u64| {
            let policy = RetryPolicy {
                initial_backoff: Duration::from_millis(backoff_ms),
                max_backoff: Duration::from_millis(backoff_ms),
                ..quick()
            };
            let mut r = Retrier::new("out", policy, &health, &cancel);
            let calls = Cell::new(0);
            let started = Instant::now();
            r.call("write", || {
                calls.set(calls.get() + 1);
                if calls.get() == 1 {
                    Err(unavailable().unavailable_for(Duration::from_millis(asked_ms)))
                } else {
                    Ok(())
                }
            })
            .unwrap();
            started.elapsed()
        };
        // the output asks for more than the backoff: its wait
        let w = wait_once(10, 400);
        assert!(w >= Duration::from_millis(400), "{w:?}");
        // the backoff is longer: the backoff alone, not the sum
        let w = wait_once(400, 300);
        assert!(
            w >= Duration::from_millis(400) && w < Duration::from_millis(650),
            "{w:?}"
        );
        // the error that gives up is the output's own
        let e = unavailable().unavailable_for(Duration::from_secs(1));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(e.to_string(), unavailable().to_string());
    }

    #[test]
    fn a_stopped_run_ends_a_long_wait_an_output_asked_for() {
        let health = OutputHealth::default();
        let cancel = AtomicBool::new(false);
        std::thread::scope(|s| {
            let started = Instant::now();
            let job = s.spawn(|| {
                let mut r = Retrier::new("out", quick(), &health, &cancel);
                r.call("write", || -> Result<(), _> {
                    Err(unavailable().unavailable_for(Duration::from_secs(300)))
                })
            });
            std::thread::sleep(Duration::from_millis(100));
            cancel.store(true, Ordering::Relaxed);
            assert!(matches!(job.join().unwrap(), Err(EngineError::Cancelled)));
            assert!(started.elapsed() < Duration::from_secs(2));
        });
    }

    #[test]
    fn a_stopped_run_ends_the_retries() {
        let health = OutputHealth::default();
        let cancel = AtomicBool::new(true);
        let mut r = Retrier::new("out", quick(), &health, &cancel);
        let e = r
            .call("write", || -> Result<(), _> { Err(unavailable()) })
            .unwrap_err();
        assert!(matches!(e, EngineError::Cancelled));
    }
}
