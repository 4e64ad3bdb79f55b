//! Incremental Server-Sent Events decoder: the same events whatever the chunking, bounded memory, no panic on any input.
//!
//! Follows the WHATWG event-stream rules for the fields this gateway needs (`data`,
//! `event`); `id` and `retry` are ignored like any unknown field, since providers do not
//! use them and the gateway does not reconnect mid-stream. Deviations, both deliberate:
//! - an event with an `event:` name but no data is dispatched (with empty data), because a
//!   named event still carries information; an event with neither is dropped as the spec says;
//! - at [`SseDecoder::finish`] an event whose last line was complete but which never got
//!   its blank line is dispatched (see there).

use std::fmt;

/// Longest line accepted, in bytes; a longer one is an error rather than unbounded buffering.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// Largest event data accepted, in bytes (many `data:` lines without a blank line between).
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Buffer capacity kept between lines; a larger one, left by a huge line, is given back.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The UTF-8 byte order mark, which the spec strips at the start of the stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` name; `None` for the default (`message`) type.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Why the decoder gave up on a stream; once returned, every later `push` returns it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// A line grew past [`MAX_LINE_BYTES`] without a line ending.
    LineTooLong,
    /// An event's data grew past [`MAX_EVENT_BYTES`] without a blank line.
    EventTooLarge,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::LineTooLong => write!(f, "SSE line longer than {MAX_LINE_BYTES} bytes"),
            SseError::EventTooLarge => write!(f, "SSE event larger than {MAX_EVENT_BYTES} bytes"),
        }
    }
}

impl std::error::Error for SseError {}

/// Incremental SSE parser: feed byte chunks with [`push`](Self::push), then call [`finish`](Self::finish) at EOF.
#[derive(Debug)]
pub struct SseDecoder {
    /// Bytes of the current, not yet terminated line (consumed lines are drained once per push).
    buf: Vec<u8>,
    /// Offset in `buf` before which there is no line ending: each byte is scanned once.
    scan: usize,
    /// The previous chunk ended in CR: an LF opening the next chunk belongs to that CRLF.
    pending_cr: bool,
    /// No line has been completed yet, so a BOM may still open the stream.
    at_start: bool,
    /// The current event's name (`event:` field); empty value means none.
    event: Option<String>,
    /// The current event's data, lines joined with `\n`.
    data: String,
    /// Whether the current event has had a `data` field (the spec's data buffer is non-empty).
    has_data: bool,
    /// Sticky error: the stream is abandoned.
    failed: Option<SseError>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::new()
    }
}

impl SseDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        SseDecoder {
            buf: Vec::new(),
            scan: 0,
            pending_cr: false,
            at_start: true,
            event: None,
            data: String::new(),
            has_data: false,
            failed: None,
        }
    }

    /// Feeds one chunk of the byte stream, appending every event it completes to `out`.
    ///
    /// Returns `Err` when a line exceeds [`MAX_LINE_BYTES`] or an event [`MAX_EVENT_BYTES`];
    /// events completed before the offending line are still appended, and the decoder then
    /// refuses all further input (the caller should abort the upstream call).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let mut chunk = chunk;
        if self.pending_cr {
            if let Some((&first, rest)) = chunk.split_first() {
                self.pending_cr = false;
                if first == b'\n' {
                    chunk = rest;
                }
            }
        }
        self.buf.extend_from_slice(chunk);

        // Start of the line being looked at; lines before it are done.
        let mut start = 0usize;
        let mut result = Ok(());
        while let Some(rel) = self
            .buf
            .get(self.scan..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n' || b == b'\r'))
        {
            let end = self.scan + rel;
            let mut next = end + 1;
            if self.buf.get(end) == Some(&b'\r') {
                match self.buf.get(next) {
                    Some(b'\n') => next += 1,
                    // CR is the last byte we have: an LF may open the next chunk.
                    None => self.pending_cr = true,
                    Some(_) => {}
                }
            }
            let line = std::mem::take(&mut self.buf);
            let outcome = self.line(line.get(start..end).unwrap_or(&[]), out);
            self.buf = line;
            start = next;
            self.scan = next;
            if let Err(err) = outcome {
                result = Err(err);
                break;
            }
        }
        if result.is_ok() && self.buf.len().saturating_sub(start) > MAX_LINE_BYTES {
            result = Err(SseError::LineTooLong);
        }
        if let Err(err) = result {
            self.fail(err);
            return result;
        }
        if start > 0 {
            self.buf.drain(..start.min(self.buf.len()));
        }
        self.scan = self.buf.len();
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf.shrink_to(KEEP_CAPACITY);
        }
        result
    }

    /// Ends the stream, and resets the decoder for a new one.
    ///
    /// An unterminated last line (bytes after the last line ending) is discarded together
    /// with its event: it may be cut anywhere, even inside a JSON value. If instead the
    /// input ended with a complete line but no blank line, the pending event is dispatched
    /// when it has data: the spec would drop it, but servers that close the connection right
    /// after their final `data:` line exist, and the line itself is whole.
    /// Returns `true` when something was discarded (a partial line, or a pending event with
    /// a name but no data), `false` when nothing was lost. After a `push` error it returns `true`.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> bool {
        let discarded = if self.failed.is_some() || !self.buf.is_empty() {
            true
        } else if self.has_data && !self.data.is_empty() {
            self.dispatch(out);
            false
        } else {
            // Empty data would not be dispatched even with its blank line; a lone name is lost.
            self.event.is_some()
        };
        *self = SseDecoder::new();
        discarded
    }

    /// Handles one complete line (without its line ending).
    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.len() > MAX_LINE_BYTES {
            return Err(SseError::LineTooLong);
        }
        let mut line = line;
        if self.at_start {
            self.at_start = false;
            if let Some(rest) = line.strip_prefix(BOM) {
                line = rest;
            }
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line.first() == Some(&b':') {
            // A comment (keep-alive); not a field.
            return Ok(());
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = line.get(colon + 1..).unwrap_or(&[]);
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (line.get(..colon).unwrap_or(&[]), value)
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                    return Err(SseError::EventTooLarge);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.has_data = true;
                // Lossy per line: line endings are ASCII, so a line never splits a character.
                self.data.push_str(&String::from_utf8_lossy(value));
            }
            b"event" => {
                self.event = if value.is_empty() {
                    None
                } else {
                    Some(String::from_utf8_lossy(value).into_owned())
                };
            }
            // `id`, `retry` and unknown fields: nothing this gateway uses.
            _ => {}
        }
        Ok(())
    }

    /// Dispatches the current event, if it has data or a name, and starts a new one.
    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        let data = std::mem::take(&mut self.data);
        let has_data = std::mem::replace(&mut self.has_data, false);
        // The spec drops an event whose data is empty; we keep it when it is named.
        if (has_data && !data.is_empty()) || event.is_some() {
            out.push(SseEvent { event, data });
        }
    }

    /// Abandons the stream with `err`, freeing the buffers.
    fn fail(&mut self, err: SseError) {
        self.failed = Some(err);
        self.buf = Vec::new();
        self.scan = 0;
        self.data = String::new();
        self.event = None;
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `chunks` in order, then finishes; returns the events, the `finish` flag and any push error.
    fn decode(chunks: &[&[u8]]) -> (Vec<SseEvent>, bool, Option<SseError>) {
        let mut dec = SseDecoder::new();
        let mut out = Vec::new();
        let mut err = None;
        for chunk in chunks {
            if let Err(e) = dec.push(chunk, &mut out) {
                err = Some(e);
                break;
            }
        }
        let partial = dec.finish(&mut out);
        (out, partial, err)
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    /// Covers BOM, comments, every line ending, multi-line data, UTF-8, fields without colon,
    /// unknown fields, `data:` with and without a space, and events that must not dispatch.
    const REFERENCE: &[u8] = b"\xEF\xBB\xBF: keep-alive comment\r\n\
event: message_start\r\n\
data: {\"a\":1}\r\n\
\r\n\
data:no-space\n\
data:  two spaces\n\
\n\
id: 7\rretry: 1000\rdata: caf\xC3\xA9 \xF0\x9F\x8C\x8D\r\r\
data\n\
data: after-empty\n\
unknown: x\n\
\n\
data:\n\
\n\
event: ping\n\
\n\
event\n\
data: unnamed-again\n\
\n\
data: bad \xFF\xFE utf8\n\
: comment between\n\
data: second line\n\
\n\
data: tail without blank line\n";

    fn reference_events() -> Vec<SseEvent> {
        vec![
            ev(Some("message_start"), "{\"a\":1}"),
            ev(None, "no-space\n two spaces"),
            ev(None, "caf\u{e9} \u{1F30D}"),
            ev(None, "\nafter-empty"),
            ev(Some("ping"), ""),
            ev(None, "unnamed-again"),
            ev(None, "bad \u{FFFD}\u{FFFD} utf8\nsecond line"),
            ev(None, "tail without blank line"),
        ]
    }

    #[test]
    fn reference_stream_in_one_chunk() {
        let (events, partial, err) = decode(&[REFERENCE]);
        assert_eq!(events, reference_events());
        assert!(!partial);
        assert_eq!(err, None);
    }

    #[test]
    fn reference_stream_split_at_every_position() {
        let expected = reference_events();
        for i in 0..=REFERENCE.len() {
            let (a, b) = REFERENCE.split_at(i);
            let (events, partial, err) = decode(&[a, b]);
            assert_eq!(events, expected, "split at {i}");
            assert!(!partial);
            assert_eq!(err, None);
        }
    }

    #[test]
    fn reference_stream_split_at_every_pair_of_positions() {
        let expected = reference_events();
        for i in 0..=REFERENCE.len() {
            for j in i..=REFERENCE.len() {
                let (events, _, _) = decode(&[&REFERENCE[..i], &REFERENCE[i..j], &REFERENCE[j..]]);
                assert_eq!(events, expected, "split at {i}, {j}");
            }
        }
    }

    #[test]
    fn reference_stream_in_one_byte_chunks() {
        let chunks: Vec<&[u8]> = REFERENCE.chunks(1).collect();
        let (events, partial, _) = decode(&chunks);
        assert_eq!(events, reference_events());
        assert!(!partial);
    }

    #[test]
    fn crlf_split_between_cr_and_lf_adds_no_blank_line() {
        // Were the LF read as a second line ending, the blank line would end the event early.
        let (events, _, _) = decode(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(events, vec![ev(None, "a\nb")]);
        // An empty chunk between CR and LF must not lose the pairing.
        let (events, _, _) = decode(&[b"data: a\r", b"", b"\ndata: b\r\n\r\n"]);
        assert_eq!(events, vec![ev(None, "a\nb")]);
    }

    #[test]
    fn lone_cr_is_a_line_ending() {
        let (events, _, _) = decode(&[b"data: a\r\rdata: b\r", b"\r"]);
        assert_eq!(events, vec![ev(None, "a"), ev(None, "b")]);
    }

    #[test]
    fn utf8_character_split_across_chunks() {
        let text = "data: h\u{e9}llo \u{1F30D} \u{4E16}\n\n".as_bytes();
        for i in 0..=text.len() {
            let (events, _, _) = decode(&[&text[..i], &text[i..]]);
            assert_eq!(
                events,
                vec![ev(None, "h\u{e9}llo \u{1F30D} \u{4E16}")],
                "split at {i}"
            );
        }
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let (events, _, _) = decode(&[b": ping\n:\nfoo: bar\nid: 1\nretry: 5\n\ndata: x\n\n"]);
        assert_eq!(events, vec![ev(None, "x")]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let (events, _, _) = decode(&[b"data: {\ndata: \"a\": 1\ndata: }\n\n"]);
        assert_eq!(events, vec![ev(None, "{\n\"a\": 1\n}")]);
    }

    #[test]
    fn bom_only_at_stream_start() {
        let (events, _, _) = decode(&[b"\xEF\xBB", b"\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n"]);
        // The second BOM is part of a field name, so that line is an unknown field.
        assert_eq!(events, vec![ev(None, "a")]);
    }

    #[test]
    fn empty_unnamed_events_are_not_dispatched() {
        let (events, _, _) = decode(&[b"data\n\ndata:\n\n\n\n"]);
        assert!(events.is_empty());
    }

    #[test]
    fn finish_discards_a_partial_line() {
        let (events, partial, _) = decode(&[b"data: a\n\ndata: b\ndata: {\"cut"]);
        assert_eq!(events, vec![ev(None, "a")]);
        assert!(partial);
    }

    #[test]
    fn finish_dispatches_a_complete_unterminated_event() {
        let (events, partial, _) = decode(&[b"event: message_stop\ndata: {}\n"]);
        assert_eq!(events, vec![ev(Some("message_stop"), "{}")]);
        assert!(!partial);
    }

    #[test]
    fn finish_reports_a_lost_named_event() {
        let (events, partial, _) = decode(&[b"event: ping\n"]);
        assert!(events.is_empty());
        assert!(partial);
    }

    #[test]
    fn finish_resets_for_a_new_stream() {
        let mut dec = SseDecoder::new();
        let mut out = Vec::new();
        assert!(dec.push(b"data: cut", &mut out).is_ok());
        assert!(dec.finish(&mut out));
        assert!(dec.push(b"\xEF\xBB\xBFdata: new\n\n", &mut out).is_ok());
        assert_eq!(out, vec![ev(None, "new")]);
    }

    #[test]
    fn overlong_line_is_an_error_and_sticky() {
        let mut dec = SseDecoder::new();
        let mut out = Vec::new();
        assert!(dec.push(b"data: ok\n\ndata: ", &mut out).is_ok());
        let block = vec![b'x'; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..=(MAX_LINE_BYTES / block.len()) {
            result = dec.push(&block, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::LineTooLong));
        assert_eq!(out, vec![ev(None, "ok")]);
        assert_eq!(
            dec.push(b"\n\ndata: more\n\n", &mut out),
            Err(SseError::LineTooLong)
        );
        assert_eq!(out.len(), 1);
        assert!(dec.finish(&mut out));
    }

    #[test]
    fn overlong_complete_line_in_one_chunk_is_an_error() {
        let mut line = b"data: ".to_vec();
        line.resize(MAX_LINE_BYTES + 1, b'y');
        line.extend_from_slice(b"\n\n");
        let (events, _, err) = decode(&[b"data: first\n\n", &line]);
        assert_eq!(events, vec![ev(None, "first")]);
        assert_eq!(err, Some(SseError::LineTooLong));
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut dec = SseDecoder::new();
        let mut out = Vec::new();
        let mut line = b"data: ".to_vec();
        line.resize(1024 * 1024, b'z');
        line.push(b'\n');
        let mut result = Ok(());
        for _ in 0..=(MAX_EVENT_BYTES / line.len() + 1) {
            result = dec.push(&line, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::EventTooLarge));
        assert!(out.is_empty());
    }

    /// Bytes biased towards what matters to the parser: line endings, colons, field names, UTF-8 pieces.
    fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b":".to_vec()),
            Just(b" ".to_vec()),
            Just(b"data".to_vec()),
            Just(b"data: ".to_vec()),
            Just(b"event".to_vec()),
            Just(b"event: ".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            Just("\u{e9}\u{1F30D}".as_bytes().to_vec()),
            Just(vec![0xF0, 0x9F]),
            any::<u8>().prop_map(|b| vec![b]),
            prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(piece, 0..64).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_result(
            input in sse_bytes(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let whole = decode(&[&input]);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&input[last..p]);
                last = p;
            }
            chunks.push(&input[last..]);
            prop_assert_eq!(decode(&chunks), whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            input in prop::collection::vec(any::<u8>(), 0..512),
            size in 1usize..17,
        ) {
            let chunks: Vec<&[u8]> = input.chunks(size).collect();
            let (events, _, _) = decode(&chunks);
            for e in events {
                prop_assert!(!e.data.is_empty() || e.event.is_some());
            }
        }
    }
}
