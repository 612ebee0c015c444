#!/usr/bin/env node
// Consumer for bench/latency.py (amqplib): takes COUNT messages from QUEUE, each body stamped by the
// producer with its send time, and records now - sent. NOACK=1: auto-ack; else one basic.ack per message.
// Prints "ready" once subscribed, then, when done (or IDLE_MS after the last delivery), one JSON line:
// the sequence number, latency (µs) and send time (CLOCK_MONOTONIC ms) of every message, in arrival order.

const amqp = require('amqplib');

const url = process.env.AMQP_URL;
const queue = process.env.QUEUE;
const count = Number(process.env.COUNT);
const noAck = process.env.NOACK === '1';
const durable = process.env.DURABLE === '1';
const prefetch = Number(process.env.PREFETCH || 1000);
const idleMs = Number(process.env.IDLE_MS || 5000);

(async () => {
  const connection = await amqp.connect(url, { noDelay: true }); // TCP_NODELAY, as pika and librabbitmq set it
  const channel = await connection.createChannel();
  await channel.assertQueue(queue, { durable });
  await channel.prefetch(prefetch);
  const seqs = new Int32Array(count);
  const lat = new Float64Array(count);
  const sentMs = new Float64Array(count);
  let received = 0;
  let idle;
  const finish = async () => {
    clearTimeout(idle);
    await channel.deleteQueue(queue);
    const out = { received, seq: Array.from(seqs.subarray(0, received)),
                  latency_us: Array.from(lat.subarray(0, received), (v) => Math.round(v * 10) / 10),
                  sent_ms: Array.from(sentMs.subarray(0, received), (v) => Math.round(v * 1000) / 1000) };
    process.stdout.write(JSON.stringify(out) + '\n', async () => {
      await connection.close();
    });
  };
  const armIdle = () => { clearTimeout(idle); idle = setTimeout(finish, idleMs); };
  await channel.consume(queue, (msg) => {
    const now = process.hrtime.bigint();
    if (msg === null) return; // cancelled: the queue was deleted at the end
    const sent = msg.content.readBigInt64BE(0);
    if (received < count) {
      seqs[received] = msg.content.readUInt32BE(8);
      lat[received] = Number(now - sent) / 1000;
      sentMs[received] = Number(sent) / 1e6;
      received += 1;
    }
    if (!noAck) channel.ack(msg);
    if (received === count) finish(); else armIdle();
  }, { noAck });
  console.log('ready');
  // Until the first delivery, the wait is the producer's whole run: the driver kills a consumer that hangs.
})().catch((err) => { console.error(err); process.exit(1); });
