#!/usr/bin/env node
// The RabbitMQ "Hello World" tutorial receiver, with manual acks; runs until SIGINT like the tutorial.

const amqp = require('amqplib');

const url = process.env.AMQP_URL || 'amqp://localhost';
const queue = 'hello';

(async () => {
  try {
    const connection = await amqp.connect(url);
    const channel = await connection.createChannel();

    process.once('SIGINT', async () => {
      await channel.close();
      await connection.close();
    });

    await channel.assertQueue(queue, { durable: false });
    await channel.consume(queue, (message) => {
      console.log(" [x] Received '%s'", message.content.toString());
      channel.ack(message);
    });

    console.log(' [*] Waiting for messages. To exit press CTRL+C');
  } catch (err) {
    console.warn(err);
    process.exitCode = 1;
  }
})();
