//! A response body read chunk by chunk into one reused buffer, with one callback for the whole body: per chunk, one call into JavaScript and one back.
//!
//! `worker::ByteStream` creates two closures and a promise continuation per chunk and reads
//! the result object field by field; a model stream is hundreds of small chunks, so that
//! overhead is paid per delta. Here the handlers are made once per body, and a byte stream
//! (every fetch body) is read with a BYOB reader into the same buffer each time, so a chunk
//! allocates no new buffer for the garbage collector to finalise.

use crate::text::Bounded;
use futures::Stream;
use js_sys::Uint8Array;
use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

#[wasm_bindgen(inline_js = "
export function body_reader(stream, done) {
  const s = { reader: null, buffer: null, ok: null, fail: (e) => done(false, e) };
  try {
    s.reader = stream.getReader({ mode: 'byob' });
    s.buffer = new ArrayBuffer(16384);
  } catch {
    s.reader = stream.getReader();
  }
  s.ok = (r) => {
    if (r.done) return done(true, null);
    if (s.buffer) s.buffer = r.value.buffer.byteLength >= 16384 ? r.value.buffer : new ArrayBuffer(16384);
    done(true, r.value);
  };
  return s;
}
export function read_chunk(s) {
  (s.buffer ? s.reader.read(new Uint8Array(s.buffer)) : s.reader.read()).then(s.ok, s.fail);
}
export function cancel_reader(s) { s.reader.cancel().catch(() => {}); }
")]
extern "C" {
    fn body_reader(stream: &JsValue, done: &Closure<dyn FnMut(bool, JsValue)>) -> JsValue;
    fn read_chunk(reader: &JsValue);
    fn cancel_reader(reader: &JsValue);
}

/// Why a read failed.
enum ReadError {
    /// The call's abort signal fired.
    Aborted,
    Failed(String),
}

/// What the last read gave: bytes, the end (`None`), or why it failed.
type ReadResult = Result<Option<Vec<u8>>, ReadError>;

#[derive(Default)]
struct Slot {
    result: Option<ReadResult>,
    waker: Option<Waker>,
}

/// A body being read; yields its chunks, then `None`.
pub struct BodyReader {
    reader: JsValue,
    slot: Rc<RefCell<Slot>>,
    done: Option<Closure<dyn FnMut(bool, JsValue)>>,
    reading: bool,
    finished: bool,
}

impl BodyReader {
    /// Locks `stream` (a `ReadableStream`) for reading.
    pub fn new(stream: &JsValue) -> Self {
        let slot = Rc::new(RefCell::new(Slot::default()));
        let target = slot.clone();
        let done = Closure::new(move |ok: bool, value: JsValue| {
            // Copied out now: the next read reuses the buffer under this view.
            let result = if !ok {
                Err(read_error(&value))
            } else if value.is_null() || value.is_undefined() {
                Ok(None)
            } else {
                Ok(Some(value.unchecked_into::<Uint8Array>().to_vec()))
            };
            let waker = {
                let mut slot = target.borrow_mut();
                slot.result = Some(result);
                slot.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        });
        BodyReader {
            reader: body_reader(stream, &done),
            slot,
            done: Some(done),
            reading: false,
            finished: false,
        }
    }
}

/// A rejection: the abort of the call (an `AbortError`, or the runtime's `Error: aborted`),
/// or anything else with its text.
fn read_error(error: &JsValue) -> ReadError {
    let name = js_sys::Reflect::get(error, &JsValue::from_str("name"))
        .ok()
        .and_then(|n| n.as_string());
    let text = match error.dyn_ref::<js_sys::Error>() {
        Some(e) => String::from(e.to_string()),
        None => error.as_string().unwrap_or_else(|| format!("{error:?}")),
    };
    if name.as_deref() == Some("AbortError") || text == "Error: aborted" {
        ReadError::Aborted
    } else {
        ReadError::Failed(text)
    }
}

impl Stream for BodyReader {
    type Item = Result<Vec<u8>, String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(result) = this.slot.borrow_mut().result.take() {
            this.reading = false;
            return Poll::Ready(match result {
                Ok(Some(bytes)) => Some(Ok(bytes)),
                Ok(None) => {
                    this.finished = true;
                    None
                }
                // The call's abort signal fired: the body ends here, as a closed stream.
                Err(ReadError::Aborted) => {
                    this.finished = true;
                    None
                }
                Err(ReadError::Failed(e)) => {
                    this.finished = true;
                    Some(Err(e))
                }
            });
        }
        // The closure the reader calls back lives as long as this reader (`done`).
        if !this.reading && this.done.is_some() {
            this.reading = true;
            read_chunk(&this.reader);
        }
        this.slot.borrow_mut().waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        if !self.finished {
            // Closes the connection to the provider; a read in flight then completes.
            cancel_reader(&self.reader);
        }
        if self.reading && self.slot.borrow().result.is_none() {
            // That read's callback still runs: it must outlive this reader (one small closure per
            // stream dropped mid-read: an abort or a stall).
            if let Some(done) = self.done.take() {
                done.forget();
            }
        }
    }
}

/// Reads `resp`'s body up to `limit` bytes; the rest is cancelled, closing the connection.
pub async fn read_bounded(resp: &mut worker::Response, limit: usize) -> Result<Bounded, String> {
    let mut body = Bounded::new(limit);
    let stream = match resp.body() {
        worker::ResponseBody::Stream(stream) => stream,
        worker::ResponseBody::Body(b) => {
            body.push(b);
            return Ok(body);
        }
        worker::ResponseBody::Empty => return Ok(body),
    };
    read_stream_bounded(stream.as_ref(), body).await
}

/// Reads a `ReadableStream` into `body` up to its bound; the rest is cancelled.
pub async fn read_stream_bounded(stream: &JsValue, mut body: Bounded) -> Result<Bounded, String> {
    use futures::StreamExt;
    let mut reader = BodyReader::new(stream);
    while let Some(chunk) = reader.next().await {
        if !body.push(&chunk?) {
            // Dropping the reader cancels the rest of the body.
            break;
        }
    }
    Ok(body)
}
