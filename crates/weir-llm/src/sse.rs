//! An incremental Server-Sent Events decoder over [`Bytes`] frames.
//!
//! Frames arrive from the network cut at arbitrary bytes: in the middle of a line, between the
//! `\r` and `\n` of a line end, in the middle of a multi-byte UTF-8 character. [`SseDecoder`]
//! follows the WHATWG event-stream grammar over such frames and yields the same events whatever
//! the cut:
//!
//! - lines end with `\n`, `\r\n` or `\r`;
//! - a line starting with `:` is a comment (counted, see [`SseDecoder::comments`]);
//! - `data:` lines accumulate, joined by `\n`; an empty line dispatches the event;
//! - `event:`, `id:` and `retry:` are kept; unknown fields are ignored;
//! - a leading byte-order mark is dropped; an event cut by the end of the stream is never
//!   dispatched ([`SseDecoder::has_partial_event`] tells that it happened).
//!
//! The decoder works on bytes, so a UTF-8 character split across frames is joined before anyone
//! looks at it. It copies nothing in the common case: an event whose single `data:` line lies in
//! one frame is a [`Bytes`] slice of that frame.
//!
//! ```
//! use bytes::Bytes;
//! use weir_llm::sse::SseDecoder;
//!
//! let mut decoder = SseDecoder::new();
//! decoder.push(Bytes::from_static(b"data: {\"a\":1}\r\n\r\nda"));
//! let event = decoder.next_event().unwrap().unwrap();
//! assert_eq!(&event.data[..], b"{\"a\":1}");
//! assert!(decoder.next_event().unwrap().is_none()); // waits for the rest of the frame
//! decoder.push(Bytes::from_static(b"ta: [DONE]\n\n"));
//! assert!(decoder.next_event().unwrap().unwrap().is_done());
//! ```

use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// The default bound on one line or one event's data (1 MiB).
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1 << 20;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field of this event, if it had one (the spec's default type is `message`).
    pub event: Option<Bytes>,
    /// The `data:` lines joined by `\n`.
    pub data: Bytes,
    /// The `id:` field of this event, if it had one.
    pub id: Option<Bytes>,
    /// The `retry:` field of this event, if it had a valid one.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// Whether this is OpenAI's end-of-stream sentinel, `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data.as_ref() == b"[DONE]"
    }

    /// The data as text; invalid UTF-8 is replaced, as the SSE spec's decoder does.
    pub fn data_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.data)
    }
}

/// The decoder met a line or an event larger than its bound.
///
/// The stream is malformed (or hostile); the decoder must not be used again.
#[derive(Debug)]
pub struct EventTooLarge {
    limit: usize,
}

impl EventTooLarge {
    /// The bound that was exceeded, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server-sent event larger than {} bytes", self.limit)
    }
}

impl std::error::Error for EventTooLarge {}

/// The data of the event being assembled: none, one line (zero-copy), or several joined.
#[derive(Debug, Default)]
enum Data {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

/// Incremental SSE decoder. See the [module docs](self).
#[derive(Debug)]
pub struct SseDecoder {
    /// The frame being decoded (what is left of it).
    pending: Bytes,
    /// A line cut by the end of a frame.
    line: BytesMut,
    /// The previous frame ended with `\r`: a `\n` opening the next one belongs to it.
    skip_lf: bool,
    /// No line has been completed yet (a BOM may open the first one).
    first_line: bool,
    data: Data,
    data_len: usize,
    event: Option<Bytes>,
    id: Option<Bytes>,
    retry: Option<u64>,
    /// Any field seen since the last dispatch (an event is in progress).
    in_event: bool,
    comments: u64,
    max_event_size: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    /// A decoder with the default bound ([`DEFAULT_MAX_EVENT_SIZE`]).
    pub fn new() -> Self {
        Self::with_max_event_size(DEFAULT_MAX_EVENT_SIZE)
    }

    /// A decoder that refuses lines or event data over `max` bytes.
    pub fn with_max_event_size(max: usize) -> Self {
        Self {
            pending: Bytes::new(),
            line: BytesMut::new(),
            skip_lf: false,
            first_line: true,
            data: Data::Empty,
            data_len: 0,
            event: None,
            id: None,
            retry: None,
            in_event: false,
            comments: 0,
            max_event_size: max,
        }
    }

    /// Hands the decoder the next frame. Call [`next_event`](Self::next_event) until it returns
    /// `Ok(None)` before pushing again; a frame pushed early is appended (with a copy).
    pub fn push(&mut self, frame: Bytes) {
        if self.pending.is_empty() {
            self.pending = frame;
        } else {
            let mut joined = BytesMut::with_capacity(self.pending.len() + frame.len());
            joined.extend_from_slice(&self.pending);
            joined.extend_from_slice(&frame);
            self.pending = joined.freeze();
        }
    }

    /// The next complete event, or `Ok(None)` when the frames pushed so far hold no more.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, EventTooLarge> {
        while let Some(line) = self.next_line()? {
            if let Some(event) = self.process_line(line)? {
                return Ok(Some(event));
            }
        }
        // An emptied `Bytes` still points into the frame's buffer; letting go of it lets the
        // reader (hyper's read buffer) reuse that memory instead of allocating anew.
        self.pending = Bytes::new();
        Ok(None)
    }

    /// Comment lines seen so far (keep-alives such as `: ping`).
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// Whether bytes or fields of an event not yet dispatched are held. At the end of the
    /// stream this means the last event was cut off; the spec discards it.
    pub fn has_partial_event(&self) -> bool {
        self.in_event || !self.line.is_empty() || !self.pending.is_empty()
    }

    fn next_line(&mut self) -> Result<Option<Bytes>, EventTooLarge> {
        if self.skip_lf && !self.pending.is_empty() {
            self.skip_lf = false;
            if self.pending[0] == b'\n' {
                self.pending.advance(1);
            }
        }
        let Some(end) = memchr::memchr2(b'\n', b'\r', &self.pending) else {
            if self.line.len() + self.pending.len() > self.max_event_size {
                return Err(EventTooLarge {
                    limit: self.max_event_size,
                });
            }
            if !self.pending.is_empty() {
                self.line.extend_from_slice(&self.pending);
            }
            self.pending = Bytes::new();
            return Ok(None);
        };
        let line = if self.line.is_empty() {
            self.pending.slice(..end)
        } else {
            self.line.extend_from_slice(&self.pending[..end]);
            self.line.split().freeze()
        };
        if line.len() > self.max_event_size {
            return Err(EventTooLarge {
                limit: self.max_event_size,
            });
        }
        let ended_by_cr = self.pending[end] == b'\r';
        self.pending.advance(end + 1);
        if ended_by_cr {
            match self.pending.first() {
                Some(b'\n') => self.pending.advance(1),
                Some(_) => {}
                None => self.skip_lf = true,
            }
        }
        Ok(Some(line))
    }

    fn process_line(&mut self, mut line: Bytes) -> Result<Option<SseEvent>, EventTooLarge> {
        if std::mem::take(&mut self.first_line) && line.starts_with(BOM) {
            line.advance(BOM.len());
        }
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            self.comments += 1;
            return Ok(None);
        }
        let (field, value) = match memchr::memchr(b':', &line) {
            Some(colon) => {
                let mut value = line.slice(colon + 1..);
                if value.first() == Some(&b' ') {
                    value.advance(1);
                }
                (line.slice(..colon), value)
            }
            None => (line, Bytes::new()),
        };
        self.in_event = true;
        match field.as_ref() {
            b"data" => self.push_data(value)?,
            b"event" => self.event = Some(value),
            b"id" if memchr::memchr(0, &value).is_none() => self.id = Some(value),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse().ok());
            }
            _ => {}
        }
        Ok(None)
    }

    fn push_data(&mut self, value: Bytes) -> Result<(), EventTooLarge> {
        self.data_len += value.len() + usize::from(!matches!(self.data, Data::Empty));
        if self.data_len > self.max_event_size {
            return Err(EventTooLarge {
                limit: self.max_event_size,
            });
        }
        self.data = match std::mem::take(&mut self.data) {
            Data::Empty => Data::One(value),
            Data::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + 1 + value.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(b"\n");
                joined.extend_from_slice(&value);
                Data::Many(joined)
            }
            Data::Many(mut joined) => {
                joined.extend_from_slice(b"\n");
                joined.extend_from_slice(&value);
                Data::Many(joined)
            }
        };
        Ok(())
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        self.in_event = false;
        self.data_len = 0;
        let event = self.event.take();
        let id = self.id.take();
        let retry = self.retry.take();
        let data = match std::mem::take(&mut self.data) {
            // The spec dispatches nothing when the data buffer is empty.
            Data::Empty => return None,
            Data::One(data) => data,
            Data::Many(data) => data.freeze(),
        };
        Some(SseEvent {
            event,
            data,
            id,
            retry,
        })
    }
}

/// Writes one event in the wire format (`data:` lines, then an empty line). Lines of `data`
/// are split on `\n`.
pub fn encode_data(data: &[u8], out: &mut BytesMut) {
    for line in data.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(frames: &[&[u8]]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        for frame in frames {
            decoder.push(Bytes::copy_from_slice(frame));
            while let Some(event) = decoder.next_event().unwrap() {
                events.push(event);
            }
        }
        events
    }

    fn datas(events: &[SseEvent]) -> Vec<String> {
        events.iter().map(|e| e.data_str().into_owned()).collect()
    }

    #[test]
    fn every_line_ending() {
        let events = decode_all(&[b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\n\r\n"]);
        assert_eq!(datas(&events), ["a", "b", "c", "d"]);
    }

    #[test]
    fn crlf_split_between_frames_is_one_line_end() {
        let events = decode_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r", b"\r"]);
        assert_eq!(datas(&events), ["a", "b"]);
    }

    #[test]
    fn comments_are_counted_not_dispatched() {
        let mut decoder = SseDecoder::new();
        decoder.push(Bytes::from_static(b": ping\n\n: keep-alive\ndata: x\n\n"));
        let event = decoder.next_event().unwrap().unwrap();
        assert_eq!(&event.data[..], b"x");
        assert_eq!(decoder.comments(), 2);
        assert!(!decoder.has_partial_event());
    }

    #[test]
    fn multi_line_data_and_fields() {
        let events =
            decode_all(&[b"event: delta\nid: 7\nretry: 150\ndata: one\ndata:two\ndata\n\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data_str(), "one\ntwo\n");
        assert_eq!(events[0].event.as_deref(), Some(&b"delta"[..]));
        assert_eq!(events[0].id.as_deref(), Some(&b"7"[..]));
        assert_eq!(events[0].retry, Some(150));
    }

    #[test]
    fn split_utf8_is_joined() {
        let text = "data: héllo 世界\n\n".as_bytes();
        let events = decode_all(&[&text[..8], &text[8..14], &text[14..]]);
        assert_eq!(datas(&events), ["héllo 世界"]);
    }

    #[test]
    fn bom_is_dropped_and_only_at_start() {
        let events = decode_all(&[b"\xEF\xBB", b"\xBFdata: a\n\n"]);
        assert_eq!(datas(&events), ["a"]);
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        let events = decode_all(&[b"event: x\n\ndata: y\n\n"]);
        assert_eq!(datas(&events), ["y"]);
        assert_eq!(events[0].event, None, "fields reset at every blank line");
    }

    #[test]
    fn cut_event_is_partial_and_not_dispatched() {
        let mut decoder = SseDecoder::new();
        decoder.push(Bytes::from_static(b"data: a\n\ndata: {\"trunc"));
        assert!(decoder.next_event().unwrap().is_some());
        assert!(decoder.next_event().unwrap().is_none());
        assert!(decoder.has_partial_event());
    }

    #[test]
    fn oversized_line_is_refused() {
        let mut decoder = SseDecoder::with_max_event_size(16);
        decoder.push(Bytes::from(vec![b'a'; 10]));
        assert!(decoder.next_event().unwrap().is_none());
        decoder.push(Bytes::from(vec![b'a'; 10]));
        assert_eq!(decoder.next_event().unwrap_err().limit(), 16);
    }

    #[test]
    fn single_line_event_is_a_slice_of_the_frame() {
        let frame = Bytes::from_static(b"data: {\"x\":1}\n\n");
        let mut decoder = SseDecoder::new();
        decoder.push(frame.clone());
        let event = decoder.next_event().unwrap().unwrap();
        let inside = frame.as_ptr_range();
        assert!(inside.contains(&event.data.as_ptr()), "no copy was made");
    }

    #[test]
    fn a_drained_frame_is_not_held() {
        let frame = Bytes::from(b"data: a\n\ndata: b\n\n".to_vec());
        let mut decoder = SseDecoder::new();
        decoder.push(frame.clone());
        while decoder.next_event().unwrap().is_some() {}
        // Only `frame` itself holds the buffer now, so it can be reclaimed.
        assert!(frame.is_unique());
    }

    #[test]
    fn encode_round_trips() {
        let mut out = BytesMut::new();
        encode_data(b"a\nb", &mut out);
        assert_eq!(&out[..], b"data: a\ndata: b\n\n");
        assert_eq!(datas(&decode_all(&[&out])), ["a\nb"]);
    }

    fn line_end() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
    }

    /// A stream of events written with arbitrary line ends, comments and multi-line data.
    fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<String>)> {
        let event = (
            proptest::collection::vec("[a-z {}\":,é世\\[\\]]{0,12}", 1..4),
            line_end(),
            proptest::option::of("[a-z ]{0,8}"),
        );
        proptest::collection::vec(event, 0..12).prop_map(|events| {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for (lines, end, comment) in events {
                if let Some(comment) = comment {
                    wire.extend_from_slice(format!(":{comment}{end}").as_bytes());
                }
                for line in &lines {
                    wire.extend_from_slice(format!("data: {line}{end}").as_bytes());
                }
                wire.extend_from_slice(end.as_bytes());
                expected.push(lines.join("\n"));
            }
            (wire, expected)
        })
    }

    fn rechunk(input: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut frames = Vec::new();
        let mut start = 0;
        for cut in cuts {
            frames.push(&input[start..cut]);
            start = cut;
        }
        frames.push(&input[start..]);
        decode_all(&frames)
    }

    proptest! {
        #[test]
        fn any_rechunking_yields_the_written_events(
            (wire, expected) in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..24),
        ) {
            prop_assert_eq!(datas(&rechunk(&wire, &cuts)), expected);
        }

        #[test]
        fn any_bytes_decode_the_same_whatever_the_chunking(
            input in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '), Just(b'd'),
                            Just(b'a'), Just(b't'), any::<u8>()], 0..256),
            cuts in proptest::collection::vec(any::<usize>(), 0..24),
        ) {
            let whole = decode_all(&[&input]);
            prop_assert_eq!(rechunk(&input, &cuts), whole);
        }
    }
}
