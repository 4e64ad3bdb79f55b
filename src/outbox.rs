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

#[cfg(test)]
mod tests {
    use super::*;

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
