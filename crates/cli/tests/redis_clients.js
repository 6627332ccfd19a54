// node-redis (the `redis` package from npm, v4, default settings) against
// the replicated kv service (crates/cli/tests/redis_clients.rs).
//
// Usage: node redis_clients.js HOST PORT GO_FILE
//
// Phase A: connect, set/get, a pipeline, a transaction with WATCH (one
// that commits and one that another client's write aborts), SCAN
// iteration, pub/sub; prints READY. Then waits for GO_FILE (the test kills
// the primary in between) and runs phase B on the very same client objects
// and connections: what phase A left is there, the subscriber gets a
// message published after the failover, every feature works again; prints
// DONE. Any failed check, client error event or exception exits non-zero.
'use strict';

const fs = require('fs');
const path = require('path');
const modules = process.env.TANDEM_NODE_CLIENTS || '/var/tmp/tandem-node-clients';
const { createClient } = require(path.join(modules, 'node_modules', 'redis'));

const [host, port, goFile] = process.argv.slice(2);
const url = `redis://${host}:${port}`;
const tag = `node-${process.pid}`;
const k = (name) => `${tag}:${name}`;
const errors = [];

function check(what, got, want) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) {
    throw new Error(`${what}: got ${g}, want ${w}`);
  }
  console.log(`ok ${what}`);
}

function client() {
  const c = createClient({ url });
  // node-redis reports connection trouble here (and reconnects); across a
  // tandem failover there must be none.
  c.on('error', (e) => errors.push(String(e)));
  return c;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const r = client();
  const other = client();
  const sub = client();
  await Promise.all([r.connect(), other.connect(), sub.connect()]);

  const messages = [];
  await sub.subscribe(k('ch'), (message, channel) => messages.push([channel, message]));
  await sub.pSubscribe(k('pat*'), (message, channel) => messages.push([channel, message]));

  async function nextMessage() {
    for (let i = 0; i < 200; i++) {
      if (messages.length > 0) return messages.shift();
      await sleep(50);
    }
    throw new Error('no message arrived');
  }

  async function round(phase) {
    check(`${phase} ping`, await r.ping(), 'PONG');
    check(`${phase} set`, await r.set(k(`s${phase}`), `v${phase}`), 'OK');
    check(`${phase} get`, await r.get(k(`s${phase}`)), `v${phase}`);

    // A pipeline: commands sent together, replies in order.
    const piped = await r
      .multi()
      .set(k(`p${phase}`), '1')
      .incrBy(k(`p${phase}`), 41)
      .get(k(`p${phase}`))
      .rPush(k(`l${phase}`), ['a', 'b', 'c'])
      .lRange(k(`l${phase}`), 0, -1)
      .execAsPipeline();
    check(`${phase} pipeline`, piped, ['OK', 42, '42', 3, ['a', 'b', 'c']]);

    // A transaction with WATCH that commits.
    await r.set(k(`w${phase}`), '10');
    await r.watch(k(`w${phase}`));
    const cur = Number(await r.get(k(`w${phase}`)));
    const done = await r.multi().set(k(`w${phase}`), String(cur + 1)).get(k(`w${phase}`)).exec();
    check(`${phase} watch commits`, done, ['OK', '11']);

    // One that another client's write aborts.
    await r.watch(k(`w${phase}`));
    await other.set(k(`w${phase}`), 'changed');
    let aborted = false;
    try {
      await r.multi().set(k(`w${phase}`), 'mine').exec();
    } catch (e) {
      if (e.constructor.name !== 'WatchError') throw e;
      aborted = true;
    }
    check(`${phase} watch aborts`, aborted, true);
    check(`${phase} watched value`, await r.get(k(`w${phase}`)), 'changed');

    // SCAN iteration over the keys of this phase.
    for (let i = 0; i < 25; i++) {
      await r.set(k(`scan${phase}:${i}`), String(i));
    }
    const seen = new Set();
    for await (const key of r.scanIterator({ MATCH: k(`scan${phase}:*`), COUNT: 7 })) {
      seen.add(key);
    }
    check(`${phase} scan`, seen.size, 25);

    // Pub/sub: a channel and a pattern.
    check(`${phase} publish`, await r.publish(k('ch'), `m${phase}`), 1);
    check(`${phase} message`, await nextMessage(), [k('ch'), `m${phase}`]);
    check(`${phase} publish pattern`, await r.publish(k('pattern'), `p${phase}`), 1);
    check(`${phase} pmessage`, await nextMessage(), [k('pattern'), `p${phase}`]);
  }

  await round('A');
  console.log('READY');
  while (!fs.existsSync(goFile)) {
    await sleep(50);
  }
  // Phase B on the same connections: phase A's data survived.
  check('B phase A data', await r.get(k('sA')), 'vA');
  check('B phase A list', await r.lRange(k('lA'), 0, -1), ['a', 'b', 'c']);
  await round('B');
  check('client errors', errors, []);
  await Promise.all([r.quit(), other.quit(), sub.quit()]);
  console.log('DONE');
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  if (errors.length) console.error(`client errors: ${errors.join('; ')}`);
  process.exit(1);
});
