//! Wall-clock time behind a trait, so that signature windows, round timestamps and scheduler ticks can be
//! stepped in tests instead of waited for.

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of Unix time.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> f64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> f64 {
        // A clock before 1970 is a broken host; 0 keeps signatures failing closed (skew) rather than panicking.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// A clock that stands still (tests, benches).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(f64);

impl FixedClock {
    /// A clock that always reads `unix`.
    pub fn new(unix: f64) -> FixedClock {
        FixedClock(unix)
    }
}

impl Clock for FixedClock {
    fn now_unix(&self) -> f64 {
        self.0
    }
}

/// A clock that reads what the test last set (tests: time that passes without waiting for it).
#[derive(Debug, Default)]
pub struct SteppedClock(std::sync::atomic::AtomicU64);

impl SteppedClock {
    /// A clock reading `unix` until [`SteppedClock::set`].
    pub fn new(unix: f64) -> SteppedClock {
        SteppedClock(std::sync::atomic::AtomicU64::new(unix.to_bits()))
    }

    /// Read `unix` from now on.
    pub fn set(&self, unix: f64) {
        self.0.store(unix.to_bits(), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for SteppedClock {
    fn now_unix(&self) -> f64 {
        f64::from_bits(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}
