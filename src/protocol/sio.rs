//! Text-only Engine.IO 4 / Socket.IO 5 codec for both transports (WebSocket frames and long-polling bodies): client frames in, server frames out, no I/O.
//!
//! One websocket text frame (or one record of a long-polling body) carries one Engine.IO packet;
//! an Engine.IO MESSAGE (`4`) carries one Socket.IO packet: `4<sio type>[<nsp>,][<ack id>][<json>]`.
//! Binary packets are deliberately out of scope, so every frame is plain text and the
//! attachment machinery of the reference parser (which needs clocks and buffering) never runs.
//!
//! The module is sans-IO: ids, intervals and offsets are passed in, nothing reads a clock or a
//! random source, and `decode` returns an error instead of panicking on any input.

use super::push_json_str;
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// Longest accepted namespace, in bytes. Namespaces are server-defined short paths; the bound
/// keeps a hostile client from making us hold an arbitrarily large name per socket.
const MAX_NAMESPACE_LEN: usize = 256;

/// Longest accepted ack id, in decimal digits. Clients are JavaScript, whose ack counters are
/// `Number`s; 15 digits stays below 2^53, so any id we accept survives the trip back exactly.
const MAX_ACK_ID_DIGITS: usize = 15;

/// Event names the reference server refuses from clients, because they collide with the
/// lifecycle events of its own socket objects; refusing them keeps our dispatch equally unambiguous.
const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// A decoded client → server frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Engine.IO PING (`2`). Clients of EIO 4 do not normally ping; answer with a pong anyway.
    Ping,
    /// Engine.IO PONG (`3`, or `3probe`), the answer to our heartbeat `2`.
    Pong,
    /// Engine.IO CLOSE (`1`): the client is closing the transport.
    Close,
    /// Engine.IO UPGRADE (`5`). We advertise no upgrades, so this is informational only.
    Upgrade,
    /// Engine.IO NOOP (`6`).
    Noop,
    /// Socket.IO CONNECT to a namespace, with the optional `auth` object of `io(.., { auth })`.
    Connect {
        /// The namespace, `/` for the main one.
        nsp: String,
        /// The auth payload; always a JSON object when present.
        auth: Option<Value>,
    },
    /// Socket.IO DISCONNECT from a namespace (the transport may stay open for others).
    Disconnect {
        /// The namespace, `/` for the main one.
        nsp: String,
    },
    /// Socket.IO EVENT: `socket.emit(name, ...args)`, with an ack id when the client passed a callback.
    Event {
        /// The namespace, `/` for the main one.
        nsp: String,
        /// The id to echo in our ACK, when the client expects one.
        ack_id: Option<u64>,
        /// The event name (first element of the payload array).
        name: String,
        /// The remaining elements of the payload array, in order.
        args: Vec<Value>,
    },
    /// Socket.IO ACK: the client answering one of our events that carried `ack_id`.
    Ack {
        /// The namespace, `/` for the main one.
        nsp: String,
        /// The id of the server event being acknowledged.
        ack_id: u64,
        /// The callback arguments (possibly none).
        args: Vec<Value>,
    },
}

/// Why a frame or a handshake was refused. Every variant names the rule that was broken, so
/// the `Display` text can be logged or sent back to a developer as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SioError {
    /// The websocket frame was empty.
    EmptyFrame,
    /// The first character is not an Engine.IO packet type.
    UnknownEngineType(char),
    /// The client sent an Engine.IO OPEN (`0`), which only the server may send.
    OpenFromClient,
    /// An Engine.IO MESSAGE (`4`) carried no Socket.IO packet.
    EmptyMessage,
    /// The Socket.IO packet type is not one of `0`–`6`.
    UnknownSocketType(char),
    /// A BINARY_EVENT / BINARY_ACK (`5`, `6`) or an attachment-count prefix (`<n>-`).
    BinaryNotSupported,
    /// The client sent a CONNECT_ERROR (`4`), which only the server may send.
    ConnectErrorFromClient,
    /// The namespace is not a usable name; the text says which rule it broke.
    MalformedNamespace(&'static str),
    /// The ack id has more digits than a JavaScript client can count to exactly.
    AckIdOverflow,
    /// An ACK without the id of the event it acknowledges.
    MissingAckId,
    /// An ack id on a packet type that cannot carry one (CONNECT, DISCONNECT).
    UnexpectedAckId(&'static str),
    /// The payload is not valid JSON; holds the parser's message.
    InvalidJson(String),
    /// An EVENT or ACK without its mandatory payload; holds the packet type.
    MissingPayload(&'static str),
    /// The EVENT payload is valid JSON but not an array.
    EventPayloadNotArray,
    /// The EVENT payload is an empty array, so there is no event name.
    EventPayloadEmpty,
    /// The first element of the EVENT payload is not a string.
    EventNameNotString,
    /// The event name is one the reference server reserves for itself.
    ReservedEventName(&'static str),
    /// The ACK payload is valid JSON but not an array.
    AckPayloadNotArray,
    /// The CONNECT payload is valid JSON but not an object.
    ConnectPayloadNotObject,
    /// Characters follow a complete packet; holds what they follow.
    TrailingData(&'static str),
    /// The handshake query has no `EIO` parameter.
    MissingEio,
    /// The handshake asks for an Engine.IO version other than 4; holds it (truncated).
    UnsupportedEio(String),
    /// The handshake query has no `transport` parameter.
    MissingTransport,
    /// The handshake asks for HTTP long-polling, which an edge websocket gateway cannot serve.
    PollingNotSupported,
    /// The handshake asks for a transport we do not know; holds it (truncated).
    UnknownTransport(String),
}

/// Advice appended to transport errors: the one client option that fixes them.
const USE_WEBSOCKET: &str = "connect with transports: [\"websocket\"]";

impl fmt::Display for SioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyFrame => f.write_str("empty frame"),
            Self::UnknownEngineType(c) => write!(f, "unknown Engine.IO packet type {c:?}"),
            Self::OpenFromClient => {
                f.write_str("Engine.IO OPEN (0) is sent by the server only, not by a client")
            }
            Self::EmptyMessage => f.write_str("Engine.IO MESSAGE (4) without a Socket.IO packet"),
            Self::UnknownSocketType(c) => write!(f, "unknown Socket.IO packet type {c:?}"),
            Self::BinaryNotSupported => f.write_str(
                "binary packets are not supported; send JSON-serializable arguments only",
            ),
            Self::ConnectErrorFromClient => f.write_str(
                "Socket.IO CONNECT_ERROR (4) is sent by the server only, not by a client",
            ),
            Self::MalformedNamespace(why) => write!(f, "malformed namespace: {why}"),
            Self::AckIdOverflow => write!(
                f,
                "ack id too long: at most {MAX_ACK_ID_DIGITS} digits are accepted"
            ),
            Self::MissingAckId => f.write_str("ACK packet without an ack id"),
            Self::UnexpectedAckId(packet) => write!(f, "{packet} packet cannot carry an ack id"),
            Self::InvalidJson(why) => write!(f, "invalid JSON payload: {why}"),
            Self::MissingPayload(packet) => {
                write!(
                    f,
                    "{packet} packet has no payload; it must carry a JSON array"
                )
            }
            Self::EventPayloadNotArray => f.write_str("EVENT payload must be a JSON array"),
            Self::EventPayloadEmpty => {
                f.write_str("EVENT payload must not be empty; its first element is the event name")
            }
            Self::EventNameNotString => {
                f.write_str("EVENT payload must start with the event name as a string")
            }
            Self::ReservedEventName(name) => {
                write!(
                    f,
                    "event name {name:?} is reserved and cannot be emitted by a client"
                )
            }
            Self::AckPayloadNotArray => f.write_str("ACK payload must be a JSON array"),
            Self::ConnectPayloadNotObject => {
                f.write_str("CONNECT payload (auth) must be a JSON object")
            }
            Self::TrailingData(after) => write!(f, "unexpected data after the {after}"),
            Self::MissingEio => {
                f.write_str("missing EIO query parameter; connect with socket.io-client v4 (EIO=4)")
            }
            Self::UnsupportedEio(v) if v == "3" => {
                f.write_str("EIO=3 (socket.io-client v2) is not supported; use socket.io-client v4")
            }
            Self::UnsupportedEio(v) => {
                write!(
                    f,
                    "EIO={v} is not supported; use socket.io-client v4 (EIO=4)"
                )
            }
            Self::MissingTransport => {
                write!(f, "missing transport query parameter; {USE_WEBSOCKET}")
            }
            Self::PollingNotSupported => {
                write!(f, "the polling transport is not supported; {USE_WEBSOCKET}")
            }
            Self::UnknownTransport(t) => write!(f, "unknown transport {t:?}; {USE_WEBSOCKET}"),
        }
    }
}

impl std::error::Error for SioError {}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decode one client → server websocket text frame.
///
/// Strict on purpose: anything the reference server would reject, and anything binary, is an
/// error, so the caller can close the socket instead of guessing.
pub fn decode(frame: &str) -> Result<Inbound, SioError> {
    let mut chars = frame.chars();
    let Some(kind) = chars.next() else {
        return Err(SioError::EmptyFrame);
    };
    let rest = chars.as_str();
    match kind {
        '0' => Err(SioError::OpenFromClient),
        '1' => bare(rest, "CLOSE packet", Inbound::Close),
        '2' => bare(rest, "PING packet", Inbound::Ping),
        // `3probe` answers a `2probe`; we never send one, but an answer is harmless.
        '3' if rest == "probe" => Ok(Inbound::Pong),
        '3' => bare(rest, "PONG packet", Inbound::Pong),
        '4' => decode_socket(rest),
        '5' => bare(rest, "UPGRADE packet", Inbound::Upgrade),
        '6' => bare(rest, "NOOP packet", Inbound::Noop),
        other => Err(SioError::UnknownEngineType(other)),
    }
}

/// Accept an Engine.IO packet that carries no data.
fn bare(rest: &str, what: &'static str, packet: Inbound) -> Result<Inbound, SioError> {
    if rest.is_empty() {
        Ok(packet)
    } else {
        Err(SioError::TrailingData(what))
    }
}

/// Decode the Socket.IO packet inside an Engine.IO MESSAGE.
fn decode_socket(packet: &str) -> Result<Inbound, SioError> {
    let mut chars = packet.chars();
    let Some(kind) = chars.next() else {
        return Err(SioError::EmptyMessage);
    };
    match kind {
        '0'..='3' => {}
        '4' => return Err(SioError::ConnectErrorFromClient),
        '5' | '6' => return Err(SioError::BinaryNotSupported),
        other => return Err(SioError::UnknownSocketType(other)),
    }
    let rest = chars.as_str();

    // An attachment count (`<n>-`) only exists on binary packets. Seeing one on any type means a
    // binary-capable sender, so name that cause rather than failing later on the `-`.
    let after_count = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    if after_count.len() < rest.len() && after_count.starts_with('-') {
        return Err(SioError::BinaryNotSupported);
    }

    let (nsp, rest) = split_namespace(rest)?;
    let (ack_id, payload) = split_ack_id(rest)?;

    match kind {
        '0' => {
            if ack_id.is_some() {
                return Err(SioError::UnexpectedAckId("CONNECT"));
            }
            let auth = match parse_json(payload)? {
                None => None,
                Some(obj @ Value::Object(_)) => Some(obj),
                Some(_) => return Err(SioError::ConnectPayloadNotObject),
            };
            Ok(Inbound::Connect { nsp, auth })
        }
        '1' => {
            if ack_id.is_some() {
                return Err(SioError::UnexpectedAckId("DISCONNECT"));
            }
            if !payload.is_empty() {
                return Err(SioError::TrailingData("DISCONNECT packet"));
            }
            Ok(Inbound::Disconnect { nsp })
        }
        '2' => {
            let Some(value) = parse_json(payload)? else {
                return Err(SioError::MissingPayload("EVENT"));
            };
            let Value::Array(items) = value else {
                return Err(SioError::EventPayloadNotArray);
            };
            let mut items = items.into_iter();
            let name = match items.next() {
                None => return Err(SioError::EventPayloadEmpty),
                Some(Value::String(name)) => name,
                Some(_) => return Err(SioError::EventNameNotString),
            };
            if let Some(reserved) = RESERVED_EVENTS.iter().find(|r| **r == name) {
                return Err(SioError::ReservedEventName(reserved));
            }
            Ok(Inbound::Event {
                nsp,
                ack_id,
                name,
                args: items.collect(),
            })
        }
        _ => {
            // Only '3' (ACK) reaches here: the type was checked above.
            let Some(ack_id) = ack_id else {
                return Err(SioError::MissingAckId);
            };
            let Some(value) = parse_json(payload)? else {
                return Err(SioError::MissingPayload("ACK"));
            };
            let Value::Array(args) = value else {
                return Err(SioError::AckPayloadNotArray);
            };
            Ok(Inbound::Ack { nsp, ack_id, args })
        }
    }
}

/// Split off the namespace. It is present only when the text starts with `/`, and then runs to
/// the first `,` (or to the end: `41/chat` is a valid DISCONNECT); otherwise it is `/`.
fn split_namespace(s: &str) -> Result<(String, &str), SioError> {
    if !s.starts_with('/') {
        return Ok(("/".to_owned(), s));
    }
    let (nsp, rest) = s.split_once(',').unwrap_or((s, ""));
    if nsp.len() > MAX_NAMESPACE_LEN {
        return Err(SioError::MalformedNamespace("longer than 256 bytes"));
    }
    // The reference parser has no escapes, so a namespace without its closing `,` swallows the
    // payload (`42/chat["x"]`). JSON delimiters in the name catch that mistake with a clear text.
    if nsp.contains(['"', '[', ']', '{', '}']) {
        return Err(SioError::MalformedNamespace(
            "contains a JSON delimiter; a namespace must be followed by ',' before the payload",
        ));
    }
    if nsp.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(SioError::MalformedNamespace(
            "contains whitespace or a control character",
        ));
    }
    Ok((nsp.to_owned(), rest))
}

/// Split off the optional decimal ack id that precedes the JSON payload.
fn split_ack_id(s: &str) -> Result<(Option<u64>, &str), SioError> {
    let rest = s.trim_start_matches(|c: char| c.is_ascii_digit());
    let len = s.len() - rest.len();
    if len == 0 {
        return Ok((None, s));
    }
    if len > MAX_ACK_ID_DIGITS {
        return Err(SioError::AckIdOverflow);
    }
    let id = s
        .get(..len)
        .and_then(|digits| digits.parse::<u64>().ok())
        .ok_or(SioError::AckIdOverflow)?;
    Ok((Some(id), rest))
}

/// Parse an optional JSON payload, telling trailing garbage apart from malformed JSON.
/// serde_json's recursion limit bounds nesting, so deep input errors instead of overflowing.
fn parse_json(s: &str) -> Result<Option<Value>, SioError> {
    if s.is_empty() {
        return Ok(None);
    }
    let mut de = serde_json::Deserializer::from_str(s);
    let value = Value::deserialize(&mut de).map_err(|e| SioError::InvalidJson(e.to_string()))?;
    de.end()
        .map_err(|_| SioError::TrailingData("JSON payload"))?;
    Ok(Some(value))
}

// ---------------------------------------------------------------------------------------------
// CONNECT auth helpers
// ---------------------------------------------------------------------------------------------

/// The `token` string of a CONNECT auth object (`io(.., { auth: { token } })`), if any.
pub fn connect_auth_token(auth: &Option<Value>) -> Option<&str> {
    auth.as_ref()?.get("token")?.as_str()
}

/// The `(pid, offset)` pair socket.io-client ≥ 4.6 adds to the CONNECT auth on reconnect when
/// the server enabled connection state recovery. `None` unless both are non-empty strings,
/// because half a pair cannot locate a replay position.
pub fn recovery(auth: &Option<Value>) -> Option<(String, String)> {
    let auth = auth.as_ref()?;
    let pid = auth.get("pid")?.as_str()?;
    let offset = auth.get("offset")?.as_str()?;
    if pid.is_empty() || offset.is_empty() {
        return None;
    }
    Some((pid.to_owned(), offset.to_owned()))
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/// Check the upgrade request's query (`?EIO=4&transport=websocket&...`) before accepting the
/// websocket. Only the first occurrence of each parameter counts; other parameters are ignored.
pub fn check_handshake_query(query: &[(String, String)]) -> Result<(), SioError> {
    match handshake_transport(query)? {
        Transport::WebSocket => Ok(()),
        Transport::Polling => Err(SioError::PollingNotSupported),
    }
}

/// An Engine.IO transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP long-polling: GET receives packets, POST sends them.
    Polling,
    WebSocket,
}

/// The transport a request's query asks for (`?EIO=4&transport=polling|websocket`), where the
/// gateway serves both (the connection route).
pub fn handshake_transport(query: &[(String, String)]) -> Result<Transport, SioError> {
    let first = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    match first("EIO") {
        None => return Err(SioError::MissingEio),
        Some("4") => {}
        Some(v) => return Err(SioError::UnsupportedEio(truncate(v))),
    }
    match first("transport") {
        None => Err(SioError::MissingTransport),
        Some("websocket") => Ok(Transport::WebSocket),
        Some("polling") => Ok(Transport::Polling),
        Some(t) => Err(SioError::UnknownTransport(truncate(t))),
    }
}

/// The Engine.IO packets of a long-polling body (separated by the record separator).
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split('\u{1e}').filter(|p| !p.is_empty())
}

/// A long-polling response body carrying `packets`.
pub fn join_payload<S: AsRef<str>>(packets: &[S]) -> String {
    let mut out = String::with_capacity(packets.iter().map(|p| p.as_ref().len() + 1).sum());
    for (k, p) in packets.iter().enumerate() {
        if k > 0 {
            out.push('\u{1e}');
        }
        out.push_str(p.as_ref());
    }
    out
}

/// Keep echoed client text short, so an error message cannot grow with hostile input.
fn truncate(s: &str) -> String {
    crate::text::prefix_chars(s, 32).to_string()
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------
//
// Every `nsp` argument is a namespace as `decode` returns it: `/` or a `/`-prefixed name without
// a comma. The main namespace `/` is omitted on the wire, as the reference encoder does.

/// The Engine.IO OPEN packet, the server's first frame. `upgrades` is empty because the
/// connection already is a websocket and there is nothing to upgrade to.
pub fn open_packet(
    sid: &str,
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: u64,
) -> String {
    open_with(sid, "[]", ping_interval_ms, ping_timeout_ms, max_payload)
}

/// The Engine.IO OPEN packet of a long-polling connection, which may upgrade to a WebSocket.
pub fn open_packet_polling(
    sid: &str,
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: u64,
) -> String {
    open_with(
        sid,
        "[\"websocket\"]",
        ping_interval_ms,
        ping_timeout_ms,
        max_payload,
    )
}

fn open_with(
    sid: &str,
    upgrades: &str,
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: u64,
) -> String {
    let mut out = String::with_capacity(96 + sid.len());
    out.push_str("0{\"sid\":");
    push_json_str(&mut out, sid);
    out.push_str(",\"upgrades\":");
    out.push_str(upgrades);
    out.push_str(",\"pingInterval\":");
    out.push_str(&ping_interval_ms.to_string());
    out.push_str(",\"pingTimeout\":");
    out.push_str(&ping_timeout_ms.to_string());
    out.push_str(",\"maxPayload\":");
    out.push_str(&max_payload.to_string());
    out.push('}');
    out
}

/// The Engine.IO PING. In EIO 4 the server pings and the client's liveness timer resets only on
/// a ping, so this must go out at least every `pingInterval`, even mid-stream.
pub fn ping() -> &'static str {
    "2"
}

/// Accept a namespace CONNECT. Passing `pid` turns on connection state recovery in the client,
/// which then reports `pid` and its last offset when it reconnects.
pub fn connect_ok(nsp: &str, sid: &str, pid: Option<&str>) -> String {
    let mut out = String::with_capacity(24 + nsp.len() + sid.len());
    out.push_str("40");
    push_nsp(&mut out, nsp);
    out.push_str("{\"sid\":");
    push_json_str(&mut out, sid);
    if let Some(pid) = pid {
        out.push_str(",\"pid\":");
        push_json_str(&mut out, pid);
    }
    out.push('}');
    out
}

/// Refuse a namespace CONNECT (CONNECT_ERROR). The client surfaces `message` and `data` in its
/// `connect_error` event and does not retry on its own.
pub fn connect_error(nsp: &str, message: &str, data: Option<&Value>) -> String {
    let mut out = String::with_capacity(32 + nsp.len() + message.len());
    out.push_str("44");
    push_nsp(&mut out, nsp);
    out.push_str("{\"message\":");
    push_json_str(&mut out, message);
    if let Some(data) = data {
        out.push_str(",\"data\":");
        // Value's Display is its compact JSON and cannot fail when writing into a String.
        out.push_str(&data.to_string());
    }
    out.push('}');
    out
}

/// Disconnect a namespace. The client treats this as "io server disconnect" and does NOT
/// reconnect; to make clients come back, close the websocket instead.
pub fn disconnect(nsp: &str) -> String {
    let mut out = String::with_capacity(3 + nsp.len());
    out.push_str("41");
    push_nsp(&mut out, nsp);
    out
}

/// A server EVENT `[name, data]`, plus the recovery `offset` as the last argument when given.
///
/// `data_json` is already-serialized JSON and is copied verbatim, so one serialization can be
/// shared by every socket; an empty `data_json` means the event has no data argument.
pub fn event(nsp: &str, name: &str, data_json: &str, offset: Option<&str>) -> String {
    let extra = offset.map_or(0, |o| o.len() + 3);
    let mut out = String::with_capacity(8 + nsp.len() + name.len() + data_json.len() + extra);
    out.push_str("42");
    push_nsp(&mut out, nsp);
    out.push('[');
    push_json_str(&mut out, name);
    if !data_json.is_empty() {
        out.push(',');
        out.push_str(data_json);
    }
    if let Some(offset) = offset {
        out.push(',');
        // Escaped apart and appended: escaping in place would revalidate the payload before it.
        out.push_str(&super::json_str(offset));
    }
    out.push(']');
    out
}

/// A server ACK for the client event that carried `ack_id`. `args_json` is an already-serialized
/// JSON array of the callback arguments, copied verbatim; empty means no arguments (`[]`).
pub fn ack(nsp: &str, ack_id: u64, args_json: &str) -> String {
    let mut out = String::with_capacity(24 + nsp.len() + args_json.len());
    out.push_str("43");
    push_nsp(&mut out, nsp);
    out.push_str(&ack_id.to_string());
    out.push_str(if args_json.is_empty() {
        "[]"
    } else {
        args_json
    });
    out
}

/// Write the namespace prefix: nothing for `/`, else the name and its `,` delimiter.
fn push_nsp(out: &mut String, nsp: &str) {
    debug_assert!(
        nsp.starts_with('/') && !nsp.contains(','),
        "namespace must start with '/' and contain no ','"
    );
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // --- encoding: exact wire strings ---------------------------------------------------------

    #[test]
    fn open_packet_wire() {
        assert_eq!(
            open_packet("lv_VI97HAXpY6yYWAAAC", 25000, 20000, 1_000_000),
            "0{\"sid\":\"lv_VI97HAXpY6yYWAAAC\",\"upgrades\":[],\"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}"
        );
    }

    #[test]
    fn a_polling_open_offers_the_websocket_upgrade_and_payloads_split_on_the_record_separator() {
        assert_eq!(
            open_packet_polling("s1", 25000, 20000, 1_000_000),
            "0{\"sid\":\"s1\",\"upgrades\":[\"websocket\"],\"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}"
        );
        let body = join_payload(&["40/chat,", "42/chat,[\"a\"]", "2"]);
        assert_eq!(body, "40/chat,\u{1e}42/chat,[\"a\"]\u{1e}2");
        assert_eq!(
            split_payload(&body).collect::<Vec<_>>(),
            vec!["40/chat,", "42/chat,[\"a\"]", "2"]
        );
        assert_eq!(split_payload("").count(), 0);
        assert_eq!(join_payload::<&str>(&[]), "");
        let q = |t: &str| {
            vec![
                ("EIO".to_string(), "4".to_string()),
                ("transport".to_string(), t.to_string()),
            ]
        };
        assert_eq!(handshake_transport(&q("polling")), Ok(Transport::Polling));
        assert_eq!(
            handshake_transport(&q("websocket")),
            Ok(Transport::WebSocket)
        );
    }

    #[test]
    fn open_packet_escapes_sid() {
        assert_eq!(
            open_packet("a\"b", 300, 200, 1),
            "0{\"sid\":\"a\\\"b\",\"upgrades\":[],\"pingInterval\":300,\"pingTimeout\":200,\"maxPayload\":1}"
        );
    }

    #[test]
    fn ping_and_noop_wire() {
        assert_eq!(ping(), "2");
    }

    #[test]
    fn connect_ok_wire() {
        assert_eq!(
            connect_ok("/chat", "abc", Some("xyz")),
            "40/chat,{\"sid\":\"abc\",\"pid\":\"xyz\"}"
        );
        assert_eq!(
            connect_ok("/chat", "abc", None),
            "40/chat,{\"sid\":\"abc\"}"
        );
        assert_eq!(connect_ok("/", "abc", None), "40{\"sid\":\"abc\"}");
        assert_eq!(
            connect_ok("/", "abc", Some("p")),
            "40{\"sid\":\"abc\",\"pid\":\"p\"}"
        );
    }

    #[test]
    fn connect_error_wire() {
        let data = json!({"code": 401, "reason": "expired"});
        assert_eq!(
            connect_error("/chat", "unauthorized", Some(&data)),
            "44/chat,{\"message\":\"unauthorized\",\"data\":{\"code\":401,\"reason\":\"expired\"}}"
        );
        assert_eq!(
            connect_error("/chat", "unauthorized", None),
            "44/chat,{\"message\":\"unauthorized\"}"
        );
        assert_eq!(
            connect_error("/", "Not \"authorized\"", None),
            "44{\"message\":\"Not \\\"authorized\\\"\"}"
        );
    }

    #[test]
    fn disconnect_wire() {
        assert_eq!(disconnect("/chat"), "41/chat,");
        assert_eq!(disconnect("/"), "41");
    }

    #[test]
    fn event_wire() {
        assert_eq!(
            event(
                "/chat",
                "agent:text",
                "{\"conversationId\":\"c\",\"text\":\"hi\"}",
                None
            ),
            "42/chat,[\"agent:text\",{\"conversationId\":\"c\",\"text\":\"hi\"}]"
        );
        assert_eq!(
            event(
                "/chat",
                "agent:text",
                "{\"conversationId\":\"c\",\"text\":\"hi\"}",
                Some("17")
            ),
            "42/chat,[\"agent:text\",{\"conversationId\":\"c\",\"text\":\"hi\"},\"17\"]"
        );
        assert_eq!(event("/", "hey", "\"Jude\"", None), "42[\"hey\",\"Jude\"]");
    }

    #[test]
    fn event_without_data() {
        assert_eq!(event("/chat", "hb:ack", "", None), "42/chat,[\"hb:ack\"]");
        assert_eq!(event("/", "hb:ack", "", Some("9")), "42[\"hb:ack\",\"9\"]");
    }

    #[test]
    fn event_escapes_name_and_offset_not_data() {
        assert_eq!(
            event("/chat", "a\"b\\c\n\u{1}é😀", "[1,\"\\n\"]", Some("o\"1")),
            "42/chat,[\"a\\\"b\\\\c\\n\\u0001é😀\",[1,\"\\n\"],\"o\\\"1\"]"
        );
    }

    #[test]
    fn ack_wire() {
        assert_eq!(
            ack("/chat", 17, "[{\"ok\":true,\"seq\":42}]"),
            "43/chat,17[{\"ok\":true,\"seq\":42}]"
        );
        assert_eq!(ack("/", 12, "[]"), "4312[]");
        assert_eq!(ack("/chat", 0, ""), "43/chat,0[]");
    }

    // --- decoding: Engine.IO ------------------------------------------------------------------

    #[test]
    fn decode_engine_packets() {
        assert_eq!(decode("2"), Ok(Inbound::Ping));
        assert_eq!(decode("3"), Ok(Inbound::Pong));
        assert_eq!(decode("3probe"), Ok(Inbound::Pong));
        assert_eq!(decode("1"), Ok(Inbound::Close));
        assert_eq!(decode("5"), Ok(Inbound::Upgrade));
        assert_eq!(decode("6"), Ok(Inbound::Noop));
    }

    // --- decoding: Socket.IO CONNECT / DISCONNECT ---------------------------------------------

    #[test]
    fn decode_connect() {
        assert_eq!(
            decode("40"),
            Ok(Inbound::Connect {
                nsp: "/".into(),
                auth: None
            })
        );
        assert_eq!(
            decode("40/chat,"),
            Ok(Inbound::Connect {
                nsp: "/chat".into(),
                auth: None
            })
        );
        assert_eq!(
            decode("40/chat"),
            Ok(Inbound::Connect {
                nsp: "/chat".into(),
                auth: None
            })
        );
        assert_eq!(
            decode("40/chat,{\"token\":\"x\"}"),
            Ok(Inbound::Connect {
                nsp: "/chat".into(),
                auth: Some(json!({"token": "x"}))
            })
        );
        assert_eq!(
            decode("40{\"token\":\"x\"}"),
            Ok(Inbound::Connect {
                nsp: "/".into(),
                auth: Some(json!({"token": "x"}))
            })
        );
        assert_eq!(
            decode("40/,{}"),
            Ok(Inbound::Connect {
                nsp: "/".into(),
                auth: Some(json!({}))
            })
        );
    }

    #[test]
    fn decode_disconnect() {
        let chat = Ok(Inbound::Disconnect {
            nsp: "/chat".into(),
        });
        assert_eq!(decode("41/chat,"), chat);
        assert_eq!(decode("41/chat"), chat);
        assert_eq!(decode("41"), Ok(Inbound::Disconnect { nsp: "/".into() }));
    }

    // --- decoding: EVENT / ACK ----------------------------------------------------------------

    #[test]
    fn decode_event_main_namespace() {
        assert_eq!(
            decode("42[\"message\",{\"text\":\"hi\"}]"),
            Ok(Inbound::Event {
                nsp: "/".into(),
                ack_id: None,
                name: "message".into(),
                args: vec![json!({"text": "hi"})],
            })
        );
        assert_eq!(
            decode("4212[\"foo\"]"),
            Ok(Inbound::Event {
                nsp: "/".into(),
                ack_id: Some(12),
                name: "foo".into(),
                args: vec![],
            })
        );
    }

    #[test]
    fn decode_event_with_namespace_and_ack() {
        assert_eq!(
            decode("42/chat,17[\"message\",{\"conversationId\":\"c\",\"text\":\"hi\"},2,null]"),
            Ok(Inbound::Event {
                nsp: "/chat".into(),
                ack_id: Some(17),
                name: "message".into(),
                args: vec![
                    json!({"conversationId": "c", "text": "hi"}),
                    json!(2),
                    Value::Null
                ],
            })
        );
        assert_eq!(
            decode("42/chat,[\"hb\"]"),
            Ok(Inbound::Event {
                nsp: "/chat".into(),
                ack_id: None,
                name: "hb".into(),
                args: vec![],
            })
        );
    }

    #[test]
    fn decode_event_unicode() {
        assert_eq!(
            decode("42/çhat,[\"méssage\",{\"text\":\"héllo 👋 \\u00e9 日本\"}]"),
            Ok(Inbound::Event {
                nsp: "/çhat".into(),
                ack_id: None,
                name: "méssage".into(),
                args: vec![json!({"text": "héllo 👋 é 日本"})],
            })
        );
    }

    #[test]
    fn decode_event_max_ack_id() {
        assert_eq!(
            decode("42999999999999999[\"a\"]"),
            Ok(Inbound::Event {
                nsp: "/".into(),
                ack_id: Some(999_999_999_999_999),
                name: "a".into(),
                args: vec![],
            })
        );
    }

    #[test]
    fn decode_event_tolerates_json_whitespace() {
        assert_eq!(
            decode("42 [ \"a\" , 1 ] \n"),
            Ok(Inbound::Event {
                nsp: "/".into(),
                ack_id: None,
                name: "a".into(),
                args: vec![json!(1)],
            })
        );
    }

    #[test]
    fn decode_ack() {
        assert_eq!(
            decode("43/chat,5[{\"ok\":true}]"),
            Ok(Inbound::Ack {
                nsp: "/chat".into(),
                ack_id: 5,
                args: vec![json!({"ok": true})],
            })
        );
        assert_eq!(
            decode("4313[]"),
            Ok(Inbound::Ack {
                nsp: "/".into(),
                ack_id: 13,
                args: vec![],
            })
        );
    }

    // --- decoding: errors ---------------------------------------------------------------------

    #[test]
    fn error_engine_level() {
        assert_eq!(decode(""), Err(SioError::EmptyFrame));
        assert_eq!(decode("7"), Err(SioError::UnknownEngineType('7')));
        assert_eq!(decode("b4AQID"), Err(SioError::UnknownEngineType('b')));
        assert_eq!(decode("é"), Err(SioError::UnknownEngineType('é')));
        assert_eq!(decode("0{\"sid\":\"x\"}"), Err(SioError::OpenFromClient));
        assert_eq!(decode("4"), Err(SioError::EmptyMessage));
    }

    #[test]
    fn error_trailing_on_bare_engine_packets() {
        assert_eq!(decode("2x"), Err(SioError::TrailingData("PING packet")));
        assert_eq!(decode("2probe"), Err(SioError::TrailingData("PING packet")));
        assert_eq!(decode("3x"), Err(SioError::TrailingData("PONG packet")));
        assert_eq!(decode("1 "), Err(SioError::TrailingData("CLOSE packet")));
        assert_eq!(decode("5x"), Err(SioError::TrailingData("UPGRADE packet")));
        assert_eq!(decode("66"), Err(SioError::TrailingData("NOOP packet")));
    }

    #[test]
    fn error_socket_type() {
        assert_eq!(decode("47"), Err(SioError::UnknownSocketType('7')));
        assert_eq!(decode("4x"), Err(SioError::UnknownSocketType('x')));
        assert_eq!(
            decode("44{\"message\":\"no\"}"),
            Err(SioError::ConnectErrorFromClient)
        );
    }

    #[test]
    fn error_binary() {
        let binary = Err(SioError::BinaryNotSupported);
        assert_eq!(
            decode("451-[\"baz\",{\"_placeholder\":true,\"num\":0}]"),
            binary
        );
        assert_eq!(decode("452-/admin,[\"baz\"]"), binary);
        assert_eq!(
            decode("461-15[\"bar\",{\"_placeholder\":true,\"num\":0}]"),
            binary
        );
        assert_eq!(decode("45"), binary);
        // An attachment count on a text type is still a binary-capable sender.
        assert_eq!(decode("421-[\"a\"]"), binary);
        assert_eq!(
            SioError::BinaryNotSupported.to_string(),
            "binary packets are not supported; send JSON-serializable arguments only"
        );
    }

    #[test]
    fn error_namespace() {
        assert!(matches!(
            decode("42/chat[\"a\"]"),
            Err(SioError::MalformedNamespace(_))
        ));
        assert!(matches!(
            decode("40/ch at,"),
            Err(SioError::MalformedNamespace(_))
        ));
        assert!(matches!(
            decode("40/ch\u{0}at,"),
            Err(SioError::MalformedNamespace(_))
        ));
        let long = format!("40/{},", "a".repeat(MAX_NAMESPACE_LEN));
        assert_eq!(
            decode(&long),
            Err(SioError::MalformedNamespace("longer than 256 bytes"))
        );
        let just_fits = format!("40/{},", "a".repeat(MAX_NAMESPACE_LEN - 1));
        assert!(decode(&just_fits).is_ok());
    }

    #[test]
    fn error_ack_ids() {
        assert_eq!(
            decode("421234567890123456[\"a\"]"),
            Err(SioError::AckIdOverflow)
        );
        assert_eq!(
            decode("43/chat,99999999999999999999[]"),
            Err(SioError::AckIdOverflow)
        );
        assert_eq!(decode("43/chat,[]"), Err(SioError::MissingAckId));
        assert_eq!(decode("43"), Err(SioError::MissingAckId));
        assert_eq!(
            decode("40/chat,7{}"),
            Err(SioError::UnexpectedAckId("CONNECT"))
        );
        assert_eq!(
            decode("41/chat,7"),
            Err(SioError::UnexpectedAckId("DISCONNECT"))
        );
    }

    #[test]
    fn error_invalid_json() {
        assert!(matches!(decode("42[\"a\""), Err(SioError::InvalidJson(_))));
        assert!(matches!(
            decode("40/chat,{token:1}"),
            Err(SioError::InvalidJson(_))
        ));
        assert!(matches!(
            decode("42,[\"a\"]"),
            Err(SioError::InvalidJson(_))
        ));
        // serde_json refuses lone surrogates that JavaScript would accept: an error, not a panic.
        assert!(matches!(
            decode("42[\"\\ud800\"]"),
            Err(SioError::InvalidJson(_))
        ));
        let deep = format!("42{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(decode(&deep), Err(SioError::InvalidJson(_))));
    }

    #[test]
    fn error_event_payload() {
        assert_eq!(decode("42"), Err(SioError::MissingPayload("EVENT")));
        assert_eq!(decode("42/chat,"), Err(SioError::MissingPayload("EVENT")));
        assert_eq!(decode("42/chat,17"), Err(SioError::MissingPayload("EVENT")));
        assert_eq!(decode("42{\"a\":1}"), Err(SioError::EventPayloadNotArray));
        assert_eq!(decode("42\"a\""), Err(SioError::EventPayloadNotArray));
        assert_eq!(decode("42[]"), Err(SioError::EventPayloadEmpty));
        assert_eq!(decode("42[1,\"a\"]"), Err(SioError::EventNameNotString));
        assert_eq!(decode("42[null]"), Err(SioError::EventNameNotString));
        assert_eq!(
            decode("42/chat,[\"disconnect\"]"),
            Err(SioError::ReservedEventName("disconnect"))
        );
    }

    #[test]
    fn error_ack_payload() {
        assert_eq!(decode("43/chat,5"), Err(SioError::MissingPayload("ACK")));
        assert_eq!(
            decode("43/chat,5{\"ok\":true}"),
            Err(SioError::AckPayloadNotArray)
        );
    }

    #[test]
    fn error_connect_payload() {
        assert_eq!(
            decode("40/chat,[\"token\"]"),
            Err(SioError::ConnectPayloadNotObject)
        );
        assert_eq!(decode("40null"), Err(SioError::ConnectPayloadNotObject));
        assert_eq!(decode("40\"t\""), Err(SioError::ConnectPayloadNotObject));
    }

    #[test]
    fn error_trailing_garbage() {
        assert_eq!(
            decode("42[\"a\"]x"),
            Err(SioError::TrailingData("JSON payload"))
        );
        assert_eq!(
            decode("40/chat,{}{}"),
            Err(SioError::TrailingData("JSON payload"))
        );
        assert_eq!(
            decode("41/chat,junk"),
            Err(SioError::TrailingData("DISCONNECT packet"))
        );
        assert_eq!(
            decode("41{}"),
            Err(SioError::TrailingData("DISCONNECT packet"))
        );
    }

    #[test]
    fn every_error_has_readable_text() {
        let all = [
            SioError::EmptyFrame,
            SioError::UnknownEngineType('x'),
            SioError::OpenFromClient,
            SioError::EmptyMessage,
            SioError::UnknownSocketType('x'),
            SioError::BinaryNotSupported,
            SioError::ConnectErrorFromClient,
            SioError::MalformedNamespace("why"),
            SioError::AckIdOverflow,
            SioError::MissingAckId,
            SioError::UnexpectedAckId("CONNECT"),
            SioError::InvalidJson("eof".into()),
            SioError::MissingPayload("EVENT"),
            SioError::EventPayloadNotArray,
            SioError::EventPayloadEmpty,
            SioError::EventNameNotString,
            SioError::ReservedEventName("connect"),
            SioError::AckPayloadNotArray,
            SioError::ConnectPayloadNotObject,
            SioError::TrailingData("PING packet"),
            SioError::MissingEio,
            SioError::UnsupportedEio("5".into()),
            SioError::MissingTransport,
            SioError::PollingNotSupported,
            SioError::UnknownTransport("x".into()),
        ];
        for e in all {
            let text = e.to_string();
            assert!(text.len() > 10, "{e:?} renders as {text:?}");
        }
        assert_eq!(SioError::EmptyFrame.to_string(), "empty frame");
        assert_eq!(
            SioError::AckIdOverflow.to_string(),
            "ack id too long: at most 15 digits are accepted"
        );
    }

    // --- CONNECT auth helpers -----------------------------------------------------------------

    #[test]
    fn auth_token() {
        let auth = Some(json!({"token": "t", "pid": "p"}));
        assert_eq!(connect_auth_token(&auth), Some("t"));
        assert_eq!(connect_auth_token(&None), None);
        assert_eq!(connect_auth_token(&Some(json!({"token": 5}))), None);
        assert_eq!(connect_auth_token(&Some(json!({}))), None);
    }

    #[test]
    fn recovery_pair() {
        let Ok(Inbound::Connect { auth, .. }) =
            decode("40/chat,{\"token\":\"t\",\"pid\":\"p\",\"offset\":\"12\"}")
        else {
            panic!("CONNECT with recovery auth must decode");
        };
        assert_eq!(recovery(&auth), Some(("p".into(), "12".into())));
        assert_eq!(connect_auth_token(&auth), Some("t"));
        assert_eq!(recovery(&None), None);
        assert_eq!(recovery(&Some(json!({"pid": "p"}))), None);
        assert_eq!(recovery(&Some(json!({"pid": "p", "offset": 12}))), None);
        assert_eq!(recovery(&Some(json!({"pid": "", "offset": "1"}))), None);
    }

    // --- handshake ----------------------------------------------------------------------------

    #[test]
    fn handshake_accepts_eio4_websocket() {
        let query = q(&[
            ("EIO", "4"),
            ("transport", "websocket"),
            ("conversationId", "c1"),
        ]);
        assert_eq!(check_handshake_query(&query), Ok(()));
    }

    #[test]
    fn handshake_refuses_eio3() {
        let err = check_handshake_query(&q(&[("EIO", "3"), ("transport", "websocket")]));
        assert_eq!(err, Err(SioError::UnsupportedEio("3".into())));
        assert_eq!(
            err.map_err(|e| e.to_string()),
            Err("EIO=3 (socket.io-client v2) is not supported; use socket.io-client v4".into())
        );
        assert_eq!(
            check_handshake_query(&q(&[("EIO", "5"), ("transport", "websocket")]))
                .map_err(|e| e.to_string()),
            Err("EIO=5 is not supported; use socket.io-client v4 (EIO=4)".into())
        );
    }

    #[test]
    fn handshake_refuses_polling() {
        let err = check_handshake_query(&q(&[("EIO", "4"), ("transport", "polling")]));
        assert_eq!(err, Err(SioError::PollingNotSupported));
        assert_eq!(
            err.map_err(|e| e.to_string()),
            Err(
                "the polling transport is not supported; connect with transports: [\"websocket\"]"
                    .into()
            )
        );
    }

    #[test]
    fn handshake_missing_or_unknown() {
        assert_eq!(
            check_handshake_query(&q(&[("transport", "websocket")])),
            Err(SioError::MissingEio)
        );
        assert_eq!(check_handshake_query(&[]), Err(SioError::MissingEio));
        assert_eq!(
            check_handshake_query(&q(&[("EIO", "4")])),
            Err(SioError::MissingTransport)
        );
        assert_eq!(
            check_handshake_query(&q(&[("EIO", "4"), ("transport", "webtransport")])),
            Err(SioError::UnknownTransport("webtransport".into()))
        );
        let long = "x".repeat(1000);
        assert_eq!(
            check_handshake_query(&q(&[("EIO", &long), ("transport", "websocket")])),
            Err(SioError::UnsupportedEio("x".repeat(32)))
        );
    }

    #[test]
    fn handshake_first_occurrence_wins() {
        assert_eq!(
            check_handshake_query(&q(&[
                ("EIO", "4"),
                ("EIO", "3"),
                ("transport", "websocket")
            ])),
            Ok(())
        );
    }

    // --- round trips --------------------------------------------------------------------------

    #[test]
    fn round_trip_server_packets_through_decode() {
        assert_eq!(
            decode(&event(
                "/chat",
                "agent:text",
                "{\"text\":\"hé\"}",
                Some("17")
            )),
            Ok(Inbound::Event {
                nsp: "/chat".into(),
                ack_id: None,
                name: "agent:text".into(),
                args: vec![json!({"text": "hé"}), json!("17")],
            })
        );
        assert_eq!(
            decode(&ack("/chat", 17, "[{\"ok\":true}]")),
            Ok(Inbound::Ack {
                nsp: "/chat".into(),
                ack_id: 17,
                args: vec![json!({"ok": true})],
            })
        );
        assert_eq!(
            decode(&disconnect("/chat")),
            Ok(Inbound::Disconnect {
                nsp: "/chat".into()
            })
        );
        assert_eq!(
            decode(&connect_ok("/", "abc", Some("p"))),
            Ok(Inbound::Connect {
                nsp: "/".into(),
                auth: Some(json!({"sid": "abc", "pid": "p"})),
            })
        );
        assert_eq!(decode(ping()), Ok(Inbound::Ping));
        assert_eq!(decode("6"), Ok(Inbound::Noop));
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_strings(s in any::<String>()) {
            let _ = decode(&s);
        }

        #[test]
        fn decode_never_panics_on_protocol_shaped_strings(
            s in "[0-7]{1,2}[0-9-]{0,3}(/[^,]{0,6},?)?[0-9]{0,18}[\\[\\]{}\",:a-z0-9 é\\\\]{0,24}"
        ) {
            let _ = decode(&s);
        }

        #[test]
        fn json_escaping_matches_serde_json(s in any::<String>()) {
            let mut ours = String::new();
            push_json_str(&mut ours, &s);
            prop_assert_eq!(ours, serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn event_round_trips(
            nsp in "/|/[a-zA-Zé_:-]{1,12}",
            name in any::<String>(),
            text in any::<String>(),
            offset in proptest::option::of("[0-9a-z-]{1,12}"),
        ) {
            prop_assume!(!RESERVED_EVENTS.contains(&name.as_str()));
            let data = json!({ "text": text });
            let wire = event(&nsp, &name, &data.to_string(), offset.as_deref());
            let mut args = vec![data];
            args.extend(offset.map(Value::String));
            prop_assert_eq!(
                decode(&wire),
                Ok(Inbound::Event { nsp, ack_id: None, name, args })
            );
        }

        #[test]
        fn ack_round_trips(
            nsp in "/|/[a-z]{1,12}",
            ack_id in 0u64..1_000_000_000_000_000,
            items in proptest::collection::vec(any::<i64>(), 0..4),
        ) {
            let args: Vec<Value> = items.into_iter().map(Value::from).collect();
            let wire = ack(&nsp, ack_id, &Value::Array(args.clone()).to_string());
            prop_assert_eq!(decode(&wire), Ok(Inbound::Ack { nsp, ack_id, args }));
        }
    }
}
