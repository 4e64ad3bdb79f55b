//! Fan-out to every live object (reload, revocation, cache invalidation) split so that no invocation calls more than a shard's worth of objects, and the tally of what it reached.
//!
//! A Worker invocation, a Durable Object's included, may make a bounded number of subrequests
//! (calls to other Durable Objects count). The invocation that reads the live registry therefore
//! calls no live object itself: it hands the rows to shard objects, each of which calls at most
//! `limit` objects, or, with more rows than that, hands them on to at most `limit` shards of its
//! own. Every row is in exactly one slice, so every object is called once per fan-out.

use crate::store::CONNECTION_ROW_PREFIX;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a fan-out asks every live object to do; each names the object route it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Send `system:reload` (the body is the payload) to every socket.
    Reload,
    /// Close the sockets of the revoked tokens (the body is `{tokens}`).
    Revoke,
    /// Read rules, agents and catalog rows again at the next turn.
    Invalidate,
}

impl Action {
    /// The route of a conversation or connection object that performs it.
    pub fn route(self) -> &'static str {
        match self {
            Action::Reload => "reload",
            Action::Revoke => "revoke",
            Action::Invalidate => "invalidate",
        }
    }
}

/// The object a live-registry row names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A conversation object, by conversation id.
    Conversation(&'a str),
    /// A socket.io connection object, by Engine.IO sid.
    Connection(&'a str),
}

impl<'a> Target<'a> {
    /// Reads a registry row's key (`sio:<sid>` for a connection, else a conversation id).
    pub fn of_row(row: &'a str) -> Self {
        match row.strip_prefix(CONNECTION_ROW_PREFIX) {
            Some(sid) => Target::Connection(sid),
            None => Target::Conversation(row),
        }
    }
}

/// The work a shard object is given: one slice of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardTask {
    pub action: Action,
    /// The body every object gets, as given (JSON text), if any.
    pub body: Option<String>,
    /// Registry keys (see [`Target::of_row`]).
    pub rows: Vec<String>,
}

/// What an invocation holding `rows` does with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Call each row's object.
    Call(Vec<String>),
    /// Hand each slice to a shard object of its own.
    Delegate(Vec<Vec<String>>),
}

/// The step for `rows` at an invocation that may call at most `limit` objects (at least 2).
/// The invocation that read the registry (`root`) always delegates: its own subrequests go to
/// D1 and the shards, never to a live object.
pub fn step(rows: Vec<String>, limit: usize, root: bool) -> Step {
    if rows.is_empty() {
        return Step::Call(rows);
    }
    if !root && rows.len() <= limit {
        return Step::Call(rows);
    }
    Step::Delegate(split(rows, limit))
}

/// Splits `rows` into at most `limit` slices whose sizes differ by at most one, each of at most
/// `limit` rows when that many slices suffice (so each shard calls its objects itself), larger
/// otherwise (and those shards split again). Order is kept; every row is in exactly one slice.
pub fn split(rows: Vec<String>, limit: usize) -> Vec<Vec<String>> {
    let limit = limit.max(2);
    let slices = rows.len().div_ceil(limit).clamp(1, limit);
    let (base, extra) = (rows.len() / slices, rows.len() % slices);
    let mut rest = rows.into_iter();
    (0..slices)
        .map(|k| rest.by_ref().take(base + usize::from(k < extra)).collect())
        .collect()
}

/// What a fan-out reached; shards answer with it and their callers add it up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanOut {
    /// Objects that answered with at least one socket.
    pub conversations: u64,
    /// Sockets the action reached.
    pub sockets: u64,
    /// Sockets a send failed on, and objects that did not answer (or whose shard did not).
    pub failed: u64,
    /// Registry rows the fan-out took.
    pub listed: u64,
    /// Objects that answered (a stale row's object answers with no socket).
    pub reached: u64,
    /// Shard objects it ran on.
    pub shards: u64,
}

impl FanOut {
    /// Adds one object's answer (`{sockets, failed}`), or its silence (`None`).
    pub fn add_object(&mut self, answer: Option<&Value>) {
        self.listed += 1;
        match answer {
            Some(v) => {
                let sockets = v["sockets"].as_u64().unwrap_or(0);
                self.reached += 1;
                self.conversations += u64::from(sockets > 0);
                self.sockets += sockets;
                self.failed += v["failed"].as_u64().unwrap_or(0);
            }
            None => self.failed += 1,
        }
    }

    /// Adds a shard's tally, or, when it did not answer, its `rows` as failed: whether their
    /// objects were reached is unknown, and none is called twice.
    pub fn add_shard(&mut self, answer: Option<FanOut>, rows: usize) {
        match answer {
            Some(t) => {
                self.conversations += t.conversations;
                self.sockets += t.sockets;
                self.failed += t.failed;
                self.listed += t.listed;
                self.reached += t.reached;
                self.shards += t.shards + 1;
            }
            None => {
                self.listed += rows as u64;
                self.failed += rows as u64;
                self.shards += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(n: usize) -> Vec<String> {
        (0..n).map(|k| format!("c{k}")).collect()
    }

    /// Runs the plan as the shards would, returning the slices that call objects and the number
    /// of shards used.
    fn leaves(all: Vec<String>, limit: usize) -> (Vec<Vec<String>>, usize) {
        let mut calls = Vec::new();
        let mut shards = 0;
        let mut pending = vec![(all, true)];
        while let Some((slice, root)) = pending.pop() {
            match step(slice, limit, root) {
                Step::Call(r) => calls.push(r),
                Step::Delegate(parts) => {
                    assert!(
                        parts.len() <= limit,
                        "{} shards from one invocation",
                        parts.len()
                    );
                    shards += parts.len();
                    pending.extend(parts.into_iter().map(|p| (p, false)));
                }
            }
        }
        (calls, shards)
    }

    #[test]
    fn rows_split_into_even_slices_of_at_most_the_limit() {
        let sizes = |n, limit| {
            split(rows(n), limit)
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(30, 8), [8, 8, 7, 7]);
        // More rows than `limit` slices of `limit`: `limit` slices, each split again by its shard.
        assert_eq!(sizes(30, 4), [8, 8, 7, 7]);
        assert_eq!(sizes(501, 500), [251, 250]);
        assert_eq!(sizes(2000, 500), [500, 500, 500, 500]);
        assert_eq!(sizes(3, 500), [3]);
        assert_eq!(sizes(30, 3), [10, 10, 10]);
        assert_eq!(split(rows(5), 2).concat(), rows(5), "order is kept");
    }

    #[test]
    fn the_registry_reader_always_delegates_and_shards_call_up_to_the_limit() {
        assert_eq!(step(rows(3), 500, true), Step::Delegate(vec![rows(3)]));
        assert_eq!(step(rows(3), 500, false), Step::Call(rows(3)));
        assert_eq!(step(Vec::new(), 500, true), Step::Call(Vec::new()));
        assert!(matches!(step(rows(501), 500, false), Step::Delegate(p) if p.len() == 2));
    }

    #[test]
    fn every_row_is_called_exactly_once_and_no_invocation_passes_the_limit() {
        for (n, limit) in [
            (0, 2),
            (1, 2),
            (30, 4),
            (30, 3),
            (1000, 2),
            (2000, 500),
            (100_000, 10),
        ] {
            let (calls, shards) = leaves(rows(n), limit);
            assert!(
                calls.iter().all(|c| c.len() <= limit),
                "n={n} limit={limit}"
            );
            let mut called: Vec<String> = calls.concat();
            called.sort();
            let mut want = rows(n);
            want.sort();
            assert_eq!(called, want, "n={n} limit={limit}: each row once");
            assert!(n == 0 || shards >= n.div_ceil(limit), "n={n} limit={limit}");
        }
        // 30 rows, 4 per shard: 4 slices of 7 or 8 rows, each split in two: 12 shards.
        assert_eq!(leaves(rows(30), 4).1, 4 + 8);
    }

    #[test]
    fn rows_name_conversations_or_connections() {
        assert_eq!(Target::of_row("abc"), Target::Conversation("abc"));
        assert_eq!(Target::of_row("sio:xyz"), Target::Connection("xyz"));
    }

    #[test]
    fn a_shard_task_is_strict_json() {
        let task = ShardTask {
            action: Action::Reload,
            body: Some(r#"{"reason":"deploy"}"#.into()),
            rows: rows(2),
        };
        let text = serde_json::to_string(&task).unwrap();
        assert_eq!(
            text,
            r#"{"action":"reload","body":"{\"reason\":\"deploy\"}","rows":["c0","c1"]}"#
        );
        assert_eq!(serde_json::from_str::<ShardTask>(&text).unwrap(), task);
        assert!(serde_json::from_str::<ShardTask>(r#"{"action":"drop","rows":[]}"#).is_err());
        assert!(
            serde_json::from_str::<ShardTask>(r#"{"action":"reload","rows":[],"x":1}"#).is_err()
        );
        assert_eq!(Action::Invalidate.route(), "invalidate");
    }

    #[test]
    fn a_tally_counts_answers_silences_and_lost_shards() {
        let mut leaf = FanOut::default();
        leaf.add_object(Some(&json!({ "sockets": 2, "failed": 1 })));
        leaf.add_object(Some(&json!({ "sockets": 0, "failed": 0 })));
        leaf.add_object(None);
        assert_eq!(
            leaf,
            FanOut {
                conversations: 1,
                sockets: 2,
                failed: 2,
                listed: 3,
                reached: 2,
                shards: 0
            }
        );
        let mut root = FanOut::default();
        root.add_shard(Some(leaf), 3);
        root.add_shard(None, 4);
        assert_eq!(
            root,
            FanOut {
                conversations: 1,
                sockets: 2,
                failed: 6,
                listed: 7,
                reached: 2,
                shards: 2
            }
        );
        assert!(
            serde_json::from_value::<FanOut>(json!({ "sockets": 1 })).is_err(),
            "a shard's answer is a whole tally, or it did not answer"
        );
    }
}
