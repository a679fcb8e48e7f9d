//! What the fuzz targets (`fuzz/` at the workspace root) check, as functions: the targets are
//! thin shims over them, and the unit tests replay the committed seeds and every crash ever
//! found (`fuzz/regressions/`) through them. Compiled for tests and with the `fuzzing` feature.

use crate::h1::{Decoder, Heads, Sent};
use bytes::BytesMut;

/// What a client made of a response: its status and body, or that it refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A whole response.
    Answer(u16, Vec<u8>),
    /// Refused (malformed, or cut before its end).
    Refused,
}

/// weir's HTTP/1.1 response decoder, fed `pieces` as successive reads, then the end of the
/// connection.
pub fn decode(pieces: &[&[u8]]) -> Verdict {
    let sent = Sent {
        head_request: false,
    };
    let mut heads = Heads::default();
    let mut buf = BytesMut::new();
    let mut head = None;
    let mut body = Vec::new();
    let mut pieces = pieces.iter();
    loop {
        if head.is_none() {
            match heads.next(&mut buf, sent) {
                Err(_) => return Verdict::Refused,
                Ok(Some((response, framing))) => {
                    head = Some((response.status().as_u16(), Decoder::new(framing)));
                }
                Ok(None) => {}
            }
        }
        if let Some((_, decoder)) = &mut head {
            loop {
                match decoder.decode(&mut buf) {
                    Err(_) => return Verdict::Refused,
                    Ok(Some(data)) => body.extend_from_slice(&data),
                    Ok(None) => break,
                }
            }
            if decoder.is_end() {
                return Verdict::Answer(head.expect("a head").0, body);
            }
        }
        match pieces.next() {
            Some(piece) => buf.extend_from_slice(piece),
            None => {
                // The connection's end: only a close-delimited body ends there.
                return match head {
                    Some((status, decoder)) if decoder.is_close_delimited() => {
                        Verdict::Answer(status, body)
                    }
                    _ => Verdict::Refused,
                };
            }
        }
    }
}

/// The `h1_response` fuzz target: the first byte picks a read size, the rest is the wire.
/// Whatever the reads, the decoder says the same (and never panics); an answer's body is
/// never longer than the wire.
pub fn check_response(data: &[u8]) {
    let Some((&seed, wire)) = data.split_first() else {
        return;
    };
    let whole = decode(&[wire]);
    let step = usize::from(seed % 23) + 1;
    let reads: Vec<&[u8]> = wire.chunks(step).collect();
    let cut = decode(&reads);
    assert_eq!(whole, cut, "the same response read {step} bytes at a time");
    if let Verdict::Answer(_, body) = &whole {
        assert!(body.len() <= wire.len());
    }
}

#[cfg(test)]
mod tests {
    /// Every committed seed and regression input passes the fuzz targets' checks.
    #[test]
    fn seeds_and_regressions_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        let mut seen = 0;
        for dir in ["seeds/h1_response", "regressions/h1_response"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                super::check_response(&std::fs::read(&path).unwrap());
                seen += 1;
            }
        }
        assert!(seen > 0, "the seed corpus is committed");
    }
}
