//! Messages are written to the conversation's own storage first and copied to D1 in order: the rows kept and the statements that copy them.
//!
//! A turn must not wait on D1 before the model is called: the Durable Object's storage is
//! durable once written, so the message is acknowledged from there, and a batch copies it to
//! D1 beside the turn. A batch that fails stays in the outbox and is retried; every insert is
//! idempotent, so a batch that succeeded but whose answer was lost can run again.

use crate::store::{sql, title_from};
use serde::Deserialize;

/// The object-local table the rows wait in, created on load.
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS outbox (n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, role TEXT NOT NULL, author TEXT NOT NULL, content TEXT NOT NULL, metadata TEXT NOT NULL, created_at INTEGER NOT NULL)";
/// ?1 id, ?2 role, ?3 author, ?4 content, ?5 metadata, ?6 created_at
pub const INSERT: &str = "INSERT INTO outbox (id, role, author, content, metadata, created_at) VALUES (?, ?, ?, ?, ?, ?)";
/// ?1 the last row known copied: the rows after it, oldest first, at most `MAX_ROWS_PER_COPY`
/// (a backlog after a D1 outage goes in several batches, each well inside D1's request limits).
pub const PENDING: &str = "SELECT n, id, role, author, content, metadata, created_at FROM outbox WHERE n > ? ORDER BY n LIMIT 20";
/// Rows one copy takes (the `LIMIT` of `PENDING`).
pub const MAX_ROWS_PER_COPY: usize = 20;
/// Every row, copied or not, oldest first (history is read from these and D1 together).
pub const ALL: &str =
    "SELECT n, id, role, author, content, metadata, created_at FROM outbox ORDER BY n";
/// ?1 the last row copied
pub const DELETE_COPIED: &str = "DELETE FROM outbox WHERE n <= ?";
/// Whether anything waits.
pub const COUNT: &str = "SELECT COUNT(*) AS waiting FROM outbox";

/// One message waiting to be copied to D1.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OutboxRow {
    /// Order of writing (object-local).
    pub n: i64,
    pub id: String,
    /// `user` or `assistant`.
    pub role: String,
    /// The user who sent it (the conversation's owner); empty for the assistant.
    pub author: String,
    pub content: String,
    pub metadata: String,
    pub created_at: i64,
}

/// A statement parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Num(i64),
}

/// One statement of a copy batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: &'static str,
    pub params: Vec<Param>,
}

/// The statements that copy `rows` (oldest first) into D1 for `conversation`, as one batch:
/// the conversation row before its first user message, each message in order (D1 numbers them
/// in insertion order), then the conversation's `updated_at` unless `touched` (a session
/// mirror in the same batch sets it). Nothing for no rows.
pub fn copy_statements(conversation: &str, rows: &[OutboxRow], touched: bool) -> Vec<Statement> {
    let text = |s: &str| Param::Text(s.to_string());
    let mut out = Vec::with_capacity(rows.len() + 2);
    let mut ensured = false;
    for row in rows {
        let common = vec![
            text(&row.id),
            text(conversation),
            if row.role == "user" {
                text(&row.author)
            } else {
                text(&row.role)
            },
            text(&row.content),
            text(&row.metadata),
            Param::Num(row.created_at),
        ];
        if row.role == "user" {
            if !ensured {
                ensured = true;
                out.push(Statement {
                    sql: sql::ENSURE_CONVERSATION,
                    params: vec![
                        text(conversation),
                        text(&row.author),
                        Param::Text(title_from(&row.content)),
                        Param::Num(row.created_at),
                    ],
                });
            }
            out.push(Statement {
                sql: sql::INSERT_USER_MESSAGE,
                params: common,
            });
        } else {
            out.push(Statement {
                sql: sql::INSERT_MESSAGE,
                params: common,
            });
        }
    }
    if let Some(last) = rows.iter().map(|r| r.created_at).max().filter(|_| !touched) {
        out.push(Statement {
            sql: sql::TOUCH_CONVERSATION,
            params: vec![text(conversation), Param::Num(last)],
        });
    }
    out
}

/// How long a running turn keeps its message before copying it: `base` stretched by up to half
/// again (`spread` in 0..1), so turns that started together do not all copy at the same instant.
pub fn copy_delay_ms(base: u64, spread: f64) -> u64 {
    base + (base as f64 * 0.5 * spread.clamp(0.0, 1.0)) as u64
}

/// The retry delay after `failures` failed copies in a row: 1 s doubling to at most 60 s.
pub fn retry_delay_ms(failures: u32) -> u64 {
    1_000u64.saturating_mul(1u64 << failures.min(6)).min(60_000)
}

/// Why a copy to D1 runs; it decides whether copied rows are deleted and whether the batch
/// carries the session mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// A turn still running copies its user message. Copied rows are only remembered: a delete
    /// is a write, and a write holds every outgoing frame until it commits, stalling the stream.
    MidTurn,
    /// A turn's closing batch: waiting rows, the reply, the session mirror, the live registry.
    TurnEnd,
    /// The session changed (a command): the mirror, with any waiting rows.
    Session,
    /// An alarm retries rows a failed copy or a dead instance left.
    Retry,
}

impl CopyKind {
    /// Whether the rows this copy takes are deleted from the outbox once in D1.
    pub fn settles(self) -> bool {
        !matches!(self, CopyKind::MidTurn)
    }

    /// Whether the batch carries the session mirror (which also sets `updated_at`).
    pub fn mirrored(self) -> bool {
        matches!(self, CopyKind::TurnEnd | CopyKind::Session)
    }
}

/// One planned copy: which rows go, in which order, and what succeeds means.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyPlan {
    pub kind: CopyKind,
    /// Rows in the order they were kept, which is D1's order.
    pub rows: Vec<OutboxRow>,
    /// The last outbox row this copy takes.
    pub through: Option<i64>,
}

/// What to do after a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCopy {
    /// Done; delete outbox rows up to `n` (inclusive) when set.
    Settle { delete_through: Option<i64> },
    /// The copy failed: try again (by alarm) after this many ms; nothing was copied.
    RetryAfter { ms: u64 },
    /// The copy failed but it carried no message: nothing to retry.
    Dropped,
}

/// The pure half of the outbox: which rows a copy takes and what its result means. Rows are
/// copied strictly in the order they were kept; `copied_through` is memory only, so after a
/// restart every kept row is copied again (D1 ignores ids it has).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replicator {
    /// The last outbox row known to be in D1.
    pub copied_through: i64,
    /// The last outbox row deleted.
    pub settled_through: i64,
    /// Failed copies in a row.
    pub failures: u32,
}

impl Replicator {
    /// Plans a copy of `waiting` (rows after `copied_through`, oldest first, at most
    /// `MAX_ROWS_PER_COPY`): a reply is kept in the outbox behind every older row, so it never
    /// lands in D1 before them.
    pub fn plan(&self, kind: CopyKind, waiting: Vec<OutboxRow>) -> CopyPlan {
        let through = waiting.last().map(|r| r.n);
        CopyPlan {
            kind,
            rows: waiting,
            through,
        }
    }

    /// Takes the result of a planned copy.
    pub fn on_result(&mut self, plan: &CopyPlan, ok: bool) -> AfterCopy {
        if ok {
            if let Some(n) = plan.through {
                self.copied_through = self.copied_through.max(n);
            }
            self.failures = 0;
            return AfterCopy::Settle {
                delete_through: self.delete_due(plan.kind),
            };
        }
        if plan.rows.is_empty() {
            return AfterCopy::Dropped;
        }
        let ms = retry_delay_ms(self.failures);
        self.failures = self.failures.saturating_add(1);
        AfterCopy::RetryAfter { ms }
    }

    /// The rows a copy of `kind` deletes: those known to be in D1 and not deleted yet.
    pub fn delete_due(&self, kind: CopyKind) -> Option<i64> {
        (kind.settles() && self.copied_through > self.settled_through)
            .then_some(self.copied_through)
    }

    /// A delete of rows up to `n` succeeded.
    pub fn settled(&mut self, n: i64) {
        self.settled_through = self.settled_through.max(n);
    }
}

/// What a conversation's live-registry row says (D1's `live_conversations`): how many sockets
/// and whether a turn runs; a conversation with neither has no row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveWrite {
    Register { sockets: usize, turning: bool },
    Unregister,
}

/// What this instance last wrote to its live-registry row, so an unchanged row is not written
/// again (a turn that never reached `D1_COPY_DELAY_MS` never marked itself, so its end writes
/// nothing). A failed write makes the row's state unknown, and the next write goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveRow {
    written: Option<(usize, bool)>,
}

impl LiveRow {
    /// The write that makes the row say `sockets` and `turning`, assumed to succeed.
    pub fn write(&mut self, sockets: usize, turning: bool) -> LiveWrite {
        self.written = Some((sockets, turning));
        if sockets == 0 && !turning {
            LiveWrite::Unregister
        } else {
            LiveWrite::Register { sockets, turning }
        }
    }

    /// The same, or `None` when the row says so already.
    pub fn change(&mut self, sockets: usize, turning: bool) -> Option<LiveWrite> {
        self.differs(sockets, turning)
            .then(|| self.write(sockets, turning))
    }

    /// Whether the row may say something other than `sockets` and `turning`.
    pub fn differs(&self, sockets: usize, turning: bool) -> bool {
        self.written != Some((sockets, turning))
    }

    /// A write failed: what the row says is unknown.
    pub fn unknown(&mut self) {
        self.written = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_row_is_written_only_when_it_changes_or_after_a_failure() {
        let mut row = LiveRow::default();
        assert_eq!(
            row.change(1, false),
            Some(LiveWrite::Register {
                sockets: 1,
                turning: false
            })
        );
        assert_eq!(row.change(1, false), None);
        assert!(row.change(1, true).is_some());
        row.unknown();
        assert!(row.change(1, true).is_some());
        assert_eq!(row.change(0, false), Some(LiveWrite::Unregister));
        assert_eq!(
            row.write(0, false),
            LiveWrite::Unregister,
            "written even when unchanged"
        );
    }

    fn waiting(rows: &[OutboxRow], r: &Replicator) -> Vec<OutboxRow> {
        rows.iter()
            .filter(|x| x.n > r.copied_through)
            .take(MAX_ROWS_PER_COPY)
            .cloned()
            .collect()
    }

    #[test]
    fn copy_kinds_say_what_settles_and_what_carries_the_mirror() {
        assert!(!CopyKind::MidTurn.settles() && !CopyKind::MidTurn.mirrored());
        assert!(CopyKind::TurnEnd.settles() && CopyKind::TurnEnd.mirrored());
        assert!(CopyKind::Session.settles() && CopyKind::Session.mirrored());
        assert!(CopyKind::Retry.settles() && !CopyKind::Retry.mirrored());
    }

    #[test]
    fn d1_failing_then_recovering_copies_every_row_once_and_in_order() {
        let kept: Vec<OutboxRow> = (1..=45)
            .map(|n| row(n, if n % 2 == 1 { "user" } else { "assistant" }, "x", n))
            .collect();
        let mut r = Replicator::default();
        let mut in_d1: Vec<i64> = Vec::new();
        // Three failures: nothing moves, the waits grow.
        let mut waits = Vec::new();
        for _ in 0..3 {
            let plan = r.plan(CopyKind::Retry, waiting(&kept, &r));
            match r.on_result(&plan, false) {
                AfterCopy::RetryAfter { ms } => waits.push(ms),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, vec![1_000, 2_000, 4_000]);
        assert_eq!(r.copied_through, 0);
        // Recovery: batches of at most 20, in order, until nothing waits.
        loop {
            let plan = r.plan(CopyKind::Retry, waiting(&kept, &r));
            if plan.rows.is_empty() {
                break;
            }
            in_d1.extend(plan.rows.iter().map(|x| x.n));
            match r.on_result(&plan, true) {
                AfterCopy::Settle {
                    delete_through: Some(n),
                } => r.settled(n),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(in_d1, (1..=45).collect::<Vec<_>>());
        assert_eq!(
            (r.copied_through, r.settled_through, r.failures),
            (45, 45, 0)
        );
    }

    #[test]
    fn a_mid_turn_copy_remembers_without_deleting() {
        let mut r = Replicator::default();
        let plan = r.plan(CopyKind::MidTurn, vec![row(1, "user", "q", 1)]);
        assert_eq!(
            r.on_result(&plan, true),
            AfterCopy::Settle {
                delete_through: None
            }
        );
        assert_eq!(r.copied_through, 1);
        // The turn's end then deletes what the mid-turn copy took, even with nothing new.
        let plan = r.plan(CopyKind::TurnEnd, Vec::new());
        assert_eq!(
            r.on_result(&plan, true),
            AfterCopy::Settle {
                delete_through: Some(1)
            }
        );
    }

    #[test]
    fn a_failed_copy_without_messages_is_not_retried() {
        let mut r = Replicator::default();
        let plan = r.plan(CopyKind::Session, Vec::new());
        assert_eq!(r.on_result(&plan, false), AfterCopy::Dropped);
        assert_eq!(r.failures, 0);
    }

    fn row(n: i64, role: &str, content: &str, at: i64) -> OutboxRow {
        OutboxRow {
            n,
            id: format!("m{n}"),
            role: role.into(),
            author: if role == "user" {
                "alice".into()
            } else {
                String::new()
            },
            content: content.into(),
            metadata: "{}".into(),
            created_at: at,
        }
    }

    #[test]
    fn nothing_to_copy_is_no_statement() {
        assert!(copy_statements("c1", &[], false).is_empty());
    }

    #[test]
    fn a_turn_copies_conversation_then_messages_in_order_then_touch() {
        let rows = [
            row(1, "user", "hello there\nsecond line", 10),
            row(2, "assistant", "hi", 20),
        ];
        let s = copy_statements("c1", &rows, false);
        let sqls: Vec<_> = s.iter().map(|s| s.sql).collect();
        assert_eq!(
            sqls,
            [
                sql::ENSURE_CONVERSATION,
                sql::INSERT_USER_MESSAGE,
                sql::INSERT_MESSAGE,
                sql::TOUCH_CONVERSATION
            ]
        );
        assert_eq!(
            s[0].params,
            [
                Param::Text("c1".into()),
                Param::Text("alice".into()),
                Param::Text("hello there".into()),
                Param::Num(10)
            ]
        );
        // The user insert carries the author for its owner check; the assistant's its role.
        assert_eq!(s[1].params[2], Param::Text("alice".into()));
        assert_eq!(s[1].params[0], Param::Text("m1".into()));
        assert_eq!(s[2].params[2], Param::Text("assistant".into()));
        assert_eq!(s[2].params[5], Param::Num(20));
        assert_eq!(s[3].params, [Param::Text("c1".into()), Param::Num(20)]);
    }

    #[test]
    fn the_conversation_row_is_ensured_once_before_the_first_user_message() {
        let rows = [
            row(3, "assistant", "late reply", 5),
            row(4, "user", "a", 6),
            row(5, "user", "b", 7),
        ];
        let s = copy_statements("c1", &rows, false);
        let ensures = s
            .iter()
            .filter(|s| s.sql == sql::ENSURE_CONVERSATION)
            .count();
        assert_eq!(ensures, 1);
        assert_eq!(s[0].sql, sql::INSERT_MESSAGE);
        assert_eq!(s[1].sql, sql::ENSURE_CONVERSATION);
        assert_eq!(s.last().unwrap().params[1], Param::Num(7));
    }

    #[test]
    fn a_batch_with_the_session_mirror_leaves_updated_at_to_it() {
        let rows = [row(1, "user", "q", 10), row(2, "assistant", "a", 20)];
        let s = copy_statements("c1", &rows, true);
        assert!(s.iter().all(|s| s.sql != sql::TOUCH_CONVERSATION));
        assert_eq!(s.len(), 3);
        // The mirror it relies on sets updated_at.
        assert!(sql::SAVE_SESSION.contains("updated_at"));
    }

    #[test]
    fn one_copy_takes_a_bounded_number_of_rows() {
        assert!(PENDING.ends_with(&format!("LIMIT {MAX_ROWS_PER_COPY}")));
    }

    #[test]
    fn inserts_are_idempotent_so_a_lost_answer_can_be_retried() {
        assert!(sql::INSERT_MESSAGE.starts_with("INSERT OR IGNORE"));
        assert!(sql::INSERT_USER_MESSAGE.starts_with("INSERT OR IGNORE"));
    }

    #[test]
    fn copy_delays_spread_over_half_the_base_again() {
        assert_eq!(copy_delay_ms(1_000, 0.0), 1_000);
        assert_eq!(copy_delay_ms(1_000, 0.5), 1_250);
        assert_eq!(copy_delay_ms(1_000, 0.999), 1_499);
        assert_eq!(copy_delay_ms(1_000, 7.0), 1_500);
        assert_eq!(copy_delay_ms(0, 0.7), 0);
    }

    #[test]
    fn retries_back_off_to_a_minute() {
        assert_eq!(retry_delay_ms(0), 1_000);
        assert_eq!(retry_delay_ms(1), 2_000);
        assert_eq!(retry_delay_ms(5), 32_000);
        assert_eq!(retry_delay_ms(6), 60_000);
        assert_eq!(retry_delay_ms(40), 60_000);
    }
}
