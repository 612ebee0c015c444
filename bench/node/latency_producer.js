#!/usr/bin/env node
// Steady-rate producer for bench/latency.py (amqplib): COUNT messages at RATE per second to QUEUE.
// Each body starts with its send time (process.hrtime, CLOCK_MONOTONIC, ns) and its sequence number, so a
// consumer in another process on the same machine measures publish-to-delivery latency.
// CONFIRM=1: a confirm channel, persistent messages; the confirms are awaited only at the end.
// Prints one JSON line when done: counts and how late the sends fell behind their schedule.

const amqp = require('amqplib');

const url = process.env.AMQP_URL;
const queue = process.env.QUEUE;
const rate = Number(process.env.RATE || 1000);
const count = Number(process.env.COUNT);
const bodySize = Number(process.env.BODY || 256);
const confirm = process.env.CONFIRM === '1';

(async () => {
  const connection = await amqp.connect(url, { noDelay: true }); // TCP_NODELAY, as pika and librabbitmq set it
  const channel = confirm ? await connection.createConfirmChannel() : await connection.createChannel();
  const options = { persistent: confirm };
  const intervalNs = BigInt(Math.round(1e9 / rate));
  const start = process.hrtime.bigint() + 10_000_000n;
  let sent = 0;
  let confirmed = 0;
  let maxBehindNs = 0n;
  const body = Buffer.alloc(bodySize, 0x2e);

  await new Promise((resolve) => {
    const tick = () => {
      let now = process.hrtime.bigint();
      // Send everything due: a late timer sends its backlog at once rather than shifting the schedule.
      while (sent < count && start + BigInt(sent) * intervalNs <= now) {
        const behind = now - (start + BigInt(sent) * intervalNs);
        if (behind > maxBehindNs) maxBehindNs = behind;
        body.writeBigInt64BE(now, 0);
        body.writeUInt32BE(sent, 8);
        if (confirm) {
          channel.publish('', queue, Buffer.from(body), options, (err) => { if (!err) confirmed += 1; });
        } else {
          channel.publish('', queue, Buffer.from(body), options);
        }
        sent += 1;
        now = process.hrtime.bigint();
      }
      if (sent >= count) { resolve(); return; }
      const waitMs = Number(start + BigInt(sent) * intervalNs - now) / 1e6;
      setTimeout(tick, Math.max(0, Math.floor(waitMs)));
    };
    tick();
  });
  if (confirm) await channel.waitForConfirms();
  console.log(JSON.stringify({ sent, confirmed, max_behind_ms: Number(maxBehindNs) / 1e6 }));
  await channel.close();
  await connection.close();
})().catch((err) => { console.error(err); process.exit(1); });
