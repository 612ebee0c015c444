#!/usr/bin/env node
// The RabbitMQ "Hello World" tutorial sender, as users write it; the URL comes from AMQP_URL.

const amqp = require('amqplib');

const url = process.env.AMQP_URL || 'amqp://localhost';
const queue = 'hello';
const text = 'Hello, RabbitMQ!';

(async () => {
  let connection;
  try {
    connection = await amqp.connect(url);
    const channel = await connection.createChannel();

    await channel.assertQueue(queue, { durable: false });
    channel.sendToQueue(queue, Buffer.from(text));
    console.log(" [x] Sent '%s'", text);
    await channel.close();
  } catch (err) {
    console.warn(err);
    process.exitCode = 1;
  } finally {
    if (connection) await connection.close();
  }
})();
