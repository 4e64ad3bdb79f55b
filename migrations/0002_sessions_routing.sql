-- Session state bound to a conversation, routing rules, named agents, catalog overrides, live registry.
ALTER TABLE conversations ADD COLUMN session_state TEXT NOT NULL DEFAULT '{}';

CREATE TABLE routing_rules (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  priority INTEGER NOT NULL DEFAULT 100,
  enabled INTEGER NOT NULL DEFAULT 1,
  rule TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

CREATE TABLE agent_configs (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  config TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

CREATE TABLE model_catalog (
  provider TEXT NOT NULL,
  model_id TEXT NOT NULL,
  info TEXT NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (provider, model_id)
);

-- Conversations with at least one socket attached: the fan-out list of admin reload and the live stats.
CREATE TABLE live_conversations (
  conversation_id TEXT PRIMARY KEY,
  since INTEGER NOT NULL,
  sockets INTEGER NOT NULL DEFAULT 0,
  turning INTEGER NOT NULL DEFAULT 0
);
