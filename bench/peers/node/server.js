'use strict';
// Benchmark peer: the naive Node design that rawrt is compared against.
//
// node:http for the HTTP routes, the `ws` package attached to the same
// server for /ws. Deliberately written the way a Node developer usually
// writes it: one JSON.stringify per publish, then ws.send(str) per subscriber
// in a plain loop; res.write per SSE client; a long-poll that hands each
// message to ONE parked waiter (or queues it when nobody is parked).
//
// Usage: node server.js [--host 127.0.0.1] [--port 8080]

const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');

const POLL_TIMEOUT_MS = 30000;
const SSE_HEARTBEAT_MS = 15000;

function parseArgs(argv) {
  const opts = { host: '127.0.0.1', port: 8080 };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--host') opts.host = argv[++i];
    else if (argv[i] === '--port') opts.port = Number(argv[++i]);
  }
  return opts;
}

// ---- channel state -------------------------------------------------------

const wsSubs = new Map();     // channel -> Set<WebSocket>
const sseSubs = new Map();    // channel -> Set<ServerResponse>
const pollWaiters = new Map(); // channel -> Array<ServerResponse>
const pollQueues = new Map();  // channel -> Array<data> (nobody was parked)
const counters = new Map();   // channel -> last message id (number)

function setFor(map, channel) {
  let set = map.get(channel);
  if (!set) {
    set = new Set();
    map.set(channel, set);
  }
  return set;
}

function nextId(channel) {
  const id = (counters.get(channel) || 0) + 1;
  counters.set(channel, id);
  return String(id);
}

function lastId(channel) {
  return String(counters.get(channel) || 0);
}

// ---- publishing ----------------------------------------------------------

// The reference split publishing by route (broadcast -> WS, publish -> poll,
// sse/publish -> SSE). The bench needs every publish route to reach every
// transport, so all three routes (and WS "publish" frames) land here.
function publish(channel, data) {
  const id = nextId(channel);
  const envelope = JSON.stringify({
    type: 'message', channel, data, timestamp: Date.now(), id,
  });
  const subs = wsSubs.get(channel);
  if (subs) {
    for (const ws of subs) {
      if (ws.readyState === WebSocket.OPEN) ws.send(envelope);
    }
  }
  publishSse(channel, id, data);
  publishPoll(channel, id, data);
  return id;
}

function publishSse(channel, id, data) {
  const clients = sseSubs.get(channel);
  if (!clients) return;
  const event = `id: ${id}\ndata: ${JSON.stringify(data)}\n\n`;
  for (const res of clients) res.write(event);
}

// Reference long-poll: the message goes to the first parked waiter only;
// with nobody parked it is queued for whoever polls next.
function publishPoll(channel, id, data) {
  const waiters = pollWaiters.get(channel);
  if (waiters && waiters.length > 0) {
    const res = waiters.shift();
    sendJson(res, 200, { messages: [data], cursor: id });
    return;
  }
  let queue = pollQueues.get(channel);
  if (!queue) {
    queue = [];
    pollQueues.set(channel, queue);
  }
  queue.push(data);
}

// ---- HTTP helpers --------------------------------------------------------

function sendJson(res, status, obj) {
  if (res.writableEnded) return;
  const body = JSON.stringify(obj);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

function readBody(req, callback) {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => callback(Buffer.concat(chunks).toString('utf8')));
}

function notFound(res) {
  sendJson(res, 404, { error: 'Not Found' });
}

// ---- routes --------------------------------------------------------------

function handlePublish(req, res, channel, ackKey) {
  readBody(req, (text) => {
    let data;
    try {
      data = JSON.parse(text);
    } catch (err) {
      sendJson(res, 400, { error: 'Invalid JSON' });
      return;
    }
    const id = publish(channel, data);
    sendJson(res, 200, { [ackKey]: true, id });
  });
}

function handleSse(req, res, channel) {
  res.writeHead(200, {
    'Content-Type': 'text/event-stream',
    'Cache-Control': 'no-cache',
    Connection: 'keep-alive',
  });
  res.write('data: {"type":"connected"}\n\n');
  const clients = setFor(sseSubs, channel);
  clients.add(res);
  const heartbeat = setInterval(() => res.write(': hb\n\n'), SSE_HEARTBEAT_MS);
  req.on('close', () => {
    clearInterval(heartbeat);
    clients.delete(res);
  });
}

function handlePoll(req, res, channel) {
  // Drain the request body (POST) so the connection can be reused.
  req.resume();
  const queue = pollQueues.get(channel);
  if (queue && queue.length > 0) {
    pollQueues.delete(channel);
    sendJson(res, 200, { messages: queue, cursor: lastId(channel) });
    return;
  }
  let waiters = pollWaiters.get(channel);
  if (!waiters) {
    waiters = [];
    pollWaiters.set(channel, waiters);
  }
  waiters.push(res);
  const forget = () => {
    const i = waiters.indexOf(res);
    if (i !== -1) waiters.splice(i, 1);
  };
  const timer = setTimeout(() => {
    forget();
    sendJson(res, 200, { messages: [], cursor: lastId(channel) });
  }, POLL_TIMEOUT_MS);
  // A client that went away must not swallow the next message.
  res.on('close', () => {
    clearTimeout(timer);
    forget();
  });
}

const PUBLISH_ROUTES = [
  ['/api/broadcast/', 'sent'],
  ['/api/publish/', 'published'],
  ['/api/sse/publish/', 'published'],
];

function route(req, res) {
  const path = req.url.split('?')[0];
  if (req.method === 'POST') {
    for (const [prefix, ackKey] of PUBLISH_ROUTES) {
      if (path.startsWith(prefix) && path.length > prefix.length) {
        handlePublish(req, res, decodeURIComponent(path.slice(prefix.length)), ackKey);
        return;
      }
    }
  }
  if (req.method === 'GET' && path.startsWith('/api/sse/subscribe/')) {
    handleSse(req, res, decodeURIComponent(path.slice('/api/sse/subscribe/'.length)));
    return;
  }
  if ((req.method === 'GET' || req.method === 'POST') && path.startsWith('/api/poll/')) {
    handlePoll(req, res, decodeURIComponent(path.slice('/api/poll/'.length)));
    return;
  }
  req.resume();
  notFound(res);
}

// ---- WebSocket -----------------------------------------------------------

function onWsMessage(ws, channels, raw) {
  let msg;
  try {
    msg = JSON.parse(raw.toString());
  } catch (err) {
    ws.send(JSON.stringify({ type: 'error', data: 'Invalid message format' }));
    return;
  }
  if (msg === null || typeof msg !== 'object') msg = {};
  switch (msg.type) {
    case 'subscribe':
      setFor(wsSubs, msg.channel).add(ws);
      channels.add(msg.channel);
      ws.send(JSON.stringify({ type: 'subscribed', channel: msg.channel, id: lastId(msg.channel) }));
      break;
    case 'unsubscribe': {
      const subs = wsSubs.get(msg.channel);
      if (subs) subs.delete(ws);
      channels.delete(msg.channel);
      break;
    }
    case 'publish':
      publish(msg.channel, msg.data);
      break;
    case 'ping':
      ws.send(JSON.stringify({ type: 'pong', timestamp: Date.now() }));
      break;
    default:
      ws.send(JSON.stringify({ type: 'error', data: 'Invalid message format' }));
  }
}

function onWsConnection(ws) {
  const channels = new Set();
  ws.on('message', (raw) => onWsMessage(ws, channels, raw));
  ws.on('close', () => {
    for (const channel of channels) {
      const subs = wsSubs.get(channel);
      if (subs) subs.delete(ws);
    }
  });
  ws.on('error', () => {});
}

// ---- main ----------------------------------------------------------------

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const server = http.createServer(route);
  const wss = new WebSocketServer({ server, path: '/ws' });
  wss.on('connection', onWsConnection);

  server.listen(opts.port, opts.host, () => {
    const { address, port } = server.address();
    process.stdout.write(`listening on http://${address}:${port}\n`);
  });

  const shutdown = () => {
    for (const ws of wss.clients) ws.terminate();
    server.closeAllConnections();
    server.close(() => process.exit(0));
    // Parked responses or stubborn sockets must not hold the exit hostage.
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

main();
