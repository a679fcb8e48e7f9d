//! weir's HTTP/1.1 response decoder against hyper's client connection: the same responses,
//! valid and malformed, cut at random read boundaries, must be accepted or refused alike and
//! yield the same status and body bytes. The deliberate differences (listed in the crate
//! docs) are stated here as such, so that any other one fails.

use crate::fuzzing::{decode as weir, Verdict};
use bytes::Bytes;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// hyper's client connection over an in-memory pipe, the server half writing `pieces`.
async fn hyper(pieces: Vec<Vec<u8>>) -> Verdict {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Full<Bytes>,
    >(hyper_util::rt::TokioIo::new(client))
    .await
    {
        Ok(pair) => pair,
        Err(_) => return Verdict::Refused,
    };
    tokio::spawn(conn);
    tokio::spawn(async move {
        // Take the request, then answer piece by piece, then close.
        let mut request = vec![0u8; 4096];
        let _ = server.read(&mut request).await;
        for piece in pieces {
            if server.write_all(&piece).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = server.shutdown().await;
    });
    let request = http::Request::post("/v1/chat/completions")
        .header("host", "upstream")
        .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
        .expect("a request");
    let Ok(response) = sender.send_request(request).await else {
        return Verdict::Refused;
    };
    let status = response.status().as_u16();
    match response.into_body().collect().await {
        Ok(body) => Verdict::Answer(status, body.to_bytes().to_vec()),
        Err(_) => Verdict::Refused,
    }
}

/// The differences weir makes on purpose (see the crate docs): `Some(weir's verdict)` when
/// the wire hits one.
fn deliberate(wire: &[u8], hyper: &Verdict) -> Option<Verdict> {
    let text = String::from_utf8_lossy(wire);
    let statuses: Vec<u16> = text
        .split("\r\n\r\n")
        .filter_map(|head| head.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok())
        .collect();
    // A status outside 100-599, an unasked 101, or more than 8 interim heads: refused
    // (hyper takes any three digits, and follows a 101 or as many 1xx as come).
    let interim = statuses
        .iter()
        .take_while(|s| (100..200).contains(*s))
        .count();
    let stricter = statuses
        .iter()
        .any(|s| !(100..=599).contains(s) || *s == 101)
        || interim > 8;
    (stricter && matches!(hyper, Verdict::Answer(..))).then_some(Verdict::Refused)
}

fn hex(n: usize, upper: bool) -> String {
    if upper {
        format!("{n:X}")
    } else {
        format!("{n:x}")
    }
}

/// A response: interim heads, a status line, headers and a body framed one way or another,
/// valid or broken.
fn response() -> impl Strategy<Value = Vec<u8>> {
    let interim = proptest::collection::vec(prop_oneof![Just(100u16), Just(103), Just(101)], 0..3);
    let status = prop_oneof![
        6 => Just(200u16), 1 => Just(204), 1 => Just(304), 1 => Just(404), 1 => Just(503),
        1 => Just(999), 1 => Just(600), 1 => Just(99),
    ];
    let version = prop_oneof![5 => Just("1.1"), 1 => Just("1.0")];
    let body = proptest::collection::vec(
        prop_oneof![
            Just(b'a'),
            Just(b'\r'),
            Just(b'\n'),
            Just(b'0'),
            any::<u8>()
        ],
        0..48,
    );
    let framing = 0u8..12;
    let variant = 0u8..8;
    let trailers = 0usize..3;
    let upper = any::<bool>();
    let truncate = proptest::option::weighted(0.2, any::<usize>());
    (
        interim, status, version, body, framing, variant, trailers, upper, truncate,
    )
        .prop_map(
            |(interim, status, version, body, framing, variant, trailers, upper, truncate)| {
                let mut wire = Vec::new();
                for code in interim {
                    wire.extend_from_slice(format!("HTTP/1.1 {code} Interim\r\n\r\n").as_bytes());
                }
                wire.extend_from_slice(format!("HTTP/{version} {status} Reason\r\n").as_bytes());
                let n = body.len();
                let mut payload = Vec::new();
                match framing {
                    // Content-Length, right or wrong.
                    0..=3 => {
                        let value = match variant {
                            0 | 1 => n.to_string(),
                            2 => format!("+{n}"),
                            3 => format!("{n}, {n}"),
                            4 => format!("{n}, {}", n + 1),
                            5 => format!(" {n} "),
                            6 => format!("0{n}"),
                            _ => format!("{}", n.saturating_sub(1)),
                        };
                        wire.extend_from_slice(format!("content-length: {value}\r\n").as_bytes());
                        payload.extend_from_slice(&body);
                    }
                    // Chunked, in two chunks, with sizes written every which way.
                    4..=8 => {
                        wire.extend_from_slice(b"transfer-encoding: chunked\r\n");
                        if framing == 8 {
                            wire.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
                        }
                        let (a, b) = body.split_at(n / 2);
                        for part in [a, b] {
                            if part.is_empty() {
                                continue;
                            }
                            let size = match variant {
                                0..=2 => hex(part.len(), upper),
                                3 => format!("00{}", hex(part.len(), upper)),
                                4 => format!("{} ;ext=1", hex(part.len(), upper)),
                                5 => format!("+{}", hex(part.len(), upper)),
                                6 => format!(" {}", hex(part.len(), upper)),
                                _ => format!("0x{}", hex(part.len(), upper)),
                            };
                            payload.extend_from_slice(size.as_bytes());
                            payload.extend_from_slice(if variant == 2 && upper {
                                b"\n"
                            } else {
                                b"\r\n"
                            });
                            payload.extend_from_slice(part);
                            payload.extend_from_slice(b"\r\n");
                        }
                        payload.extend_from_slice(b"0\r\n");
                        for i in 0..trailers {
                            if variant == 1 && i == 1 {
                                payload.extend_from_slice(b"not a trailer\r\n");
                            } else {
                                payload.extend_from_slice(format!("x-t{i}: v\r\n").as_bytes());
                            }
                        }
                        payload.extend_from_slice(b"\r\n");
                    }
                    // A transfer coding that is not chunked: the body runs to the close.
                    9 => {
                        wire.extend_from_slice(b"transfer-encoding: gzip\r\n");
                        payload.extend_from_slice(&body);
                    }
                    // No framing at all: to the close.
                    _ => payload.extend_from_slice(&body),
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(&payload);
                if let Some(at) = truncate {
                    wire.truncate(at % (wire.len() + 1));
                }
                wire
            },
        )
}

fn split(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points {
        pieces.push(wire[start..p].to_vec());
        start = p;
    }
    pieces.push(wire[start..].to_vec());
    pieces.retain(|p| !p.is_empty());
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn weir_reads_responses_as_hyper_does(
        wire in response(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let pieces = split(&wire, &cuts);
        let ours = weir(&pieces.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let theirs = runtime.block_on(hyper(pieces));
        let expected = deliberate(&wire, &theirs).unwrap_or(theirs);
        prop_assert_eq!(
            &ours,
            &expected,
            "wire: {:?}",
            String::from_utf8_lossy(&wire)
        );
    }
}
