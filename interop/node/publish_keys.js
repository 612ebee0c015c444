#!/usr/bin/env node
// usage: AMQP_URL=... node publish_keys.js EXCHANGE COUNT
// Publishes COUNT persistent messages to EXCHANGE on a confirm channel, message i with routing key "key-i"
// and body "i", then waits for every confirm and prints "confirmed COUNT" (a nack fails the run).

const amqp = require('amqplib');

const url = process.env.AMQP_URL || 'amqp://localhost';
const [exchange, count] = [process.argv[2], Number(process.argv[3])];

(async () => {
  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createConfirmChannel();
    for (let i = 0; i < count; i++) {
      if (!channel.publish(exchange, `key-${i}`, Buffer.from(String(i)), { persistent: true })) {
        await new Promise((resolve) => channel.once('drain', resolve));
      }
    }
    await channel.waitForConfirms();
    console.log(`confirmed ${count}`);
    await channel.close();
  } finally {
    await connection.close();
  }
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
