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
//! one frame is a [`Bytes`] slice of that frame. [`SseScanner`], the line grammar underneath,
//! allocates nothing at all: use it to watch a stream without keeping its events.
//!
//! ```
//! use bytes::Bytes;
//! use weir_llm::sse::SseDecoder;
//!
//! let mut decoder = SseDecoder::new();
//! decoder.push(Bytes::from_static(b"data: {\"a\":1}\r\n\r\nda"));
//! let event = decoder.next_event().unwrap().unwrap();
//! assert_eq!(&event.data[..], b"{\"a\":1}");
//! assert!(decoder.next_event().unwrap().is_none()); // waits for the rest of the event
//! decoder.push(Bytes::from_static(b"ta: [DONE]\n\n"));
//! assert!(decoder.next_event().unwrap().unwrap().is_done());
//! ```

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::fmt;

pub mod framer;
pub use framer::{Event, Framer};

/// The default bound on one line or one event's data (1 MiB).
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1 << 20;

pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

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

/// One line of an event stream, borrowed from the frame (or from the scanner's carry buffer
/// when the line was cut by a frame end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// `name: value` (one leading space of the value removed), or `name` alone (empty value).
    Field {
        /// The field name (`data`, `event`, `id`, `retry`, or anything else).
        name: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// `:...`, a comment (keep-alives are comments).
    Comment(&'a [u8]),
    /// An empty line: the end of an event.
    Blank,
}

/// The SSE line grammar over frames, with nothing allocated per line: lines end with `\n`,
/// `\r\n` or `\r` (also when `\r` and `\n` fall in different frames), a leading BOM is
/// dropped, and only a line cut by a frame end is copied (into a carry buffer). The building
/// block of [`SseDecoder`]; use it alone to watch a stream cheaply.
///
/// ```
/// use weir_llm::sse::{Line, SseScanner};
///
/// let mut scanner = SseScanner::new();
/// let mut data = Vec::new();
/// for frame in [&b"data: [DO"[..], b"NE]\r", b"\n\r\n"] {
///     scanner.scan(frame, |line| if let Line::Field { name: b"data", value } = line {
///         data.push(value.to_vec());
///     }).unwrap();
/// }
/// assert_eq!(data, [b"[DONE]".to_vec()]);
/// ```
#[derive(Debug)]
pub struct SseScanner {
    /// A line cut by the end of a frame.
    carry: Vec<u8>,
    /// The previous frame ended with `\r`: a `\n` opening the next one belongs to it.
    skip_lf: bool,
    /// No line has been completed yet (a BOM may open the first one).
    first_line: bool,
    max_line: usize,
}

impl Default for SseScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl SseScanner {
    /// A scanner with the default bound on a line ([`DEFAULT_MAX_EVENT_SIZE`]).
    pub fn new() -> Self {
        Self::with_max_line(DEFAULT_MAX_EVENT_SIZE)
    }

    /// A scanner that refuses lines over `max` bytes.
    pub fn with_max_line(max: usize) -> Self {
        Self {
            carry: Vec::new(),
            skip_lf: false,
            first_line: true,
            max_line: max,
        }
    }

    /// Whether part of a line is held, waiting for the next frame.
    pub fn has_partial_line(&self) -> bool {
        !self.carry.is_empty()
    }

    /// Calls `on_line` for every line that `frame` completes, in order.
    pub fn scan(
        &mut self,
        frame: &[u8],
        mut on_line: impl FnMut(Line<'_>),
    ) -> Result<(), EventTooLarge> {
        let mut rest = frame;
        if rest.is_empty() {
            // Not even the `\n` that may complete a `\r`: keep waiting for it.
            return Ok(());
        }
        if std::mem::take(&mut self.skip_lf) && rest[0] == b'\n' {
            rest = &rest[1..];
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
            let ended_by_cr = rest[end] == b'\r';
            if self.carry.is_empty() {
                self.line(&rest[..end], &mut on_line)?;
            } else {
                let mut carry = std::mem::take(&mut self.carry);
                carry.extend_from_slice(&rest[..end]);
                let result = self.line(&carry, &mut on_line);
                carry.clear();
                self.carry = carry;
                result?;
            }
            rest = &rest[end + 1..];
            if ended_by_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
        if self.carry.len() + rest.len() > self.max_line {
            return Err(EventTooLarge {
                limit: self.max_line,
            });
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }

    fn line(
        &mut self,
        mut line: &[u8],
        on_line: &mut impl FnMut(Line<'_>),
    ) -> Result<(), EventTooLarge> {
        if line.len() > self.max_line {
            return Err(EventTooLarge {
                limit: self.max_line,
            });
        }
        if std::mem::take(&mut self.first_line) && line.starts_with(BOM) {
            line = &line[BOM.len()..];
        }
        on_line(parse_line(line));
        Ok(())
    }
}

/// One line (without its line end) as the event-stream grammar reads it.
pub(crate) fn parse_line(line: &[u8]) -> Line<'_> {
    match line.first() {
        None => Line::Blank,
        Some(b':') => Line::Comment(&line[1..]),
        Some(_) => match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                Line::Field {
                    name: &line[..colon],
                    value: value.strip_prefix(b" ").unwrap_or(value),
                }
            }
            None => Line::Field {
                name: line,
                value: &[],
            },
        },
    }
}

/// The data of the event being assembled: none, one line (zero-copy), or several joined.
#[derive(Debug, Default)]
enum Data {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

/// The fields of the event being assembled.
#[derive(Debug, Default)]
struct Building {
    data: Data,
    data_len: usize,
    event: Option<Bytes>,
    id: Option<Bytes>,
    retry: Option<u64>,
    /// Any field seen since the last dispatch.
    started: bool,
}

/// Incremental SSE decoder. See the [module docs](self).
#[derive(Debug)]
pub struct SseDecoder {
    scanner: SseScanner,
    building: Building,
    ready: VecDeque<SseEvent>,
    comments: u64,
    max_event_size: usize,
    failed: Option<EventTooLarge>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// A `Bytes` for `part`: a zero-copy slice of `frame` when it lies inside it, else a copy (a
/// line carried over from an earlier frame).
fn bytes_of(frame: &Bytes, part: &[u8]) -> Bytes {
    let inside = frame.as_ptr_range();
    if part.is_empty() {
        Bytes::new()
    } else if inside.contains(&part.as_ptr()) {
        frame.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
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
            scanner: SseScanner::with_max_line(max),
            building: Building::default(),
            ready: VecDeque::new(),
            comments: 0,
            max_event_size: max,
            failed: None,
        }
    }

    /// Hands the decoder the next frame; its events are then returned by
    /// [`next_event`](Self::next_event).
    pub fn push(&mut self, frame: Bytes) {
        if self.failed.is_some() {
            return;
        }
        let Self {
            scanner,
            building,
            ready,
            comments,
            max_event_size,
            failed,
        } = self;
        let result = scanner.scan(&frame, |line| match line {
            Line::Blank => {
                if let Some(event) = building.dispatch() {
                    ready.push_back(event);
                }
            }
            Line::Comment(_) => *comments += 1,
            Line::Field { name, value } => {
                if failed.is_none() {
                    if let Err(e) = building.field(&frame, name, value, *max_event_size) {
                        *failed = Some(e);
                    }
                }
            }
        });
        if let Err(e) = result {
            self.failed.get_or_insert(e);
        }
    }

    /// The next complete event, or `Ok(None)` when the frames pushed so far hold no more.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, EventTooLarge> {
        if let Some(event) = self.ready.pop_front() {
            return Ok(Some(event));
        }
        match self.failed.take() {
            Some(e) => {
                self.failed = Some(EventTooLarge { limit: e.limit });
                Err(e)
            }
            None => Ok(None),
        }
    }

    /// Comment lines seen so far (keep-alives such as `: ping`).
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// Whether bytes or fields of an event not yet dispatched are held. At the end of the
    /// stream this means the last event was cut off; the spec discards it.
    pub fn has_partial_event(&self) -> bool {
        self.building.started || self.scanner.has_partial_line()
    }
}

impl Building {
    fn field(
        &mut self,
        frame: &Bytes,
        name: &[u8],
        value: &[u8],
        max: usize,
    ) -> Result<(), EventTooLarge> {
        self.started = true;
        match name {
            b"data" => self.push_data(bytes_of(frame, value), max)?,
            b"event" => self.event = Some(bytes_of(frame, value)),
            b"id" if memchr::memchr(0, value).is_none() => self.id = Some(bytes_of(frame, value)),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
        Ok(())
    }

    fn push_data(&mut self, value: Bytes, max: usize) -> Result<(), EventTooLarge> {
        self.data_len += value.len() + usize::from(!matches!(self.data, Data::Empty));
        if self.data_len > max {
            return Err(EventTooLarge { limit: max });
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
        let building = std::mem::take(self);
        let data = match building.data {
            // The spec dispatches nothing when the data buffer is empty.
            Data::Empty => return None,
            Data::One(data) => data,
            Data::Many(data) => data.freeze(),
        };
        Some(SseEvent {
            event: building.event,
            data,
            id: building.id,
            retry: building.retry,
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
    fn empty_frame_between_cr_and_lf() {
        let events = decode_all(&[b"data: a\r", b"", b"\ndata: b\n", b"", b"\n"]);
        assert_eq!(datas(&events), ["a\nb"]);
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
        // Only `frame` itself holds the buffer now, so its owner can reuse it.
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
