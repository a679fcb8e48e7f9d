//! governor's clock on tokio's time, so that limits follow `tokio::time::pause` in tests.

use governor::clock::Clock;
use governor::nanos::Nanos;
use tokio::time::Instant;

/// Nanoseconds since the clock was made, read from `tokio::time::Instant` (never governor's
/// own clocks or its `until_ready`, which sleep outside tokio's timer).
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(Instant::now().duration_since(self.origin))
    }
}
