// The runtime floor: the least a gateway must do per turn, in plain JavaScript. A WebSocket message into the
// conversation's Durable Object (hibernation API), the model call, one storage write, the ack / session / start
// frames, every delta to every socket, the reply stored at the end. No auth, planning, D1 or replay.
import { DurableObject } from 'cloudflare:workers';

export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    if (url.pathname === '/health') return new Response('ok');
    return env.ROOM.get(env.ROOM.idFromName(url.searchParams.get('conversationId') ?? '')).fetch(req);
  },
};

export class Room extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.seq = 0;
    ctx.storage.sql.exec('CREATE TABLE IF NOT EXISTS messages (n INTEGER PRIMARY KEY, role TEXT, content TEXT)');
  }

  async fetch() {
    const pair = new WebSocketPair();
    this.ctx.acceptWebSocket(pair[1]);
    pair[1].send(JSON.stringify({ event: 'commands:manifest', data: {} }));
    return new Response(null, { status: 101, webSocket: pair[0] });
  }

  broadcast(event, data) {
    const frame = JSON.stringify({ event, seq: ++this.seq, data });
    for (const ws of this.ctx.getWebSockets()) ws.send(frame);
  }

  async webSocketMessage(ws, message) {
    const { data } = JSON.parse(message);
    const conversationId = data.conversationId;
    const call = fetch(`${this.env.UPSTREAM}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer test-openai-key' },
      body: JSON.stringify({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: data.content }] }),
    });
    this.ctx.storage.sql.exec('INSERT INTO messages (role, content) VALUES (?, ?)', 'user', data.content);
    this.broadcast('session:info', { conversationId, provider: 'openai', modelId: 'gpt-4o-mini' });
    this.broadcast('message:ack', { conversationId });
    this.broadcast('agent:start', { conversationId });
    const reader = (await call).body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let reply = '';
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buf += value;
      let text = '';
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const event = buf.slice(0, end);
        buf = buf.slice(end + 2);
        if (event.startsWith('data: {')) text += JSON.parse(event.slice(6)).choices?.[0]?.delta?.content ?? '';
      }
      if (text) {
        reply += text;
        this.broadcast('agent:text', { conversationId, text });
      }
    }
    this.ctx.storage.sql.exec('INSERT INTO messages (role, content) VALUES (?, ?)', 'assistant', reply);
    this.broadcast('agent:end', { conversationId });
  }
}
