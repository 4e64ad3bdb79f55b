//! Edge chat gateway for AI agents: a pure core (protocol, conversation, providers, routing) and thin Workers glue.

pub mod admin;
pub mod agents;
pub mod auth;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod connection;
pub mod conversation;
pub mod error;
pub mod fanout;
pub mod http;
pub mod llm;
pub mod login;
pub mod mcp;
pub mod outbox;
pub mod protocol;
pub mod rate;
pub mod retry;
pub mod routing;
pub mod selection;
pub mod store;
pub mod text;

#[cfg(target_arch = "wasm32")]
mod shell;
