//! One exchange with a server as a state machine: the session it needs opened (or opened again when the server forgot it), then every page of `tools/list` or one `tools/call`; POSTs out, answers in.

use super::tools::{tools_page, ListedTool};
use super::wire::{
    call_tool_request, initialize_request, initialized_notification, list_tools_request,
    response_result,
};
use super::{McpError, MAX_LIST_PAGES, MAX_TOOLS_PER_AGENT};
use crate::agents::McpServer;
use serde_json::Value;

/// What the client knows of its session with one server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Session {
    /// Set once `initialize` succeeded.
    pub open: Option<OpenSession>,
    /// The id of the last request sent (ids are unique within the client's life with the server).
    last_id: u64,
}

/// An initialized session.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenSession {
    /// The `Mcp-Session-Id` the server gave, if it gave one.
    pub id: Option<String>,
    /// The protocol version the server chose.
    pub protocol_version: String,
}

/// What an exchange does once its session is open.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Every page of `tools/list`.
    ListTools,
    /// `tools/call` of the server's tool `name`.
    CallTool { name: String, arguments: Value },
}

/// What an exchange gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The server's tools; `more`: it had more pages (or tools) than the bounds let in.
    Tools { tools: Vec<ListedTool>, more: bool },
    /// The `result` of `tools/call`.
    Called(Value),
}

impl Outcome {
    /// The listed tools and whether there were more (an exchange that called a tool has none).
    pub fn into_tools(self) -> Result<(Vec<ListedTool>, bool), McpError> {
        match self {
            Outcome::Tools { tools, more } => Ok((tools, more)),
            Outcome::Called(_) => Err(McpError::Protocol("a call result, not a listing".into())),
        }
    }

    /// The `tools/call` result (an exchange that listed tools has none).
    pub fn into_call_result(self) -> Result<Value, McpError> {
        match self {
            Outcome::Called(result) => Ok(result),
            Outcome::Tools { .. } => Err(McpError::Protocol("a listing, not a call result".into())),
        }
    }
}

/// One HTTP POST to the server's URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Post {
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// The request's id, whose response the answer must carry; `None` for a notification.
    pub id: Option<u64>,
}

/// What came back for a [`Post`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A successful answer carrying the response to the request, and the `Mcp-Session-Id`
    /// header it had.
    Response {
        session_id: Option<String>,
        message: Value,
    },
    /// A successful answer to a notification.
    Accepted,
    /// Another HTTP status, and the start of its body.
    Status { status: u16, text: String },
    /// Nothing usable came back.
    Failed(McpError),
}

impl Answer {
    fn into_error(self) -> McpError {
        match self {
            Answer::Status { status, text } => McpError::Status { status, text },
            Answer::Failed(e) => e,
            Answer::Accepted | Answer::Response { .. } => {
                McpError::Protocol("an answer the exchange did not expect".into())
            }
        }
    }
}

/// What the glue does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Send this, then [`Exchange::answered`].
    Post(Post),
    /// The exchange is over.
    Done(Result<Outcome, McpError>),
}

/// What the exchange waits for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Awaiting {
    Initialize,
    Initialized,
    /// The operation's request; `with_session`: it carried a session id.
    Operation {
        with_session: bool,
    },
}

/// One operation with a server, opening (or re-opening) the session it needs: `initialize` and
/// `notifications/initialized` when the session is not open, then the operation. A request
/// whose session the server forgot (404) opens a new session and is sent again, once.
#[derive(Debug)]
pub struct Exchange {
    headers: Vec<(String, String)>,
    session: Session,
    operation: Operation,
    awaiting: Option<Awaiting>,
    next: Option<Next>,
    reinitialized: bool,
    cursor: Option<String>,
    pages: u32,
    tools: Vec<ListedTool>,
}

impl Exchange {
    /// Starts `operation` with `server`, in `session` when it is open.
    pub fn new(server: &McpServer, session: Session, operation: Operation) -> Self {
        let mut exchange = Exchange {
            headers: server
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            session,
            operation,
            awaiting: None,
            next: None,
            reinitialized: false,
            cursor: None,
            pages: 0,
            tools: Vec::new(),
        };
        if exchange.session.open.is_some() {
            exchange.send_operation();
        } else {
            exchange.send_initialize();
        }
        exchange
    }

    /// The next thing to do; `None` while an answer is awaited.
    pub fn poll(&mut self) -> Option<Next> {
        self.next.take()
    }

    /// The session as it stands (opened, or forgotten, by this exchange).
    pub fn into_session(self) -> Session {
        self.session
    }

    /// The answer to the last [`Post`].
    pub fn answered(&mut self, answer: Answer) {
        let Some(awaiting) = self.awaiting.take() else {
            return;
        };
        match (awaiting, answer) {
            (
                Awaiting::Initialize,
                Answer::Response {
                    session_id,
                    message,
                },
            ) => match opened_version(message) {
                Ok(protocol_version) => {
                    self.session.open = Some(OpenSession {
                        id: session_id,
                        protocol_version,
                    });
                    self.awaiting = Some(Awaiting::Initialized);
                    self.post(initialized_notification(), None);
                }
                Err(e) => self.done(Err(e)),
            },
            (Awaiting::Initialized, Answer::Failed(e)) => self.done(Err(e)),
            // A server that refuses the notification says why on the request that follows.
            (Awaiting::Initialized, _) => self.send_operation(),
            (Awaiting::Operation { .. }, Answer::Response { message, .. }) => {
                match response_result(message) {
                    Ok(result) => self.operation_done(result),
                    Err(e) => self.done(Err(e)),
                }
            }
            (Awaiting::Operation { with_session: true }, Answer::Status { status: 404, .. })
                if !self.reinitialized =>
            {
                // The server forgot the session: a new one, and the operation from its start.
                self.reinitialized = true;
                self.session.open = None;
                self.cursor = None;
                self.pages = 0;
                self.tools.clear();
                self.send_initialize();
            }
            (_, answer) => self.done(Err(answer.into_error())),
        }
    }

    fn send_initialize(&mut self) {
        let id = self.next_id();
        self.awaiting = Some(Awaiting::Initialize);
        self.post(initialize_request(id), Some(id));
    }

    fn send_operation(&mut self) {
        let id = self.next_id();
        let body = match &self.operation {
            Operation::ListTools => list_tools_request(id, self.cursor.as_deref()),
            Operation::CallTool { name, arguments } => call_tool_request(id, name, arguments),
        };
        let with_session = self.session.open.as_ref().is_some_and(|s| s.id.is_some());
        self.awaiting = Some(Awaiting::Operation { with_session });
        self.post(body, Some(id));
    }

    fn operation_done(&mut self, result: Value) {
        if let Operation::CallTool { .. } = self.operation {
            return self.done(Ok(Outcome::Called(result)));
        }
        let page = match tools_page(&result) {
            Ok(page) => page,
            Err(e) => return self.done(Err(e)),
        };
        self.pages += 1;
        let room = MAX_TOOLS_PER_AGENT.saturating_sub(self.tools.len());
        let cut = page.tools.len() > room;
        self.tools.extend(page.tools.into_iter().take(room));
        match page.next_cursor {
            Some(cursor) if !cut && self.pages < MAX_LIST_PAGES => {
                self.cursor = Some(cursor);
                self.send_operation();
            }
            more => {
                let tools = std::mem::take(&mut self.tools);
                let more = cut || more.is_some();
                self.done(Ok(Outcome::Tools { tools, more }));
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        self.session.last_id += 1;
        self.session.last_id
    }

    /// Queues a POST with the transport's headers, the session's, then the server's own.
    fn post(&mut self, body: String, id: Option<u64>) {
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            (
                "accept".to_string(),
                "application/json, text/event-stream".to_string(),
            ),
        ];
        if let Some(open) = &self.session.open {
            if let Some(session_id) = &open.id {
                headers.push(("mcp-session-id".into(), session_id.clone()));
            }
            headers.push(("mcp-protocol-version".into(), open.protocol_version.clone()));
        }
        headers.extend(self.headers.iter().cloned());
        self.next = Some(Next::Post(Post { body, headers, id }));
    }

    fn done(&mut self, outcome: Result<Outcome, McpError>) {
        self.next = Some(Next::Done(outcome));
    }
}

/// The protocol version an `initialize` response chose. Any version is taken: the two methods
/// the gateway uses read the same in every version so far, and the version goes back to the
/// server in `MCP-Protocol-Version` as it gave it.
fn opened_version(message: Value) -> Result<String, McpError> {
    let result = response_result(message)?;
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            McpError::Protocol("an initialize result without a protocolVersion".into())
        })?;
    Ok(version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::test_support::response;
    use serde_json::json;

    fn server(headers: &[(&str, &str)]) -> McpServer {
        McpServer {
            name: "docs".into(),
            url: "https://mcp.example/mcp".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            requires_approval: Default::default(),
        }
    }

    fn initialize_result() -> Value {
        json!({ "protocolVersion": "2025-06-18", "capabilities": { "tools": {} }, "serverInfo": { "name": "s", "version": "1" } })
    }

    /// The next POST of `ex`, as (method, id, the headers named `mcp-*`).
    fn next_post(ex: &mut Exchange) -> (String, Option<u64>, Vec<(String, String)>, Value) {
        let Some(Next::Post(post)) = ex.poll() else {
            panic!("expected a POST");
        };
        let body: Value = serde_json::from_str(&post.body).unwrap();
        let mcp = post
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("mcp-"))
            .cloned()
            .collect();
        (
            body["method"].as_str().unwrap().to_string(),
            post.id,
            mcp,
            body,
        )
    }

    fn header(name: &str, value: &str) -> (String, String) {
        (name.to_string(), value.to_string())
    }

    #[test]
    fn an_exchange_initializes_then_lists_every_page_in_the_session() {
        let mut ex = Exchange::new(
            &server(&[("Authorization", "Bearer k")]),
            Session::default(),
            Operation::ListTools,
        );
        let Some(Next::Post(first)) = ex.poll() else {
            panic!()
        };
        assert_eq!(
            first.headers,
            [
                header("content-type", "application/json"),
                header("accept", "application/json, text/event-stream"),
                header("Authorization", "Bearer k"),
            ]
        );
        assert_eq!(first.id, Some(1));
        assert!(ex.poll().is_none(), "one request at a time");
        ex.answered(Answer::Response {
            session_id: Some("s-1".into()),
            message: response(1, initialize_result()),
        });
        let (method, id, mcp, _) = next_post(&mut ex);
        assert_eq!((method.as_str(), id), ("notifications/initialized", None));
        let session_headers = vec![
            header("mcp-session-id", "s-1"),
            header("mcp-protocol-version", "2025-06-18"),
        ];
        assert_eq!(mcp, session_headers);
        ex.answered(Answer::Accepted);
        let mut cursors = Vec::new();
        for page in 0..3 {
            let (method, id, mcp, body) = next_post(&mut ex);
            assert_eq!(method, "tools/list");
            assert_eq!(mcp, session_headers);
            cursors.push(body["params"]["cursor"].clone());
            let next = if page < 2 {
                json!(format!("c{}", page + 1))
            } else {
                Value::Null
            };
            let id = id.unwrap();
            ex.answered(Answer::Response {
                session_id: None,
                message: response(
                    id,
                    json!({ "tools": [{ "name": format!("t{page}"), "inputSchema": { "type": "object", "properties": { "q": {} } } }, { "nameless": true }], "nextCursor": next }),
                ),
            });
        }
        assert_eq!(cursors, [Value::Null, json!("c1"), json!("c2")]);
        let Some(Next::Done(Ok(Outcome::Tools { tools, more }))) = ex.poll() else {
            panic!()
        };
        assert!(!more);
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["t0", "t1", "t2"]);
        assert_eq!(
            tools[0].input_schema,
            json!({ "type": "object", "properties": { "q": {} } })
        );
        let session = ex.into_session();
        assert_eq!(session.open.unwrap().id.as_deref(), Some("s-1"));
        assert_eq!(session.last_id, 4);
    }

    #[test]
    fn a_forgotten_session_is_opened_again_once_and_the_call_sent_again() {
        let open = Session {
            open: Some(OpenSession {
                id: Some("old".into()),
                protocol_version: "2025-03-26".into(),
            }),
            last_id: 9,
        };
        let call = Operation::CallTool {
            name: "echo".into(),
            arguments: json!({ "text": "hi" }),
        };
        let mut ex = Exchange::new(&server(&[]), open.clone(), call.clone());
        let (method, id, mcp, body) = next_post(&mut ex);
        assert_eq!((method.as_str(), id), ("tools/call", Some(10)));
        assert_eq!(
            body["params"],
            json!({ "name": "echo", "arguments": { "text": "hi" } })
        );
        assert_eq!(
            mcp,
            [
                header("mcp-session-id", "old"),
                header("mcp-protocol-version", "2025-03-26")
            ]
        );
        ex.answered(Answer::Status {
            status: 404,
            text: String::new(),
        });
        let (method, _, mcp, _) = next_post(&mut ex);
        assert_eq!(method, "initialize");
        assert!(mcp.is_empty(), "a new session starts without the old id");
        ex.answered(Answer::Response {
            session_id: Some("new".into()),
            message: response(11, initialize_result()),
        });
        assert_eq!(next_post(&mut ex).0, "notifications/initialized");
        ex.answered(Answer::Status {
            status: 400,
            text: "ignored".into(),
        });
        let (method, id, mcp, _) = next_post(&mut ex);
        assert_eq!((method.as_str(), id), ("tools/call", Some(12)));
        assert_eq!(mcp[0], header("mcp-session-id", "new"));
        // Forgotten again: no second re-initialization.
        ex.answered(Answer::Status {
            status: 404,
            text: "Session not found".into(),
        });
        assert_eq!(
            ex.poll(),
            Some(Next::Done(Err(McpError::Status {
                status: 404,
                text: "Session not found".into()
            })))
        );
        // A 404 to a request without a session id is the server's answer, not a lost session.
        let mut ex = Exchange::new(
            &server(&[]),
            Session {
                open: Some(OpenSession {
                    id: None,
                    protocol_version: "2025-06-18".into(),
                }),
                last_id: 0,
            },
            call,
        );
        next_post(&mut ex);
        ex.answered(Answer::Status {
            status: 404,
            text: String::new(),
        });
        assert!(matches!(
            ex.poll(),
            Some(Next::Done(Err(McpError::Status { status: 404, .. })))
        ));
    }

    #[test]
    fn errors_end_the_exchange_with_what_went_wrong() {
        let call = || Operation::CallTool {
            name: "t".into(),
            arguments: json!({}),
        };
        let mut ex = Exchange::new(&server(&[]), Session::default(), call());
        ex.answered(Answer::Failed(McpError::Unreachable("refused".into())));
        assert_eq!(
            ex.poll(),
            Some(Next::Done(Err(McpError::Unreachable("refused".into()))))
        );
        let mut ex = Exchange::new(&server(&[]), Session::default(), call());
        ex.answered(Answer::Response {
            session_id: None,
            message: response(1, json!({ "capabilities": {} })),
        });
        assert!(
            matches!(ex.poll(), Some(Next::Done(Err(McpError::Protocol(m)))) if m.contains("protocolVersion"))
        );
        let mut ex = Exchange::new(&server(&[]), Session::default(), call());
        ex.answered(Answer::Response {
            session_id: None,
            message: response(1, initialize_result()),
        });
        next_post(&mut ex);
        ex.answered(Answer::Accepted);
        next_post(&mut ex);
        ex.answered(Answer::Response {
            session_id: None,
            message: json!({ "jsonrpc": "2.0", "id": 2, "error": { "code": -32602, "message": "bad arguments" } }),
        });
        let Some(Next::Done(Err(e))) = ex.poll() else {
            panic!()
        };
        assert_eq!(
            e.to_string(),
            "answered with JSON-RPC error -32602: bad arguments"
        );
        assert_eq!(
            McpError::Status {
                status: 401,
                text: "no".into()
            }
            .to_string(),
            "answered HTTP 401: no"
        );
    }

    #[test]
    fn a_listing_stops_at_the_page_bound() {
        let open = Session {
            open: Some(OpenSession {
                id: None,
                protocol_version: "2025-06-18".into(),
            }),
            last_id: 0,
        };
        let mut ex = Exchange::new(&server(&[]), open, Operation::ListTools);
        for page in 0..MAX_LIST_PAGES {
            let (_, id, _, _) = next_post(&mut ex);
            ex.answered(Answer::Response {
                session_id: None,
                message: response(
                    id.unwrap(),
                    json!({ "tools": [{ "name": format!("t{page}") }], "nextCursor": "more" }),
                ),
            });
        }
        let Some(Next::Done(Ok(Outcome::Tools { tools, more }))) = ex.poll() else {
            panic!()
        };
        assert_eq!((tools.len(), more), (MAX_LIST_PAGES as usize, true));
        assert_eq!(tools[0].input_schema, json!({ "type": "object" }));
    }
}
