//! A conversation's turns: client events, the message queue, planning, the model calls and tools, storing the reply.

use super::approval::{Ran, Unpark};
use super::outbox::RETRY_FLOOR_MS;
use super::*;
use crate::conversation::checkpoint::TurnRecord;
use crate::conversation::reply::Opening;
use crate::conversation::room::{Offer, Pending};
use crate::conversation::ToolOutcome;
use crate::outbox::OutboxRow;
use futures::future::{select, Either};
use std::pin::Pin;

impl ConversationObject {
    pub(super) async fn handle_event(
        &self,
        ws: &WebSocket,
        meta: &SocketMeta,
        event: ClientEvent,
        ack: Option<u64>,
        config: &Config,
    ) {
        let gate = self.room.borrow().gate(&event, meta).map(str::to_string);
        let user = match gate {
            Ok(user) => user,
            Err(e) => return self.refuse(ws, meta, ack, &e),
        };
        if event.is_rate_limited() {
            let limit = config.rate_limit_per_minute;
            if let Err(wait) = crate::shell::limiter::admit(&self.env, &user, limit).await {
                return self.refuse(ws, meta, ack, &RoomError::rate_limited(limit, wait));
            }
        }
        match event {
            ClientEvent::Message(message) => {
                self.on_message(ws, meta, &user, message, ack, config).await
            }
            ClientEvent::SetThinking { level, .. } => {
                let settable = self.room.borrow().thinking_settable();
                if let Err(e) = settable {
                    return self.refuse(ws, meta, ack, &e);
                }
                let result = self.set_thinking(&level).await;
                match result {
                    Ok(()) => Self::send_ack(ws, ack, &json!({ "ok": true }).to_string()),
                    Err(msg) => self.refuse(
                        ws,
                        meta,
                        ack,
                        &RoomError::client(ErrorCode::InvalidThinkingLevel, msg),
                    ),
                }
            }
            ClientEvent::Abort { .. } => {
                let requested = self.room.borrow().abort_requested();
                match requested {
                    // An idle session's abort sends nothing; only an ack asked for is answered.
                    Ok(running) => {
                        Self::send_ack(ws, ack, &json!({ "ok": true }).to_string());
                        let parked = self.room.borrow().waiting.is_some();
                        if parked {
                            self.unpark(Unpark::Abort, config).await;
                        } else if running {
                            self.abort_turn();
                        }
                    }
                    Err(e) => self.refuse(ws, meta, ack, &e),
                }
            }
            ClientEvent::ToolApprove {
                tool_call_id,
                approved,
                reason,
                ..
            } => {
                let answer = (tool_call_id, approved, reason);
                self.on_tool_approve(ws, meta, &user, answer, ack, config)
                    .await
            }
            ClientEvent::Ping if meta.sio => {
                // An event named `ping` on socket.io: answered in its framing (a raw JSON frame
                // is not an Engine.IO packet and would kill the client's transport).
                self.send_to(ws, meta, &OutEvent::unsequenced("pong", "{}".into()));
                Self::send_ack(ws, ack, &json!({ "ok": true }).to_string());
            }
            ClientEvent::Ping => {
                let _ = ws.send_with_str(protocol::KEEPALIVE_PONG);
            }
            ClientEvent::CommandExecute { command, args, .. } => {
                let result = self.execute_command(&command, args.as_ref(), &user).await;
                let event = OutEvent::unsequenced("command:result", result.to_string());
                self.send_to(ws, meta, &event);
                Self::send_ack(ws, ack, &event.data);
            }
        }
    }

    pub(super) fn abort_turn(&self) {
        self.aborted.set(true);
        if let Some(ctrl) = self.abort.borrow_mut().take() {
            ctrl.abort();
        }
    }

    pub(super) async fn on_message(
        &self,
        ws: &WebSocket,
        meta: &SocketMeta,
        user: &str,
        message: MessageEvent,
        ack: Option<u64>,
        config: &Config,
    ) {
        if let Some(name) = &message.agent_id {
            // Checked before anything is stored: an agent this user may not run is refused as if
            // it did not exist, and the listing names only the agents the user may run.
            let operator = self.operator().await;
            if crate::agents::find_for(&operator.agents, name, user).is_none() {
                let msg = plan::unknown_agent_message(name, &operator.agents, user);
                let e = RoomError::start_failed(RoomError::client(ErrorCode::UnknownAgent, msg));
                self.refuse(ws, meta, ack, &e);
                return;
            }
        }
        let stored_as = message
            .client_message_id
            .as_deref()
            .and_then(|c| self.seen_message(c));
        let pending = Pending {
            socket: ws.clone(),
            meta: meta.clone(),
            message,
            ack,
        };
        let offer = self
            .room
            .borrow_mut()
            .offer(pending, stored_as, config.max_queued_messages);
        let next = match offer {
            Offer::Duplicate {
                pending,
                message_id,
            } => {
                let client_id = pending.message.client_message_id.unwrap_or_default();
                self.send_duplicate_ack(ws, meta, ack, &client_id, &message_id);
                return;
            }
            Offer::AlreadyPending | Offer::Queued => return,
            Offer::Refused(_, e) => return self.refuse(ws, meta, ack, &e),
            Offer::Start(pending) => Some(pending),
        };
        self.run_queue(next, config).await;
    }

    /// Runs `next` and the turns queued behind it, then marks the conversation idle.
    pub(super) async fn run_queue(&self, mut next: Option<Pending<WebSocket>>, config: &Config) {
        while let Some(p) = next {
            self.run_turn(p, config).await;
            next = self.room.borrow_mut().next_turn();
        }
        if self.room.borrow().waiting.is_some() {
            // Parked on a tool call's approval: its rows say so, and it still runs.
            return;
        }
        let seq = self.room.borrow().log.next_seq();
        self.kv_put("seq", &seq.to_string());
        self.kv_put("turn", "idle");
        let sockets = self.socket_count();
        if self.live.borrow().differs(sockets, false) {
            // The registry may still say a turn runs: a queued duplicate ended the loop without a
            // turn of its own, or the closing copy failed.
            self.update_live(sockets).await;
        }
    }

    /// A resend of a stored message: the same ack again, to the sender only, and no second turn.
    fn send_duplicate_ack(
        &self,
        ws: &WebSocket,
        meta: &SocketMeta,
        ack: Option<u64>,
        client_id: &str,
        message_id: &str,
    ) {
        let id = self.room.borrow().id.clone();
        let payload = reply::ack_payload(&id, message_id, Some(client_id), true);
        self.send_to(
            ws,
            meta,
            &OutEvent::unsequenced("message:ack", payload.clone()),
        );
        Self::send_ack(ws, ack, &payload);
    }

    pub(super) fn seen_message(&self, client_id: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Row {
            message_id: String,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec(
                "SELECT message_id FROM seen WHERE client_id = ?",
                vec![client_id.into()],
            )
            .ok()?
            .to_array()
            .ok()?;
        rows.into_iter().next().map(|r| r.message_id)
    }

    /// Stores the user message, then runs the model (and tools) to the end of the turn.
    pub(super) async fn run_turn(&self, p: Pending<WebSocket>, config: &Config) {
        let Pending {
            socket: ws,
            meta,
            message,
            ack,
        } = p;
        let user = meta.user.clone().unwrap_or_default();
        let (id, id_json) = {
            let room = self.room.borrow();
            (room.id.clone(), room.id_json.clone())
        };
        // A copy that waited in the queue while its original was stored is a duplicate by now.
        if let Some(client_id) = &message.client_message_id {
            if let Some(message_id) = self.seen_message(client_id) {
                self.send_duplicate_ack(&ws, &meta, ack, client_id, &message_id);
                return;
            }
        }
        let d = match db::db(&self.env) {
            Ok(d) => d,
            Err(e) => {
                console_error!("database binding: {e}");
                let e = RoomError::start_failed(RoomError::internal(
                    "storage is unavailable; nothing was sent to the model",
                ));
                self.send_error(&ws, &meta, &e);
                return;
            }
        };
        // Claimed when its first socket attached; an instance that lost the owner asks D1 again.
        self.room.borrow_mut().in_flight = message.client_message_id.clone();
        if let Err(e) = self.claim(&user).await {
            self.room.borrow_mut().in_flight = None;
            self.send_error(&ws, &meta, &e);
            return;
        }
        let known_history = self.room.borrow().stored_any;
        self.aborted.set(false);
        self.closing.set(false);
        self.recovery_armed.set(false);
        {
            // The turn's events from here on (session:info and its ack first) are checkpointed.
            let mut room = self.room.borrow_mut();
            let last = room.log.next_seq() - 1;
            room.checkpoint.start(last);
        }
        let message_id = new_id();
        let input = TurnInput {
            id: &id,
            id_json: &id_json,
            user: &user,
            message: &message,
            message_id: &message_id,
            known_history,
        };
        // The model call is sent before the message is written: a storage write holds every
        // outgoing message (the call included) until it is committed, and the call need not wait.
        // Nothing reaches a client before the write: `answer` waits for `kept` (the ack, once the
        // message is written) after planning, and a failed write aborts the call.
        let (kept_tx, kept_rx) = futures::channel::oneshot::channel::<Option<String>>();
        let (ended_tx, ended_rx) = futures::channel::oneshot::channel::<()>();
        let answer = async {
            self.answer(&d, &input, (&ws, ack), config, kept_rx).await;
            let _ = ended_tx.send(());
        };
        let keep_then_copy = async {
            let kept = self.keep_user_message(&ws, &meta, ack, &input);
            let stored = kept.is_some();
            let _ = kept_tx.send(kept);
            if !stored {
                return;
            }
            // D1 gets the message with the reply, in the turn's one batch; a turn still running
            // after D1_COPY_DELAY_MS (plus up to half again, so turns that began together spread
            // their copies) copies it (and its live-registry row) then. The turn's start,
            // when a burst of conversations compete for the runtime, does no database work.
            let wait =
                crate::outbox::copy_delay_ms(config.d1_copy_delay_ms, js_sys::Math::random());
            let delay = Delay::from(Duration::from_millis(wait));
            if let futures::future::Either::Left(_) = futures::future::select(delay, ended_rx).await
            {
                // A long turn: should this instance die before the turn ends, an alarm copies
                // what the turn wrote after this copy.
                self.arm_alarm_within(OUTBOX_ALARM_SLACK_MS).await;
                // Built under the copy lock: a turn whose closing copy went first is over.
                let live = || {
                    let running = !self.closing.get();
                    self.live_change(&d, self.socket_count(), running)
                        .into_iter()
                        .collect()
                };
                if let Err(e) = self.copy_to_d1(&d, CopyKind::MidTurn, live).await {
                    self.live_unknown();
                    console_warn!("copying the user message to D1 (will retry): {e}");
                }
            }
        };
        // `join!` polls in order: the call goes out before the write starts.
        futures::join!(answer, keep_then_copy);
        if self.room.borrow().waiting.is_none() {
            self.clear_checkpoint();
        }
    }

    /// Writes the user message to the object's storage; its `message:ack` payload, sent by
    /// `answer` after `session:info` (the reference gateway's order), or `None` (refused) when it
    /// could not be written.
    fn keep_user_message(
        &self,
        ws: &WebSocket,
        meta: &SocketMeta,
        ack: Option<u64>,
        input: &TurnInput<'_>,
    ) -> Option<String> {
        let TurnInput {
            id,
            user,
            message,
            message_id,
            ..
        } = *input;
        let client_id = message.client_message_id.as_deref();
        self.kv_put("turn", "running");
        let kept = self.keep_message(
            message_id,
            "user",
            user,
            &message.content,
            &reply::user_metadata(&now_iso(), client_id),
            now_ms(),
        );
        if let Err(e) = kept {
            // Unlike the seed, no ack without storage: the client may resend safely.
            console_error!("storing the user message: {e}");
            let msg = "your message could not be stored; the turn was cancelled, send it again";
            self.room.borrow_mut().in_flight = None;
            self.refuse(ws, meta, ack, &RoomError::internal(msg));
            return None;
        }
        self.after_user_message_stored(user, message, message_id);
        Some(reply::ack_payload(id, message_id, client_id, false))
    }

    /// Acknowledges the stored user message: `message:ack` to every socket, and the sender's
    /// socket.io ack.
    fn acknowledge(&self, (ws, ack): (&WebSocket, Option<u64>), payload: String) {
        self.room.borrow_mut().acknowledged();
        self.broadcast("message:ack", payload.clone());
        Self::send_ack(ws, ack, &payload);
    }

    /// Plans the turn, runs its model calls and tools, and stores the reply. `sender` gets the
    /// socket.io ack of the message once `kept` says it is stored.
    async fn answer(
        &self,
        d: &D1Database,
        input: &TurnInput<'_>,
        sender: (&WebSocket, Option<u64>),
        config: &Config,
        kept: futures::channel::oneshot::Receiver<Option<String>>,
    ) {
        let (id, id_json) = (input.id, input.id_json);
        let plan = self.plan_turn(d, input, config).await;
        let mut steps = plan.as_ref().ok().map(|p| {
            let tools = p.turn.tools.iter().map(|t| t.name.clone()).collect();
            let asking = p
                .turn
                .agent
                .as_ref()
                .map(|a| a.approval_tools(&p.mcp_tools));
            TurnSteps::new(
                id,
                p.turn.candidates.clone(),
                p.turn.base.clone(),
                tools,
                RetryPolicy::new(config.upstream_retries),
                config.max_tool_steps,
            )
            .with_approval(asking.unwrap_or_default())
        });
        let first = steps.as_mut().and_then(|s| match s.poll() {
            Some(StepAction::Call { target, messages }) => Some((target, messages)),
            _ => None,
        });
        // The first model call is polled once here, which sends it, before `kept` lets the
        // message's write run (that write holds every later outgoing request until it commits).
        let thinking = self.room.borrow().session.thinking();
        let no_tools = Vec::new();
        let tools = plan.as_ref().map_or(&no_tools, |p| &p.turn.tools);
        let mut call = first.as_ref().map(|(target, messages)| {
            Box::pin(self.open_call(target, messages, tools, thinking, config))
        });
        let mut first_call = None;
        if let Some(call) = call.as_mut() {
            if let std::task::Poll::Ready(opened) = futures::poll!(call.as_mut()) {
                first_call = Some(opened);
            }
        }
        let Ok(Some(ack_payload)) = kept.await else {
            // Refused already; the call (if any) must not run on, and the context it was planned
            // with holds a message that was never stored.
            self.abort_turn();
            self.room.borrow_mut().history = None;
            return;
        };
        let callable = call.is_some() && steps.is_some();
        let operator = plan.as_ref().ok().map(|p| p.operator.clone());
        let mut ack_payload = Some(ack_payload);
        // The reference gateway's order: session:info, message:ack, agent:start (or, for a turn
        // that cannot start, the error and agent:end).
        for step in reply::opening(plan.is_ok(), callable) {
            match step {
                Opening::SessionInfo => {
                    if let Some(operator) = &operator {
                        self.broadcast("session:info", self.session_info(&operator.catalog));
                    }
                }
                Opening::Ack => {
                    if let Some(payload) = ack_payload.take() {
                        self.acknowledge(sender, payload);
                    }
                }
                Opening::StartFailed => {
                    let cause = match &plan {
                        Err(e) => {
                            console_error!("loading history: {e}");
                            RoomError::internal(
                                "the conversation history could not be loaded; try again",
                            )
                        }
                        Ok(_) => RoomError::client(
                            ErrorCode::ProviderNotConfigured,
                            "no configured provider can serve this conversation's model; configure its provider or change the model with /model",
                        ),
                    };
                    self.end_early(id, &RoomError::start_failed(cause), d).await;
                    return;
                }
                Opening::Start => {}
            }
        }
        let (Ok(plan), Some(call), Some(steps)) = (&plan, call, steps) else {
            return;
        };
        if let Some(name) = &plan.turn.missing_agent {
            let text = format!("agent \"{name}\" is not configured; answering without it");
            let e = RoomError::client(ErrorCode::UnknownAgent, text);
            self.broadcast("error", e.event_payload(Some(id)));
        }
        {
            // What a recovery needs beyond the events: the reply's id and the model.
            let mut room = self.room.borrow_mut();
            let s = &room.session;
            let record = TurnRecord {
                reply_id: new_id(),
                provider: s.provider.clone().unwrap_or_default(),
                model: s.model_id.clone().unwrap_or_default(),
                thinking_level: s.thinking().as_str().to_string(),
                ..TurnRecord::default()
            };
            room.checkpoint.set_record(record);
        }
        // Sent while the provider prepares its first byte, not after it.
        let operator = &plan.operator;
        self.broadcast("agent:start", format!("{{\"conversationId\":{id_json}}}"));
        let first_call = match first_call {
            Some(opened) => opened,
            None => call.await,
        };
        let context = CallContext {
            tools,
            agent: plan.turn.agent.as_ref(),
            mcp_tools: &plan.mcp_tools,
            config,
            id_json,
            catalog: &operator.catalog,
            thinking: None,
        };
        match self.run_steps(steps, Some(first_call), &context).await {
            Ran::Ended(turn, stop, last_error) => {
                self.abort.borrow_mut().take();
                self.finish_turn(turn, stop, last_error.as_ref(), &operator.catalog, d)
                    .await;
            }
            Ran::Parked(steps) => {
                self.park(steps, tools, &plan.mcp_tools, None, config, d)
                    .await
            }
        }
    }

    /// Ends a turn that could not reach a model: an `error`, then `agent:end`, which clients wait for.
    pub(super) async fn end_early(&self, id: &str, error: &RoomError, d: &D1Database) {
        self.broadcast("error", error.event_payload(Some(id)));
        self.broadcast("agent:end", reply::early_end_payload(id, error));
        self.copy_turn_end(d).await;
    }

    /// Keeps the reply in the conversation's own storage; a failure is told to every socket.
    fn keep_reply(&self, r: &OutboxRow) {
        let kept = self.keep_message(
            &r.id,
            &r.role,
            &r.author,
            &r.content,
            &r.metadata,
            r.created_at,
        );
        if let Err(e) = kept {
            console_error!("storing the assistant message: {e}");
            let id = self.room.borrow().id.clone();
            let e = RoomError::internal("the reply could not be stored");
            self.broadcast("error", e.event_payload(Some(&id)));
        }
    }

    /// The end of a turn in D1, in one batch: the messages waiting (the reply among them), the
    /// session mirror and the live registry. A failed copy stays in the outbox and is retried
    /// by alarm.
    pub(super) async fn copy_turn_end(&self, d: &D1Database) {
        self.closing.set(true);
        let extra = || {
            let turning = !self.room.borrow().queue.is_empty();
            let live = self.live_change(d, self.socket_count(), turning);
            self.session_mirror(d).into_iter().chain(live).collect()
        };
        // `mirrored`: the session mirror in the batch sets updated_at.
        if let Err(e) = self.copy_to_d1(d, CopyKind::TurnEnd, extra).await {
            self.live_unknown();
            console_warn!("copying the turn to D1 (will retry): {e}");
        } else if self.outbox_waiting() {
            // A backlog the batch could not take: an alarm copies the rest.
            self.arm_alarm_within(RETRY_FLOOR_MS).await;
        }
    }

    /// Decides the model, agent and context of a turn. Errs only when the history cannot be read.
    pub(super) async fn plan_turn(
        &self,
        d: &D1Database,
        input: &TurnInput<'_>,
        config: &Config,
    ) -> Result<Plan> {
        let TurnInput {
            id,
            user,
            message,
            message_id,
            known_history,
            ..
        } = *input;
        let (operator, history) = futures::join!(
            self.operator(),
            self.load_history(d, id, message_id, known_history)
        );
        history?;
        let mut turn = {
            let mut room = self.room.borrow_mut();
            let room = &mut *room; // split borrows: the session and the history
            let history = room.history.get_or_insert_with(Vec::new);
            plan::plan_turn(
                &mut room.session,
                history,
                message,
                user,
                operator.view(),
                config,
            )
        };
        let mcp_tools = match &turn.agent {
            Some(agent) => self.mcp_tools(agent, config).await,
            None => Vec::new(),
        };
        turn.tools.extend(mcp_tools.iter().map(|t| t.spec()));
        Ok(Plan {
            operator,
            turn,
            mcp_tools,
        })
    }

    /// Bookkeeping once the user message is durable: owner, history, dedupe id, counts.
    fn after_user_message_stored(&self, user: &str, message: &MessageEvent, message_id: &str) {
        let client_id = message.client_message_id.as_deref();
        let writes = self
            .room
            .borrow_mut()
            .message_stored(user, client_id, message_id, now_ms());
        if let Some(owner) = &writes.owner {
            self.kv_put("owner", owner);
        }
        if writes.first_message {
            self.kv_put("stored", "1");
        }
        if let Some((client_id, message_id)) = writes.remember {
            let row = vec![
                client_id.into(),
                message_id.into(),
                (now_ms() as f64).into(),
            ];
            if let Err(e) = self.sql().exec(
                "INSERT OR IGNORE INTO seen (client_id, message_id, at) VALUES (?, ?, ?)",
                row,
            ) {
                console_warn!("remembering clientMessageId: {e}");
            }
        }
        if let Some((oldest, keep)) = writes.prune {
            let params = vec![(oldest as f64).into(), (keep as f64).into()];
            if let Err(e) = self.sql().exec(conversation::seen::PRUNE, params) {
                console_warn!("pruning remembered clientMessageIds: {e}");
            }
        }
    }

    /// Loads the model context once per instance: D1's rows, then those still waiting in the
    /// outbox. A conversation that never stored a message before this turn has no history, so its
    /// first turn skips the read. `storing` (this turn's message) is left out; the plan adds it.
    pub(super) async fn load_history(
        &self,
        d: &D1Database,
        id: &str,
        storing: &str,
        known: bool,
    ) -> Result<()> {
        if self.room.borrow().history.is_some() {
            return Ok(());
        }
        if !known {
            self.room.borrow_mut().history = Some(Vec::new());
            return Ok(());
        }
        // The outbox first, all of it: a copy that commits between the two reads then leaves its
        // rows in both (the ids dedupe them), never in neither.
        let waiting = self.kept_messages()?;
        let copied = db::list_messages(d, id).await?;
        let history = conversation::history_from_rows(
            copied
                .into_iter()
                .map(|m| (m.id, m.role, m.content, m.metadata)),
            waiting
                .into_iter()
                .map(|w| (w.id, w.role, w.content, w.metadata)),
            storing,
        );
        self.room.borrow_mut().history = Some(history);
        Ok(())
    }

    /// Starts reading operator configuration now (a socket attached), so the first turn finds it.
    pub(super) fn prefetch_operator(&self) {
        let load = self.operator();
        wasm_bindgen_futures::spawn_local(async move {
            load.await;
        });
    }

    /// Operator configuration (catalog rows, routing rules, agents), read together and reused for
    /// `OPERATOR_CACHE_MS`; admin changes push an invalidation to live conversations at once.
    /// The cached or in-flight read, or a new one: concurrent callers share one D1 round trip; a
    /// failed read (built-in defaults) is not reused.
    pub(super) fn operator(&self) -> OperatorLoad {
        if let Some((started, load)) = self.operator.borrow().as_ref() {
            let failed = load.peek().is_some_and(|o| o.failed);
            if !failed && now_ms() - started < OPERATOR_CACHE_MS {
                return load.clone();
            }
        }
        let env = self.env.clone();
        let load = async move {
            // One round trip for rules, agents and catalog rows.
            let read = match db::db(&env) {
                Ok(d) => db::operator_config(&d).await,
                Err(e) => Err(e),
            };
            let failed = read.is_err();
            let config = read.unwrap_or_else(|e| {
                console_warn!("operator configuration unavailable, using built-in defaults: {e}");
                store::operator_config(Vec::new())
            });
            Rc::new(Operator {
                failed,
                catalog: config.catalog,
                rules: config.rules,
                agents: config.agents,
            })
        }
        .boxed_local()
        .shared();
        *self.operator.borrow_mut() = Some((now_ms(), load.clone()));
        load
    }

    /// Performs the turn's steps: model calls, waits before retries, tools, fallover; the
    /// decisions are the pure `TurnSteps`'s. `first_call`: the call the steps asked for first,
    /// opened already (none for a parked turn that goes on).
    pub(super) async fn run_steps(
        &self,
        mut steps: TurnSteps,
        first_call: Option<std::result::Result<upstream::ModelStream, UpstreamError>>,
        c: &CallContext<'_>,
    ) -> Ran {
        if let Some(opened) = first_call {
            self.call_opened(&mut steps, opened, c.id_json).await;
        }
        loop {
            if self.aborted.get() {
                steps.abort();
            }
            let Some(action) = steps.poll() else {
                return Ran::Ended(steps.into_turn(), StopReason::Error, None);
            };
            match action {
                StepAction::Send { name, data } => self.broadcast(name, data),
                StepAction::Call { target, messages } => {
                    self.save_progress(steps.turn(), None);
                    self.arm_recovery().await;
                    let thinking = c
                        .thinking
                        .unwrap_or_else(|| self.room.borrow().session.thinking());
                    let opened = self
                        .open_call(&target, &messages, c.tools, thinking, c.config)
                        .await;
                    self.call_opened(&mut steps, opened, c.id_json).await;
                }
                StepAction::Wait { ms } => {
                    Delay::from(Duration::from_millis(ms)).await;
                    steps.timer_fired();
                }
                StepAction::RunTool(call) => {
                    // Recorded before it runs: a recovery answers it, and never runs it again.
                    self.save_progress(steps.turn(), Some(&call));
                    self.arm_recovery().await;
                    let outcome = self.run_tool(&call, c).await;
                    if self.aborted.get() {
                        // Before the outcome: a call the abort cut reads as aborted, not as the
                        // network error the abort caused.
                        steps.abort();
                    }
                    steps.tool_done(outcome);
                }
                StepAction::FellOver(next) => {
                    // The reason names the provider that failed and how.
                    console_log!(
                        "falling over to {}/{}: {}",
                        next.provider,
                        next.model,
                        next.reason
                    );
                    self.room.borrow_mut().session.fall_over(next);
                    self.broadcast("session:info", self.session_info(c.catalog));
                }
                // The glue keeps the steps and stops: nothing stays open while a person decides.
                StepAction::AwaitApproval(_) => return Ran::Parked(steps),
                StepAction::End { stop, error } => {
                    return Ran::Ended(steps.into_turn(), stop, error)
                }
            }
        }
    }

    /// Starts one model call under a fresh abort controller.
    pub(super) async fn open_call(
        &self,
        target: &RoutingDecision,
        messages: &[ChatMessage],
        tools: &[crate::llm::ToolSpec],
        thinking: ThinkingLevel,
        config: &Config,
    ) -> std::result::Result<upstream::ModelStream, UpstreamError> {
        let ctrl = AbortController::default();
        let signal = ctrl.signal();
        *self.abort.borrow_mut() = Some(ctrl);
        if self.aborted.get() {
            return Err(UpstreamError::new(UpstreamErrorKind::Network, "aborted"));
        }
        let Some(provider) = config.provider(&target.provider) else {
            let msg = format!("provider \"{}\" is not configured", target.provider);
            return Err(UpstreamError::new(UpstreamErrorKind::BadRequest, msg));
        };
        let spec = CallSpec {
            base_url: &provider.base_url,
            api_key: provider.api_key.as_deref(),
            model: &target.model,
            messages,
            tools,
            thinking,
            max_tokens: config.max_output_tokens,
        };
        upstream::open(provider, &spec, &signal, config.upstream_stall_ms).await
    }

    /// Streams an opened model call's deltas to every socket as they arrive, then tells the
    /// steps it ended (or that it could not be opened).
    async fn call_opened(
        &self,
        steps: &mut TurnSteps,
        opened: std::result::Result<upstream::ModelStream, UpstreamError>,
        id_json: &str,
    ) {
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) => return steps.call_failed(e),
        };
        let mut emits = Vec::new();
        let policy = self.checkpoint_policy();
        // One timer for the batch of unsaved events, not one per delta.
        let mut flush_timer: Option<Pin<Box<Delay>>> = None;
        loop {
            let next = match flush_timer.as_mut() {
                Some(timer) => match select(std::pin::pin!(stream.next()), timer).await {
                    Either::Left((next, _)) => next,
                    Either::Right(_) => {
                        flush_timer = None;
                        self.flush_checkpoint();
                        self.arm_recovery().await;
                        continue;
                    }
                },
                None => stream.next().await,
            };
            let Some(event) = next else { break };
            if self.aborted.get() {
                break;
            }
            steps.stream_event(event, &mut emits);
            while let Some(more) = stream.ready() {
                steps.stream_event(more, &mut emits);
            }
            for emit in emits.drain(..) {
                let (name, text) = emit.into_event();
                self.broadcast(name, protocol::delta_payload(id_json, &text));
            }
            if flush_timer.is_none() {
                let due = self.room.borrow().checkpoint.due_in(now_ms(), policy);
                if let Some(ms) = due {
                    flush_timer = Some(Box::pin(Delay::from(Duration::from_millis(ms.max(1)))));
                }
            }
            self.arm_recovery().await;
        }
        if self.aborted.get() {
            steps.abort();
        }
        steps.call_ended();
    }

    /// Once the running turn has written a checkpoint, makes sure an alarm comes while it runs.
    async fn arm_recovery(&self) {
        let written = self.room.borrow().checkpoint.turn_writes() > 0;
        if written && !self.recovery_armed.replace(true) {
            self.arm_alarm_within(RECOVERY_ALARM_MS).await;
        }
    }

    /// Runs one of the agent's tools (HTTP, or from an MCP server) under the turn's abort signal.
    async fn run_tool(&self, call: &ToolCall, c: &CallContext<'_>) -> ToolOutcome {
        let signal = self.abort.borrow().as_ref().map(|c| c.signal());
        let timeout_ms = c.config.tool_timeout_ms;
        let http = c.agent.and_then(|a| a.tool(&call.name));
        let mcp = c
            .mcp_tools
            .iter()
            .find(|t| t.exposed == call.name)
            .and_then(|t| Some((c.agent?.mcp_server(&t.server)?, t)));
        match (http, mcp, signal) {
            (Some(tool), _, Some(signal)) => {
                let (text, is_error) = tools::run(tool, &call.arguments, &signal, timeout_ms).await;
                ToolOutcome::text(text, is_error)
            }
            (None, Some((server, tool)), Some(signal)) => {
                self.call_mcp_tool(server, tool, &call.arguments, &signal, timeout_ms)
                    .await
            }
            (_, _, None) => ToolOutcome::text(crate::conversation::steps::NOT_RUN_ABORTED, true),
            // The agent lost the tool (or the user lost the agent) while the call waited for
            // approval: the model is told, the turn goes on.
            (None, None, Some(_)) => ToolOutcome::text(
                format!(
                    "not run: the tool {} is no longer configured for this agent",
                    call.name
                ),
                true,
            ),
        }
    }

    /// Stores the assistant message (also when aborted or failed), updates metrics and ends the turn for every socket.
    pub(super) async fn finish_turn(
        &self,
        turn: Turn,
        stop: StopReason,
        error: Option<&UpstreamError>,
        catalog: &Catalog,
        d: &D1Database,
    ) {
        let (id, usage) = {
            let room = self.room.borrow();
            let s = &room.session;
            let provider = s.provider.as_deref().unwrap_or_default();
            let model = s.model_id.as_deref().unwrap_or_default();
            let usage = conversation::turn_usage(catalog, provider, model, s.thinking(), &turn);
            (room.id.clone(), usage)
        };
        let reply =
            reply::stored_reply(&turn, &usage, stop, error, &now_iso()).map(|r| OutboxRow {
                // Numbered by the outbox only if it is kept there.
                n: 0,
                id: new_id(),
                role: "assistant".into(),
                author: String::new(),
                content: r.content,
                metadata: r.metadata,
                created_at: now_ms(),
            });
        {
            let mut room = self.room.borrow_mut();
            if let Some(h) = room.history.as_mut() {
                h.extend(turn.new_context.iter().cloned());
            }
            room.session.metrics.record_turn(&usage);
        }
        // In the conversation's own storage before agent:end (the runtime sends agent:end once
        // the write is committed), its checkpoints gone in the same write; D1 gets it after, and
        // the history over HTTP reads what D1 lacks from here.
        if let Some(r) = &reply {
            self.keep_reply(r);
        }
        self.clear_checkpoint();
        self.save_session_locally();
        let end = {
            let metrics = &self.room.borrow().session.metrics;
            reply::end_payload(&id, &usage, metrics, stop, error)
        };
        self.broadcast("agent:end", end);
        self.aborted.set(false);
        self.copy_turn_end(d).await;
        // The sequence number is saved once the queue drains (on_message), for every way a turn ends.
    }
}
