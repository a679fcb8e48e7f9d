//! Whole-event framing: a stream's bytes regrouped so that every piece ends on an event
//! boundary.
//!
//! A network cuts a stream anywhere: inside a `data:` line, between the `\r` and the `\n` of a
//! line end, inside a multi-byte character. A proxy that forwards what it read as it read it
//! hands its client the same cuts, and if the stream then breaks (or is continued from
//! somewhere else) the client is left with half an event glued to whatever comes next.
//! [`Framer`] holds back the bytes of an event until its terminating blank line has arrived,
//! and hands on everything that is complete, together, as one piece:
//!
//! - a frame that ends on an event boundary (the common case) is handed on as it is: the same
//!   [`Bytes`], no copy;
//! - a frame that ends inside an event is split: its complete events go on as a slice of it,
//!   the rest waits (copied once into a small buffer) for the frames that complete it;
//! - comment lines between events (keep-alives) are boundaries too, so they go on at once;
//! - one pass over the bytes: each event is reported to the caller as it completes (its raw
//!   bytes, and the value of its `data:` line, borrowed), so a watcher needs no second scan;
//! - an event larger than the bound is an error, never an unbounded buffer.
//!
//! ```
//! use bytes::Bytes;
//! use weir_llm::sse::Framer;
//!
//! let mut framer = Framer::new(1 << 20);
//! let mut seen = Vec::new();
//! let out = framer
//!     .push(Bytes::from_static(b"data: a\n\ndata: b\n\ndata: {\"tr"), |e| {
//!         seen.push(e.data().unwrap().to_vec())
//!     })
//!     .unwrap();
//! assert_eq!(out.as_deref(), Some(&b"data: a\n\ndata: b\n\n"[..]));
//! assert!(framer.has_partial_event());
//! let out = framer.push(Bytes::from_static(b"unc\"}\n\n"), |e| seen.push(e.data().unwrap().to_vec())).unwrap();
//! assert_eq!(out.as_deref(), Some(&b"data: {\"trunc\"}\n\n"[..]));
//! assert_eq!(seen, [&b"a"[..], b"b", b"{\"trunc\"}"]);
//! ```

use super::{parse_line, EventTooLarge, Line, BOM};
use bytes::{Bytes, BytesMut};
use std::ops::Range;

/// One complete event, as [`Framer::push`] reports it.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    unit: &'a [u8],
    range: Range<usize>,
    data: Option<Range<usize>>,
    data_lines: u32,
    name: Option<Range<usize>>,
    /// A byte-order mark opens the event (the stream's first line).
    bom: bool,
}

impl<'a> Event<'a> {
    /// The event's bytes as they arrived: its lines and their line ends, the blank line
    /// included.
    pub fn raw(&self) -> &'a [u8] {
        &self.unit[self.range.clone()]
    }

    /// Where the event lies in the bytes that [`Framer::push`] returns.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The value of the event's `data:` line, when it has exactly one (OpenAI-style streams
    /// always do). With several, see [`data_lines`](Self::data_lines) and
    /// [`joined_data`](Self::joined_data).
    pub fn data(&self) -> Option<&'a [u8]> {
        match self.data_lines {
            1 => self.data.clone().map(|r| &self.unit[r]),
            _ => None,
        }
    }

    /// How many `data:` lines the event has.
    pub fn data_lines(&self) -> u32 {
        self.data_lines
    }

    /// The event's data as the event-stream grammar defines it: its `data:` lines joined by
    /// `\n` (a copy when there are several; `None` when there are none).
    pub fn joined_data(&self) -> Option<std::borrow::Cow<'a, [u8]>> {
        match self.data_lines {
            0 => None,
            1 => self.data().map(std::borrow::Cow::Borrowed),
            _ => {
                let mut joined = Vec::new();
                let mut first = true;
                let raw = self.raw();
                let raw = if self.bom { &raw[BOM.len()..] } else { raw };
                for_each_line(raw, |line| {
                    if let Line::Field {
                        name: b"data",
                        value,
                    } = parse_line(line)
                    {
                        // Lines are joined by `\n`, empty ones too (found by fuzzing).
                        if !std::mem::take(&mut first) {
                            joined.push(b'\n');
                        }
                        joined.extend_from_slice(value);
                    }
                });
                Some(std::borrow::Cow::Owned(joined))
            }
        }
    }

    /// The `event:` field (the event's type), if it has one.
    pub fn name(&self) -> Option<&'a [u8]> {
        self.name.clone().map(|r| &self.unit[r])
    }
}

/// Calls `f` with each line of `bytes` (without its line end).
fn for_each_line(bytes: &[u8], mut f: impl FnMut(&[u8])) {
    let mut rest = bytes;
    while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
        f(&rest[..end]);
        let mut next = end + 1;
        if rest[end] == b'\r' && rest.get(next) == Some(&b'\n') {
            next += 1;
        }
        rest = &rest[next..];
    }
}

/// Regroups a stream into whole events. See the [module docs](self).
#[derive(Debug)]
pub struct Framer {
    /// The bytes after the last boundary: an event (or a line) not yet complete.
    pending: BytesMut,
    /// How much of `pending` is complete lines; the rest is a line cut by a frame end.
    lines: usize,
    /// How much of the partial line has been searched for a line end already.
    searched: usize,
    /// The previous frame ended with `\r`: a `\n` opening the next one belongs to it.
    skip_lf: bool,
    /// No line has been completed yet (a BOM may open the first one).
    first_line: bool,
    /// The event in progress (offsets into `pending`).
    building: Building,
    max: usize,
}

/// What is known of the event in progress.
#[derive(Debug, Default, Clone)]
struct Building {
    /// A field line has been seen since the last boundary.
    started: bool,
    start: usize,
    data: Option<Range<usize>>,
    data_lines: u32,
    name: Option<Range<usize>>,
    bom: bool,
}

impl Building {
    fn shift(&mut self, by: usize) {
        if !self.started {
            return;
        }
        self.start -= by;
        if let Some(r) = &mut self.data {
            *r = r.start - by..r.end - by;
        }
        if let Some(r) = &mut self.name {
            *r = r.start - by..r.end - by;
        }
    }
}

impl Framer {
    /// A framer that refuses events (and lines) over `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        Self {
            pending: BytesMut::new(),
            lines: 0,
            searched: 0,
            skip_lf: false,
            first_line: true,
            building: Building::default(),
            max: max_event,
        }
    }

    /// The bound on one event, in bytes.
    pub fn max_event(&self) -> usize {
        self.max
    }

    /// Whether bytes of an incomplete event (or line) are held back.
    pub fn has_partial_event(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The bytes held back: an event cut by the end of what arrived so far.
    pub fn partial(&self) -> &[u8] {
        &self.pending
    }

    /// Gives up the bytes held back (for another reader to continue from), and starts over.
    pub fn take_partial(&mut self) -> Bytes {
        let max = self.max;
        let pending = std::mem::take(&mut self.pending).freeze();
        *self = Self::new(max);
        pending
    }

    /// Takes the next frame of the stream. Calls `on_event` for each event it completes, in
    /// order, and returns the bytes now complete (`None` when nothing is): they end on an
    /// event boundary, and the event ranges `on_event` saw are ranges of them.
    pub fn push(
        &mut self,
        frame: Bytes,
        mut on_event: impl FnMut(&Event<'_>),
    ) -> Result<Option<Bytes>, EventTooLarge> {
        if frame.is_empty() {
            return Ok(None);
        }
        if self.pending.is_empty() {
            let (lines, boundary) = self.scan(&frame, 0, &mut on_event);
            if boundary == frame.len() {
                self.lines = 0;
                return Ok(Some(frame));
            }
            self.pending.extend_from_slice(&frame[boundary..]);
            self.lines = lines - boundary;
            self.building.shift(boundary);
            self.check()?;
            return Ok((boundary > 0).then(|| frame.slice(..boundary)));
        }
        let from = self.lines;
        self.pending.extend_from_slice(&frame);
        let unit = std::mem::take(&mut self.pending);
        let (lines, boundary) = self.scan(&unit, from, &mut on_event);
        self.pending = unit;
        self.lines = lines - boundary;
        self.building.shift(boundary);
        if boundary == 0 {
            self.check()?;
            return Ok(None);
        }
        let out = self.pending.split_to(boundary).freeze();
        if self.pending.is_empty() {
            // Let go of the buffer the piece handed on still uses.
            self.pending = BytesMut::new();
        }
        self.check()?;
        Ok(Some(out))
    }

    fn check(&self) -> Result<(), EventTooLarge> {
        if self.pending.len() > self.max {
            return Err(EventTooLarge { limit: self.max });
        }
        Ok(())
    }

    /// Splits `unit[from..]` into lines: the end of the complete lines, and the last event
    /// boundary (0 when none).
    fn scan(
        &mut self,
        unit: &[u8],
        from: usize,
        on_event: &mut impl FnMut(&Event<'_>),
    ) -> (usize, usize) {
        let mut pos = from;
        let mut boundary = 0;
        if std::mem::take(&mut self.skip_lf) && unit.get(pos) == Some(&b'\n') {
            pos += 1;
            if !self.building.started {
                boundary = pos;
            }
        }
        let mut search = pos.max(from + self.searched);
        while let Some(at) = memchr::memchr2(b'\n', b'\r', &unit[search..]) {
            let end = search + at;
            let mut next = end + 1;
            if unit[end] == b'\r' {
                match unit.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            let mut start = pos;
            if std::mem::take(&mut self.first_line) && unit[start..end].starts_with(BOM) {
                start += BOM.len();
            }
            match parse_line(&unit[start..end]) {
                Line::Blank => {
                    if self.building.started {
                        let b = std::mem::take(&mut self.building);
                        on_event(&Event {
                            unit,
                            range: b.start..next,
                            data: b.data,
                            data_lines: b.data_lines,
                            name: b.name,
                            bom: b.bom,
                        });
                    }
                    boundary = next;
                }
                Line::Comment(_) => {
                    if !self.building.started {
                        boundary = next;
                    }
                }
                Line::Field { name, value } => {
                    let b = &mut self.building;
                    if !b.started {
                        b.started = true;
                        b.start = pos;
                        b.bom = start != pos;
                    }
                    // An empty value may be a static `&[]` (a field without a colon).
                    let offset = |part: &[u8]| match part.is_empty() {
                        true => end..end,
                        false => {
                            let at = part.as_ptr() as usize - unit.as_ptr() as usize;
                            at..at + part.len()
                        }
                    };
                    match name {
                        b"data" => {
                            b.data_lines += 1;
                            if b.data_lines == 1 {
                                b.data = Some(offset(value));
                            }
                        }
                        b"event" => b.name = Some(offset(value)),
                        _ => {}
                    }
                }
            }
            pos = next;
            search = next;
        }
        self.searched = unit.len() - pos;
        (pos, boundary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `frames`; returns what went out, piece by piece, and the events' data.
    fn frame_all(frames: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut framer = Framer::new(1 << 20);
        let mut out = Vec::new();
        let mut data = Vec::new();
        for frame in frames {
            let piece = framer
                .push(Bytes::copy_from_slice(frame), |e| {
                    if let Some(d) = e.joined_data() {
                        data.push(d.into_owned());
                    }
                })
                .unwrap();
            if let Some(piece) = piece {
                out.push(piece.to_vec());
            }
        }
        (out, data)
    }

    #[test]
    fn a_frame_on_a_boundary_passes_uncopied() {
        let frame = Bytes::from_static(b"data: a\n\ndata: b\n\n");
        let mut framer = Framer::new(64);
        let out = framer.push(frame.clone(), |_| {}).unwrap().unwrap();
        assert_eq!(out.as_ptr(), frame.as_ptr());
        assert_eq!(out.len(), frame.len());
    }

    #[test]
    fn comments_between_events_go_on_at_once() {
        let (out, data) = frame_all(&[b": ping\n", b": ping\n\ndata: x"]);
        assert_eq!(out, [b": ping\n".to_vec(), b": ping\n\n".to_vec()]);
        assert!(data.is_empty());
    }

    #[test]
    fn a_comment_inside_an_event_is_held_with_it() {
        let (out, _) = frame_all(&[b"data: a\n: c\n", b"\n"]);
        assert_eq!(out, [b"data: a\n: c\n\n".to_vec()]);
    }

    #[test]
    fn crlf_split_and_cr_only() {
        let (out, data) = frame_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\r"]);
        assert_eq!(out.concat(), b"data: a\r\n\r\ndata: b\r\r");
        assert_eq!(data, [b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn multi_line_data_is_joined_on_request() {
        let (_, data) = frame_all(&[b"event: x\ndata: a\nda", b"ta: b\n\n"]);
        assert_eq!(data, [b"a\nb".to_vec()]);
        let (_, data) = frame_all(&[b"data:\ndata: b\ndata:\n\n"]);
        assert_eq!(data, [b"\nb\n".to_vec()], "empty lines are joined too");
    }

    #[test]
    fn events_report_their_ranges_and_names() {
        let mut framer = Framer::new(64);
        let mut seen = Vec::new();
        framer
            .push(
                Bytes::from_static(b"data: one\n\nevent: e\ndata: {"),
                |_| {},
            )
            .unwrap();
        let out = framer
            .push(Bytes::from_static(b"}\n\n"), |e| {
                seen.push((
                    e.range(),
                    e.name().map(<[u8]>::to_vec),
                    e.data().unwrap().to_vec(),
                ))
            })
            .unwrap()
            .unwrap();
        assert_eq!(&out[..], b"event: e\ndata: {}\n\n");
        assert_eq!(seen, [(0..out.len(), Some(b"e".to_vec()), b"{}".to_vec())]);
    }

    #[test]
    fn an_oversized_event_is_refused() {
        let mut framer = Framer::new(16);
        assert!(framer
            .push(Bytes::from(vec![b'a'; 10]), |_| {})
            .unwrap()
            .is_none());
        assert_eq!(
            framer
                .push(Bytes::from(vec![b'a'; 10]), |_| {})
                .unwrap_err()
                .limit(),
            16
        );
    }

    #[test]
    fn a_bom_opens_only_the_first_line() {
        let (out, data) = frame_all(&[b"\xEF\xBB\xBFdata: a\n\n"]);
        assert_eq!(data, [b"a".to_vec()]);
        assert_eq!(out.concat(), b"\xEF\xBB\xBFdata: a\n\n");
    }

    fn cut_points(len: usize, cuts: &[usize]) -> Vec<usize> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    proptest! {
        /// Whatever the cuts: what goes out is the input up to its last boundary, each piece
        /// ends on a boundary (so the events decoded from the pieces one by one are the
        /// events of the whole), and every event is reported once.
        #[test]
        fn any_cuts_yield_whole_events(
            input in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '), Just(b'd'),
                            Just(b'a'), Just(b't'), any::<u8>()], 0..256),
            cuts in proptest::collection::vec(any::<usize>(), 0..24),
        ) {
            let mut frames = Vec::new();
            let mut start = 0;
            for cut in cut_points(input.len(), &cuts) {
                frames.push(&input[start..cut]);
                start = cut;
            }
            frames.push(&input[start..]);
            let (pieces, data) = frame_all(&frames);
            let (whole, whole_data) = frame_all(&[&input]);
            let sent = pieces.concat();
            prop_assert_eq!(&sent, &whole.concat());
            prop_assert!(input.starts_with(&sent));
            prop_assert_eq!(&data, &whole_data);
            // Each piece alone decodes to whole events: nothing of an event is split off.
            let mut decoder = crate::sse::SseDecoder::new();
            let mut decoded = Vec::new();
            for piece in &pieces {
                let mut alone = crate::sse::SseDecoder::new();
                alone.push(Bytes::copy_from_slice(piece));
                while let Some(e) = alone.next_event().unwrap() { decoded.push(e.data.to_vec()); }
                decoder.push(Bytes::copy_from_slice(piece));
            }
            let mut together = Vec::new();
            while let Some(e) = decoder.next_event().unwrap() { together.push(e.data.to_vec()); }
            prop_assert_eq!(&decoded, &together);
            // The events reported are the events a client's parser dispatches.
            prop_assert_eq!(&data, &together);
        }
    }
}
