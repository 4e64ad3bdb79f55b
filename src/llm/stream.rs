//! A model call's answer as its bytes arrive: SSE decoding into stream events, the stall rule with time passed in, and the built-in echo provider's answer.

use super::sse::{SseDecoder, SseEvent};
use super::{
    ChatMessage, FinishReason, StreamDecoder, StreamEvent, UpstreamError, UpstreamErrorKind, Usage,
};
use std::collections::VecDeque;

/// What the stall timer says when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallCheck {
    /// Bytes came since it was armed: arm it again for this many ms.
    WaitMore(u64),
    /// No byte for the whole window: the stream ended with a timeout error.
    Stalled,
}

/// A provider stream being read: bytes, breaks and the end in; decoded events out, in order.
pub struct StreamReader {
    sse: SseDecoder,
    decoder: Box<dyn StreamDecoder>,
    events: Vec<SseEvent>,
    /// Decoded from the last chunk, before they join `pending` (kept to reuse its allocation).
    decoded: Vec<StreamEvent>,
    pending: VecDeque<StreamEvent>,
    ended: bool,
    stall_ms: u64,
    last_byte_ms: f64,
}

impl StreamReader {
    /// A reader for a stream that opened at `now_ms`; it stalls after `stall_ms` without a byte.
    pub fn new(decoder: Box<dyn StreamDecoder>, stall_ms: u64, now_ms: f64) -> Self {
        StreamReader {
            sse: SseDecoder::new(),
            decoder,
            events: Vec::new(),
            decoded: Vec::new(),
            pending: VecDeque::new(),
            ended: false,
            stall_ms,
            last_byte_ms: now_ms,
        }
    }

    /// The next decoded event, if one is waiting.
    pub fn pop(&mut self) -> Option<StreamEvent> {
        self.pending.pop_front()
    }

    /// Whether nothing more will be decoded.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The stall window.
    pub fn stall_ms(&self) -> u64 {
        self.stall_ms
    }

    /// Bytes arrived at `now_ms`.
    pub fn on_bytes(&mut self, bytes: &[u8], now_ms: f64) {
        self.last_byte_ms = now_ms;
        if self.ended {
            return;
        }
        if let Err(e) = self.sse.push(bytes, &mut self.events) {
            self.ended = true;
            self.decoded.push(StreamEvent::Error(UpstreamError::new(
                UpstreamErrorKind::Malformed,
                format!("bad event stream: {e}"),
            )));
        }
        for ev in self.events.drain(..) {
            self.decoder.on_event(&ev, &mut self.decoded);
        }
        self.pending.extend(self.decoded.drain(..));
    }

    /// The body broke before its end.
    pub fn on_broken(&mut self, reason: &str) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.pending
            .push_back(StreamEvent::Error(UpstreamError::new(
                UpstreamErrorKind::Network,
                format!("the stream broke: {reason}"),
            )));
    }

    /// The body ended; a provider whose end marker never came yields an error here.
    pub fn on_end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.sse.finish(&mut self.events);
        for ev in self.events.drain(..) {
            self.decoder.on_event(&ev, &mut self.decoded);
        }
        self.decoder.on_end(&mut self.decoded);
        self.pending.extend(self.decoded.drain(..));
    }

    /// The stall timer fired at `now_ms`. One timer serves many chunks: it is re-armed only
    /// when it fires early, not per chunk.
    pub fn on_stall_timer(&mut self, now_ms: f64) -> StallCheck {
        let left = self.stall_ms as f64 - (now_ms - self.last_byte_ms);
        if left > 0.0 {
            return StallCheck::WaitMore(left.ceil() as u64);
        }
        if !self.ended {
            self.ended = true;
            self.pending
                .push_back(StreamEvent::Error(UpstreamError::new(
                    UpstreamErrorKind::Timeout,
                    format!("the stream stalled: no bytes for {} ms", self.stall_ms),
                )));
        }
        StallCheck::Stalled
    }
}

/// The built-in echo provider's answer: the last user message back in a few text deltas,
/// then usage (words as tokens) and the finish. It needs no network.
pub fn echo_answer(messages: &[ChatMessage]) -> VecDeque<StreamEvent> {
    let last = messages
        .iter()
        .rev()
        .find_map(|m| match m {
            ChatMessage::User { content } => Some(content.as_str()),
            _ => None,
        })
        .unwrap_or("");
    let reply = format!("Echo: {last}");
    let words: Vec<&str> = reply.split_inclusive(' ').collect();
    let per = words.len().div_ceil(6).max(1);
    let mut events: VecDeque<StreamEvent> = words
        .chunks(per)
        .map(|c| StreamEvent::Text(c.concat()))
        .collect();
    let input: usize = messages
        .iter()
        .map(|m| match m {
            ChatMessage::System { content }
            | ChatMessage::User { content }
            | ChatMessage::Tool { content, .. }
            | ChatMessage::Assistant { content, .. } => content.split_whitespace().count(),
        })
        .sum();
    let output = events.len() as u64;
    events.push_back(StreamEvent::Usage(Usage {
        input: input as u64,
        output,
        cache_read: 0,
        cache_write: 0,
    }));
    events.push_back(StreamEvent::Finish(FinishReason::Stop));
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{anthropic::AnthropicDecoder, openai::OpenAiDecoder};

    fn drain(r: &mut StreamReader) -> Vec<StreamEvent> {
        std::iter::from_fn(|| r.pop()).collect()
    }

    const OPENAI: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

    #[test]
    fn bytes_split_anywhere_decode_to_the_same_events() {
        let whole = {
            let mut r = StreamReader::new(Box::new(OpenAiDecoder::new()), 1000, 0.0);
            r.on_bytes(OPENAI.as_bytes(), 1.0);
            r.on_end();
            drain(&mut r)
        };
        assert_eq!(whole[0], StreamEvent::Text("Hel".into()));
        assert!(whole.contains(&StreamEvent::Finish(FinishReason::Stop)));
        for cut in [1, 7, 40, OPENAI.len() - 3] {
            let mut r = StreamReader::new(Box::new(OpenAiDecoder::new()), 1000, 0.0);
            r.on_bytes(&OPENAI.as_bytes()[..cut], 1.0);
            r.on_bytes(&OPENAI.as_bytes()[cut..], 2.0);
            r.on_end();
            assert_eq!(drain(&mut r), whole, "cut at {cut}");
        }
    }

    #[test]
    fn the_stall_timer_waits_for_the_rest_of_the_window_then_ends_the_stream() {
        let mut r = StreamReader::new(Box::new(OpenAiDecoder::new()), 1000, 0.0);
        r.on_bytes(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            600.0,
        );
        // Armed at 0, fires at 1000: a byte came at 600, so 600 ms are left.
        assert_eq!(r.on_stall_timer(1000.0), StallCheck::WaitMore(600));
        assert_eq!(r.on_stall_timer(1600.0), StallCheck::Stalled);
        let events = drain(&mut r);
        assert_eq!(events[0], StreamEvent::Text("a".into()));
        assert!(
            matches!(&events[1], StreamEvent::Error(e) if e.kind == UpstreamErrorKind::Timeout)
        );
        assert!(r.ended());
        // Bytes after the stall are not decoded.
        r.on_bytes(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"late\"}}]}\n\n",
            1700.0,
        );
        assert!(drain(&mut r).is_empty());
    }

    #[test]
    fn a_broken_body_and_a_missing_end_marker_are_errors() {
        let mut r = StreamReader::new(Box::new(OpenAiDecoder::new()), 1000, 0.0);
        r.on_broken("reset");
        assert!(
            matches!(&drain(&mut r)[..], [StreamEvent::Error(e)] if e.kind == UpstreamErrorKind::Network)
        );
        let mut r = StreamReader::new(Box::new(AnthropicDecoder::new()), 1000, 0.0);
        r.on_bytes(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}\n\n", 1.0);
        r.on_end();
        let events = drain(&mut r);
        assert!(
            matches!(events.last(), Some(StreamEvent::Error(_))),
            "{events:?}"
        );
    }

    #[test]
    fn echo_answers_the_last_user_message_in_a_few_deltas_with_usage() {
        let messages = vec![
            ChatMessage::User {
                content: "first".into(),
            },
            ChatMessage::User {
                content: "one two three four five six seven eight".into(),
            },
        ];
        let events: Vec<StreamEvent> = echo_answer(&messages).into_iter().collect();
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Echo: one two three four five six seven eight");
        let deltas = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Text(_)))
            .count();
        assert!((2..=6).contains(&deltas));
        assert!(matches!(
            events[events.len() - 2],
            StreamEvent::Usage(Usage { input: 9, .. })
        ));
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Finish(FinishReason::Stop))
        );
    }
}
