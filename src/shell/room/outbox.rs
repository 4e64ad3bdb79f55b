//! The conversation's outbox: messages stored in the object first, then copied to D1 in order, one batch at a time, retried by alarm.

use super::*;
use crate::outbox::{self, AfterCopy, LiveWrite, OutboxRow, Param};

/// Shortest wait before an alarm retries a failed copy.
pub(super) const RETRY_FLOOR_MS: u64 = 1_000;

impl ConversationObject {
    /// Stores a message in the object's own storage; once this returns it is durable (the
    /// runtime holds outgoing frames until the write is committed), so it can be acknowledged.
    pub(super) fn keep_message(
        &self,
        id: &str,
        role: &str,
        author: &str,
        content: &str,
        metadata: &str,
        created_at: i64,
    ) -> Result<()> {
        self.sql().exec(
            outbox::INSERT,
            vec![
                id.into(),
                role.into(),
                author.into(),
                content.into(),
                metadata.into(),
                (created_at as f64).into(),
            ],
        )?;
        Ok(())
    }

    /// Messages stored here and not known to be in D1, oldest first, at most one copy's worth.
    pub(super) fn waiting_messages(&self) -> Result<Vec<OutboxRow>> {
        let after = self.replicator.borrow().copied_through as f64;
        self.sql()
            .exec(outbox::PENDING, vec![after.into()])?
            .to_array()
    }

    /// Every message still in the outbox, copied or not, oldest first.
    pub(super) fn kept_messages(&self) -> Result<Vec<OutboxRow>> {
        self.sql().exec(outbox::ALL, None)?.to_array()
    }

    /// Copies the waiting messages to D1 in one batch, then the statements `extra` builds (session mirror, live
    /// registry). One copy runs at a time, so D1 numbers the messages in the order they were
    /// written, and `extra` is built once this copy holds the lock, so it says what is true when
    /// it runs. Which rows go and what the result means is the pure `Replicator`'s; this only
    /// runs the batch, the delete and the retry alarm it asks for.
    pub(super) async fn copy_to_d1(
        &self,
        d: &D1Database,
        kind: CopyKind,
        extra: impl FnOnce() -> Vec<D1PreparedStatement>,
    ) -> Result<()> {
        let _copying = self.copy_lock.lock().await;
        let plan = self
            .replicator
            .borrow()
            .plan(kind, self.waiting_messages()?);
        let extra = extra();
        if plan.rows.is_empty() && extra.is_empty() {
            // Nothing to send; rows an earlier copy took may still be deleted.
            let due = self.replicator.borrow().delete_due(kind);
            self.settle_copied(due);
            return Ok(());
        }
        let id = self.room.borrow().id.clone();
        let mut batch = Vec::with_capacity(plan.rows.len() + 2 + extra.len());
        for s in outbox::copy_statements(&id, &plan.rows, kind.mirrored()) {
            let params: Vec<wasm_bindgen::JsValue> = s
                .params
                .iter()
                .map(|p| match p {
                    Param::Text(t) => db::text(t),
                    Param::Num(n) => db::num(*n),
                })
                .collect();
            batch.push(d.prepare(s.sql).bind(&params)?);
        }
        batch.extend(extra);
        let result = d.batch(batch).await;
        let after = self
            .replicator
            .borrow_mut()
            .on_result(&plan, result.is_ok());
        match (after, result) {
            (AfterCopy::Settle { delete_through }, Ok(_)) => {
                self.settle_copied(delete_through);
                Ok(())
            }
            (AfterCopy::RetryAfter { ms }, Err(e)) => {
                let delay = ms.max(RETRY_FLOOR_MS);
                console_warn!(
                    "copying {} message(s) to D1 failed, retrying in {delay} ms: {e}",
                    plan.rows.len()
                );
                self.arm_alarm_within(delay).await;
                Err(e)
            }
            (_, Err(e)) => Err(e),
            (_, Ok(_)) => Ok(()),
        }
    }

    /// Deletes the rows known to be in D1, up to `through`. A failed delete only leaves them for
    /// the next one: the copy itself succeeded, and the replicator keeps them from being copied
    /// again.
    fn settle_copied(&self, through: Option<i64>) {
        let Some(through) = through else { return };
        match self
            .sql()
            .exec(outbox::DELETE_COPIED, vec![(through as f64).into()])
        {
            Ok(_) => self.replicator.borrow_mut().settled(through),
            Err(e) => console_warn!("deleting copied messages from the outbox: {e}"),
        }
    }

    /// Whether messages wait to be copied.
    pub(super) fn outbox_waiting(&self) -> bool {
        #[derive(Deserialize)]
        struct Count {
            waiting: i64,
        }
        self.sql()
            .exec(outbox::COUNT, None)
            .and_then(|c| c.to_array::<Count>())
            .map(|rows| rows.first().is_some_and(|c| c.waiting > 0))
            .unwrap_or(false)
    }

    /// Sets the alarm to fire within `ms`, unless it is already due sooner.
    pub(super) async fn arm_alarm_within(&self, ms: u64) {
        let storage = self.state.storage();
        let due = now_ms() + ms as i64;
        if let Ok(Some(current)) = storage.get_alarm().await {
            if current <= due {
                return;
            }
        }
        if let Err(e) = storage.set_alarm(Duration::from_millis(ms)).await {
            console_error!("arming the alarm: {e}");
        }
    }

    /// After a failed registry write: the row's state is unknown, so the next one is written.
    pub(super) fn live_unknown(&self) {
        self.live.borrow_mut().unknown();
    }

    /// The statement mirroring the session to D1 (the object's copy is authoritative).
    pub(super) fn session_mirror(&self, d: &D1Database) -> Result<D1PreparedStatement> {
        let (id, text) = {
            let room = self.room.borrow();
            (
                room.id.clone(),
                serde_json::to_string(&room.session).unwrap_or_default(),
            )
        };
        d.prepare(sql::SAVE_SESSION)
            .bind(&[db::text(&id), db::text(&text), db::num(now_ms())])
    }

    /// The live-registry statement, only when the row would change. A statement that cannot be
    /// built is left out and the row's state becomes unknown, so the next write goes.
    pub(super) fn live_change(
        &self,
        d: &D1Database,
        sockets: usize,
        turning: bool,
    ) -> Option<D1PreparedStatement> {
        let write = self.live.borrow_mut().change(sockets, turning)?;
        match self.live_statement(d, write) {
            Ok(statement) => Some(statement),
            Err(e) => {
                self.live_unknown();
                console_warn!("live registry: {e}");
                None
            }
        }
    }

    /// The statement performing a live-registry write.
    pub(super) fn live_statement(
        &self,
        d: &D1Database,
        write: LiveWrite,
    ) -> Result<D1PreparedStatement> {
        let id = self.room.borrow().id.clone();
        match write {
            LiveWrite::Unregister => d.prepare(sql::UNREGISTER_LIVE).bind(&[db::text(&id)]),
            LiveWrite::Register { sockets, turning } => d.prepare(sql::REGISTER_LIVE).bind(&[
                db::text(&id),
                db::num(now_ms()),
                db::num(sockets as i64),
                db::num(turning as i64),
            ]),
        }
    }
}
