#!/usr/bin/env node
// usage: AMQP_URL=... node confirm_publish.js QUEUE COUNT
// Publishes COUNT persistent messages on a confirm channel and waits for every confirm, then publishes
// one mandatory message that no queue takes and reports its basic.return.

const amqp = require('amqplib');

const url = process.env.AMQP_URL || 'amqp://localhost';
const [queue, count] = [process.argv[2], Number(process.argv[3])];

(async () => {
  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createConfirmChannel();
    await channel.assertQueue(queue, { durable: true });
    for (let i = 0; i < count; i++) {
      channel.sendToQueue(queue, Buffer.from(`message ${i}`), { persistent: true, messageId: String(i) });
    }
    await channel.waitForConfirms();
    console.log(`confirmed ${count}`);

    const returned = new Promise((resolve) => channel.once('return', resolve));
    await new Promise((resolve, reject) => {
      channel.publish('amq.direct', `${queue}.nowhere`, Buffer.from('lost'), { mandatory: true }, (err) =>
        err ? reject(err) : resolve(),
      );
    });
    const message = await returned;
    console.log(`returned ${message.fields.replyCode} ${message.fields.replyText} ${message.content}`);
    await channel.close();
  } finally {
    await connection.close();
  }
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
