#!/usr/bin/env node
// usage: AMQP_URL=... node capture_session.js PREFIX
// An everyday amqplib session, recorded by tests/wirefuzz/capture.py as a corpus of real client frames:
// declares with arguments, bindings, publishes with every property and a nested headers table, a
// multi-frame body, confirms, consume, get, ack/nack/reject, cancel, purge, deletes, close.

const amqp = require('amqplib');

const url = process.env.AMQP_URL || 'amqp://localhost';
const prefix = process.argv[2] || 'capture';

(async () => {
  const connection = await amqp.connect(url);
  const channel = await connection.createChannel();
  const exchange = `${prefix}.x`;
  const queue = `${prefix}.q`;
  await channel.assertExchange(exchange, 'topic', { durable: false, arguments: { 'alternate-exchange': 'amq.fanout' } });
  await channel.assertQueue(queue, { durable: false, arguments: { 'x-message-ttl': 60000, 'x-max-length': 1000 } });
  await channel.bindQueue(queue, exchange, 'a.#', { 'x-extra': 1 });
  await channel.prefetch(10);
  const properties = {
    contentType: 'text/plain', contentEncoding: 'utf-8', persistent: true, priority: 3,
    correlationId: 'corr', replyTo: 'reply', expiration: '50000', messageId: 'id-1',
    timestamp: 1700000000, type: 'kind', appId: 'capture',
    headers: { s: 'text', i: 42, f: 1.5, b: true, n: null, a: [1, 'two', { three: 3 }], t: { nested: { deep: 'x' } } },
  };
  channel.publish(exchange, 'a.b', Buffer.from('hello'), properties);
  channel.publish(exchange, 'a.c', Buffer.alloc(0));
  channel.sendToQueue(queue, Buffer.alloc(200000, 'z'));
  const got = await channel.get(queue);
  if (got) channel.nack(got, false, true);
  await channel.consume(queue, (message) => {}, { consumerTag: `${prefix}.ctag`, arguments: { 'x-priority': 5 } });
  await new Promise((resolve) => setTimeout(resolve, 200));
  channel.ackAll();
  await channel.cancel(`${prefix}.ctag`);
  const again = await channel.get(queue, { noAck: false });
  if (again) channel.reject(again, false);
  await channel.purgeQueue(queue);
  await channel.unbindQueue(queue, exchange, 'a.#', { 'x-extra': 1 });
  const confirm = await connection.createConfirmChannel();
  await new Promise((resolve, reject) =>
    confirm.publish('', queue, Buffer.from('confirmed'), { mandatory: true }, (err) => (err ? reject(err) : resolve())),
  );
  await confirm.close();
  await channel.deleteQueue(queue, { ifUnused: false, ifEmpty: false });
  await channel.deleteExchange(exchange);
  await channel.close();
  await connection.close();
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
