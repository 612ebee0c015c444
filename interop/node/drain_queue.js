#!/usr/bin/env node
// usage: AMQP_URL=... node drain_queue.js QUEUE COUNT
// Consumes COUNT messages from a durable queue with manual acks and prints "<body> <redelivered>" for each,
// in delivery order; then closes cleanly.

const amqp = require('amqplib');

const url = process.env.AMQP_URL || 'amqp://localhost';
const [queue, count] = [process.argv[2], Number(process.argv[3])];

(async () => {
  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createChannel();
    await channel.assertQueue(queue, { durable: true });
    await channel.prefetch(10);
    let seen = 0;
    await new Promise((resolve) => {
      channel.consume(queue, (message) => {
        console.log(`${message.content} ${message.fields.redelivered}`);
        channel.ack(message);
        if (++seen === count) resolve();
      });
    });
    await channel.close();
  } finally {
    await connection.close();
  }
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
