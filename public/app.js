// The chat page's behaviour: token, conversation list, one /chat WebSocket with resume and dedup, streamed turns, model/thinking pickers and slash-command completion.
const $ = (id) => document.getElementById(id);
const ui = Object.fromEntries(
  ['banner', 'sidebar-toggle', 'sidebar-close', 'sidebar', 'token-form', 'token-input', 'new-button', 'conversation-list', 'model-select', 'thinking-select',
    'message-log', 'composer', 'completion', 'message-input', 'send-button', 'stop-button', 'status-line'].map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), $(id)]),
);

/** Creates an element; text goes through textContent so nothing from the wire is ever parsed as HTML. */
function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

const S = {
  token: '',
  models: [],
  defaultModel: '',
  manifest: null,
  conversations: [],
  convId: null,
  lastSeq: null, // highest seq seen on this conversation: the resume point and the dedup floor
  ws: null,
  gen: 0, // socket generation: late events of a replaced socket are ignored
  connected: false,
  retries: 0,
  retryTimer: 0,
  session: null,
  turn: null,
  pending: new Map(), // clientMessageId -> {content, node, gen}: resent with the same id until acked
  quietStatus: 0, // our own /status probes, whose results are not shown
  quietThinking: 0, // the thinking picker's /thinking commands, whose results show only when they fail
  catchUp: false, // the socket dropped before any seq was seen: no resume point, so the history is reloaded instead
  completion: { items: [], index: 0, dismissed: null, exact: false, moved: false },
};

const uuid = () =>
  crypto.randomUUID?.() ?? // randomUUID needs a secure context; a LAN http address is not one
  ([1e7] + -1e3 + -4e3 + -8e3 + -1e11).replace(/[018]/g, (c) => (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16));

// ---------------------------------------------------------------------------
// Status line and banner

let connText = 'Not connected';
function renderStatus() {
  const s = S.session;
  const parts = [connText];
  if (s?.provider && s?.modelId) {
    parts.push(`${s.provider}/${s.modelId}`, `thinking ${s.thinkingLevel ?? 'off'}`);
    if (s.agentName) parts.push(`agent ${s.agentName}`);
    parts.push(s.modelOverride ? 'model pinned' : s.routingDecision ? `routed: ${s.routingDecision.ruleName}` : 'automatic');
  }
  ui.statusLine.textContent = parts.join(' · ');
  ui.statusLine.dataset.model = s?.provider ? `${s.provider}/${s.modelId}` : '';
  ui.statusLine.dataset.connected = String(S.connected);
}
const setConn = (text) => {
  connText = text;
  renderStatus();
};

function showBanner(text) {
  ui.banner.textContent = text;
  ui.banner.hidden = false;
}

// ---------------------------------------------------------------------------
// HTTP

async function api(path) {
  const res = await fetch(path, { headers: { authorization: `Bearer ${S.token}` } });
  if (!res.ok) throw Object.assign(new Error(`${path} answered ${res.status}`), { status: res.status });
  return res.json();
}

async function loadConversations() {
  try {
    const json = await api('/api/conversations');
    S.conversations = (Array.isArray(json) ? json : json.conversations ?? []).sort((a, b) => (b.updatedAt ?? 0) - (a.updatedAt ?? 0));
  } catch {
    return; // the list is a convenience; the chat works without it
  }
  renderConversations();
}

function renderConversations() {
  ui.conversationList.replaceChildren(
    ...S.conversations.map((c) => {
      const b = el('button', { type: 'button', 'aria-current': c.id === S.convId ? 'true' : null, 'data-id': c.id });
      b.append(el('span', { class: 'title' }, c.title || 'Untitled'), el('time', {}, c.updatedAt ? new Date(c.updatedAt).toLocaleString() : ''));
      b.onclick = () => {
        setSidebar(false);
        if (c.id !== S.convId) openConversation(c.id);
      };
      return el('li').appendChild(b).parentNode;
    }),
  );
}

async function loadModels() {
  try {
    const json = await api('/api/models');
    S.models = json.models ?? [];
    S.defaultModel = json.default ?? '';
  } catch {
    S.models = [];
  }
  renderPickers();
}

// ---------------------------------------------------------------------------
// Message log

const log = ui.messageLog;
let scrollQueued = false;
/** Keeps the newest content in view, but only for a reader already at the bottom; once per frame so fast deltas stay cheap. */
function stickToBottom(force) {
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  if ((!atBottom && !force) || scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    log.scrollTop = log.scrollHeight;
  });
}

function addNode(node) {
  log.append(node);
  stickToBottom(true);
  return node;
}

const userBubble = (content, pending) =>
  addNode(el('article', { class: `msg user${pending ? ' pending' : ''}`, 'data-testid': 'user-message', 'aria-label': 'You' }, content));

function note(text, kind = 'info') {
  return addNode(el('p', { class: `note ${kind}`, 'data-testid': `note-${kind}`, role: kind === 'error' ? 'alert' : null }, text));
}

/** An assistant bubble; `aria-busy` while streaming keeps screen readers from announcing every delta. */
function assistantBubble() {
  const node = el('article', { class: 'msg assistant', 'data-testid': 'assistant-message', 'data-state': 'streaming', 'aria-busy': 'true', 'aria-label': 'Assistant' });
  const thinking = el('details', { class: 'thinking', hidden: true });
  const thinkingText = el('div', { class: 'thinking-text' });
  thinking.append(el('summary', {}, 'Thinking'), thinkingText);
  const tools = el('ul', { class: 'tools', 'aria-label': 'Tool calls', hidden: true });
  const text = el('div', { class: 'text', 'data-testid': 'assistant-text' });
  const footer = el('footer', { class: 'meta', 'data-testid': 'turn-footer' });
  node.append(thinking, tools, text, footer);
  addNode(node);
  return { node, thinking, thinkingText, tools, text, footer, toolItems: new Map(), errorShown: false };
}

/** The running turn's bubble; frames after a resume gap may arrive without their agent:start. */
function current() {
  if (!S.turn) {
    S.turn = assistantBubble();
    setControls();
  }
  return S.turn;
}

function appendText(target, chunk) {
  // Appending a text node is O(chunk): a long reply does not re-render on every delta.
  target.append(chunk);
  stickToBottom();
}

function toolItem(b, id, name) {
  let li = b.toolItems.get(id);
  if (!li) {
    li = el('li', { 'data-state': 'running', 'data-tool-call-id': id });
    li.append(el('span', { class: 'tool-name' }, name || 'tool'), el('span', { class: 'tool-state' }, 'running…'));
    b.toolItems.set(id, li);
    b.tools.hidden = false;
    b.tools.append(li);
    stickToBottom();
  }
  return li;
}

/** A tool call waiting for the owner's approval: its name, arguments and Approve / Deny (asked again after a reconnect: shown once). */
function askApproval(b, d) {
  const li = toolItem(b, d.toolCallId, d.toolName);
  li.dataset.state = 'waiting';
  li.lastChild.textContent = 'waiting for approval';
  if (b.node.querySelector(`[data-approval="${CSS.escape(d.toolCallId)}"]`)) return;
  const panel = el('div', { class: 'approval', 'data-approval': d.toolCallId, 'data-testid': 'tool-approval', role: 'group', 'aria-label': `Approve ${d.toolName}?` });
  const args = el('pre', { class: 'approval-args' }, JSON.stringify(d.args ?? {}, null, 2));
  const reason = el('input', { type: 'text', class: 'approval-reason', placeholder: 'Reason (optional, sent when denying)', maxlength: '1000', 'aria-label': 'Reason' });
  const answer = (approved) => {
    const sent = send('tool:approve', { conversationId: d.conversationId ?? S.convId, toolCallId: d.toolCallId, approved, ...(approved || !reason.value.trim() ? {} : { reason: reason.value.trim() }) });
    if (sent) for (const button of panel.querySelectorAll('button')) button.disabled = true;
  };
  const approve = el('button', { type: 'button', class: 'approve', 'data-testid': 'approve-tool' }, 'Approve');
  const deny = el('button', { type: 'button', class: 'deny', 'data-testid': 'deny-tool' }, 'Deny');
  approve.addEventListener('click', () => answer(true));
  deny.addEventListener('click', () => answer(false));
  const until = typeof d.expiresAt === 'number' ? ` (declined if unanswered by ${new Date(d.expiresAt).toLocaleTimeString()})` : '';
  panel.append(el('p', {}, `The agent wants to run ${d.toolName}${until}:`), args, reason, approve, deny);
  b.node.insertBefore(panel, b.text);
  stickToBottom();
}

function endTool(b, id, name, isError) {
  b.node.querySelector(`[data-approval="${CSS.escape(id)}"]`)?.remove();
  const li = toolItem(b, id, name);
  li.dataset.state = isError ? 'error' : 'done';
  li.lastChild.textContent = isError ? 'failed' : 'done';
}

const STOP_LABELS = { length: 'Cut at output limit', aborted: 'Stopped', error: 'Failed', truncated: 'Truncated: the stream broke', max_steps: 'Stopped at the tool-step limit' };
const num = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : '?');

const usd = (n) => `$${n < 0.01 ? n.toFixed(6) : n.toFixed(4)}`;

/**
 * The footer under a finished turn: stop reason, tokens, cost (or "cost unknown"), context use.
 * In agent:end, usage.tokens and usage.cost are the conversation's running totals; the turn's own
 * figures are in usage.turn.
 */
function finishBubble(b, { stopReason, usage, tokens, cost, context, error }) {
  tokens ??= usage?.turn?.tokens;
  if (usage) cost = usage.turn?.cost ?? null;
  context ??= usage?.context;
  const state = stopReason === 'aborted' ? 'stopped' : stopReason === 'error' ? 'error' : 'done';
  Object.assign(b.node.dataset, { state, stopReason: stopReason ?? '' });
  b.node.removeAttribute('aria-busy');
  if (error && !b.errorShown) b.node.insertBefore(el('p', { class: 'turn-error', role: 'alert' }, error.message ?? error.code ?? 'error'), b.footer);
  const parts = [];
  if (STOP_LABELS[stopReason]) parts.push(el('strong', { class: 'stop-reason' }, STOP_LABELS[stopReason]));
  if (tokens) parts.push(`${num(tokens.total)} tokens (${num(tokens.input)} in, ${num(tokens.output)} out${tokens.cacheRead ? `, ${num(tokens.cacheRead)} cached` : ''})`);
  if (tokens || usage) parts.push(typeof cost?.total === 'number' ? usd(cost.total) : 'cost unknown');
  if (typeof usage?.cost === 'number') parts.push(`${usd(usage.cost)} in this conversation${usage.unpricedTurns ? ` (+${usage.unpricedTurns} unpriced turns)` : ''}`);
  if (context && typeof context.percent === 'number') parts.push(`${+context.percent.toFixed(2)}% of ${num(context.window)} context`);
  const model = usage ? `${usage.provider}/${usage.modelId}` : null;
  if (model) parts.push(model);
  b.footer.replaceChildren();
  parts.forEach((p, k) => b.footer.append(...(k ? [' · ', p] : [p])));
  if (!b.text.textContent && stopReason !== 'aborted' && !error) b.text.textContent = '(no text)';
}

function renderHistory(messages) {
  log.replaceChildren();
  for (const m of messages) {
    const md = m.metadata ?? {};
    if (m.role === 'user') userBubble(m.content);
    else if (m.role === 'assistant') {
      const b = assistantBubble();
      const thinking = (md.context ?? []).map((c) => c?.thinking?.text).filter(Boolean).join('\n');
      if (thinking) {
        b.thinking.hidden = false;
        b.thinkingText.textContent = thinking;
      }
      for (const t of md.toolCalls ?? []) endTool(b, t.toolCallId, t.toolName, t.isError);
      b.text.textContent = m.content ?? '';
      finishBubble(b, { stopReason: md.stopReason ?? (md.aborted ? 'aborted' : undefined), tokens: md.tokenUsage, cost: md.cost });
    } else if (m.content) note(m.content);
  }
  stickToBottom(true);
}

async function loadHistory() {
  if (!S.convId) return;
  try {
    const json = await api(`/api/conversations/${encodeURIComponent(S.convId)}/messages`);
    renderHistory(json.messages ?? []);
    for (const p of S.pending.values()) log.append(p.node); // not yet stored: keep them visible
  } catch (e) {
    // 404: not in D1 yet: a conversation that never got a message, or whose first one is still
    // held by the gateway (copied with its reply, or within D1_COPY_DELAY_MS).
    if (e.status !== 404) note(`Could not load the history: ${e.message}`, 'error');
  }
}

// ---------------------------------------------------------------------------
// Pickers

function renderPickers() {
  const s = S.session;
  const current = s?.provider ? `${s.provider}/${s.modelId}` : S.defaultModel;
  const sel = ui.modelSelect;
  if (!sel.options.length || sel.dataset.count !== String(S.models.length)) {
    const groups = new Map();
    for (const m of S.models) {
      if (!groups.has(m.provider)) groups.set(m.provider, el('optgroup', { label: m.provider }));
      groups.get(m.provider).append(el('option', { value: `${m.provider}/${m.id}` }, m.id));
    }
    sel.replaceChildren(el('option', { value: 'clear' }, 'Automatic routing'), ...groups.values());
    sel.dataset.count = String(S.models.length);
  }
  if (current && ![...sel.options].some((o) => o.value === current)) sel.append(el('option', { value: current }, current));
  sel.value = current || 'clear';
  sel.disabled = !S.connected;

  const model = S.models.find((m) => `${m.provider}/${m.id}` === current);
  const levels = s?.availableThinkingLevels ?? model?.thinkingLevels ?? ['off'];
  const th = ui.thinkingSelect;
  if (th.dataset.levels !== levels.join()) {
    th.replaceChildren(...levels.map((l) => el('option', { value: l }, l)));
    th.dataset.levels = levels.join();
  }
  th.value = s?.thinkingLevel ?? levels[0];
  th.disabled = !S.connected || levels.length < 2;
}

ui.modelSelect.onchange = () => execute('/model', ui.modelSelect.value);
// /thinking rather than set:thinking: set:thinking needs a session (a first message), as in the
// reference gateway, and the picker works before one too. session:info brings the level back.
ui.thinkingSelect.onchange = () => {
  if (send('command:execute', withConv({ command: '/thinking', args: ui.thinkingSelect.value }))) S.quietThinking++;
};

// ---------------------------------------------------------------------------
// Socket

const withConv = (data) => (S.convId ? { conversationId: S.convId, ...data } : data);

function send(event, data) {
  if (S.ws?.readyState !== WebSocket.OPEN) return false;
  S.ws.send(JSON.stringify({ event, data }));
  return true;
}

function execute(command, args) {
  if (!send('command:execute', withConv(args ? { command, args } : { command }))) note('Not connected: the command was not sent.', 'error');
}

function setControls() {
  ui.stopButton.disabled = !(S.turn && S.connected);
  renderPickers();
}

function closeSocket() {
  clearTimeout(S.retryTimer);
  S.gen++;
  if (S.ws) S.ws.close(1000, 'client switched');
  S.ws = null;
  S.connected = false;
}

function connect() {
  closeSocket();
  const u = new URL('/chat', location.href);
  u.protocol = u.protocol.replace('http', 'ws');
  u.searchParams.set('token', S.token);
  if (S.convId) u.searchParams.set('conversationId', S.convId);
  if (S.convId && S.lastSeq !== null) u.searchParams.set('lastSeq', String(S.lastSeq));
  const gen = S.gen;
  const ws = new WebSocket(u);
  S.ws = ws;
  let opened = false;
  setConn(S.retries ? 'Reconnecting…' : 'Connecting…');
  ws.onopen = () => {
    if (gen !== S.gen) return;
    opened = true;
    S.connected = true;
    // Keepalive: idle connections get dropped on the way; the runtime answers this exact
    // frame with {"event":"pong"} without waking the conversation.
    const keepalive = setInterval(() => (ws.readyState === 1 ? ws.send('{"event":"ping"}') : clearInterval(keepalive)), 30_000);
    setConn('Connected');
    setControls();
  };
  ws.onmessage = (e) => {
    if (gen !== S.gen) return;
    let frame;
    try {
      frame = JSON.parse(e.data);
    } catch {
      return;
    }
    onFrame(frame, gen);
  };
  ws.onclose = async () => {
    if (gen !== S.gen) return;
    S.ws = null;
    S.connected = false;
    if (S.convId && S.lastSeq === null) S.catchUp = true;
    setControls();
    // A browser hides the refused upgrade's status; ask the HTTP API whether the token is the reason.
    if (!opened) {
      try {
        await api('/api/me');
      } catch (e) {
        if (e.status === 401) {
          setConn('Token rejected: paste another one');
          return;
        }
      }
      if (gen !== S.gen) return;
    }
    const delay = Math.min(10_000, 500 * 2 ** S.retries) * (0.75 + Math.random() / 2);
    S.retries++;
    setConn(`Disconnected; reconnecting in ${Math.ceil(delay / 1000)} s`);
    S.retryTimer = setTimeout(connect, delay);
  };
}

function adopt(id) {
  if (!id || S.convId === id) return;
  S.convId = id;
  history.replaceState(null, '', `#c=${encodeURIComponent(id)}`);
}

/** Messages not yet acked are resent on a new socket with their clientMessageId, so the gateway stores each once. */
function resendPending(gen) {
  for (const [clientMessageId, p] of S.pending) {
    if (p.gen === gen) continue;
    if (send('message', withConv({ content: p.content, clientMessageId }))) p.gen = gen;
  }
}

const REJECTS_MESSAGE = new Set(['payload_too_large', 'invalid_payload', 'rate_limited', 'queue_full', 'conversation_mismatch', 'approval_pending']);

function onFrame(f, gen) {
  if (typeof f.seq === 'number') {
    if (S.lastSeq !== null && f.seq <= S.lastSeq) return; // already seen: a replay overlapping the live stream
    S.lastSeq = f.seq;
  }
  const d = f.data ?? {};
  if (d.conversationId && S.convId && d.conversationId !== S.convId && f.event !== 'command:result') return;
  switch (f.event) {
    case 'commands:manifest':
      S.manifest = d.manifest;
      S.retries = 0;
      // The gateway does not greet with session:info; /status fills the pickers and tells a fresh socket its conversation id.
      S.quietStatus++;
      execute('/status');
      // Replayed frames follow the manifest at once; resend only what their acks did not cover.
      setTimeout(() => gen === S.gen && resendPending(gen), 300);
      if (S.catchUp) {
        S.catchUp = false;
        loadHistory();
      }
      updateCompletion();
      break;
    case 'session:info':
      adopt(d.conversationId);
      S.session = d;
      renderStatus();
      renderPickers();
      break;
    case 'message:ack': {
      adopt(d.conversationId);
      const p = S.pending.get(d.clientMessageId);
      if (p) {
        p.node.classList.remove('pending');
        S.pending.delete(d.clientMessageId);
      }
      if (!S.conversations.some((c) => c.id === d.conversationId)) loadConversations();
      break;
    }
    case 'agent:start':
      if (S.turn) finishBubble(S.turn, {}); // a turn whose agent:end never came: close its bubble rather than merge two turns
      S.turn = null;
      current();
      break;
    case 'agent:text':
      appendText(current().text, d.text ?? '');
      break;
    case 'agent:thinking': {
      const b = current();
      b.thinking.hidden = false;
      appendText(b.thinkingText, d.text ?? '');
      break;
    }
    case 'agent:tool:start':
      toolItem(current(), d.toolCallId, d.toolName);
      break;
    case 'agent:tool:approval':
      askApproval(current(), d);
      break;
    case 'agent:tool:end':
      endTool(current(), d.toolCallId, d.toolName, d.isError);
      break;
    case 'agent:end':
      finishBubble(current(), d);
      S.turn = null;
      setControls();
      loadConversations();
      break;
    case 'command:result':
      if (d.conversationId && !S.convId) adopt(d.conversationId);
      if (d.command === 'thinking' && S.quietThinking > 0) {
        S.quietThinking--;
        if (!d.success) {
          note(d.message || '/thinking failed', 'error');
          renderPickers();
        }
        break;
      }
      if (d.command === 'status' && S.quietStatus > 0) {
        S.quietStatus--;
        if (!S.session && d.data?.provider) S.session = { ...d.data, conversationId: d.conversationId };
        renderStatus();
        renderPickers();
        break;
      }
      note(d.message || `/${d.command} ${d.success ? 'done' : 'failed'}`, d.success ? 'result' : 'error');
      if (d.command === 'new' && d.success && d.data?.conversationId) openConversation(d.data.conversationId, { fresh: true });
      break;
    case 'error':
      if (d.code === 'resume_gap') {
        S.turn = null;
        S.lastSeq = null;
        loadHistory().then(() => {
          note('Some events were missed while away; the history was reloaded.', 'info');
          setControls();
        });
        break;
      }
      if (S.turn) {
        S.turn.errorShown = true;
        S.turn.node.insertBefore(el('p', { class: 'turn-error', role: 'alert' }, d.error ?? d.code), S.turn.footer);
        break;
      }
      if (REJECTS_MESSAGE.has(d.code)) {
        const [id, p] = S.pending.entries().next().value ?? [];
        if (p) {
          p.node.classList.replace('pending', 'failed');
          S.pending.delete(id);
        }
      }
      note(`${d.error ?? 'Error'}${d.code ? ` (${d.code})` : ''}`, 'error');
      break;
    case 'system:reload':
      // The payload is whatever the admin posted: show a reason only if it is text.
      showBanner(`The gateway was updated${typeof d.reason === 'string' && d.reason ? ` (${d.reason})` : ''}; reloading…`);
      closeSocket();
      setTimeout(() => location.reload(), 1500);
      break;
  }
}

// ---------------------------------------------------------------------------
// Conversations

async function openConversation(id, { fresh = false } = {}) {
  closeSocket();
  S.convId = null;
  adopt(id);
  if (!id) history.replaceState(null, '', location.pathname + location.search);
  S.lastSeq = null;
  S.session = null;
  S.turn = null;
  S.pending.clear();
  S.retries = 0;
  S.catchUp = false;
  log.replaceChildren();
  renderConversations();
  renderStatus();
  setControls();
  if (id && !fresh) await loadHistory();
  connect();
  ui.messageInput.focus();
}

async function start() {
  S.token = ui.tokenInput.value.trim();
  if (!S.token) return setConn('Paste a token to connect');
  localStorage.setItem('chat.token', S.token);
  setConn('Checking the token…');
  try {
    const me = await api('/api/me');
    ui.tokenInput.title = `Signed in as ${me.userId}`;
  } catch (e) {
    return setConn(e.status === 401 ? 'Token rejected: paste another one' : `Cannot reach the gateway: ${e.message}`);
  }
  ui.messageInput.disabled = ui.sendButton.disabled = false;
  await Promise.all([loadModels(), loadConversations()]);
  const hashId = new URLSearchParams(location.hash.slice(1)).get('c');
  openConversation(hashId || null);
}

ui.tokenForm.onsubmit = (e) => {
  e.preventDefault();
  start();
};
ui.newButton.onclick = () => {
  setSidebar(false);
  openConversation(null);
};
ui.stopButton.onclick = () => send('abort', withConv({}));

/** The drawer of narrow screens: focus moves into it when it opens and back to its button when it closes. */
function setSidebar(open) {
  const was = ui.sidebar.classList.contains('open');
  ui.sidebar.classList.toggle('open', open);
  ui.sidebarToggle.setAttribute('aria-expanded', String(open));
  if (open && !was) ui.newButton.focus();
  else if (!open && was && ui.sidebar.contains(document.activeElement)) ui.sidebarToggle.focus();
}
ui.sidebarToggle.onclick = () => setSidebar(!ui.sidebar.classList.contains('open'));
ui.sidebarClose.onclick = () => setSidebar(false);

// ---------------------------------------------------------------------------
// Composer and slash-command completion

function submit() {
  const text = ui.messageInput.value;
  if (!text.trim() || !S.token) return;
  ui.messageInput.value = '';
  closeCompletion();
  if (text.startsWith('/')) {
    const [, name, args] = /^(\/\S*)\s*([\s\S]*)$/.exec(text.trim());
    note(text.trim(), 'command');
    execute(name, args.trim() || undefined);
    return;
  }
  const clientMessageId = uuid();
  const node = userBubble(text, true);
  const p = { content: text, node, gen: -1 };
  S.pending.set(clientMessageId, p);
  if (send('message', withConv({ content: text, clientMessageId }))) p.gen = S.gen;
}

ui.composer.onsubmit = (e) => {
  e.preventDefault();
  submit();
};

function completions(value) {
  const commands = S.manifest?.commands ?? [];
  const m = /^\/(\S*)(\s+)?(.*)$/.exec(value);
  if (!m || value.includes('\n')) return [];
  const [, name, space, rest] = m;
  const lower = name.toLowerCase();
  if (!space) {
    S.completion.exact = commands.some((c) => c.name === lower || c.aliases?.includes(lower));
    return commands
      .filter((c) => [c.name, ...(c.aliases ?? [])].some((a) => a.toLowerCase().startsWith(lower)))
      .map((c) => {
        const args = (c.args ?? []).map((a) => (a.required ? `<${a.name}>` : `[${a.name}]`)).join(' ');
        const values = (c.args ?? [])[0]?.values;
        const detail = [c.description, values?.length ? `values: ${values.slice(0, 6).join(', ')}${values.length > 6 ? '…' : ''}` : '', c.adminOnly ? 'admin only' : '']
          .filter(Boolean)
          .join(' — ');
        return { label: `/${c.name}${args ? ` ${args}` : ''}`, detail, insert: `/${c.name}${c.args?.length ? ' ' : ''}` };
      });
  }
  const cmd = commands.find((c) => c.name === lower || c.aliases?.includes(lower));
  const arg = cmd?.args?.[0];
  if (!arg?.values) return [];
  S.completion.exact = arg.values.includes(rest);
  return arg.values.filter((v) => v.startsWith(rest) && v !== rest).map((v) => ({ label: v, detail: arg.description, insert: `/${name} ${v}` }));
}

function updateCompletion() {
  const c = S.completion;
  const value = ui.messageInput.value;
  c.exact = false;
  c.items = c.dismissed === value ? [] : completions(value);
  c.index = Math.min(c.index, Math.max(0, c.items.length - 1));
  const open = c.items.length > 0;
  ui.completion.hidden = !open;
  ui.completion.replaceChildren(
    ...c.items.map((item, k) => {
      const li = el('li', { id: `cmd-${k}`, role: 'option', 'aria-selected': String(k === c.index) });
      li.append(el('span', { class: 'cmd' }, item.label), el('span', { class: 'desc' }, item.detail ?? ''));
      li.onmousedown = (e) => {
        e.preventDefault(); // keep focus in the input
        c.index = k;
        accept();
      };
      return li;
    }),
  );
  if (open) {
    ui.messageInput.setAttribute('aria-activedescendant', `cmd-${c.index}`);
    $(`cmd-${c.index}`)?.scrollIntoView({ block: 'nearest' });
  } else ui.messageInput.removeAttribute('aria-activedescendant');
}

function closeCompletion() {
  S.completion.dismissed = ui.messageInput.value;
  S.completion.index = 0;
  updateCompletion();
}

function accept() {
  const item = S.completion.items[S.completion.index];
  if (!item) return false;
  ui.messageInput.value = item.insert;
  S.completion.index = 0;
  S.completion.moved = false;
  S.completion.dismissed = null;
  updateCompletion();
  return true;
}

ui.messageInput.oninput = () => {
  S.completion.dismissed = null;
  S.completion.index = 0;
  S.completion.moved = false;
  updateCompletion();
};

ui.messageInput.onkeydown = (e) => {
  if (e.isComposing) return;
  const c = S.completion;
  const open = c.items.length > 0;
  if (open && (e.key === 'ArrowDown' || e.key === 'ArrowUp')) {
    e.preventDefault();
    c.index = (c.index + (e.key === 'ArrowDown' ? 1 : -1) + c.items.length) % c.items.length;
    c.moved = true;
    updateCompletion();
  } else if (open && (e.key === 'Tab' || (e.key === 'Enter' && !e.shiftKey && (c.moved || !c.exact)))) {
    // Enter on a line that is already a whole command ("/model gpt-4o") sends it, unless the reader picked another entry.
    e.preventDefault();
    accept();
  } else if (open && e.key === 'Escape') {
    e.preventDefault();
    closeCompletion();
  } else if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault();
    submit();
  }
};

document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && ui.sidebar.classList.contains('open')) setSidebar(false);
});

// ---------------------------------------------------------------------------
// Start: a token from `#token=...` (what the local run prints) wins over the stored one and is moved out of the URL.

const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get('token')) {
  localStorage.setItem('chat.token', fragment.get('token'));
  fragment.delete('token');
  history.replaceState(null, '', location.pathname + location.search + (String(fragment) ? `#${fragment}` : ''));
}
ui.tokenInput.value = localStorage.getItem('chat.token') ?? '';
if (ui.tokenInput.value) start();
else setConn('Paste a token to connect');

// A handle for the browser test to drop the socket and watch the resume.
window.chat = { state: S, drop: () => S.ws?.close(4000, 'test drop') };
