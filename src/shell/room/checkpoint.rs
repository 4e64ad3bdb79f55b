//! A running turn's checkpoints in the conversation's storage, and the turn a dead instance left, stored and ended on load; what is written when is the pure `Checkpoint`'s decision.

use super::*;
use crate::conversation::checkpoint::{self, CheckpointPolicy, Continuation, TurnRecord};
use crate::conversation::room::CONTINUATION_KEY;
use crate::routing::Target;

/// Creates the table of a running turn's event batches (one row per batch).
pub(super) const CREATE_TURN_LOG: &str =
    "CREATE TABLE IF NOT EXISTS turn_log (last_seq INTEGER PRIMARY KEY, events TEXT NOT NULL)";
/// The key of the running turn's record.
pub(super) const RECORD_KEY: &str = "turn_record";

impl ConversationObject {
    /// When the running turn's events are written.
    pub(super) fn checkpoint_policy(&self) -> CheckpointPolicy {
        self.config
            .as_ref()
            .map(|c| c.checkpoint)
            .unwrap_or(CheckpointPolicy {
                every_ms: 1_000,
                every_bytes: 8_192,
            })
    }

    /// Writes the running turn's unsaved events (one row) and its record, if it changed.
    pub(super) fn flush_checkpoint(&self) {
        let (batch, record, through) = {
            let mut guard = self.room.borrow_mut();
            let room = &mut *guard; // split borrows: the log and the checkpoint
            if !room.checkpoint.active() {
                return;
            }
            let through = room.checkpoint.saved_through();
            let batch = room
                .log
                .after(through)
                .ok()
                .and_then(checkpoint::encode_batch);
            (batch, room.checkpoint.record_to_save(), through)
        };
        if batch.is_none() && record.is_none() {
            return;
        }
        let sql = self.sql();
        let mut last = through;
        if let Some((seq, row)) = batch {
            let params = vec![(seq as f64).into(), row.into()];
            match sql.exec(
                "INSERT OR REPLACE INTO turn_log (last_seq, events) VALUES (?, ?)",
                params,
            ) {
                Ok(_) => last = seq,
                Err(e) => console_error!("writing the turn's checkpoint: {e}"),
            }
        }
        if let Some(record) = record {
            self.kv_put(RECORD_KEY, &record);
        }
        self.room.borrow_mut().checkpoint.saved(last);
    }

    /// Records the turn's progress at a step boundary (`running`: the tool about to run) and
    /// writes it with the events so far: a tool is recorded before it runs.
    pub(super) fn save_progress(&self, turn: &Turn, running: Option<&ToolCall>) {
        {
            let mut room = self.room.borrow_mut();
            let Some(base) = room.checkpoint.record().cloned() else {
                return;
            };
            room.checkpoint
                .set_record(TurnRecord::of(&base, turn, running));
        }
        self.flush_checkpoint();
    }

    /// The turn ended and its reply is stored: its checkpoints go.
    pub(super) fn clear_checkpoint(&self) {
        let written = {
            let mut room = self.room.borrow_mut();
            let written = room.checkpoint.turn_writes() > 0;
            room.checkpoint.stop();
            written
        };
        // A turn that never wrote one (shorter than a batch) deletes nothing either.
        if written {
            if let Err(e) = self.sql().exec("DELETE FROM turn_log", None) {
                console_warn!("clearing the turn's checkpoint: {e}");
            }
            if let Err(e) = self
                .sql()
                .exec("DELETE FROM kv WHERE k = ?", vec![RECORD_KEY.into()])
            {
                console_warn!("clearing the turn's record: {e}");
            }
        }
    }

    /// On load, after a turn was left running by an instance that died: stores the reply as far
    /// as its checkpoints go (marked `interrupted`, under the id the turn would have used), puts
    /// the written events back for clients that resume, and ends the turn for them.
    pub(super) fn recover_turn(&self, record_text: Option<String>) -> Result<()> {
        #[derive(Deserialize)]
        struct Row {
            events: String,
        }
        let sql = self.sql();
        let rows: Vec<Row> = sql
            .exec("SELECT events FROM turn_log ORDER BY last_seq", None)?
            .to_array()?;
        let rows: Vec<String> = rows.into_iter().map(|r| r.events).collect();
        let record: Option<TurnRecord> = record_text.and_then(|t| crate::store::stored(&t));
        let events = checkpoint::decode_batches(&rows);
        let Some(recovered) = checkpoint::recover(record, &events) else {
            return Ok(());
        };
        let r = &recovered.record;
        let thinking = ThinkingLevel::parse(&r.thinking_level).unwrap_or(ThinkingLevel::Off);
        let usage = conversation::turn_usage(
            &Catalog::builtin(),
            &r.provider,
            &r.model,
            thinking,
            &recovered.turn,
        );
        let stop = StopReason::Interrupted;
        let now = now_ms();
        let id = if r.reply_id.is_empty() {
            new_id()
        } else {
            r.reply_id.clone()
        };
        if let Some(reply) = reply::stored_reply(&recovered.turn, &usage, stop, None, &now_iso()) {
            self.keep_message(&id, "assistant", "", &reply.content, &reply.metadata, now)?;
        }
        let continuation = self.config().ok().and_then(|config| {
            let kind = config.provider(&r.provider).map(|p| p.kind);
            recovered.continuation(&id, config.resume_interrupted, kind)
        });
        if let Some(c) = &continuation {
            // In the same write as the reply: an alarm runs it, whoever loaded the object.
            self.kv_put(
                CONTINUATION_KEY,
                &serde_json::to_string(c).unwrap_or_default(),
            );
        }
        let next_seq = {
            let mut room = self.room.borrow_mut();
            // Counted in the conversation's totals like any turn (saved with the session below).
            room.session.metrics.record_turn(&usage);
            let end = reply::end_payload(&room.id, &usage, &room.session.metrics, stop, None);
            for event in recovered.events {
                room.log.restore(event, now);
            }
            room.log.push("agent:end", end, now);
            room.orphaned_outbox = true;
            room.stored_any = true;
            room.continuation = continuation;
            room.log.next_seq()
        };
        sql.exec("DELETE FROM turn_log", None)?;
        sql.exec("DELETE FROM kv WHERE k = ?", vec![RECORD_KEY.into()])?;
        self.save_session_locally();
        self.kv_put("stored", "1");
        self.kv_put("seq", &next_seq.to_string());
        self.kv_put("turn", "idle");
        console_warn!(
            "stored a turn interrupted by a restart: {} events, {} bytes of text",
            events.len(),
            recovered.turn.text.len()
        );
        Ok(())
    }

    /// Continues a turn stored as interrupted with a new model call (on Anthropic the partial
    /// reply is a prefill the model goes on from): a turn of its own, with no user message,
    /// whose reply is stored after the partial one.
    pub(super) async fn continue_turn(&self, job: Continuation, config: &Config) {
        // From here the continuation's own checkpoints keep it; a death now stores it, once.
        if let Err(e) = self
            .sql()
            .exec("DELETE FROM kv WHERE k = ?", vec![CONTINUATION_KEY.into()])
        {
            console_warn!("clearing the continuation: {e}");
        }
        let d = match db::db(&self.env) {
            Ok(d) => d,
            Err(e) => return console_error!("database binding: {e}"),
        };
        let (id, id_json, owner, known) = self.room.borrow().identity();
        if let Err(e) = self.load_history(&d, &id, "", known).await {
            return console_error!("loading history to continue a turn: {e}");
        }
        let operator = self.operator().await;
        let kind = config.provider(&job.provider).map(|p| p.kind);
        let (mut plan, prefill) = {
            let mut room = self.room.borrow_mut();
            let room = &mut *room; // split borrows: the session and the history
            let history = room.history.as_deref().unwrap_or_default();
            let target = Target {
                provider: job.provider.clone(),
                model: job.model.clone(),
            };
            let mut plan = plan::plan_continuation(
                &mut room.session,
                history,
                &owner,
                operator.view(),
                config,
                target,
            );
            let prefill = kind.is_some_and(|k| checkpoint::continuation_context(k, &mut plan.base));
            (plan, prefill)
        };
        if plan.candidates.is_empty() {
            console_warn!(
                "not continuing the interrupted turn: {} is gone",
                job.provider
            );
            return;
        }
        let mcp_tools = match &plan.agent {
            Some(agent) => self.mcp_tools(agent, config).await,
            None => Vec::new(),
        };
        plan.tools.extend(mcp_tools.iter().map(|t| t.spec()));
        self.aborted.set(false);
        self.closing.set(false);
        self.recovery_armed.set(false);
        self.kv_put("turn", "running");
        let thinking = {
            let mut room = self.room.borrow_mut();
            let last = room.log.next_seq() - 1;
            room.checkpoint.start(last);
            let s = &room.session;
            let thinking = if prefill {
                ThinkingLevel::Off
            } else {
                s.thinking()
            };
            let record = TurnRecord {
                reply_id: new_id(),
                provider: job.provider.clone(),
                model: job.model.clone(),
                thinking_level: thinking.as_str().to_string(),
                continues: Some(job.reply_id.clone()),
                ..TurnRecord::default()
            };
            room.checkpoint.set_record(record);
            thinking
        };
        let tools: Vec<String> = plan.tools.iter().map(|t| t.name.clone()).collect();
        let asking = plan.agent.as_ref().map(|a| a.approval_tools(&mcp_tools));
        let mut steps = TurnSteps::new(
            &id,
            plan.candidates.clone(),
            plan.base.clone(),
            tools,
            RetryPolicy::new(config.upstream_retries),
            config.max_tool_steps,
        )
        .with_approval(asking.unwrap_or_default());
        let Some(StepAction::Call { target, messages }) = steps.poll() else {
            return;
        };
        self.broadcast("session:info", self.session_info(&operator.catalog));
        let start = json!({ "conversationId": id, "continues": job.reply_id });
        self.broadcast("agent:start", start.to_string());
        let opened = self
            .open_call(&target, &messages, &plan.tools, thinking, config)
            .await;
        let context = CallContext {
            tools: &plan.tools,
            agent: plan.agent.as_ref(),
            mcp_tools: &mcp_tools,
            config,
            id_json: &id_json,
            catalog: &operator.catalog,
            thinking: Some(thinking),
        };
        match self.run_steps(steps, Some(opened), &context).await {
            super::approval::Ran::Ended(turn, stop, last_error) => {
                self.abort.borrow_mut().take();
                self.finish_turn(turn, stop, last_error.as_ref(), &operator.catalog, &d)
                    .await;
                console_log!(
                    "continued the turn interrupted at reply {}: {}",
                    job.reply_id,
                    stop.as_str()
                );
            }
            super::approval::Ran::Parked(steps) => {
                self.park(steps, &plan.tools, &mcp_tools, Some(thinking), config, &d)
                    .await
            }
        }
    }
}
