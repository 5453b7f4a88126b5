// AllSource from Node.js with node-postgres (pg): append with an expected version,
// retry on a conflict, batches, a read_all subscriber, LISTEN, and a rollback.
// Every step checks its result: the program exits non-zero at the first surprise.
//
// Run it against a server with AllSource preloaded (scripts/run.sh starts one):
//
//   cd examples/node && npm ci
//   DATABASE_URL=postgresql://postgres@localhost:25432/allsource node example.js
//
// (scripts/test_clients.sh does this, and runs the Python and Rust examples.)
'use strict';

const crypto = require('node:crypto');
const { once } = require('node:events');
const pg = require('pg');

const WRONG_EXPECTED_VERSION = 'ZA001'; // AllSource's SQLSTATE for an optimistic concurrency conflict

// Versions and positions are bigint: read them as BigInt, not as strings.
pg.types.setTypeParser(pg.types.builtins.INT8, BigInt);

function check(ok, what) {
  if (!ok) throw new Error(what);
}

async function append(db, stream, type, payload, expectedVersion) {
  const { rows } = await db.query(
    `SELECT version, position FROM allsource.append(stream_id => $1, event_type => $2,
       payload => $3, expected_version => $4)`,
    [stream, type, JSON.stringify(payload), expectedVersion],
  );
  return rows[0];
}

async function streamVersion(db, stream) {
  const { rows } = await db.query('SELECT allsource.stream_version($1) AS v', [stream]);
  return rows[0].v;
}

async function eventTypes(db, stream) {
  const { rows } = await db.query('SELECT event_type FROM allsource.read_stream($1)', [stream]);
  return rows.map((r) => r.event_type);
}

// Appends at the version the caller decided on; on a conflict, re-reads the
// stream and tries again at its current version.
async function appendWithRetry(db, stream, type, payload, expectedVersion, attempts = 5) {
  for (let conflicts = 0; conflicts < attempts; conflicts++) {
    try {
      return { ...(await append(db, stream, type, payload, expectedVersion)), conflicts };
    } catch (err) {
      if (err.code !== WRONG_EXPECTED_VERSION) throw err;
      console.log(`   conflict ${err.code}: ${err.message}; re-reading ${stream}`);
      // A real handler would rebuild its state from read_stream and decide again.
      expectedVersion = await streamVersion(db, stream);
    }
  }
  throw new Error(`still conflicting after ${attempts} attempts`);
}

// Resolves with the first payload in `received` that `matches`, waiting for more
// notifications on `client` for up to `ms` milliseconds.
async function waitForNotification(client, received, matches, ms) {
  const signal = AbortSignal.timeout(ms);
  for (;;) {
    const found = received.find(matches);
    if (found) return found;
    try {
      await once(client, 'notification', { signal });
    } catch (err) {
      if (err.name === 'AbortError') return null;
      throw err;
    }
  }
}

async function main() {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('set DATABASE_URL, e.g. postgresql://postgres@localhost:25432/allsource');
  const run = crypto.randomBytes(4).toString('hex'); // unique stream ids: the example can run again
  const [order, cart, invoice, shipment] = ['order', 'cart', 'invoice', 'shipment'].map((n) => `${n}-${run}`);

  const db = new pg.Client({ connectionString: url });
  const listener = new pg.Client({ connectionString: url });
  await db.connect();
  await listener.connect();
  try {
    await db.query('CREATE EXTENSION IF NOT EXISTS allsource');
    console.log(`1. connected; streams of this run end in -${run}`);

    // 2. Appends with an expected version: 0 means "the stream must not exist yet".
    const placed = await append(db, order, 'OrderPlaced', { total: 42 }, 0);
    const paid = await append(db, order, 'OrderPaid', { amount: 42 }, 1);
    check(placed.version === 1n && paid.version === 2n, `versions 1 and 2, got ${placed.version} and ${paid.version}`);
    check(paid.position > placed.position, `positions increase, got ${placed.position} then ${paid.position}`);
    console.log(`2. ${order}: OrderPlaced at version 1 (position ${placed.position}), OrderPaid at 2 (${paid.position})`);

    // 3. Optimistic concurrency: an append at a stale version fails with ZA001 and writes nothing...
    let refused = null;
    try {
      await append(db, order, 'OrderShipped', {}, 1);
    } catch (err) {
      refused = err;
    }
    check(refused !== null, 'an append with a stale expected version succeeded');
    check(refused.code === WRONG_EXPECTED_VERSION, `SQLSTATE ${WRONG_EXPECTED_VERSION}, got ${refused.code}: ${refused.message}`);
    check((await streamVersion(db, order)) === 2n, 'the refused append wrote nothing');
    // ... and the retry loop re-reads the stream and succeeds.
    const shipped = await appendWithRetry(db, order, 'OrderShipped', { carrier: 'post' }, 1);
    check(shipped.version === 3n && shipped.conflicts === 1,
      `version 3 after one conflict, got ${shipped.version} after ${shipped.conflicts}`);
    const types = await eventTypes(db, order);
    check(types.join() === 'OrderPlaced,OrderPaid,OrderShipped', `read_stream(${order}) = ${types}`);
    console.log(`3. stale expected version refused with ZA001; retried: OrderShipped at version ${shipped.version}`);

    // 4. append_batch to several streams in one statement: one round trip, all or nothing.
    const batches = {
      [cart]: [
        { type: 'ItemAdded', payload: { sku: 'A-1' } },
        { type: 'ItemAdded', payload: { sku: 'B-7' } },
        { type: 'CheckedOut', payload: {}, metadata: { ip: '10.0.0.1' } },
      ],
      [invoice]: [
        { type: 'InvoiceIssued', payload: { total: 42 } },
        { type: 'InvoiceSent', payload: { to: 'alice@example.com' } },
      ],
      [shipment]: [{ type: 'ShipmentBooked', payload: { parcels: 1 } }],
    };
    const { rows: batchRows } = await db.query(
      `SELECT s.stream_id, b.* FROM jsonb_each($1) AS s(stream_id, events),
         LATERAL allsource.append_batch(s.stream_id, s.events, expected_version => 0) AS b`,
      [JSON.stringify(batches)],
    );
    const ranges = Object.fromEntries(batchRows.map((r) => [r.stream_id, r]));
    check(batchRows.length === 3 && Object.keys(batches).every((s) => s in ranges),
      `one result per stream, got ${Object.keys(ranges)}`);
    for (const [stream, events] of Object.entries(batches)) {
      const r = ranges[stream];
      const n = BigInt(events.length);
      check(r.first_version === 1n && r.last_version === n, `${stream}: versions 1..${n}, got ${r.first_version}..${r.last_version}`);
      check(r.last_position - r.first_position >= n - 1n, `${stream}: positions ${r.first_position}..${r.last_position}`);
      check((await streamVersion(db, stream)) === n, `${stream}: stream_version`);
    }
    console.log(`4. append_batch: ${batchRows.map((r) => `${r.stream_id} v1..${r.last_version}`).join(', ')}`);

    // 5. A subscriber: read_all from a cursor, a page at a time, until a page comes back short.
    const key = (stream, version) => `${stream}@${version}`;
    const expected = new Map([
      [key(order, 1n), placed.position], [key(order, 2n), paid.position], [key(order, 3n), shipped.position],
    ]);
    for (const [stream, events] of Object.entries(batches)) {
      events.forEach((_, i) => expected.set(key(stream, BigInt(i + 1)), null));
      expected.set(key(stream, 1n), ranges[stream].first_position);
      expected.set(key(stream, BigInt(events.length)), ranges[stream].last_position);
    }
    const seen = new Map();
    const pageSize = 3;
    let cursor = placed.position - 1n;
    let lastPosition = 0n;
    let pages = 0;
    for (;;) {
      const { rows: page } = await db.query(
        'SELECT position, stream_id, version FROM allsource.read_all(after_position => $1, max_count => $2)',
        [cursor, pageSize],
      );
      pages++;
      for (const e of page) {
        check(e.position > lastPosition, `read_all in ascending position: ${e.position} after ${lastPosition}`);
        lastPosition = e.position;
        if (!e.stream_id.endsWith(`-${run}`)) continue;
        check(!seen.has(key(e.stream_id, e.version)), `${e.stream_id} version ${e.version} read twice`);
        seen.set(key(e.stream_id, e.version), e.position);
      }
      if (page.length > 0) cursor = page[page.length - 1].position; // the subscriber's cursor
      if (page.length < pageSize) break; // caught up with the watermark
    }
    check(seen.size === expected.size && [...expected.keys()].every((k) => seen.has(k)),
      `read_all returned ${[...seen.keys()]}, expected ${[...expected.keys()]}`);
    for (const [k, position] of expected) {
      check(position === null || seen.get(k) === position, `${k} at position ${seen.get(k)}, append said ${position}`);
    }
    console.log(`5. read_all: ${seen.size} events of this run once each, in position order, ${pages} pages of ${pageSize}`);

    // 6. LISTEN: after a commit, a notification names the partition and its last committed position.
    const received = []; // the payloads of every notification, in arrival order
    listener.on('notification', (msg) => received.push(JSON.parse(msg.payload)));
    await listener.query('LISTEN allsource_events');
    const { rows: [{ partition }] } = await db.query('SELECT allsource.partition_for($1) AS partition', [order]);
    const delivered = await append(db, order, 'OrderDelivered', {}, 3);
    const notification = await waitForNotification(listener, received,
      (p) => p.partition_id === partition && BigInt(p.last_position) >= delivered.position, 10000);
    check(notification !== null, `no notification for partition ${partition} up to ${delivered.position} within 10 s`);
    console.log(`6. LISTEN allsource_events: got ${JSON.stringify(notification)} after OrderDelivered at ${delivered.position}`);

    // 7. Appends are transactional: roll back, and neither stream has the events.
    const before = [await streamVersion(db, order), await streamVersion(db, cart)];
    await db.query('BEGIN');
    try {
      const refunded = await append(db, order, 'OrderRefunded', { amount: 42 }, before[0]);
      const reopened = await append(db, cart, 'CartReopened', {}, before[1]);
      check(refunded.version === before[0] + 1n && reopened.version === before[1] + 1n, 'versions inside the transaction');
    } finally {
      await db.query('ROLLBACK'); // e.g. the payment provider refused the refund
    }
    const after = [await streamVersion(db, order), await streamVersion(db, cart)];
    check(after[0] === before[0] && after[1] === before[1], `stream versions after the rollback: ${after}, before: ${before}`);
    check(!(await eventTypes(db, order)).includes('OrderRefunded') && !(await eventTypes(db, cart)).includes('CartReopened'),
      'rolled-back events are not in read_stream');
    console.log(`7. rolled back appends to ${order} and ${cart}: still at versions ${before[0]} and ${before[1]}`);
  } finally {
    await db.end();
    await listener.end();
  }
  console.log('node example: all checks passed');
}

main().catch((err) => {
  console.error(`FAILED: ${err.message}`);
  process.exit(1);
});
