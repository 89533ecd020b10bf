// Calling glammp from Node.js: the cache, files and jobs over one multiplexed connection.
//
//   node example.js            the tour (prints one line per step)
//   node example.js get KEY    reads one item and prints its value and PHP type
//
// GLAMMP_HOST and GLAMMP_PORT say where glammp listens (default 127.0.0.1:9090); with
// GLAMMP_TLS_CA (a PEM file) the connection is TLS, and the server's certificate must be signed
// by that CA and name the host (what a gateway with [gateway.tls] offers);
// GLAMMP_NODE_STUBS where `make stubs` put the code from `thrift --gen js:node,es6`
// (default ../../build/stubs/node). Those files require('thrift'): run with
// NODE_PATH=<this folder>/node_modules, or generate them inside your npm project.
// The jobs part needs a worker serving `reverse`, e.g.
//   glammp worker --server 127.0.0.1:4730 reverse=tests.examples.jobfuncs:reverse
'use strict';

const fs = require('fs');
const path = require('path');
const thrift = require('thrift');

const stubs = process.env.GLAMMP_NODE_STUBS || path.join(__dirname, '../../build/stubs/node');
const Base = require(path.join(stubs, 'Base'));
const Cache = require(path.join(stubs, 'Cache'));
const Filestore = require(path.join(stubs, 'Filestore'));
const Jobs = require(path.join(stubs, 'Jobs'));
const { ServiceError, ErrorCode } = require(path.join(stubs, 'common_types'));
const { Status } = require(path.join(stubs, 'base_types'));
const { ReadOptions, WriteOptions, StoreResult, ValueType } =
  require(path.join(stubs, 'cache_types'));
const { StoreOptions, FetchOptions } = require(path.join(stubs, 'filestore_types'));
const { Job, JobStatus } = require(path.join(stubs, 'jobs_types'));

// The thrift package never fails a pending call by itself: its socket timeout only emits an
// event. Every call is therefore raced against a timer and against the connection breaking.
// CALL_TIMEOUT_MS must outlast the slowest call, here a foreground job (JOB_TIMEOUT_MS); calls
// made before the connection is up wait for it within their own deadline.
const CALL_TIMEOUT_MS = 15000;
const JOB_TIMEOUT_MS = 10000;
const PREFIX = 'example:node:';

/** Names of a generated enum (the generated object maps names to numbers only). */
const nameOf = (enumType, value) =>
  Object.keys(enumType).find((k) => enumType[k] === value) || `UNKNOWN(${value})`;

/** One framed binary connection; every service is multiplexed over it by name. */
function connect(host, port, tlsCa) {
  const options = { transport: thrift.TFramedTransport, protocol: thrift.TBinaryProtocol };
  const connection = tlsCa
    ? thrift.createSSLConnection(host, port, { ...options, ca: fs.readFileSync(tlsCa) })
    : thrift.createConnection(host, port, options);
  let closing = false;
  const broken = new Promise((resolve, reject) => {
    connection.on('error', reject);
    connection.on('close', () => closing || reject(new Error('glammp closed the connection')));
  });
  broken.catch(() => {});  // observed through each call's race below

  // Calls return promises (js:node,es6); each one fails after CALL_TIMEOUT_MS or when the
  // connection breaks. After a timeout the connection's state is unknown: close it.
  const withDeadline = (client) => new Proxy(client, {
    get(target, name) {
      const method = target[name];
      const rpc = typeof method === 'function' && typeof name === 'string' &&
        !/^(send|recv)_/.test(name);
      if (!rpc) return method;
      return (...args) => {
        let timer;
        const expired = new Promise((resolve, reject) => {
          timer = setTimeout(() => {
            connection.destroy();
            reject(new Error(`${name}: no answer within ${CALL_TIMEOUT_MS} ms`));
          }, CALL_TIMEOUT_MS);
        });
        return Promise.race([method.apply(target, args), expired, broken])
          .finally(() => clearTimeout(timer));
      };
    },
  });
  const mux = new thrift.Multiplexer();
  return {
    base: withDeadline(mux.createClient('Base', Base, connection)),
    cache: withDeadline(mux.createClient('Cache', Cache, connection)),
    files: withDeadline(mux.createClient('Filestore', Filestore, connection)),
    jobs: withDeadline(mux.createClient('Jobs', Jobs, connection)),
    close() {
      closing = true;
      connection.end();
    },
  };
}

/** "400 BAD_REQUEST retryable=false origin=cache: message" */
const describe = (e) =>
  `${e.code} ${nameOf(ErrorCode, e.code)} retryable=${Boolean(e.retryable)} ` +
  `origin=${e.origin}: ${e.message}`;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs call(), again (up to `attempts` times) while glammp says the error is retryable,
 * waiting what the error asks for. A 400 or 404 will not get better: rethrown.
 */
async function withRetry(call, attempts = 3) {
  for (let i = 1; ; i++) {
    try {
      return await call();
    } catch (e) {
      if (!(e instanceof ServiceError) || !e.retryable || i >= attempts) throw e;
      await sleep(e.retry_after_ms || 100);
    }
  }
}

/** Prints why a step is skipped when the server does not implement it yet (501). */
function skipIfNotImplemented(step, e) {
  if (!(e instanceof ServiceError) || e.code !== ErrorCode.NOT_IMPLEMENTED) throw e;
  console.log(`${step} skipped: ${describe(e)}`);
}

/**
 * The cas retry loop: read the item with its cas token, compute the new value, store it only
 * if nobody changed the item in between, and start over when somebody did.
 */
async function casUpdate(cache, key, change, maxAttempts = 10) {
  for (let attempt = 1; attempt <= maxAttempts; attempt++) {
    const item = await cache.get(key, new ReadOptions());
    const value = Buffer.from(await change(item.found ? item.value.toString() : null));
    const result = item.found
      ? await cache.cas(key, value, item.cas, new WriteOptions())
      : await cache.add(key, value, new WriteOptions());
    if (result === StoreResult.STORED) return { value: value.toString(), attempts: attempt };
    // EXISTS: changed since we read it; NOT_FOUND / NOT_STORED: deleted or created meanwhile.
  }
  throw new Error(`cas on ${key} lost ${maxAttempts} times in a row`);
}

async function cacheTour(cache) {
  const read = new ReadOptions();
  const stored = await cache.put(`${PREFIX}greeting`, Buffer.from('hello from node'),
    new WriteOptions({ ttl: 300 }));
  console.log(`put ${nameOf(StoreResult, stored)}`);

  const item = await withRetry(() => cache.get(`${PREFIX}greeting`, read));
  console.log(`get found value=${item.value} type=${nameOf(ValueType, item.type)}`);

  await cache.put(`${PREFIX}a`, Buffer.from('1'), new WriteOptions());
  await cache.put(`${PREFIX}b`, Buffer.from('2'), new WriteOptions());
  const items = await cache.get_multi([`${PREFIX}a`, `${PREFIX}b`, `${PREFIX}missing`], read,
    true);  // preserve_order: misses are listed as found=false
  const hits = items.filter((i) => i.found).length;
  console.log(`get_multi hits=${hits} misses=${items.length - hits}`);

  // A concurrent writer is simulated inside the change function: it changes the counter
  // between our read and our cas, so the first cas answers EXISTS and the loop runs again.
  await cache.put(`${PREFIX}counter`, Buffer.from('0'), new WriteOptions());
  let interfered = false;
  const { value, attempts } = await casUpdate(cache, `${PREFIX}counter`, async (old) => {
    if (!interfered) {
      interfered = true;
      await cache.put(`${PREFIX}counter`, Buffer.from('100'), new WriteOptions());
    }
    return String(Number(old || 0) + 1);
  });
  console.log(`cas counter=${value} attempts=${attempts}`);

  // A key with a space is not a memcached key: the cache answers ServiceError 400.
  try {
    await cache.get('bad key', read);
    console.log('error none');
  } catch (e) {
    if (!(e instanceof ServiceError)) throw e;
    console.log(`error ${describe(e)}`);
  }
}

async function fileTour(files) {
  // The domain is made by an administrator (the dev cluster of `glammp serve` makes
  // "glammp"); create_domain is an admin method that the gateway refuses to frontends.
  const domain = process.env.GLAMMP_DOMAIN || 'glammp';
  const content = Buffer.from('a file stored from Node\n');
  try {
    const info = await files.store(domain, 'node/hello.txt', content, new StoreOptions());
    console.log(`file stored ${info.length.toNumber()} bytes`);
    const data = await files.fetch(domain, 'node/hello.txt', new FetchOptions());
    console.log(`file fetched ${data.length} bytes same=${data.equals(content)}`);
  } catch (e) {
    skipIfNotImplemented('file', e);
  }
}

async function jobTour(jobs) {
  try {
    const result = await jobs.submit(new Job({
      name: 'reverse', workload: Buffer.from('glammp-node'), timeout_ms: JOB_TIMEOUT_MS,
    }));
    console.log(`job submit ${nameOf(JobStatus, result.status)} data=${result.data}`);

    const submitted = await jobs.submit_background(
      new Job({ name: 'reverse', workload: Buffer.from('background-node') }));
    // Poll until gearmand no longer knows the job (it finished), with a bounded wait.
    for (let i = 0; i < 200 && (await jobs.status(submitted.handle)).known; i++) {
      await sleep(50);
    }
    try {
      const done = await jobs.fetch_result(submitted.handle);
      console.log(`job background ${nameOf(JobStatus, done.status)} data=${done.data}`);
    } catch (e) {
      if (!(e instanceof ServiceError) || e.code !== ErrorCode.NOT_FOUND) throw e;
      console.log(`job background finished (no stored result: ${describe(e)})`);
    }
  } catch (e) {
    skipIfNotImplemented('job', e);
  }
}

async function main() {
  const glammp = connect(process.env.GLAMMP_HOST || '127.0.0.1',
    Number(process.env.GLAMMP_PORT || 9090), process.env.GLAMMP_TLS_CA);
  try {
    const [command, key] = process.argv.slice(2);
    if (command === 'get') {
      const item = await glammp.cache.get(key, new ReadOptions());
      console.log(item.found
        ? `get found value=${item.value} type=${nameOf(ValueType, item.type)}` : 'get miss');
      return;
    }
    console.log(`status ${nameOf(Status, await glammp.base.getStatus())}`);
    await cacheTour(glammp.cache);
    await fileTour(glammp.files);
    await jobTour(glammp.jobs);
  } finally {
    glammp.close();
  }
}

main().catch((e) => {
  console.error(e instanceof ServiceError ? `ServiceError ${describe(e)}` : e);
  process.exitCode = 2;
});
