//! Graceful drain: the signal that starts it, and the count of what it waits for.
//!
//! Every connection task (and every WebSocket session, which outlives the HTTP connection it
//! was upgraded from) holds a [`Token`]. A drain tells them all to finish, waits until every
//! token is dropped or the deadline passes, and then tells the stragglers the deadline has
//! passed (a WebSocket session then cancels its completions and closes with 1001).
//! hyper-util's `GracefulShutdown` cannot watch an HTTP/1.1 connection that allows upgrades.

use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Where the drain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Serving,
    /// Finish what is in flight, start nothing new.
    Draining,
    /// The drain deadline passed: stop now.
    Deadline,
}

/// The drain's side.
#[derive(Debug)]
pub(crate) struct Drain {
    phase: watch::Sender<Phase>,
    alive: mpsc::Receiver<()>,
    token: Token,
}

/// Held by what a drain waits for.
#[derive(Clone, Debug)]
pub(crate) struct Token {
    phase: watch::Receiver<Phase>,
    _alive: mpsc::Sender<()>,
}

/// Makes tokens without keeping the drain waiting itself.
#[derive(Clone, Debug)]
pub(crate) struct Minter {
    phase: watch::Receiver<Phase>,
    alive: mpsc::WeakSender<()>,
}

impl Drain {
    pub(crate) fn new() -> Self {
        let (phase, watching) = watch::channel(Phase::Serving);
        let (alive, waiting) = mpsc::channel(1);
        Self {
            phase,
            alive: waiting,
            token: Token {
                phase: watching,
                _alive: alive,
            },
        }
    }

    pub(crate) fn token(&self) -> Token {
        self.token.clone()
    }

    pub(crate) fn minter(&self) -> Minter {
        Minter {
            phase: self.token.phase.clone(),
            alive: self.token._alive.downgrade(),
        }
    }

    /// Tells every holder to finish and waits for them, up to `deadline`. Returns whether
    /// they all finished; if not, tells them the deadline passed and gives them `grace` to
    /// close.
    pub(crate) async fn run(self, deadline: Duration, grace: Duration) -> bool {
        let Self {
            phase,
            mut alive,
            token,
        } = self;
        drop(token);
        let _ = phase.send(Phase::Draining);
        // `recv` returns `None` once every token is dropped.
        if tokio::time::timeout(deadline, alive.recv()).await.is_ok() {
            return true;
        }
        let _ = phase.send(Phase::Deadline);
        let _ = tokio::time::timeout(grace, alive.recv()).await;
        false
    }
}

impl Token {
    /// Resolves once a drain has started.
    pub(crate) async fn draining(&mut self) {
        let _ = self.phase.wait_for(|p| *p >= Phase::Draining).await;
    }

    /// Resolves once the drain deadline has passed.
    pub(crate) async fn deadline(&mut self) {
        let _ = self.phase.wait_for(|p| *p == Phase::Deadline).await;
    }

    /// Where the drain is now.
    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }
}

impl Minter {
    /// A token, unless the drain is over.
    pub(crate) fn token(&self) -> Option<Token> {
        Some(Token {
            phase: self.phase.clone(),
            _alive: self.alive.upgrade()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_every_token_then_calls_the_deadline() {
        let drain = Drain::new();
        let mut quick = drain.token();
        let mut slow = drain.minter().token().unwrap();
        let quick_task = tokio::spawn(async move {
            quick.draining().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let slow_task = tokio::spawn(async move {
            slow.draining().await;
            // Would run for a minute; stops at the deadline.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => "finished",
                _ = slow.deadline() => "cut",
            }
        });
        let started = tokio::time::Instant::now();
        assert!(
            !drain
                .run(Duration::from_secs(5), Duration::from_secs(1))
                .await
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        quick_task.await.unwrap();
        assert_eq!(slow_task.await.unwrap(), "cut");

        let drain = Drain::new();
        let minter = drain.minter();
        assert!(drain.run(Duration::from_secs(5), Duration::ZERO).await);
        assert!(minter.token().is_none(), "no tokens after the drain");
    }
}
