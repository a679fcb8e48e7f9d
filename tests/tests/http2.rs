//! HTTP/2 limits, probed with raw frames (an ordinary client would obey the limits): the
//! settings weir announces, streams past the concurrency limit refused, a rapid-reset flood
//! answered with GOAWAY, and a header list over its limit refused.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_e2e::Harness;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with a 7-bit prefix (a string length, not Huffman-coded).
fn hpack_len(n: usize) -> Vec<u8> {
    if n < 127 {
        return vec![n as u8];
    }
    let (mut out, mut rest) = (vec![127u8], n - 127);
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// A request head: `method` (an index of HPACK's static table: 2 GET, 3 POST), `path`, and
/// one extra header `x-big` of `extra` bytes if any.
fn head(method: u8, path: &str, extra: usize) -> Vec<u8> {
    let mut block = vec![0x80 | method, 0x86]; // :method, :scheme http
    block.push(0x04); // :path, literal value
    block.extend(hpack_len(path.len()));
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(b"\x01\x04weir"); // :authority
    if extra > 0 {
        block.push(0x00);
        block.extend(hpack_len(5));
        block.extend_from_slice(b"x-big");
        block.extend(hpack_len(extra));
        block.extend(std::iter::repeat_n(b'a', extra));
    }
    block
}

struct Conn(TcpStream);

impl Conn {
    async fn open(h: &Harness) -> Self {
        let mut tcp = TcpStream::connect(h.addr).await.unwrap();
        tcp.write_all(PREFACE).await.unwrap();
        tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        Self(tcp)
    }

    /// The next frame: kind, flags, stream, payload (`None` once the server closed).
    async fn next(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut header = [0u8; 9];
        self.0.read_exact(&mut header).await.ok()?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        self.0.read_exact(&mut payload).await.ok()?;
        Some((header[3], header[4], stream, payload))
    }

    /// Frames until `stop` says so (or the connection ends): what `stop` saw last.
    async fn until<T>(&mut self, mut stop: impl FnMut(u8, u32, &[u8]) -> Option<T>) -> Option<T> {
        let wait = async {
            while let Some((kind, _, stream, payload)) = self.next().await {
                if let Some(found) = stop(kind, stream, &payload) {
                    return Some(found);
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .ok()
            .flatten()
    }
}

fn code(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(payload[at..at + 4].try_into().unwrap())
}

#[tokio::test(start_paused = true)]
async fn weir_announces_its_limits_and_refuses_streams_past_the_concurrency_limit() {
    let h = Harness::start().await;
    let mut conn = Conn::open(&h).await;
    let settings = conn
        .until(|kind, _, payload| {
            (kind == SETTINGS && !payload.is_empty()).then(|| payload.to_vec())
        })
        .await
        .expect("the server's SETTINGS");
    let value = |id: u16| {
        settings
            .chunks(6)
            .find(|s| u16::from_be_bytes([s[0], s[1]]) == id)
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    };
    assert_eq!(value(0x3), Some(256), "MAX_CONCURRENT_STREAMS");
    assert_eq!(value(0x6), Some(64 * 1024), "MAX_HEADER_LIST_SIZE");

    // 300 requests whose bodies never come: 256 are held open, 44 refused.
    let mut burst = Vec::new();
    for i in 0..300u32 {
        burst.extend(frame(
            HEADERS,
            END_HEADERS,
            2 * i + 1,
            &head(3, "/v1/chat/completions", 0),
        ));
    }
    conn.0.write_all(&burst).await.unwrap();
    let mut refused = 0;
    let all = conn
        .until(|kind, _, payload| {
            if kind == RST_STREAM && code(payload, 0) == 0x7 {
                refused += 1; // REFUSED_STREAM
            }
            (refused == 44).then_some(())
        })
        .await;
    assert!(all.is_some(), "44 streams refused, {refused} seen");
}

#[tokio::test(start_paused = true)]
async fn a_rapid_reset_flood_is_answered_with_goaway() {
    let h = Harness::start().await;
    let mut conn = Conn::open(&h).await;
    let mut flood = Vec::new();
    for i in 0..2000u32 {
        let stream = 2 * i + 1;
        flood.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &head(2, "/v1/models", 0),
        ));
        flood.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes())); // CANCEL
    }
    conn.0.write_all(&flood).await.unwrap();
    let error = conn
        .until(|kind, _, payload| (kind == GOAWAY).then(|| code(payload, 4)))
        .await;
    assert_eq!(error, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM");
}

#[tokio::test(start_paused = true)]
async fn a_header_list_over_the_limit_is_refused() {
    let h = Harness::start().await;
    // The same request with a small header and with one of 70,000 bytes.
    let mut statuses = Vec::new();
    for extra in [10, 70_000] {
        let mut conn = Conn::open(&h).await;
        let block = head(2, "/v1/models", extra);
        let pieces: Vec<&[u8]> = block.chunks(16_000).collect();
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i == pieces.len() - 1;
            let (kind, flags) = match i {
                0 => (HEADERS, END_STREAM | if last { END_HEADERS } else { 0 }),
                _ => (CONTINUATION, if last { END_HEADERS } else { 0 }),
            };
            out.extend(frame(kind, flags, 1, piece));
        }
        conn.0.write_all(&out).await.unwrap();
        // The first byte of the answer's header block: 0x88 is `:status 200` (static table).
        let first = conn
            .until(|kind, stream, payload| (kind == HEADERS && stream == 1).then(|| payload[0]))
            .await;
        statuses.push(first);
    }
    assert_eq!(statuses[0], Some(0x88), "the small header list is served");
    assert!(
        statuses[1].is_some_and(|b| b != 0x88),
        "the large one is not: {statuses:?}"
    );
}
