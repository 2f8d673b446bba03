//! A circuit breaker per agent: closed (calls flow, outcomes counted over a
//! rolling window), open (calls fail fast until `resetTimeoutSeconds` pass),
//! half-open (exactly one probe call; its outcome closes or re-opens). Calls
//! that come while the probe is in flight wait for its outcome (at most one
//! reset period), so after a good probe the waiting deliveries drain at once.
//! The defaults match what the PR Manager ran with opossum: 50 % errors, 30 s
//! reset.

use std::{collections::VecDeque, sync::Mutex, time::Duration};

use tokio::{sync::Notify, time::Instant};

use crate::api::CircuitBreaker as Config;

/// The breaker's state, as shown in metrics and the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

/// Permission to make one call; hand it back through [`Breaker::record`].
#[derive(Debug)]
#[must_use]
pub struct Permit {
    probe: bool,
}

/// The breaker refused a call: the circuit is open until `retry_at`.
#[derive(Debug, Clone, Copy)]
pub struct Rejected {
    pub retry_at: Instant,
}

/// Why [`Breaker::try_acquire`] gave no permit.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    Open(Rejected),
    /// Half-open, and the one probe is in flight: its outcome decides.
    ProbeInFlight,
}

pub struct Breaker {
    inner: Mutex<Inner>,
    /// Woken when a probe's outcome is recorded.
    probe_done: Notify,
}

struct Inner {
    config: Config,
    state: State,
    /// Per-second buckets `(second, successes, failures)` of the rolling window.
    buckets: VecDeque<(u64, u32, u32)>,
    opened_at: Instant,
    probe_in_flight: bool,
    epoch: Instant,
    /// The agent asked to be left alone until then (`Retry-After`).
    paused_until: Option<Instant>,
}

impl Breaker {
    pub fn new(config: Config) -> Self {
        let now = Instant::now();
        Self {
            inner: Mutex::new(Inner {
                config,
                state: State::Closed,
                buckets: VecDeque::new(),
                opened_at: now,
                probe_in_flight: false,
                epoch: now,
                paused_until: None,
            }),
            probe_done: Notify::new(),
        }
    }

    /// Applies changed settings without losing the current state.
    pub fn reconfigure(&self, config: &Config) {
        self.inner.lock().unwrap().config = config.clone();
    }

    pub fn state(&self) -> State {
        let inner = self.inner.lock().unwrap();
        // An open circuit whose reset time has passed lets the next call probe.
        if inner.state == State::Open && Instant::now() >= inner.opened_at + reset(&inner.config) {
            return State::HalfOpen;
        }
        inner.state
    }

    /// Asks to make a call; while a probe is in flight, waits for its
    /// outcome (at most one reset period) and asks again.
    pub async fn acquire(&self) -> Result<Permit, Rejected> {
        let deadline = Instant::now() + reset(&self.inner.lock().unwrap().config);
        loop {
            // NB: registered before asking, so an outcome recorded in between is not missed.
            let outcome = self.probe_done.notified();
            tokio::pin!(outcome);
            outcome.as_mut().enable();
            match self.try_acquire() {
                Ok(permit) => return Ok(permit),
                Err(Refusal::Open(rejected)) => return Err(rejected),
                Err(Refusal::ProbeInFlight) => {
                    if tokio::time::timeout_at(deadline, outcome).await.is_err() {
                        let reset = reset(&self.inner.lock().unwrap().config);
                        return Err(Rejected { retry_at: Instant::now() + reset });
                    }
                }
            }
        }
    }

    /// Asks to make a call now.
    pub fn try_acquire(&self) -> Result<Permit, Refusal> {
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        let reset = reset(&inner.config);
        if let Some(until) = inner.paused_until.filter(|until| now < *until) {
            return Err(Refusal::Open(Rejected { retry_at: until }));
        }
        match inner.state {
            State::Closed => Ok(Permit { probe: false }),
            State::Open if now >= inner.opened_at + reset => {
                inner.state = State::HalfOpen;
                inner.probe_in_flight = true;
                Ok(Permit { probe: true })
            }
            State::Open => Err(Refusal::Open(Rejected { retry_at: inner.opened_at + reset })),
            State::HalfOpen if !inner.probe_in_flight => {
                inner.probe_in_flight = true;
                Ok(Permit { probe: true })
            }
            // One probe at a time.
            State::HalfOpen => Err(Refusal::ProbeInFlight),
        }
    }

    /// Hands `permit` back with no outcome, and refuses calls until `until`:
    /// the agent answered 429 or 503 with `Retry-After`, which says it is
    /// busy, not broken, so the circuit's state and window do not change (a
    /// probe's turn passes to the next call after the pause).
    pub fn pause(&self, permit: Permit, until: Instant) {
        let mut inner = self.inner.lock().unwrap();
        inner.paused_until = Some(inner.paused_until.map_or(until, |p| p.max(until)));
        if permit.probe {
            inner.probe_in_flight = false;
            drop(inner);
            self.probe_done.notify_waiters();
        }
    }

    /// Gives `permit` back unused (the call was held by something else, such
    /// as the agent's limits): no outcome, and a probe may go again.
    pub fn forgo(&self, permit: Permit) {
        if permit.probe {
            self.inner.lock().unwrap().probe_in_flight = false;
            self.probe_done.notify_waiters();
        }
    }

    /// Records the outcome of the call `permit` allowed.
    pub fn record(&self, permit: Permit, success: bool) {
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        if permit.probe {
            inner.probe_in_flight = false;
            if success {
                inner.state = State::Closed;
                inner.buckets.clear();
            } else {
                inner.state = State::Open;
                inner.opened_at = now;
            }
            drop(inner);
            self.probe_done.notify_waiters();
            return;
        }
        if inner.state != State::Closed {
            return; // a late answer from before the circuit opened
        }
        let second = now.duration_since(inner.epoch).as_secs();
        let config = inner.config.clone();
        let window = config.window_seconds.max(1) as u64;
        while inner.buckets.front().is_some_and(|(s, _, _)| s + window <= second) {
            inner.buckets.pop_front();
        }
        match inner.buckets.back_mut() {
            Some((s, ok, failed)) if *s == second => {
                if success {
                    *ok += 1
                } else {
                    *failed += 1
                }
            }
            _ => inner.buckets.push_back((second, u32::from(success), u32::from(!success))),
        }
        let (ok, failed) = inner
            .buckets
            .iter()
            .fold((0u64, 0u64), |(o, f), (_, a, b)| (o + u64::from(*a), f + u64::from(*b)));
        let total = ok + failed;
        if total >= config.volume_threshold.max(1) as u64
            && failed * 100 >= total * config.error_threshold_percent as u64
        {
            inner.state = State::Open;
            inner.opened_at = now;
            inner.buckets.clear();
        }
    }
}

fn reset(config: &Config) -> Duration {
    Duration::from_secs(config.reset_timeout_seconds.max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            error_threshold_percent: 50,
            volume_threshold: 4,
            window_seconds: 10,
            reset_timeout_seconds: 30,
        }
    }

    fn call(b: &Breaker, success: bool) -> bool {
        match b.try_acquire() {
            Ok(p) => {
                b.record(p, success);
                true
            }
            Err(_) => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_error_threshold_once_volume_is_reached() {
        let b = Breaker::new(config());
        // Below the volume threshold, even 100 % errors keep it closed.
        for _ in 0..3 {
            assert!(call(&b, false));
        }
        assert_eq!(b.state(), State::Closed);
        assert!(call(&b, false)); // 4 of 4 failed
        assert_eq!(b.state(), State::Open);
        assert!(b.try_acquire().is_err(), "an open circuit fails fast");
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_below_the_threshold() {
        let b = Breaker::new(config());
        for i in 0..20 {
            assert!(call(&b, i % 3 == 0)); // one success in three: 67 % errors
            if b.state() == State::Open {
                break;
            }
        }
        assert_eq!(b.state(), State::Open);
        let b = Breaker::new(config());
        for i in 0..20 {
            assert!(call(&b, i % 4 != 0)); // 25 % errors
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let b = Breaker::new(config());
        for _ in 0..3 {
            call(&b, false);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        call(&b, false);
        assert_eq!(b.state(), State::Closed, "the first three failures are outside the 10 s window");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_allows_one_probe_then_closes_or_reopens() {
        let b = Breaker::new(config());
        for _ in 0..4 {
            call(&b, false);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.state(), State::HalfOpen);
        let probe = b.try_acquire().expect("the probe is allowed");
        assert!(matches!(b.try_acquire(), Err(Refusal::ProbeInFlight)), "only one probe at a time");
        b.record(probe, false);
        assert_eq!(b.state(), State::Open, "a failed probe re-opens");

        tokio::time::advance(Duration::from_secs(30)).await;
        let probe = b.try_acquire().expect("next probe after another reset period");
        b.record(probe, true);
        assert_eq!(b.state(), State::Closed, "a successful probe closes");
        assert!(call(&b, true));
    }

    /// A breaker whose circuit opened and reset: its probe is in flight.
    async fn probing() -> (std::sync::Arc<Breaker>, Permit) {
        let b = std::sync::Arc::new(Breaker::new(config()));
        for _ in 0..4 {
            call(&b, false);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        let probe = b.acquire().await.expect("the probe is allowed");
        (b, probe)
    }

    #[tokio::test(start_paused = true)]
    async fn calls_that_wait_for_the_probe_go_as_soon_as_it_succeeds() {
        let (b, probe) = probing().await;
        let waiting = tokio::spawn({
            let b = b.clone();
            async move {
                let asked = Instant::now();
                let permit = b.acquire().await;
                (permit.is_ok(), asked.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!waiting.is_finished(), "waits while the probe is in flight");
        b.record(probe, true);
        let (ok, waited) = waiting.await.unwrap();
        assert!(ok, "goes once the probe succeeded");
        assert_eq!(waited, Duration::from_millis(1500), "not a reset period later");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_given_back_unused_lets_the_next_call_probe_at_once() {
        let (b, probe) = probing().await;
        assert!(matches!(b.try_acquire(), Err(Refusal::ProbeInFlight)));
        b.forgo(probe);
        assert_eq!(b.state(), State::HalfOpen, "no outcome: still half-open");
        let next = b.try_acquire().expect("the next call is the probe");
        b.record(next, true);
        assert_eq!(b.state(), State::Closed);
        // A closed circuit's permit given back changes nothing.
        b.forgo(b.try_acquire().unwrap());
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_that_wait_for_a_failing_probe_are_refused_until_the_next_reset() {
        let (b, probe) = probing().await;
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.map(|_| ()).map_err(|r| r.retry_at) }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.record(probe, false);
        let retry_at = waiting.await.unwrap().expect_err("the probe failed: refused");
        assert_eq!(retry_at, Instant::now() + Duration::from_secs(30), "until the re-opened circuit's reset");
    }
}
