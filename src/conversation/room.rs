//! A conversation's state and the decisions on it that need no I/O: loading it from its record, which client events it takes, the queue of messages behind the running turn, the bookkeeping once a message is stored, and its sockets. Generic over the socket handle, so every branch runs on the host.

use super::approval::{self, WaitingTurn, WAITING_KEY};
use super::checkpoint::{Checkpoint, Continuation};
use super::socket::{self, SocketMeta};
use super::{seen, Admission, AdmissionState, ReplayGap, SessionState, StreamLog};
use crate::error::RoomError;
use crate::llm::ChatMessage;
use crate::protocol::framing::NSP;
use crate::protocol::{sio, ClientEvent, ErrorCode, MessageEvent, OutEvent};
use serde_json::{json, Value};
use std::collections::VecDeque;

/// Bytes of stream events kept for resume.
pub const REPLAY_BYTES: usize = 4 * 1024 * 1024;

/// A message waiting for the running turn to end, with the socket that sent it.
#[derive(Debug, Clone)]
pub struct Pending<S> {
    pub socket: S,
    pub meta: SocketMeta,
    pub message: MessageEvent,
    pub ack: Option<u64>,
}

/// What becomes of a message offered to the room.
#[derive(Debug)]
pub enum Offer<S> {
    /// A resend of a stored message: its ack again, to the sender only, and no second turn.
    Duplicate {
        pending: Pending<S>,
        message_id: String,
    },
    /// A resend of the message being stored or queued: nothing (the original's ack reaches it).
    AlreadyPending,
    /// Refused: the queue is full.
    Refused(Pending<S>, RoomError),
    /// Waits behind the running turn.
    Queued,
    /// Its turn starts now; the room counts a turn as running until [`Room::next_turn`] says
    /// none is left.
    Start(Pending<S>),
}

/// What to write once a user message is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWrites {
    /// The conversation had no owner: record this user.
    pub owner: Option<String>,
    /// The conversation's first stored message: record that it has history.
    pub first_message: bool,
    /// Remember `(clientMessageId, messageId)` in the dedupe table.
    pub remember: Option<(String, String)>,
    /// Prune the dedupe table with these parameters (`seen::PRUNE`).
    pub prune: Option<(i64, u64)>,
}

/// The `turn` row of a conversation whose turn waits for a tool call's approval.
pub const TURN_WAITING: &str = "waiting";

/// The key-value row of a continuation waiting to run.
pub const CONTINUATION_KEY: &str = "continuation";

/// Why a conversation could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoId;

/// A conversation's state in one instance of its object; rebuilt from storage after eviction.
#[derive(Debug)]
pub struct Room<S> {
    pub loaded: bool,
    pub id: String,
    /// `id` as a JSON string, spliced into every delta.
    pub id_json: String,
    pub owner: Option<String>,
    /// Whether this conversation ever stored a message; without one there is no history to read.
    pub stored_any: bool,
    /// Messages a previous instance kept were found waiting on load: an alarm must copy them.
    pub orphaned_outbox: bool,
    pub session: SessionState,
    pub log: StreamLog,
    /// The model context, once read (`None`: read it at the next turn).
    pub history: Option<Vec<ChatMessage>>,
    pub turn_running: bool,
    /// The clientMessageId of the message whose turn runs, until it is stored and its
    /// `message:ack` sent (which waits for `session:info`): a resend meanwhile gets that ack.
    pub in_flight: Option<String>,
    pub queue: VecDeque<Pending<S>>,
    /// The attached sockets (`None` until read from the runtime after a wake-up).
    pub sockets: Option<Vec<(S, SocketMeta)>>,
    /// What of the running turn is written to storage, should this instance die.
    pub checkpoint: Checkpoint,
    /// A turn stored as interrupted waits to be continued (kept in storage too).
    pub continuation: Option<Continuation>,
    /// The running turn is parked on a tool call that waits for approval (kept in storage
    /// too); it counts as running until it is answered.
    pub waiting: Option<WaitingTurn>,
    /// clientMessageIds remembered by this instance: every `seen::PRUNE_EVERY`th prunes the table.
    seen_inserts: u64,
    replay_window_ms: u64,
}

impl<S: Clone> Room<S> {
    /// A room not loaded yet.
    pub fn new(replay_window_ms: u64) -> Self {
        Room {
            loaded: false,
            id: String::new(),
            id_json: "\"\"".into(),
            owner: None,
            stored_any: false,
            orphaned_outbox: false,
            session: SessionState::default(),
            log: StreamLog::new(1, replay_window_ms, REPLAY_BYTES),
            history: None,
            turn_running: false,
            in_flight: None,
            queue: VecDeque::new(),
            sockets: None,
            checkpoint: Checkpoint::default(),
            continuation: None,
            waiting: None,
            seen_inserts: 0,
            replay_window_ms,
        }
    }

    /// Loads the room from its record (`get` reads the object's key-value rows). The id is the
    /// stored one, else `id_hint` (returned, for the caller to store), else there is none.
    /// `outbox_waiting`: messages wait to be copied to D1.
    pub fn load(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
        id_hint: Option<&str>,
        outbox_waiting: bool,
    ) -> Result<Option<String>, NoId> {
        let (id, new_id) = match (get("id"), id_hint) {
            (Some(id), _) => (id, None),
            (None, Some(hint)) if !hint.is_empty() => (hint.to_string(), Some(hint.to_string())),
            _ => return Err(NoId),
        };
        self.id_json = crate::protocol::json_str(&id);
        self.id = id;
        self.owner = get("owner");
        self.stored_any = get("stored").is_some();
        self.continuation = get(CONTINUATION_KEY).and_then(|t| crate::store::stored(&t));
        self.waiting = (get("turn").as_deref() == Some(TURN_WAITING))
            .then(|| get(WAITING_KEY))
            .flatten()
            .and_then(|t| crate::store::stored(&t));
        self.turn_running = self.waiting.is_some();
        self.orphaned_outbox = self.stored_any && outbox_waiting;
        self.session = get("session")
            .and_then(|s| crate::store::stored(&s))
            .unwrap_or_default();
        let next_seq = super::next_seq_after_load(
            get("seq").and_then(|s| s.parse().ok()),
            get("turn").as_deref() == Some("running"),
        );
        self.log = StreamLog::new(next_seq, self.replay_window_ms, REPLAY_BYTES);
        self.loaded = true;
        Ok(new_id)
    }

    /// Refuses an event this socket may not send here: one naming another conversation, or
    /// from a socket nobody authenticated. Answers the user otherwise.
    pub fn gate<'a>(
        &self,
        event: &ClientEvent,
        meta: &'a SocketMeta,
    ) -> Result<&'a str, RoomError> {
        if let Some(named) = event.conversation_id() {
            if named != self.id {
                let msg = format!(
                    "this socket is bound to conversation {}; open another socket for {named}",
                    self.id
                );
                return Err(RoomError::client(ErrorCode::ConversationMismatch, msg));
            }
        }
        meta.user
            .as_deref()
            .ok_or_else(|| RoomError::client(ErrorCode::Unauthorized, "not authenticated"))
    }

    /// Whether the conversation has an agent session, as the reference gateway counts one: it
    /// starts with the first message. Here it is kept with the conversation, so it outlives
    /// restarts: a message stored, or a turn running.
    pub fn has_session(&self) -> bool {
        self.stored_any || self.turn_running
    }

    /// An `abort`: `Ok(true)` stops the running turn; `Ok(false)` does nothing, sending no error
    /// and no event (the session is idle, as the reference gateway's abort of an idle session);
    /// refused with the reference gateway's text when there is no session at all.
    pub fn abort_requested(&self) -> Result<bool, RoomError> {
        if self.turn_running {
            Ok(true)
        } else if self.has_session() {
            Ok(false)
        } else {
            Err(RoomError::client(
                ErrorCode::NoActiveTurn,
                crate::error::seed::NO_SESSION_TO_ABORT,
            ))
        }
    }

    /// A `set:thinking` is taken only by a conversation with a session; refused with the
    /// reference gateway's text before the first message.
    pub fn thinking_settable(&self) -> Result<(), RoomError> {
        if self.has_session() {
            Ok(())
        } else {
            Err(RoomError::client(
                ErrorCode::NoActiveSession,
                crate::error::seed::NO_SESSION,
            ))
        }
    }

    /// Decides a message's fate. `stored_as`: the message id the dedupe table holds for its
    /// clientMessageId, if any.
    pub fn offer(
        &mut self,
        pending: Pending<S>,
        stored_as: Option<String>,
        max_queued: usize,
    ) -> Offer<S> {
        if let Some(waiting) = &self.waiting {
            let e = approval::message_refused(waiting);
            return Offer::Refused(pending, RoomError::prompt_failed(e));
        }
        let admission = {
            let state = AdmissionState {
                stored_as: stored_as.as_deref(),
                in_flight: self.in_flight.as_deref(),
                turn_running: self.turn_running,
                queued: self.queue.len(),
                max_queued,
            };
            let queued = self
                .queue
                .iter()
                .map(|p| p.message.client_message_id.as_deref());
            super::admit(pending.message.client_message_id.as_deref(), state, queued)
        };
        match admission {
            Admission::Duplicate { message_id } => Offer::Duplicate {
                pending,
                message_id,
            },
            Admission::Pending => Offer::AlreadyPending,
            Admission::QueueFull => {
                let msg = format!(
                    "a turn is running and {max_queued} messages are already queued; wait for agent:end"
                );
                // The reference gateway's agent refuses a message while it runs, in these words.
                let e = RoomError::prompt_failed(RoomError::client(ErrorCode::QueueFull, msg));
                Offer::Refused(pending, e)
            }
            Admission::Queue => {
                self.queue.push_back(pending);
                Offer::Queued
            }
            Admission::Start => {
                self.turn_running = true;
                Offer::Start(pending)
            }
        }
    }

    /// The continuation to run now, if one waits and no turn runs; it counts as the running
    /// turn (messages queue behind it) until [`Room::next_turn`] says none is left.
    pub fn begin_continuation(&mut self) -> Option<Continuation> {
        if self.turn_running {
            return None;
        }
        let next = self.continuation.take()?;
        self.turn_running = true;
        Some(next)
    }

    /// Parks the running turn on a call that waits for approval. The messages queued behind
    /// it are handed back to be refused: a queue held in memory would not outlive the object's
    /// hibernation, and a refused message can be sent again.
    pub fn park(&mut self, waiting: WaitingTurn) -> Vec<Pending<S>> {
        self.waiting = Some(waiting);
        self.in_flight = None;
        self.queue.drain(..).collect()
    }

    /// The parked turn goes on (answered, aborted or timed out); it runs until
    /// [`Room::next_turn`] says none is left.
    pub fn unpark(&mut self) -> Option<WaitingTurn> {
        self.waiting.take()
    }

    /// The next queued message whose turn runs now; `None` when the queue is empty, and then
    /// no turn runs any more (a parked turn still runs).
    pub fn next_turn(&mut self) -> Option<Pending<S>> {
        if self.waiting.is_some() {
            // Parked, not over: it still counts as the running turn.
            return None;
        }
        let next = self.queue.pop_front();
        if next.is_none() {
            self.turn_running = false;
        }
        next
    }

    /// Bookkeeping once `user`'s message `message_id` is stored at `now_ms`: the writes it
    /// needs, and the message no longer in flight.
    pub fn message_stored(
        &mut self,
        user: &str,
        client_message_id: Option<&str>,
        message_id: &str,
        now_ms: i64,
    ) -> StoredWrites {
        self.session.metrics.messages += 1;
        let owner = self.owner.is_none().then(|| user.to_string());
        if owner.is_some() {
            self.owner = owner.clone();
        }
        let first_message = !self.stored_any;
        self.stored_any = true;
        let remember = client_message_id.map(|c| (c.to_string(), message_id.to_string()));
        let prune = remember.as_ref().and_then(|_| {
            self.seen_inserts += 1;
            seen::prune_due(self.seen_inserts).then(|| seen::prune_params(now_ms))
        });
        StoredWrites {
            owner,
            first_message,
            remember,
            prune,
        }
    }

    /// The running turn's `message:ack` went out: a resend of its message is a duplicate now.
    pub fn acknowledged(&mut self) {
        self.in_flight = None;
    }

    /// What a turn that runs without a client message needs of the conversation: its id, the
    /// id as JSON, its owner (empty when none) and whether it stored messages before.
    pub fn identity(&self) -> (String, String, String, bool) {
        let owner = self.owner.clone().unwrap_or_default();
        (
            self.id.clone(),
            self.id_json.clone(),
            owner,
            self.stored_any,
        )
    }

    /// Whether `user` may use this conversation, as far as this instance knows (`None`: the
    /// owner is not known here and must be read from D1).
    pub fn owned_by(&self, user: &str) -> Option<bool> {
        self.owner.as_deref().map(|o| o == user)
    }

    /// Authenticated sockets: what the live registry counts (a socket.io socket that has not
    /// authenticated yet is nobody's).
    pub fn socket_count(&self) -> usize {
        self.sockets
            .as_ref()
            .map_or(0, |l| l.iter().filter(|(_, m)| m.user.is_some()).count())
    }

    /// The earliest token expiry among the sockets.
    pub fn earliest_expiry(&self) -> Option<i64> {
        self.sockets
            .iter()
            .flatten()
            .filter_map(|(_, m)| m.expires)
            .min()
    }

    /// What a socket gets as it attaches: the commands manifest, then what it missed after
    /// `last_seq` (or the `resume_gap` error when those events are gone).
    pub fn greeting(&self, meta: &SocketMeta, last_seq: Option<u64>) -> Vec<String> {
        let mut frames: Vec<String> = meta.frame(&manifest_event()).into_iter().collect();
        let Some(last) = last_seq else {
            frames.extend(self.question(meta, None));
            return frames;
        };
        match self.replay(last, meta) {
            Ok(missed) => {
                frames.extend(missed);
                frames.extend(self.question(meta, Some(last)));
            }
            Err(gap) => {
                let payload = socket::resume_gap_payload(&self.id, last, gap.oldest);
                frames.extend(meta.frame(&OutEvent::unsequenced("error", payload)));
                frames.extend(self.question(meta, None));
            }
        }
        frames
    }

    /// The question of a call waiting for approval, for a socket that attaches while it waits
    /// (unless the events replayed to it after `replayed_after` carry it already).
    fn question(&self, meta: &SocketMeta, replayed_after: Option<u64>) -> Option<String> {
        let waiting = self.waiting.as_ref()?;
        if replayed_after.is_some_and(|last| waiting.question_seq > last) {
            return None;
        }
        let payload = waiting.event_payload(&self.id);
        meta.frame(&OutEvent::unsequenced("agent:tool:approval", payload))
    }

    /// Accepts a socket.io CONNECT: the socket is connected to the namespace with a recovery
    /// id (the one it asked to recover when the events it missed are still held, else
    /// `fresh_pid`), and gets CONNECT, the manifest, then what it missed.
    pub fn accept_connect(
        &self,
        meta: &mut SocketMeta,
        auth: &Option<Value>,
        fresh_pid: impl FnOnce() -> String,
    ) -> Vec<String> {
        let recovery =
            socket::recovery_request(auth).filter(|(_, offset)| self.log.after(*offset).is_ok());
        meta.conversation.clear();
        meta.connected = true;
        meta.pid = match &recovery {
            Some((pid, _)) => pid.clone(),
            None => fresh_pid(),
        };
        let mut frames = vec![sio::connect_ok(NSP, &meta.sid, Some(&meta.pid))];
        frames.extend(meta.frame(&manifest_event()));
        let replayed = match recovery {
            Some((_, offset)) => {
                frames.extend(self.replay(offset, meta).unwrap_or_default());
                Some(offset)
            }
            None => None,
        };
        frames.extend(self.question(meta, replayed));
        frames
    }

    /// The frames a socket resuming after `last` missed, in order, or the gap that makes it
    /// impossible.
    pub fn replay(&self, last: u64, meta: &SocketMeta) -> Result<Vec<String>, ReplayGap> {
        Ok(self
            .log
            .after(last)?
            .filter_map(|e| meta.frame(e))
            .collect())
    }
}

/// The `commands:manifest` event every socket gets first.
pub fn manifest_event() -> OutEvent {
    let models = crate::catalog::Catalog::builtin().model_ids();
    let manifest = json!({ "manifest": crate::commands::manifest(&models) });
    OutEvent::unsequenced("commands:manifest", manifest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn message(client_id: Option<&str>) -> MessageEvent {
        MessageEvent {
            conversation_id: None,
            content: "hi".into(),
            provider: None,
            model_id: None,
            agent_id: None,
            client_message_id: client_id.map(String::from),
        }
    }

    fn meta(user: Option<&str>) -> SocketMeta {
        SocketMeta {
            user: user.map(String::from),
            ..SocketMeta::default()
        }
    }

    fn pending(socket: u32, client_id: Option<&str>) -> Pending<u32> {
        Pending {
            socket,
            meta: meta(Some("alice")),
            message: message(client_id),
            ack: None,
        }
    }

    fn loaded(kv: &[(&str, &str)]) -> Room<u32> {
        let kv: HashMap<String, String> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut room = Room::new(60_000);
        room.load(|k| kv.get(k).cloned(), Some("c1"), false)
            .unwrap();
        room
    }

    #[test]
    fn loading_takes_the_stored_id_else_the_hint_and_skips_seqs_after_a_crash() {
        let mut fresh = Room::<u32>::new(1000);
        assert_eq!(
            fresh.load(|_| None, Some("c1"), false),
            Ok(Some("c1".into()))
        );
        assert_eq!(fresh.id_json, "\"c1\"");
        assert_eq!(fresh.log.next_seq(), 1);
        assert_eq!(
            Room::<u32>::new(1000).load(|_| None, None, false),
            Err(NoId)
        );

        let room = loaded(&[
            ("id", "stored"),
            ("owner", "alice"),
            ("stored", "1"),
            ("seq", "40"),
            ("turn", "running"),
        ]);
        assert_eq!(room.id, "stored");
        assert_eq!(room.owned_by("alice"), Some(true));
        assert_eq!(room.owned_by("bob"), Some(false));
        assert_eq!(room.log.next_seq(), 40 + super::super::SEQ_SKIP_AFTER_CRASH);
        let idle = loaded(&[("id", "c1"), ("seq", "40"), ("turn", "idle")]);
        assert_eq!(idle.log.next_seq(), 40);
        assert_eq!(idle.owned_by("alice"), None);
        let mut orphaned = Room::<u32>::new(1000);
        orphaned
            .load(|k| (k == "stored").then(|| "1".into()), Some("c1"), true)
            .unwrap();
        assert!(orphaned.orphaned_outbox);
    }

    #[test]
    fn a_stored_continuation_runs_once_when_no_turn_runs_and_messages_queue_behind_it() {
        let waiting = r#"{"replyId":"r1","provider":"anthropic","model":"m"}"#;
        let mut room = loaded(&[(CONTINUATION_KEY, waiting)]);
        room.turn_running = true;
        assert_eq!(room.begin_continuation(), None, "not while a turn runs");
        room.turn_running = false;
        let c = room.begin_continuation().unwrap();
        assert_eq!(c.reply_id, "r1");
        assert!(room.turn_running);
        assert_eq!(room.begin_continuation(), None, "once");
        assert!(matches!(
            room.offer(pending(1, None), None, 8),
            Offer::Queued
        ));
        assert!(room.next_turn().is_some());
        assert!(room.next_turn().is_none() && !room.turn_running);
        let unreadable = loaded(&[(CONTINUATION_KEY, "{")]);
        assert_eq!(unreadable.continuation, None);
    }

    #[test]
    fn the_queue_runs_turns_in_order_and_refuses_past_its_bound() {
        let mut room = loaded(&[]);
        assert!(
            matches!(room.offer(pending(1, Some("a")), None, 2), Offer::Start(p) if p.socket == 1)
        );
        assert!(room.turn_running);
        assert!(matches!(
            room.offer(pending(2, Some("b")), None, 2),
            Offer::Queued
        ));
        assert!(matches!(
            room.offer(pending(3, None), None, 2),
            Offer::Queued
        ));
        match room.offer(pending(4, None), None, 2) {
            Offer::Refused(p, e) => {
                assert_eq!(p.socket, 4);
                assert_eq!(e.code(), ErrorCode::QueueFull);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(room.next_turn().map(|p| p.socket), Some(2));
        assert_eq!(room.next_turn().map(|p| p.socket), Some(3));
        assert!(room.turn_running);
        assert!(room.next_turn().is_none());
        assert!(!room.turn_running);
    }

    #[test]
    fn a_resend_racing_its_original_starts_no_second_turn() {
        let mut room = loaded(&[]);
        let Offer::Start(_) = room.offer(pending(1, Some("k1")), None, 4) else {
            panic!()
        };
        room.in_flight = Some("k1".into());
        // Sent again on another socket while the original is being stored.
        assert!(matches!(
            room.offer(pending(2, Some("k1")), None, 4),
            Offer::AlreadyPending
        ));
        // Queued behind the turn, then resent while still queued.
        assert!(matches!(
            room.offer(pending(3, Some("k2")), None, 4),
            Offer::Queued
        ));
        assert!(matches!(
            room.offer(pending(4, Some("k2")), None, 4),
            Offer::AlreadyPending
        ));
        let writes = room.message_stored("alice", Some("k1"), "m1", 0);
        assert_eq!(writes.remember, Some(("k1".into(), "m1".into())));
        // Stored, not yet acknowledged (the ack follows session:info): the original's ack will
        // reach the resend, which gets nothing of its own.
        assert!(matches!(
            room.offer(pending(6, Some("k1")), Some("m1".into()), 4),
            Offer::AlreadyPending
        ));
        room.acknowledged();
        assert!(room.in_flight.is_none());
        // Once acknowledged, a resend is a duplicate: its ack again, no turn.
        match room.offer(pending(5, Some("k1")), Some("m1".into()), 4) {
            Offer::Duplicate {
                pending,
                message_id,
            } => {
                assert_eq!((pending.socket, message_id.as_str()), (5, "m1"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(room.queue.len(), 1);
    }

    #[test]
    fn storing_records_the_owner_and_history_once_and_prunes_the_dedupe_table_periodically() {
        let mut room = loaded(&[]);
        let first = room.message_stored("alice", None, "m1", 0);
        assert_eq!(first.owner.as_deref(), Some("alice"));
        assert!(first.first_message && first.remember.is_none() && first.prune.is_none());
        let second = room.message_stored("alice", Some("k"), "m2", 0);
        assert!(second.owner.is_none() && !second.first_message);
        let mut prunes = 0;
        for i in 1..seen::PRUNE_EVERY * 2 {
            if room
                .message_stored("alice", Some(&format!("k{i}")), "m", 99)
                .prune
                .is_some()
            {
                prunes += 1;
            }
        }
        assert_eq!(prunes, 2);
        assert_eq!(room.session.metrics.messages, 2 + seen::PRUNE_EVERY * 2 - 1);
    }

    #[test]
    fn events_for_another_conversation_or_from_nobody_are_refused() {
        let room = loaded(&[]);
        let abort = |id: &str| ClientEvent::Abort {
            conversation_id: Some(id.into()),
        };
        let alice = meta(Some("alice"));
        assert_eq!(room.gate(&abort("c1"), &alice), Ok("alice"));
        assert_eq!(
            room.gate(&abort("c2"), &alice).unwrap_err().code(),
            ErrorCode::ConversationMismatch
        );
        assert_eq!(
            room.gate(&abort("c1"), &meta(None)).unwrap_err().code(),
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn abort_and_set_thinking_follow_the_session_as_the_reference_gateway() {
        let mut room = loaded(&[]);
        // No session yet: both refused with the reference gateway's texts.
        let e = room.abort_requested().unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (ErrorCode::NoActiveTurn, "No active session to abort.")
        );
        let e = room.thinking_settable().unwrap_err();
        assert_eq!(
            (e.code().as_str(), e.message()),
            (
                "no_active_session",
                "No active session for this conversation."
            )
        );
        // A turn runs: abort stops it, the level may be set.
        room.turn_running = true;
        assert_eq!(room.abort_requested(), Ok(true));
        assert_eq!(room.thinking_settable(), Ok(()));
        // The turn stored its message and ended: an idle session, whose abort does nothing.
        room.message_stored("alice", None, "m1", 0);
        room.turn_running = false;
        assert_eq!(room.abort_requested(), Ok(false));
        assert_eq!(room.thinking_settable(), Ok(()));
        // A session outlives the instance: a reloaded room that stored a message has one.
        assert!(loaded(&[("stored", "1")]).has_session());
    }

    #[test]
    fn sockets_are_counted_only_when_authenticated_and_expiries_are_tracked() {
        let mut room = loaded(&[]);
        let mut expiring = meta(Some("alice"));
        expiring.expires = Some(50);
        let mut held = meta(None);
        held.sio = true;
        held.expires = Some(10);
        room.sockets = Some(vec![(1, meta(Some("alice"))), (2, expiring), (3, held)]);
        assert_eq!(room.socket_count(), 2);
        assert_eq!(room.earliest_expiry(), Some(10));
    }

    #[test]
    fn a_socket_is_greeted_with_the_manifest_then_what_it_missed_or_the_gap() {
        let mut room = loaded(&[]);
        for _ in 0..3 {
            room.log.push("agent:text", "{}".into(), 0);
        }
        let alice = meta(Some("alice"));
        let fresh = room.greeting(&alice, None);
        assert_eq!(fresh.len(), 1);
        assert!(fresh[0].starts_with(r#"{"event":"commands:manifest""#));
        assert_eq!(room.greeting(&alice, Some(1)).len(), 3);
        room.log.prune(120_000);
        let gap = room.greeting(&alice, Some(1));
        assert!(gap[1].contains("\"code\":\"resume_gap\""), "{}", gap[1]);
    }

    #[test]
    fn a_socket_io_connect_recovers_only_when_the_missed_events_are_held() {
        let mut room = loaded(&[]);
        for _ in 0..3 {
            room.log.push("agent:text", "{}".into(), 0);
        }
        let mut m = SocketMeta {
            user: Some("alice".into()),
            sio: true,
            sid: "sid1".into(),
            conversation: "c1".into(),
            ..SocketMeta::default()
        };
        let auth = Some(json!({ "token": "t", "pid": "old-pid", "offset": "1" }));
        let frames = room.accept_connect(&mut m, &auth, || "new-pid".into());
        assert!(m.connected && m.conversation.is_empty());
        assert_eq!(m.pid, "old-pid");
        assert_eq!(frames[0], r#"40/chat,{"sid":"sid1","pid":"old-pid"}"#);
        assert!(frames[1].starts_with(r#"42/chat,["commands:manifest""#));
        assert_eq!(frames.len(), 4, "the manifest, then seqs 2 and 3");
        room.log.prune(120_000);
        let frames = room.accept_connect(&mut m, &auth, || "new-pid".into());
        assert_eq!(m.pid, "new-pid");
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn replay_gives_the_missed_frames_in_the_socket_framing_or_the_gap() {
        let mut room = loaded(&[]);
        for i in 0..3 {
            room.log.push("agent:text", format!("{{\"n\":{i}}}"), 0);
        }
        let frames = room.replay(1, &meta(Some("alice"))).unwrap();
        assert_eq!(
            frames,
            [
                r#"{"event":"agent:text","seq":2,"data":{"n":1}}"#,
                r#"{"event":"agent:text","seq":3,"data":{"n":2}}"#
            ]
        );
        room.log.prune(120_000);
        assert!(room.replay(1, &meta(Some("alice"))).is_err());
    }

    #[test]
    fn a_parked_turn_refuses_messages_hands_back_its_queue_and_still_runs_after_a_restart() {
        let mut room = loaded(&[("id", "c1")]);
        assert!(matches!(
            room.offer(pending(1, Some("a")), None, 8),
            Offer::Start(_)
        ));
        assert!(matches!(
            room.offer(pending(2, Some("b")), None, 8),
            Offer::Queued
        ));
        let w = crate::conversation::approval::tests::waiting("{}");
        let queued = room.park(w.clone());
        assert_eq!(
            queued.len(),
            1,
            "the queued message is handed back to be refused"
        );
        assert_eq!(queued[0].socket, 2);
        let Offer::Refused(_, e) = room.offer(pending(3, Some("c")), None, 8) else {
            panic!("a message while a call waits is refused");
        };
        assert_eq!(e.code(), ErrorCode::ApprovalPending);
        assert_eq!(room.next_turn().map(|p| p.socket), None);
        assert!(room.turn_running, "parked, not over");
        assert_eq!(room.abort_requested(), Ok(true));

        let text = serde_json::to_string(&w).unwrap();
        let after = loaded(&[
            ("id", "c1"),
            ("seq", "9"),
            ("turn", TURN_WAITING),
            (WAITING_KEY, &text),
        ]);
        assert_eq!(after.waiting.as_ref(), Some(&w));
        assert!(after.turn_running);
        assert_eq!(after.log.next_seq(), 9, "nothing was lost: no seqs skipped");
        // A wait row left by a turn that went on is ignored once the turn is over.
        let over = loaded(&[("id", "c1"), ("turn", "idle"), (WAITING_KEY, &text)]);
        assert!(over.waiting.is_none() && !over.turn_running);

        assert_eq!(room.unpark(), Some(w));
        assert_eq!(room.next_turn().map(|p| p.socket), None);
        assert!(!room.turn_running);
    }

    #[test]
    fn a_socket_that_attaches_while_a_call_waits_is_asked_once() {
        let mut room = loaded(&[]);
        for _ in 0..6 {
            room.log.push("agent:text", "{}".into(), 0);
        }
        // The question went out as seq 5 (see `approval::tests::waiting`).
        room.park(crate::conversation::approval::tests::waiting("{}"));
        let alice = meta(Some("alice"));
        let asked = |frames: &[String]| {
            frames
                .iter()
                .filter(|f| f.contains(r#""event":"agent:tool:approval""#))
                .count()
        };
        assert_eq!(asked(&room.greeting(&alice, None)), 1, "a new socket");
        assert_eq!(asked(&room.greeting(&alice, Some(6))), 1, "saw it before");
        // Resuming from before seq 5: the replay (here of text events only) is trusted to carry it.
        assert_eq!(asked(&room.greeting(&alice, Some(3))), 0);
        let mut sio = meta(Some("alice"));
        sio.sio = true;
        let frames = room.accept_connect(&mut sio, &None, || "pid".into());
        assert_eq!(
            frames
                .iter()
                .filter(|f| f.contains("agent:tool:approval"))
                .count(),
            1
        );
        room.unpark();
        assert_eq!(asked(&room.greeting(&alice, None)), 0, "answered");
    }
}
