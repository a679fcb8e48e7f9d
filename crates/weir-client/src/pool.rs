//! The connection pool, and the body that reads its HTTP/1.1 connection inline.
//!
//! hyper-util's legacy client spawns a task per connection and hands every body frame to the
//! reader over a channel: the reader returns `Pending` between any two frames, so a proxy
//! that forwards the body flushes (one `writev`) per frame and wakes a second task per frame.
//! On a 20-chunk stream that is 20 writes, 20 cross-task wakeups and 20 `epoll_wait`s where
//! one of each would do.
//!
//! Here an HTTP/1.1 connection is not a task: the [`ResponseBody`] owns it (see [`crate::h1`])
//! and reads it in the reader's own task. Frames already read from the socket are decoded
//! and handed over without a wakeup, and a forwarding server writes a burst of chunks in one
//! flush. When the body ends cleanly the connection goes back to the pool; when the body is
//! dropped early (the client went away) the connection is closed, cancelling the upstream.
//! HTTP/2 connections multiplex many streams, so they keep hyper's connection task.

use crate::h1::{self, Decoder};
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub(crate) type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Where a connection goes: scheme and authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
}

/// An HTTP/1.1 connection, and its place in the pool's count (and, under a per-host limit,
/// its slot).
pub(crate) struct Http1 {
    pub(crate) conn: h1::Conn,
    pub(crate) _open: Open,
}

/// Counts an open HTTP/1.1 connection until it is dropped; holds its slot under a per-host
/// limit.
pub(crate) struct Open {
    stats: Arc<Stats>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pool's counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    open: AtomicUsize,
    waiting: AtomicUsize,
}

/// A pool's HTTP/1.1 connections at one moment, over all hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// Open connections (in use and idle).
    pub open: usize,
    /// Idle connections, ready for a request.
    pub idle: usize,
    /// Connections carrying a request or a response body.
    pub in_use: usize,
    /// Requests waiting for a connection (at the per-host limit).
    pub waiting: usize,
}

/// What a request gets under a per-host limit: a slot for a new connection, or an idle
/// connection that came back while it waited.
pub(crate) enum Slot {
    New(Open),
    Idle(Box<Http1>),
}

/// The per-host limit: slots, and a signal when a connection goes back to idle.
struct HostSlots {
    semaphore: Arc<Semaphore>,
    returned: Notify,
}

impl Http1 {
    /// Whether an idle connection can take a new request: not closed by the peer meanwhile.
    fn usable(&mut self) -> bool {
        self.conn.usable()
    }
}

struct Idle {
    conn: Box<Http1>,
    since: Instant,
}

/// Per-host state, found by a linear scan: a gateway talks to a handful of hosts, and comparing
/// a few keys is cheaper than hashing an `Authority` (which hashes byte by byte).
struct Hosts<B: Body + 'static> {
    http1: Vec<(Key, VecDeque<Idle>)>,
    http2: Vec<(Key, http2::SendRequest<B>)>,
    slots: Vec<(Key, Arc<HostSlots>)>,
}

fn find<'a, V>(entries: &'a mut [(Key, V)], key: &Key) -> Option<&'a mut V> {
    entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Idle HTTP/1.1 connections per host (most recently used first out), and one shared HTTP/2
/// connection per host.
pub(crate) struct Pool<B: Body + 'static> {
    hosts: Mutex<Hosts<B>>,
    idle_timeout: Option<Duration>,
    max_idle_per_host: usize,
    max_per_host: Option<usize>,
    stats: Arc<Stats>,
}

impl<B> Pool<B>
where
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(
        idle_timeout: Option<Duration>,
        max_idle_per_host: usize,
        max_per_host: Option<usize>,
    ) -> Self {
        Self {
            hosts: Mutex::new(Hosts {
                http1: Vec::new(),
                http2: Vec::new(),
                slots: Vec::new(),
            }),
            idle_timeout,
            max_idle_per_host,
            max_per_host,
            stats: Arc::default(),
        }
    }

    fn host_slots(&self, key: &Key) -> Option<Arc<HostSlots>> {
        let max = self.max_per_host?;
        let mut hosts = self.hosts.lock().expect("pool lock");
        if let Some(slots) = find(&mut hosts.slots, key) {
            return Some(slots.clone());
        }
        let slots = Arc::new(HostSlots {
            semaphore: Arc::new(Semaphore::new(max)),
            returned: Notify::new(),
        });
        hosts.slots.push((key.clone(), slots.clone()));
        Some(slots)
    }

    /// A slot for a new connection to `key`, or an idle one that came back meanwhile. Without
    /// a per-host limit, a slot at once; at the limit, waits (FIFO) for a connection to close
    /// or to go back to idle.
    pub(crate) async fn slot(&self, key: &Key) -> Slot {
        let Some(slots) = self.host_slots(key) else {
            return Slot::New(self.open(None));
        };
        loop {
            let returned = slots.returned.notified();
            let mut returned = std::pin::pin!(returned);
            returned.as_mut().enable();
            if let Some(conn) = self.checkout_http1(key) {
                return Slot::Idle(conn);
            }
            if let Ok(permit) = slots.semaphore.clone().try_acquire_owned() {
                return Slot::New(self.open(Some(permit)));
            }
            self.stats.waiting.fetch_add(1, Ordering::Relaxed);
            let _waiting = Waiting(&self.stats);
            tokio::select! {
                permit = slots.semaphore.clone().acquire_owned() => {
                    return Slot::New(self.open(permit.ok()));
                }
                _ = returned => {}
            }
        }
    }

    /// A slot for a new connection to `key`, never an idle one (under a per-host limit, it
    /// waits for a slot like [`Pool::slot`]).
    pub(crate) async fn fresh_slot(&self, key: &Key) -> Open {
        let Some(slots) = self.host_slots(key) else {
            return self.open(None);
        };
        let permit = slots.semaphore.clone().acquire_owned().await;
        self.open(permit.ok())
    }

    fn open(&self, slot: Option<OwnedSemaphorePermit>) -> Open {
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Open {
            stats: self.stats.clone(),
            _slot: slot,
        }
    }

    pub(crate) fn snapshot(&self) -> PoolSnapshot {
        let open = self.stats.open.load(Ordering::Relaxed);
        let idle = self.idle();
        PoolSnapshot {
            open,
            idle,
            in_use: open.saturating_sub(idle),
            waiting: self.stats.waiting.load(Ordering::Relaxed),
        }
    }

    fn expired(&self, since: Instant, now: Instant) -> bool {
        self.idle_timeout
            .is_some_and(|t| now.duration_since(since) >= t)
    }

    /// An idle HTTP/1.1 connection to `key` that is still usable. Closes the stale ones it meets.
    pub(crate) fn checkout_http1(&self, key: &Key) -> Option<Box<Http1>> {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().expect("pool lock");
        let idle = find(&mut hosts.http1, key)?;
        while let Some(mut entry) = idle.pop_back() {
            if !self.expired(entry.since, now) && entry.conn.usable() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Returns a connection whose last response ended cleanly.
    pub(crate) fn checkin_http1(&self, key: Key, conn: Box<Http1>) {
        if self.max_idle_per_host == 0 {
            return;
        }
        let now = Instant::now();
        let mut hosts = self.hosts.lock().expect("pool lock");
        if find(&mut hosts.http1, &key).is_none() {
            hosts.http1.push((key.clone(), VecDeque::new()));
        }
        let idle = find(&mut hosts.http1, &key).expect("just inserted");
        idle.retain(|entry| !self.expired(entry.since, now));
        if idle.len() >= self.max_idle_per_host {
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: now });
        if self.stats.waiting.load(Ordering::Relaxed) > 0 {
            if let Some(slots) = find(&mut hosts.slots, &key) {
                slots.returned.notify_one();
            }
        }
    }

    pub(crate) fn checkout_http2(&self, key: &Key) -> Option<http2::SendRequest<B>> {
        let mut hosts = self.hosts.lock().expect("pool lock");
        let at = hosts.http2.iter().position(|(k, _)| k == key)?;
        if hosts.http2[at].1.is_closed() {
            hosts.http2.swap_remove(at);
            return None;
        }
        Some(hosts.http2[at].1.clone())
    }

    pub(crate) fn insert_http2(&self, key: Key, sender: http2::SendRequest<B>) {
        let mut hosts = self.hosts.lock().expect("pool lock");
        match find(&mut hosts.http2, &key) {
            Some(existing) => *existing = sender,
            None => hosts.http2.push((key, sender)),
        }
    }

    /// Idle HTTP/1.1 connections held, over all hosts.
    pub(crate) fn idle(&self) -> usize {
        self.hosts
            .lock()
            .expect("pool lock")
            .http1
            .iter()
            .map(|(_, idle)| idle.len())
            .sum()
    }
}

/// Counts a request waiting for a slot while it waits.
struct Waiting<'a>(&'a Stats);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body from [`HttpClient`](crate::HttpClient), streamed as it arrives. For
/// HTTP/1.1 it carries the connection, and polling the body reads it.
pub struct ResponseBody<B: Body + 'static> {
    kind: Kind<B>,
}

enum Kind<B: Body + 'static> {
    Http1 {
        decoder: Decoder,
        /// Until the body ends (then back to the pool) or fails.
        conn: Option<Driven<B>>,
    },
    Http2(Incoming),
}

struct Driven<B: Body + 'static> {
    conn: Box<Http1>,
    key: Key,
    pool: Arc<Pool<B>>,
}

impl<B: Body + 'static> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Http1 { decoder, conn } => f
                .debug_struct("ResponseBody")
                .field("http1", &true)
                .field("ended", &decoder.is_end())
                .field("holds_connection", &conn.is_some())
                .finish(),
            Kind::Http2(inner) => f
                .debug_struct("ResponseBody")
                .field("http2", inner)
                .finish(),
        }
    }
}

impl<B> ResponseBody<B>
where
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn http1(decoder: Decoder, conn: Box<Http1>, key: Key, pool: Arc<Pool<B>>) -> Self {
        let mut body = Self {
            kind: Kind::Http1 {
                decoder,
                conn: Some(Driven { conn, key, pool }),
            },
        };
        body.release_if_ended();
        body
    }

    /// An HTTP/2 body: its connection has a task of its own.
    pub(crate) fn http2(inner: Incoming) -> Self {
        Self {
            kind: Kind::Http2(inner),
        }
    }

    /// Once the body has ended cleanly, its connection may serve another request.
    fn release_if_ended(&mut self) {
        if let Kind::Http1 { decoder, conn } = &mut self.kind {
            if decoder.is_end() {
                if let Some(driven) = conn.take() {
                    if decoder.reusable(&driven.conn.conn) {
                        driven.pool.checkin_http1(driven.key, driven.conn);
                    }
                }
            }
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = crate::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Http2(inner) => {
                return Pin::new(inner)
                    .poll_frame(cx)
                    .map_err(crate::Error::response_hyper)
            }
            Kind::Http1 { decoder, conn } => {
                let Some(driven) = conn else {
                    return Poll::Ready(None);
                };
                let polled = decoder.poll_frame(&mut driven.conn.conn, cx);
                if let Poll::Ready(Some(Err(_))) = &polled {
                    *conn = None;
                }
                polled
            }
        };
        this.release_if_ended();
        polled.map(|frame| frame.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Http1 { decoder, .. } => decoder.is_end(),
            Kind::Http2(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Http1 { decoder, .. } => match decoder.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            Kind::Http2(inner) => inner.size_hint(),
        }
    }
}
