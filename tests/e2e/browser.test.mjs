// Browser end-to-end test of the chat page (public/): Debian's Chromium driven by playwright-core against wrangler dev and the fake upstream.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { startFakeUpstream } from '../support/fake-upstream.mjs';
import { startToolServer } from '../support/tool-server.mjs';
import { ROOT, eventually, startGateway, uniq } from '../support/harness.mjs';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'tests', 'artifacts');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Installs Debian's Chromium when it is missing and we may (root, apt-get present); returns why the test must skip, or null. */
function chromiumMissing() {
  if (existsSync(CHROMIUM)) return null;
  if (process.getuid?.() !== 0) return `${CHROMIUM} is missing and this is not root, so it cannot be installed (apt-get install -y chromium)`;
  const apt = (args) => spawnSync('apt-get', args, { stdio: 'ignore', timeout: 600_000, env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  process.stderr.write(`[browser] ${CHROMIUM} is missing; trying apt-get install -y chromium\n`);
  // Without a package index the install fails; refresh it once and retry.
  if (apt(['install', '-y', 'chromium']).status !== 0) {
    apt(['update']);
    apt(['install', '-y', 'chromium']);
  }
  return existsSync(CHROMIUM) ? null : `${CHROMIUM} is missing and apt-get install -y chromium did not provide it`;
}

const skipReason = chromiumMissing();
let up;
let tools;
let gw;
let browser;
let page;
let token;
const pageErrors = [];
const socketUrls = [];

before(async () => {
  if (skipReason) {
    process.stderr.write(`[browser] skipping: ${skipReason}\n`);
    return;
  }
  const { chromium } = await import('playwright-core');
  up = await startFakeUpstream();
  tools = await startToolServer();
  gw = await startGateway({ upstream: up });
  token = await gw.mintToken('browser-user');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  page.setDefaultTimeout(15_000);
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  // Refused connections while the gateway restarts are logged by Chromium itself; they are expected, not page errors.
  page.on('console', (m) => m.type() === 'error' && !/ERR_CONNECTION_REFUSED|^WebSocket connection to .* failed/.test(m.text()) && pageErrors.push(m.text()));
  page.on('websocket', (ws) => socketUrls.push(ws.url()));
});

after(async () => {
  await browser?.close();
  await gw?.stop();
  await up?.close();
  await tools?.close();
});

const tid = (id) => `[data-testid="${id}"]`;
const bubbles = () => page.locator(tid('assistant-message'));

/** Sends `content` as a user would (typing, then Enter or the Send button) and returns the new assistant bubble. */
async function sendMessage(content, { via = 'enter' } = {}) {
  const count = await bubbles().count();
  await page.fill(tid('message-input'), content);
  if (via === 'enter') await page.press(tid('message-input'), 'Enter');
  else await page.click(tid('send-button'));
  await eventually(async () => (await bubbles().count()) > count, { timeout: 15_000, what: 'a new assistant bubble' });
  return bubbles().nth(count);
}

/** Waits for a bubble's turn to end (agent:end sets its state). */
const finished = async (bubble) => page.waitForFunction((node) => node.dataset.state !== 'streaming', await bubble.elementHandle(), { timeout: 30_000 });

/** The single fake-upstream request whose last user text is `content`. */
function requestFor(content) {
  const found = up.requests.filter((r) => r.lastUserText === content);
  assert.equal(found.length, 1, `one upstream request for ${JSON.stringify(content)}, saw ${found.length}`);
  return found[0];
}

const connected = () => page.waitForSelector(`${tid('status-line')}[data-connected="true"]`);

test('a token in the URL fragment connects; the controls are labelled', async (t) => {
  if (skipReason) return t.skip(skipReason);
  await page.goto(`${gw.url}/#token=${encodeURIComponent(token)}`);
  await connected();
  assert.equal(await page.evaluate(() => localStorage.getItem('chat.token')), token, 'the token is kept in localStorage');
  assert.ok(!page.url().includes('token='), `the token is moved out of the URL: ${page.url()}`);
  assert.equal(await page.inputValue(tid('token-input')), token);
  // Every control is reachable by its label, and the log announces politely.
  for (const [label, id] of [['Token', 'token-input'], ['Message', 'message-input'], ['Model', 'model-select'], ['Thinking', 'thinking-select']]) {
    assert.equal(await page.getByLabel(label, { exact: true }).getAttribute('data-testid'), id, `label ${label}`);
  }
  assert.equal(await page.getAttribute(tid('message-log'), 'aria-live'), 'polite');
});

test('a message streams in and ends with exactly the text the upstream sent, then a usage footer', async (t) => {
  if (skipReason) return t.skip(skipReason);
  const content = `hello ${uniq()} [[slow delay=60 deltas=12]]`;
  const bubble = await sendMessage(content);
  // Seen mid-stream: some text, but not all of it yet.
  const partial = await eventually(async () => {
    const { state, text } = await bubble.evaluate((n) => ({ state: n.dataset.state, text: n.querySelector('[data-testid="assistant-text"]').textContent }));
    return state === 'streaming' && text.length > 0 ? text : null;
  }, { timeout: 15_000, interval: 20, what: 'partial streamed text' });
  await finished(bubble);
  const rec = requestFor(content);
  const text = await bubble.locator(tid('assistant-text')).textContent();
  assert.equal(text, rec.sent.text, 'the bubble holds the streamed reply, once, in order');
  assert.ok(text.startsWith(partial) && partial.length < text.length, `streamed in pieces: ${JSON.stringify(partial)} then ${JSON.stringify(text)}`);
  assert.equal(await bubble.getAttribute('data-stop-reason'), 'stop');
  const footer = await bubble.locator(tid('turn-footer')).textContent();
  assert.match(footer, /\d+ tokens \(\d+ in, \d+ out/, footer);
  assert.match(footer, /\$\d|cost unknown/, footer);
  assert.match(footer, /% of [\d,]+ context/, footer);
  assert.equal(await page.isDisabled(tid('stop-button')), true, 'Stop is off between turns');
  // The user bubble was acked (no longer pending) and the conversation is listed in the sidebar.
  await page.waitForSelector('[data-testid="user-message"]:not(.pending)');
  await page.waitForSelector(`${tid('conversation-list')} button[aria-current="true"]`);
});

test('Stop aborts a slow turn mid-stream and the bubble is marked stopped', async (t) => {
  if (skipReason) return t.skip(skipReason);
  const content = `stop me ${uniq()} [[slow delay=200 deltas=20]]`;
  const bubble = await sendMessage(content, { via: 'button' });
  await eventually(async () => ((await bubble.locator(tid('assistant-text')).textContent()) ?? '').length > 0, { what: 'first delta' });
  assert.equal(await page.isEnabled(tid('stop-button')), true, 'Stop is on while the turn runs');
  await page.click(tid('stop-button'));
  await finished(bubble);
  assert.equal(await bubble.getAttribute('data-stop-reason'), 'aborted');
  assert.equal(await bubble.getAttribute('data-state'), 'stopped');
  assert.match(await bubble.locator(tid('turn-footer')).textContent(), /Stopped/);
  const text = await bubble.locator(tid('assistant-text')).textContent();
  const rec = requestFor(content);
  assert.ok(rec.sent.text.startsWith(text), `the shown text is a prefix of what was sent: ${JSON.stringify(text)}`);
  assert.ok(!rec.sent.complete, 'the upstream stream did not run to its end');
  await up.waitForClientClose((r) => r === rec);
  assert.equal(await page.isDisabled(tid('stop-button')), true);
});

test('the model picker switches the model and session:info shows on the page; the thinking picker follows it', async (t) => {
  if (skipReason) return t.skip(skipReason);
  await page.selectOption(tid('model-select'), 'openai/gpt-4o');
  await page.waitForSelector(`${tid('status-line')}[data-model="openai/gpt-4o"]`);
  assert.match(await page.textContent(tid('status-line')), /openai\/gpt-4o · thinking off/);
  await page.waitForSelector(`${tid('note-result')}:text("openai/gpt-4o")`);

  await page.selectOption(tid('model-select'), 'anthropic/claude-sonnet-4-5');
  await page.waitForSelector(`${tid('status-line')}[data-model="anthropic/claude-sonnet-4-5"]`);
  await page.waitForSelector(`${tid('thinking-select')}:not([disabled])`);
  const levels = await page.$$eval(`${tid('thinking-select')} option`, (os) => os.map((o) => o.value));
  assert.deepEqual(levels, ['off', 'minimal', 'low', 'medium', 'high']);
  await page.selectOption(tid('thinking-select'), 'low');
  await eventually(async () => /thinking low/.test(await page.textContent(tid('status-line'))), { what: 'thinking low in the status line (from session:info)' });

  // The next turn goes to the chosen provider and model.
  const content = `after switch ${uniq()}`;
  const bubble = await sendMessage(content);
  await finished(bubble);
  const rec = requestFor(content);
  assert.equal(rec.provider, 'anthropic');
  assert.equal(rec.body.model, 'claude-sonnet-4-5');
  assert.equal(await bubble.locator(tid('assistant-text')).textContent(), rec.sent.text);
  assert.match(await bubble.locator(tid('turn-footer')).textContent(), /anthropic\/claude-sonnet-4-5/);
});

test('slash commands complete from the manifest and run with command:execute', async (t) => {
  if (skipReason) return t.skip(skipReason);
  const input = page.locator(tid('message-input'));
  await input.fill('');
  await input.pressSequentially('/mo');
  await page.waitForSelector('#completion:not([hidden]) [role="option"]:has-text("/model")');
  assert.equal(await input.getAttribute('aria-activedescendant'), 'cmd-0', 'the highlighted option is announced');
  await input.press('Tab');
  assert.equal(await input.inputValue(), '/model ');
  await input.pressSequentially('gpt-4o-m');
  await page.waitForSelector('#completion [role="option"]:has-text("gpt-4o-mini")');
  await input.press('Enter'); // picks the highlighted value
  assert.equal(await input.inputValue(), '/model gpt-4o-mini');
  await input.press('Enter'); // a whole command: sends it
  await page.waitForSelector(`${tid('status-line')}[data-model="openai/gpt-4o-mini"]`);
  assert.equal(await input.inputValue(), '');

  // Arrow keys move through the list; Escape closes it.
  await input.pressSequentially('/');
  const options = page.locator('#completion [role="option"]');
  assert.ok((await options.count()) >= 3, 'every command is offered for a bare /');
  await input.press('ArrowDown');
  assert.equal(await options.nth(1).getAttribute('aria-selected'), 'true');
  await input.press('Escape');
  assert.equal(await page.isHidden('#completion'), true);
  await input.fill('/help');
  await input.press('Escape');
  await input.press('Enter');
  await page.waitForSelector(`${tid('note-result')}:text("Available commands")`);

  // Shift+Enter is a new line, not a send.
  const sent = await page.locator(tid('user-message')).count();
  await input.pressSequentially('line one');
  await input.press('Shift+Enter');
  await input.pressSequentially('line two');
  assert.equal(await input.inputValue(), 'line one\nline two');
  assert.equal(await page.locator(tid('user-message')).count(), sent);
  await input.fill('');
});

test('thinking streams into a collapsed <details>; tool calls show their start and their error', async (t) => {
  if (skipReason) return t.skip(skipReason);
  const content = `think ${uniq()} [[thinking]] [[tool name=nope]]`;
  const bubble = await sendMessage(content);
  await finished(bubble);
  // A tool turn makes two upstream requests with this user message; the first carries no tool result.
  const first = up.requests.find((r) => r.lastUserText === content && r.toolResults.length === 0);
  assert.ok(first, `a first round for ${JSON.stringify(content)}`);
  const callId = first.sent.toolCalls[0]?.id;
  assert.ok(callId, 'the first round asked for a tool');
  // The round after the tool call is the one that answers the tool result.
  const follow = up.requests.find((r) => r.toolResults.some((x) => x.id === callId));
  assert.ok(follow, 'a second round with the tool result');

  const thinking = bubble.locator('details.thinking');
  assert.equal(await thinking.isVisible(), true);
  assert.equal(await thinking.getAttribute('open'), null, 'collapsed by default');
  assert.equal(await thinking.locator('.thinking-text').textContent(), first.sent.thinking + follow.sent.thinking);
  await thinking.locator('summary').click();
  assert.equal(await thinking.getAttribute('open'), '', 'opens on demand');
  const tool = bubble.locator('.tools li');
  assert.equal(await tool.count(), 1);
  assert.equal(await tool.getAttribute('data-tool-call-id'), callId);
  assert.equal(await tool.getAttribute('data-state'), 'error', 'an unknown tool ends with isError');
  assert.match(await tool.textContent(), /nope.*failed/);
  assert.equal(await bubble.locator(tid('assistant-text')).textContent(), follow.sent.text);
  // Not the page's concern, but seen only here: the tool round must still carry the conversation.
  assert.equal(follow.lastUserText, content, `the request after the tool call carries the user message; it sent ${JSON.stringify(follow.body.messages)}`);
});

test('a tool that needs approval shows its name and arguments with Approve and Deny; each answer ends the turn', async (t) => {
  if (skipReason) return t.skip(skipReason);
  const agent = uniq('careful');
  const created = await gw.http('POST', '/admin/agents', {
    token: gw.adminToken,
    body: { name: agent, tools: [{ name: 'echo', description: 'Echoes.', parameters: { type: 'object', properties: { text: { type: 'string' } } }, url: `${tools.url}/tools/echo`, requiresApproval: true }] },
  });
  assert.equal(created.status, 201, created.text);
  await page.fill(tid('message-input'), `/agent ${agent}`);
  await page.press(tid('message-input'), 'Enter');
  await page.waitForSelector(`${tid('note-result')}:has-text("${agent}")`);

  for (const [button, state] of [['approve-tool', 'done'], ['deny-tool', 'error']]) {
    const marker = uniq(button);
    const bubble = await sendMessage(`run it ${marker} [[tool name=echo args={"text":"${marker}"}]]`);
    const panel = bubble.locator(tid('tool-approval'));
    await panel.waitFor();
    assert.match(await panel.textContent(), new RegExp(`echo[\\s\\S]*"text": "${marker}"`));
    assert.equal(await bubble.locator('.tools li').getAttribute('data-state'), 'waiting');
    if (button === 'deny-tool') await panel.locator('input').fill('not today');
    await panel.locator(tid(button)).click();
    await finished(bubble);
    assert.equal(await bubble.locator(tid('tool-approval')).count(), 0, 'the question goes once answered');
    assert.equal(await bubble.locator('.tools li').getAttribute('data-state'), state);
    const ran = tools.calls.filter((c) => c.rawBody.includes(marker)).length;
    assert.equal(ran, button === 'approve-tool' ? 1 : 0);
    if (button === 'deny-tool') assert.match(await bubble.locator(tid('assistant-text')).textContent(), /their reason: not today/);
  }
  await page.fill(tid('message-input'), '/agent clear');
  await page.press(tid('message-input'), 'Enter');
});

test('a dropped socket resumes with lastSeq: the reply is complete with nothing repeated', async (t) => {
  if (skipReason) return t.skip(skipReason);
  const before = socketUrls.length;
  const content = `resume ${uniq()} [[slow delay=80 deltas=25]]`;
  const bubble = await sendMessage(content);
  await eventually(async () => ((await bubble.locator(tid('assistant-text')).textContent()) ?? '').length > 2, { what: 'some deltas' });
  await page.evaluate(() => window.chat.drop());
  await finished(bubble);
  const rec = requestFor(content);
  assert.equal(await bubble.locator(tid('assistant-text')).textContent(), rec.sent.text);
  const resumed = socketUrls.slice(before).find((u) => /[?&]lastSeq=\d+/.test(u));
  assert.ok(resumed, `a reconnect carried lastSeq: ${socketUrls.slice(before).join(', ')}`);
  assert.match(resumed, /conversationId=/);
  await connected();

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, 'chat.png'), fullPage: true });
});

test('reloading reopens the conversation from the HTTP history; New starts an empty one', async (t) => {
  if (skipReason) return t.skip(skipReason);
  const shown = await page.locator(tid('assistant-text')).allTextContents();
  const id = new URLSearchParams(new URL(page.url()).hash.slice(1)).get('c');
  assert.ok(id, `the conversation id is in the URL: ${page.url()}`);
  await page.reload();
  await connected();
  await eventually(async () => (await bubbles().count()) === shown.length, { what: `${shown.length} assistant bubbles from history` });
  assert.deepEqual(await page.locator(tid('assistant-text')).allTextContents(), shown);
  assert.equal(await bubbles().nth(1).getAttribute('data-stop-reason'), 'aborted', 'the stopped turn is still marked stopped');
  await page.waitForSelector(`${tid('conversation-list')} button[data-id="${id}"][aria-current="true"]`);

  await page.click(tid('new-button'));
  await connected();
  assert.equal(await bubbles().count(), 0);
  const content = `fresh ${uniq()}`;
  const bubble = await sendMessage(content);
  await finished(bubble);
  const newId = new URLSearchParams(new URL(page.url()).hash.slice(1)).get('c');
  assert.ok(newId && newId !== id, `a new conversation: ${newId}`);
  // Newest first in the sidebar.
  await eventually(async () => (await page.locator(`${tid('conversation-list')} button`).first().getAttribute('data-id')) === newId, { what: 'the new conversation on top' });
  await page.click(`${tid('conversation-list')} button[data-id="${id}"]`);
  await eventually(async () => (await bubbles().count()) === shown.length, { what: 'the old conversation again' });
});

/** Holds the page's next sockets closed (Playwright answers them itself) until the returned release() is called. */
async function holdSockets() {
  let held = true;
  await page.routeWebSocket(/\/chat\?/, (ws) => (held ? ws.close() : ws.connectToServer()));
  return () => {
    held = false;
  };
}

test('events missed while away are replayed on resume; when they are gone (resume_gap) the history is reloaded', async (t) => {
  if (skipReason) return t.skip(skipReason);
  await finished(await sendMessage(`seq point ${uniq()}`)); // the page now holds a seq to resume from
  const id = new URLSearchParams(new URL(page.url()).hash.slice(1)).get('c');
  const other = async (content) => {
    const tab = await gw.connect({ token, conversationId: id });
    const turn = await tab.turn(content);
    await tab.close();
    return turn.text;
  };

  // 1. Another tab runs a turn while this page is away: on return the replay brings it, once.
  const release1 = await holdSockets();
  await page.evaluate(() => window.chat.drop());
  const missed = `while away ${uniq()}`;
  const missedReply = await other(missed);
  const count = await bubbles().count();
  release1();
  await eventually(async () => (await bubbles().count()) === count + 1, { timeout: 20_000, what: 'the missed turn replayed' });
  const replayed = bubbles().nth(count);
  await finished(replayed);
  assert.equal(await replayed.locator(tid('assistant-text')).textContent(), missedReply);
  await sleep(500);
  assert.equal(await bubbles().count(), count + 1, 'replayed once');

  // 2. The same, but the gateway restarts meanwhile and the held events are gone: resume_gap, then the history over HTTP.
  const release2 = await holdSockets();
  await page.evaluate(() => window.chat.drop());
  const lost = `lost ${uniq()}`;
  const lostReply = await other(lost);
  await gw.restart();
  release2();
  await page.waitForSelector(`${tid('note-info')}:text("history was reloaded")`, { timeout: 30_000 });
  await page.waitForSelector(`${tid('user-message')}:text("${lost}")`);
  assert.equal(await bubbles().last().locator(tid('assistant-text')).textContent(), lostReply);
  await connected();
  // The stream goes on after the gap: new frames are not dropped as already seen.
  const content = `after the gap ${uniq()}`;
  const bubble = await sendMessage(content);
  await finished(bubble);
  assert.equal(await bubble.locator(tid('assistant-text')).textContent(), requestFor(content).sent.text);

  // 3. A message written while disconnected waits (pending) and goes out once on the next socket, with its clientMessageId.
  const release3 = await holdSockets();
  await page.evaluate(() => window.chat.drop());
  const queued = `queued ${uniq()}`;
  await page.fill(tid('message-input'), queued);
  await page.press(tid('message-input'), 'Enter');
  await page.waitForSelector(`${tid('user-message')}.pending:text("${queued}")`);
  release3();
  await page.waitForSelector(`${tid('user-message')}:not(.pending):text("${queued}")`, { timeout: 20_000 });
  await finished(bubbles().last());
  const rec = requestFor(queued);
  assert.equal(await bubbles().last().locator(tid('assistant-text')).textContent(), rec.sent.text);
  const stored = await gw.http('GET', `/api/conversations/${id}/messages`, { token });
  const users = stored.json.messages.filter((m) => m.role === 'user' && m.content === queued);
  assert.equal(users.length, 1, 'stored once');
  assert.match(users[0].metadata?.clientMessageId ?? '', /^[0-9a-f-]{36}$/, 'sent with a clientMessageId');
  await page.unrouteAll();
});

test('system:reload shows a banner and reloads the page, which reconnects', async (t) => {
  if (skipReason) return t.skip(skipReason);
  const navigated = page.waitForEvent('load', { timeout: 15_000 });
  const res = await gw.http('POST', '/admin/reload', { token: gw.adminToken, body: { reason: 'browser test' } });
  assert.equal(res.status, 200, res.text);
  await page.waitForSelector('#banner:not([hidden]):text("browser test")');
  await navigated;
  await connected();
});

test('on a phone-sized screen the sidebar folds into a drawer', async (t) => {
  if (skipReason) return t.skip(skipReason);
  await page.setViewportSize({ width: 390, height: 780 });
  await sleep(300);
  assert.equal(await page.isVisible(tid('new-button')), false, 'the list is folded away');
  await page.click('#sidebar-toggle');
  await page.waitForSelector(`${tid('new-button')}:visible`);
  await page.keyboard.press('Escape');
  await eventually(async () => !(await page.isVisible(tid('new-button'))), { what: 'the drawer closed by Escape' });
  await page.screenshot({ path: path.join(ARTIFACTS, 'chat-phone.png') });
  await page.setViewportSize({ width: 1100, height: 760 });
  assert.deepEqual(pageErrors, [], 'no script errors on the page');
});
