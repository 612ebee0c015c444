#!/usr/bin/env node
// Over TLS (an amqps:// AMQP_URL): send a message to a queue of its own and get it back. The CA that signed
// the broker's certificate is in TLS_CA; TLS_CERT and TLS_KEY, when set, are the client's certificate.

const amqp = require('amqplib');
const fs = require('fs');

const url = process.env.AMQP_URL;
const queue = process.argv[2];
const options = { ca: [fs.readFileSync(process.env.TLS_CA)], servername: 'localhost' };
if (process.env.TLS_CERT) {
  options.cert = fs.readFileSync(process.env.TLS_CERT);
  options.key = fs.readFileSync(process.env.TLS_KEY);
}

(async () => {
  let connection;
  try {
    connection = await amqp.connect(url, options);
    const channel = await connection.createChannel();
    await channel.assertQueue(queue, { autoDelete: true });
    channel.sendToQueue(queue, Buffer.from('over tls'));
    let message = false;
    for (let tries = 0; !message && tries < 50; tries++) {
      message = await channel.get(queue, { noAck: true });
      if (!message) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    console.log(message ? `got ${message.content.toString()}` : 'nothing came back');
    await channel.close();
  } catch (err) {
    console.log(`error ${err.code || err.message}`);
    process.exitCode = 1;
  } finally {
    if (connection) await connection.close();
  }
})();
