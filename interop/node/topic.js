#!/usr/bin/env node
// usage: AMQP_URL=... node topic.js EXCHANGE PATTERNS KEYS  (PATTERNS and KEYS comma-separated)
// Binds a server-named exclusive queue to a topic exchange with each pattern, publishes one message per
// key, then a final "stop" message, and prints "received <routing key>" for every message that arrives.

const amqp = require('amqplib');

const url = process.env.AMQP_URL || 'amqp://localhost';
const [exchange, patterns, keys] = [process.argv[2], process.argv[3].split(','), process.argv[4].split(',')];

(async () => {
  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createChannel();
    await channel.assertExchange(exchange, 'topic', { durable: false, autoDelete: true });
    const { queue } = await channel.assertQueue('', { exclusive: true });
    for (const pattern of [...patterns, 'stop']) {
      await channel.bindQueue(queue, exchange, pattern);
    }

    // One publisher and one queue keep publish order, so "stop" arrives last.
    const done = new Promise((resolve) => {
      channel.consume(queue, (message) => {
        const key = message.fields.routingKey;
        channel.ack(message);
        if (key === 'stop') resolve();
        else console.log(`received ${key}`);
      });
    });
    for (const key of [...keys, 'stop']) {
      channel.publish(exchange, key, Buffer.from(key));
    }
    await done;
    await channel.close();
  } finally {
    await connection.close();
  }
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
