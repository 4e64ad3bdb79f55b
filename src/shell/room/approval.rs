//! Tool calls that wait for a person's approval: the turn is parked in storage (no open call, so the object may hibernate or restart) and goes on when the owner answers, aborts, or the deadline passes; what is decided is the pure `TurnSteps`' and `WaitingTurn`'s.

use super::*;
use crate::conversation::approval::{self, WaitingTurn, WAITING_KEY};
use crate::conversation::checkpoint;
use crate::conversation::room::TURN_WAITING;
use crate::conversation::steps::Approval;

/// How a parked turn goes on.
pub(super) enum Unpark {
    Answer(Approval),
    Abort,
}

/// How a turn's steps stopped: over, or parked on a call that waits for approval.
pub(super) enum Ran {
    Ended(Turn, StopReason, Option<UpstreamError>),
    Parked(TurnSteps),
}

impl ConversationObject {
    /// Parks the turn whose steps wait for a person's approval: the question goes to every
    /// socket, then the turn's events, its record and the wait are written in one write, the
    /// messages queued behind it are refused, and an alarm is set for the deadline. Nothing
    /// stays open: the object may hibernate or restart until the answer comes.
    pub(super) async fn park(
        &self,
        steps: TurnSteps,
        tools: &[crate::llm::ToolSpec],
        mcp_tools: &[crate::mcp::McpTool],
        thinking: Option<ThinkingLevel>,
        config: &Config,
        d: &D1Database,
    ) {
        let Some(suspended) = steps.suspend() else {
            return;
        };
        self.abort.borrow_mut().take();
        let now = now_ms();
        let (id, record) = {
            let room = self.room.borrow();
            let record = room.checkpoint.record().cloned().unwrap_or_default();
            (room.id.clone(), record)
        };
        let mut waiting = WaitingTurn {
            steps: suspended,
            record,
            tools: tools.to_vec(),
            mcp_tools: mcp_tools.to_vec(),
            thinking,
            question_seq: 0,
            asked_at_ms: now,
            deadline_ms: approval::deadline(now, config.tool_approval_timeout_s),
        };
        self.broadcast("agent:tool:approval", waiting.event_payload(&id));
        waiting.question_seq = self.room.borrow().log.next_seq() - 1;
        // One write: the events so far (the question among them), the record, the wait.
        self.save_progress(steps.turn(), None);
        let text = serde_json::to_string(&waiting).unwrap_or_default();
        let refused = self.room.borrow_mut().park(waiting.clone());
        self.kv_put(WAITING_KEY, &text);
        let next_seq = self.room.borrow().log.next_seq();
        self.kv_put("seq", &next_seq.to_string());
        self.kv_put("turn", TURN_WAITING);
        // The turn's plan changed the session (agent, model): kept, so a restart goes on with it.
        self.save_session_locally();
        // Nothing runs that a recovery would store: no alarm every few seconds while it waits.
        self.recovery_armed.set(false);
        let refusal = RoomError::prompt_failed(approval::message_refused(&waiting));
        for p in refused {
            self.refuse(&p.socket, &p.meta, p.ack, &refusal);
        }
        let wait = (waiting.deadline_ms - now).max(0) as u64;
        self.arm_alarm_within(wait).await;
        console_log!(
            "turn parked: tool {} waits for approval for up to {} s",
            waiting.call().name,
            config.tool_approval_timeout_s
        );
        // D1 gets the user message now rather than when the turn ends, which may be much later.
        let live = || {
            self.live_change(d, self.socket_count(), true)
                .into_iter()
                .collect()
        };
        if let Err(e) = self.copy_to_d1(d, CopyKind::MidTurn, live).await {
            self.live_unknown();
            console_warn!("copying a parked turn's message to D1 (will retry): {e}");
        }
    }

    /// A `tool:approve` from `user`: checked against the wait, acknowledged, then the turn goes on.
    pub(super) async fn on_tool_approve(
        &self,
        ws: &WebSocket,
        meta: &SocketMeta,
        user: &str,
        answer: (String, bool, Option<String>),
        ack: Option<u64>,
        config: &Config,
    ) {
        let (tool_call_id, approved, reason) = answer;
        let checked = {
            let room = self.room.borrow();
            match &room.waiting {
                Some(w) => w.answer(user, room.owner.as_deref(), &tool_call_id, approved, reason),
                None => Err(approval::no_pending(&tool_call_id)),
            }
        };
        match checked {
            Ok(answer) => {
                Self::send_ack(ws, ack, &json!({ "ok": true }).to_string());
                self.unpark(Unpark::Answer(answer), config).await;
            }
            Err(e) => self.refuse(ws, meta, ack, &e),
        }
    }

    /// The parked turn goes on with `how`: its calls and tools run to the end of the turn (or
    /// to the next call that waits), and the reply is stored as for any turn.
    pub(super) async fn unpark(&self, how: Unpark, config: &Config) {
        let Some(waiting) = self.room.borrow_mut().unpark() else {
            return;
        };
        // From here a death is recovered like any running turn's: in the same write, the wait
        // goes and the turn is marked running.
        if let Err(e) = self
            .sql()
            .exec("DELETE FROM kv WHERE k = ?", vec![WAITING_KEY.into()])
        {
            console_warn!("clearing the wait: {e}");
        }
        self.kv_put("turn", "running");
        let d = match db::db(&self.env) {
            Ok(d) => d,
            Err(e) => return console_error!("database binding: {e}"),
        };
        let (id, id_json, owner, known) = self.room.borrow().identity();
        let history = self.load_history(&d, &id, "", known).await;
        let operator = self.operator().await;
        let (agent, base) = {
            let mut room = self.room.borrow_mut();
            let room = &mut *room; // split borrows: the session and the history
            let history = room.history.as_deref().unwrap_or_default();
            plan::resumed_context(&mut room.session, history, &owner, operator.view())
        };
        let mut steps = TurnSteps::resume(
            &id,
            waiting.steps.clone(),
            base,
            RetryPolicy::new(config.upstream_retries),
        );
        self.aborted.set(false);
        self.closing.set(false);
        self.recovery_armed.set(false);
        // The approved tool runs under the turn's abort signal, as any tool does.
        *self.abort.borrow_mut() = Some(AbortController::default());
        {
            let mut room = self.room.borrow_mut();
            let last = room.log.next_seq() - 1;
            room.checkpoint.resume(last, waiting.record.clone());
        }
        match (how, history) {
            (Unpark::Answer(answer), Ok(())) => steps.approval(answer),
            (Unpark::Abort, _) => steps.abort(),
            (Unpark::Answer(_), Err(e)) => {
                // Without its history the turn cannot call the model again: it ends here.
                console_error!("loading history to go on with a parked turn: {e}");
                steps.abort();
            }
        }
        let context = CallContext {
            tools: &waiting.tools,
            agent: agent.as_ref(),
            mcp_tools: &waiting.mcp_tools,
            config,
            id_json: &id_json,
            catalog: &operator.catalog,
            thinking: waiting.thinking,
        };
        match self.run_steps(steps, None, &context).await {
            Ran::Ended(turn, stop, error) => {
                self.abort.borrow_mut().take();
                self.finish_turn(turn, stop, error.as_ref(), &operator.catalog, &d)
                    .await;
            }
            Ran::Parked(steps) => {
                let (tools, mcp_tools) = (&waiting.tools, &waiting.mcp_tools);
                self.park(steps, tools, mcp_tools, waiting.thinking, config, &d)
                    .await
            }
        }
        let next = self.room.borrow_mut().next_turn();
        self.run_queue(next, config).await;
    }

    /// The alarm of a parked turn: past its deadline the call counts as declined and the turn
    /// goes on; before it, the alarm is set again for the deadline.
    pub(super) async fn approval_alarm(&self, config: &Config) {
        let (expired, deadline) = {
            let room = self.room.borrow();
            match &room.waiting {
                Some(w) => (w.expired(now_ms()), w.deadline_ms),
                None => return,
            }
        };
        match expired {
            Some(answer) => self.unpark(Unpark::Answer(answer), config).await,
            None => {
                self.arm_alarm_within((deadline - now_ms()).max(0) as u64)
                    .await
            }
        }
    }

    /// On load of a conversation whose turn is parked: the turn's written events go back into
    /// the log, so sockets that resume get them.
    pub(super) fn restore_parked(&self) -> Result<()> {
        #[derive(Deserialize)]
        struct Row {
            events: String,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec("SELECT events FROM turn_log ORDER BY last_seq", None)?
            .to_array()?;
        let rows: Vec<String> = rows.into_iter().map(|r| r.events).collect();
        let now = now_ms();
        let mut room = self.room.borrow_mut();
        for saved in checkpoint::decode_batches(&rows) {
            if let Some(name) = protocol::stream_event_name(&saved.name) {
                let event = OutEvent {
                    name,
                    seq: Some(saved.seq),
                    data: saved.data,
                };
                room.log.restore(event, now);
            }
        }
        Ok(())
    }
}
