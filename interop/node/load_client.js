#!/usr/bin/env node
// usage: node load_client.js '{"role": "publisher"|"consumer", "name": ..., "out": FILE, "urls": [...],
//   "queues": [...], "queueType": "quorum", "window": 50, "max": null, "prefetch": 50, "idle": 3,
//   "drainTimeout": 60, "heartbeat": 2}'
// An amqplib load client that records its history (interop/checker/history.py, one JSON object a line):
// a publisher on a confirm channel keeping `window` publishes in flight, or a consumer that acks each
// delivery. After a failure it connects to the next URL. SIGTERM stops a publisher; a consumer drains
// (until `idle` seconds without a delivery), settles its acks (basic.qos-ok, channel.close-ok) and exits.

const amqp = require('amqplib');
const fs = require('fs');

const options = Object.assign(
  { queueType: 'quorum', window: 50, max: null, prefetch: 50, idle: 3, drainTimeout: 60, heartbeat: 2 },
  JSON.parse(process.argv[2]),
);
const out = fs.createWriteStream(options.out, { flags: 'a' });
// CLOCK_MONOTONIC, the clock of Python's time.monotonic(): histories of several processes merge by it.
const now = () => Number(process.hrtime.bigint()) / 1e9;
const record = (op, fields) => out.write(JSON.stringify({ op, t: now(), client: options.name, ...fields }) + '\n');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let stopping = false;
let drainStarted = null;
let incarnation = 0;
let nextUrl = 0;
let attempted = 0;
let lastDelivery = now();
process.on('SIGTERM', () => {
  stopping = true;
});

async function connect() {
  const url = options.urls[nextUrl++ % options.urls.length];
  incarnation += 1;
  const separator = url.includes('?') ? '&' : '?';
  const connection = await amqp.connect(`${url}${separator}heartbeat=${options.heartbeat}`, { timeout: 3000 });
  record('connect', { url, incarnation });
  // A broken connection ends the session: `closed` settles when it does.
  connection.closed = new Promise((resolve) => {
    connection.on('close', resolve);
    connection.on('error', () => {});
  });
  return connection;
}

async function declare(channel) {
  for (const queue of options.queues) {
    await channel.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': options.queueType } });
  }
}

async function publishSession(connection) {
  const channel = await connection.createConfirmChannel();
  channel.on('error', () => {});
  await declare(channel);
  const stream = `${options.name}.${incarnation}`;
  let seq = 0;
  let inFlight = 0;
  let wake = null;
  let broken = false;
  connection.closed.then(() => {
    broken = true;
    if (wake) wake();
  });
  const done = () => stopping || (options.max !== null && attempted >= options.max);
  while (!done() && !broken) {
    if (inFlight >= options.window) {
      await new Promise((resolve) => (wake = resolve));
      wake = null;
      continue;
    }
    seq += 1;
    attempted += 1;
    const queue = options.queues[seq % options.queues.length];
    const id = `${stream}/${seq}`;
    record('publish', { id, publisher: stream, seq, queue });
    inFlight += 1;
    const accepted = channel.sendToQueue(queue, Buffer.from(id), { persistent: true }, (err) => {
      const outcome = err === null ? 'ack' : err.message === 'message nacked' ? 'nack' : 'unknown';
      record('confirm', { id, outcome });
      inFlight -= 1;
      if (wake) wake();
    });
    if (!accepted) await new Promise((resolve) => channel.once('drain', resolve));
  }
  if (!broken) {
    try {
      await channel.waitForConfirms();
    } catch (err) {
      // the callbacks recorded each outcome
    }
  }
  if (broken) throw new Error('connection closed');
  return true;
}

async function consumeSession(connection) {
  const channel = await connection.createChannel();
  channel.on('error', () => {});
  await declare(channel);
  await channel.prefetch(options.prefetch);
  const consumer = `${options.name}.${incarnation}`;
  const channelKey = `${consumer}.ch${channel.ch}`;
  let broken = false;
  connection.closed.then(() => (broken = true));
  for (const queue of options.queues) {
    await channel.consume(queue, (message) => {
      if (message === null) return; // cancelled by the broker; the session goes on with the others
      const id = message.content.toString();
      const queueName = message.fields.routingKey;
      record('deliver', { id, queue: queueName, consumer, redelivered: message.fields.redelivered, channel: channelKey });
      lastDelivery = now();
      channel.ack(message);
      record('ack', { id, queue: queueName, channel: channelKey });
    });
  }
  for (;;) {
    await sleep(500);
    if (broken) throw new Error('connection closed');
    await channel.prefetch(options.prefetch);
    record('settled', { channel: channelKey });
    if (drained()) break;
  }
  await channel.close();
  record('settled', { channel: channelKey });
  return true;
}

function drained() {
  if (!stopping) return false;
  const t = now();
  if (drainStarted === null) {
    drainStarted = t;
    lastDelivery = Math.max(lastDelivery, t - options.idle / 2);
  }
  return t - lastDelivery > options.idle || t - drainStarted > options.drainTimeout;
}

function givesUp() {
  if (options.role === 'publisher') return stopping || (options.max !== null && attempted >= options.max);
  if (!stopping) return false;
  if (drainStarted === null) drainStarted = now();
  return now() - drainStarted > options.drainTimeout;
}

(async () => {
  const session = options.role === 'publisher' ? publishSession : consumeSession;
  for (;;) {
    let connection = null;
    try {
      connection = await connect();
      if (await session(connection)) break;
    } catch (err) {
      record('error', { error: String(err).slice(0, 200), incarnation });
    } finally {
      if (connection !== null) {
        try {
          await connection.close();
        } catch (err) {
          // already closed
        }
      }
    }
    if (givesUp()) break;
    await sleep(300);
  }
  out.end(() => process.exit(0));
})();
