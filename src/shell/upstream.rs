//! One streaming model call: fetch with an abort signal, SSE decoding as bytes arrive, stall detection; plus the built-in echo provider.

use super::body::{read_bounded, BodyReader};
use crate::config::ProviderConfig;
use crate::llm::stream::{echo_answer, StallCheck, StreamReader};
use crate::llm::{
    anthropic, openai, CallSpec, ProviderKind, StreamDecoder, StreamEvent, UpstreamError,
    UpstreamErrorKind,
};
use futures::future::{select, Either};
use futures::StreamExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;
use worker::{AbortSignal, Delay, Fetch, Headers, Method, Request, RequestInit, ResponseBody};

/// Bytes of a provider's error answer read before it is classified.
const MAX_ERROR_BODY_BYTES: usize = 256 * 1024;

/// A model call in progress: yields decoded stream events until it ends.
pub enum ModelStream {
    Http(Box<HttpStream>),
    Echo(EchoStream),
}

/// An HTTP SSE stream from a provider.
pub struct HttpStream {
    body: BodyReader,
    reader: StreamReader,
    /// One stall timer for many chunks (a timer per chunk cost an eighth of the Worker's CPU
    /// per delta); the reader says when it must wait more.
    stall_timer: Option<Pin<Box<Delay>>>,
}

/// Starts a call; errors before the first byte are classified for retry and fallover.
pub async fn open(
    provider: &ProviderConfig,
    spec: &CallSpec<'_>,
    signal: &AbortSignal,
    stall_ms: u64,
) -> Result<ModelStream, UpstreamError> {
    let (request, decoder): (_, Box<dyn StreamDecoder>) = match provider.kind {
        ProviderKind::OpenAi => (
            openai::build_request(spec),
            Box::new(openai::OpenAiDecoder::new()),
        ),
        ProviderKind::Anthropic => (
            anthropic::build_request(spec),
            Box::new(anthropic::AnthropicDecoder::new()),
        ),
        ProviderKind::Echo => {
            return Ok(ModelStream::Echo(EchoStream {
                pending: echo_answer(spec.messages),
                first: true,
            }))
        }
    };
    let headers = Headers::new();
    for (k, v) in &request.headers {
        headers.set(k, v).map_err(|e| network(provider, e))?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(request.body.into()));
    let req = Request::new_with_init(&request.url, &init).map_err(|e| network(provider, e))?;
    let fetch = Fetch::Request(req);
    let send = fetch.send_with_signal(signal);
    let mut resp = match select(Box::pin(send), Delay::from(Duration::from_millis(stall_ms))).await
    {
        Either::Left((r, _)) => r.map_err(|e| network(provider, e))?,
        Either::Right(_) => {
            return Err(UpstreamError::new(
                UpstreamErrorKind::Timeout,
                format!("{}: no response within {stall_ms} ms", provider.name),
            ));
        }
    };
    let status = resp.status_code();
    if !(200..300).contains(&status) {
        let retry_after = resp.headers().get("retry-after").ok().flatten();
        // An error body is read only so far: a provider (or a proxy) answering an endless body
        // must not cost the conversation its memory.
        let body = read_bounded(&mut resp, MAX_ERROR_BODY_BYTES)
            .await
            .map(|b| b.text())
            .unwrap_or_default();
        let mut e = match provider.kind {
            ProviderKind::Anthropic => {
                anthropic::classify_error(status, retry_after.as_deref(), &body)
            }
            _ => openai::classify_error(status, retry_after.as_deref(), &body),
        };
        // The provider's own words may name the key, the account or the organisation: the full
        // text goes to the log, the client gets the class, the status and a masked excerpt.
        worker::console_warn!("{} answered {status}: {}", provider.name, e.message);
        e.message = crate::llm::redact::public_message(provider.name, &e);
        return Err(e);
    }
    let body = match resp.body() {
        ResponseBody::Stream(stream) => BodyReader::new(stream.as_ref()),
        _ => return Err(network(provider, "the response has no body")),
    };
    Ok(ModelStream::Http(Box::new(HttpStream {
        body,
        reader: StreamReader::new(decoder, stall_ms, js_sys::Date::now()),
        stall_timer: None,
    })))
}

fn network(provider: &ProviderConfig, e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::new(
        UpstreamErrorKind::Network,
        format!("{}: {e}", provider.name),
    )
}

impl ModelStream {
    /// The next event, or `None` when the call is over.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        match self {
            ModelStream::Http(s) => s.next().await,
            ModelStream::Echo(s) => s.next().await,
        }
    }

    /// An event already decoded (from bytes that arrived together), without waiting for more.
    pub fn ready(&mut self) -> Option<StreamEvent> {
        match self {
            ModelStream::Http(s) => s.reader.pop(),
            // Paced on purpose: its deltas are not merged.
            ModelStream::Echo(_) => None,
        }
    }
}

impl HttpStream {
    async fn next(&mut self) -> Option<StreamEvent> {
        loop {
            if let Some(e) = self.reader.pop() {
                return Some(e);
            }
            if self.reader.ended() {
                return None;
            }
            let stall_ms = self.reader.stall_ms();
            let timer = self
                .stall_timer
                .get_or_insert_with(|| Box::pin(Delay::from(Duration::from_millis(stall_ms))));
            match select(self.body.next(), timer).await {
                Either::Left((Some(Ok(bytes)), _)) => {
                    self.reader.on_bytes(&bytes, js_sys::Date::now())
                }
                Either::Left((Some(Err(e)), _)) => self.reader.on_broken(&e.to_string()),
                Either::Left((None, _)) => self.reader.on_end(),
                Either::Right(_) => {
                    if let StallCheck::WaitMore(ms) =
                        self.reader.on_stall_timer(js_sys::Date::now())
                    {
                        self.stall_timer = Some(Box::pin(Delay::from(Duration::from_millis(ms))));
                    }
                }
            }
        }
    }
}

/// The built-in provider: streams the last user message back in a few deltas, with usage; needs no network.
pub struct EchoStream {
    pending: VecDeque<StreamEvent>,
    first: bool,
}

impl EchoStream {
    async fn next(&mut self) -> Option<StreamEvent> {
        if !self.first && matches!(self.pending.front(), Some(StreamEvent::Text(_))) {
            // Paced like a model so clients see a stream, not one burst.
            Delay::from(Duration::from_millis(15)).await;
        }
        self.first = false;
        self.pending.pop_front()
    }
}
