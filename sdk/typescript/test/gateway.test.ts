// The HTTP client and the NATS publisher against a real tally-gateway and NATS server, read
// back from the real JetStream stream. One gateway for the file (own streams and database);
// each test uses customers of its own.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connect } from "nats";

import {
  anthropicTokenEvents,
  encodeEvent,
  EventIds,
  GatewayError,
  HttpClient,
  llmTokensEvent,
  openaiTokenEvents,
  toolCallEvent,
  type CloudEvent,
} from "../src/index.js";
import { NatsPublisher } from "../src/nats.js";
import { deleteStreams, freePort, Gateway, NATS_URL, storedMessages } from "./harness.js";

const T = "2026-11-26T21:00:00.123Z";
let gw: Gateway;
let counter = 0;
const customer = (name: string) => `ts${counter++}-${name}`;

before(async () => {
  gw = await Gateway.create("sdkts");
  await gw.start();
});

after(async () => {
  await gw?.cleanup();
});

function runEvents(c: string, agent: string, run: string, n = 3): CloudEvent[] {
  const ids = new EventIds(run);
  return Array.from({ length: n }, (_, i) =>
    i % 3 === 2
      ? toolCallEvent({ customer: c, agent, id: ids.next(), tool: "search", time: T })
      : llmTokensEvent({
          customer: c, agent, id: ids.next(), model: "gpt-4o",
          kind: i % 3 === 0 ? "input" : "output", tokens: 100 + i, time: T,
        }),
  );
}

test("a batch is stored under the identity and a resend is duplicate", async () => {
  const c = customer("batch");
  const key = await gw.createKey(c);
  const events = [
    ...runEvents(c, "bot-1", "run-1"),
    ...openaiTokenEvents(
      { id: "chatcmpl-9", model: "gpt-4o-mini",
        usage: { prompt_tokens: 50, completion_tokens: 7, prompt_tokens_details: { cached_tokens: 20 } } },
      { customer: c, agent: "bot-1", time: T },
    ),
  ];
  const client = new HttpClient(gw.url, key);
  const first = await client.send(events);
  assert.ok(first.ok && first.accepted === 6 && first.requests === 1, JSON.stringify(first));
  assert.deepEqual(first.verdicts.map((v) => v.id), events.map((e) => e.id));
  assert.deepEqual(first.verdicts.map((v) => v.index), [0, 1, 2, 3, 4, 5]);

  const stored = await gw.messages(c);
  assert.deepEqual(stored.map((m) => m.subject), Array(6).fill(`${gw.prefix}.${c}.bot-1`));
  assert.deepEqual(stored.map((m) => m.msgId), events.map((e) => `${c}:bot-1:${e.id}`));
  assert.deepEqual(stored.map((m) => m.event), events.map((e) => JSON.parse(encodeEvent(e).toString())));
  assert.deepEqual(stored[3]!.event.data, { tokens: 30, model: "gpt-4o-mini", kind: "input" });

  const again = await client.send(events);
  assert.ok(again.ok && again.duplicates === 6 && again.accepted === 0);
  assert.equal((await gw.messages(c)).length, 6);
});

test("gzip and plain bodies are both read", async () => {
  const c = customer("gzip");
  const key = await gw.createKey(c);
  const events = runEvents(c, "bot-1", "gz", 60);
  const zipped = await new HttpClient(gw.url, key, { gzip: true }).send(events.slice(0, 30));
  assert.equal(zipped.accepted, 30);
  assert.ok(zipped.wireBytes < zipped.bodyBytes / 3, "the body went compressed");
  const plain = await new HttpClient(gw.url, key, { gzip: false }).send(events.slice(30));
  assert.equal(plain.accepted, 30);
  assert.equal(plain.wireBytes, plain.bodyBytes);
  assert.deepEqual((await gw.messages(c)).map((m) => m.event.id), events.map((e) => e.id));
});

test("rejected events carry code and field, and the rest is stored", async () => {
  const c = customer("rejected");
  const key = await gw.createKey(c, ["bot-1"]);
  const good = runEvents(c, "bot-1", "rej", 2);
  const events = [
    good[0]!,
    { ...good[0]!, id: "rej-bad-time", time: "yesterday" },
    { ...good[0]!, id: "rej-other", subject: "someone-else" },
    good[1]!,
    { ...good[0]!, id: "rej-agent", source: "bot-2" },
  ];
  const r = await new HttpClient(gw.url, key).send(events);
  assert.deepEqual(r.verdicts.map((v) => v.status), ["accepted", "rejected", "rejected", "accepted", "rejected"]);
  assert.deepEqual([r.verdicts[1]!.code, r.verdicts[1]!.field], ["malformed", "time"]);
  assert.match(r.verdicts[1]!.detail ?? "", /yesterday/);
  assert.deepEqual([r.verdicts[2]!.code, r.verdicts[2]!.field], ["subject_mismatch", "subject"]);
  assert.deepEqual([r.verdicts[4]!.code, r.verdicts[4]!.field], ["subject_mismatch", "source"]);
  assert.equal(r.requests, 1, "a rejection is final: not retried");
  assert.deepEqual((await gw.messages(c)).map((m) => m.event.id), [good[0]!.id, good[1]!.id]);
});

test("two customers with the same id are both stored", async () => {
  const [a, b] = [customer("same-a"), customer("same-b")];
  const [keyA, keyB] = [await gw.createKey(a), await gw.createKey(b)];
  const ev = (c: string, tokens: number) =>
    llmTokensEvent({ customer: c, agent: "bot", id: "shared-1", model: "m", kind: "input", tokens, time: T });
  assert.equal((await new HttpClient(gw.url, keyA).send([ev(a, 1)])).verdicts[0]!.status, "accepted");
  const clientB = new HttpClient(gw.url, keyB);
  assert.equal((await clientB.send([ev(b, 2)])).verdicts[0]!.status, "accepted");
  assert.equal((await clientB.send([ev(b, 2)])).verdicts[0]!.status, "duplicate");
  const [sa, sb] = [await gw.messages(a), await gw.messages(b)];
  assert.deepEqual(sa.map((m) => [m.msgId, m.event.data.tokens]), [[`${a}:bot:shared-1`, 1]]);
  assert.deepEqual(sb.map((m) => [m.msgId, m.event.data.tokens]), [[`${b}:bot:shared-1`, 2]]);
});

test("large sends are split into batches, in order", async () => {
  const c = customer("split");
  const key = await gw.createKey(c);
  const events = runEvents(c, "bot-1", "big", 250);
  const r = await new HttpClient(gw.url, key, { batchMaxEvents: 100 }).send(events);
  assert.equal(r.accepted, 250);
  assert.equal(r.requests, 3);
  assert.deepEqual(r.verdicts.map((v) => v.id), events.map((e) => e.id));
  const more = runEvents(c, "bot-1", "bytes", 20);
  const one = encodeEvent(more[0]!).length;
  const m = await new HttpClient(gw.url, key, { batchMaxBytes: one * 5 + 10 }).send(more);
  assert.equal(m.accepted, 20);
  assert.ok(m.requests >= 4);
  assert.equal((await gw.messages(c)).length, 270);
});

test("a gateway with smaller limits gets halved requests", async () => {
  const small = await Gateway.create("sdkts_small", { batch_max_events: 8 });
  try {
    await small.start();
    const key = await small.createKey("acme");
    const events = runEvents("acme", "bot", "halve", 20);
    const r = await new HttpClient(small.url, key, { batchMaxEvents: 1000 }).send(events);
    assert.equal(r.accepted, 20);
    assert.ok(r.requests > 1);
    assert.deepEqual((await small.messages("acme")).map((m) => m.event.id), events.map((e) => e.id));
  } finally {
    await small.cleanup();
  }
});

test("buffered add and flush", async () => {
  const c = customer("buffer");
  const key = await gw.createKey(c);
  const events = runEvents(c, "bot-1", "buf", 7);
  const client = new HttpClient(gw.url, key, { batchMaxEvents: 3 });
  for (const e of events) await client.add(e);
  assert.equal((await gw.messages(c)).length, 6, "two full batches went at once");
  const r = await client.close();
  assert.deepEqual(r.verdicts.map((v) => v.index), [0, 1, 2, 3, 4, 5, 6]);
  assert.deepEqual(r.verdicts.map((v) => v.id), events.map((e) => e.id));
  assert.equal(r.accepted, 7);
  assert.equal((await gw.messages(c)).length, 7);
});

test("a refused key rejects with the gateway's code", async () => {
  const c = customer("auth");
  const events = runEvents(c, "bot-1", "auth", 1);
  await assert.rejects(
    new HttpClient(gw.url, `tk_0000000000000000_${"0".repeat(64)}`).send(events),
    (e: unknown) => e instanceof GatewayError && e.status === 401 && e.code === "invalid_key",
  );
  const key = await gw.createKey(c);
  await gw.revokeKey(key);
  await assert.rejects(
    new HttpClient(gw.url, key).send(events),
    (e: unknown) => e instanceof GatewayError && e.status === 401 && e.code === "revoked_key",
  );
  assert.deepEqual(await gw.messages(c), []);
});

test("an unreachable gateway gives failed verdicts, not an exception", async () => {
  const events = runEvents("acme", "bot", "down", 2);
  const client = new HttpClient(`http://127.0.0.1:${await freePort()}`, "tk_x", {
    maxAttempts: 3, backoffInitialMs: 10,
  });
  const r = await client.send(events);
  assert.deepEqual(r.verdicts.map((v) => [v.status, v.code]), [["failed", "connection_error"], ["failed", "connection_error"]]);
  assert.equal(r.requests, 3);
  assert.equal(r.retries, 2);
});

test("NATS: published events carry the identity and resends are duplicates", async () => {
  const c = customer("nats");
  const message = {
    id: "msg_01ABC", model: "claude-sonnet-4-5",
    usage: { input_tokens: 21, output_tokens: 305, cache_creation_input_tokens: 1200, cache_read_input_tokens: 5000 },
  };
  const events = anthropicTokenEvents(message, { customer: c, agent: "ts-nats", time: T });
  const pub = await NatsPublisher.connect({ servers: NATS_URL }, { subjectPrefix: gw.prefix, stream: gw.stream });
  try {
    const first = await pub.publishMany(events);
    assert.deepEqual(first.verdicts.map((v) => v.status), Array(4).fill("accepted"));
    const again = await pub.publishMany(events);
    assert.deepEqual(again.verdicts.map((v) => v.status), Array(4).fill("duplicate"));
    assert.equal((await pub.publish(events[0]!)).status, "duplicate");
  } finally {
    await pub.close();
  }
  const stored = await gw.messages(c);
  assert.deepEqual(stored.map((m) => m.subject), Array(4).fill(`${gw.prefix}.${c}.ts-nats`));
  assert.deepEqual(
    stored.map((m) => m.msgId),
    ["input", "output", "cached", "cache_write"].map((k) => `${c}:ts-nats:msg_01ABC-${k}`),
  );
  assert.deepEqual(stored.map((m) => m.event), events);
});

test("NATS: the same id for two customers and two agents is stored four times", async () => {
  const [a, b] = [customer("n-same-a"), customer("n-same-b")];
  const events = [a, b].flatMap((c) =>
    ["a1", "a2"].map((agent) =>
      llmTokensEvent({ customer: c, agent, id: "same-id", model: "m", kind: "input", tokens: 1, time: T }),
    ),
  );
  const nc = await connect({ servers: NATS_URL });
  try {
    const r = await new NatsPublisher(nc.jetstream(), { subjectPrefix: gw.prefix }).publishMany(events);
    assert.equal(r.accepted, 4);
  } finally {
    await nc.close();
  }
  const stored = [...(await gw.messages(a)), ...(await gw.messages(b))];
  assert.deepEqual(
    stored.map((m) => m.msgId).sort(),
    [`${a}:a1:same-id`, `${a}:a2:same-id`, `${b}:a1:same-id`, `${b}:a2:same-id`].sort(),
  );
});

test("HTTP and NATS share one dedup identity", async () => {
  const c = customer("mix");
  const key = await gw.createKey(c);
  const ids = new EventIds("mix");
  const events = [ids.next(), ids.next()].map((id) =>
    llmTokensEvent({ customer: c, agent: "both", id, model: "m", kind: "output", tokens: 3, time: T }),
  );
  assert.equal((await new HttpClient(gw.url, key).send(events.slice(0, 1))).accepted, 1);
  const pub = await NatsPublisher.connect({ servers: NATS_URL }, { subjectPrefix: gw.prefix });
  const r = await pub.publishMany(events);
  await pub.close();
  assert.deepEqual(r.verdicts.map((v) => v.status), ["duplicate", "accepted"]);
  assert.equal((await new HttpClient(gw.url, key).send(events)).duplicates, 2);
  assert.deepEqual((await gw.messages(c)).map((m) => m.event.id), ["mix-0", "mix-1"]);
});

test("NATS: an invalid identity is rejected locally and nothing is sent", async () => {
  const c = customer("n-invalid");
  const good = llmTokensEvent({ customer: c, agent: "bot", id: "ok-1", model: "m", kind: "input", tokens: 1, time: T });
  const pub = await NatsPublisher.connect({ servers: NATS_URL }, { subjectPrefix: gw.prefix });
  const r = await pub.publishMany([{ ...good, id: "bad-1", source: "no.dots" }, good, { ...good, id: "has space" }]);
  await pub.close();
  assert.deepEqual(
    r.verdicts.map((v) => [v.status, v.code, v.field]),
    [["rejected", "malformed", "source"], ["accepted", undefined, undefined], ["rejected", "malformed", "id"]],
  );
  assert.equal(r.requests, 1);
  assert.deepEqual((await gw.messages(c)).map((m) => m.event.id), ["ok-1"]);
});

test("NATS: publishes are retried with the same id until the stream exists", async () => {
  const stream = `T_sdkts_late_${process.pid}`;
  const prefix = `t_sdkts_late_${process.pid}`;
  await deleteStreams([stream]);
  const event = llmTokensEvent({ customer: "acme", agent: "bot", id: "late-1", model: "m", kind: "input", tokens: 5, time: T });
  const nc = await connect({ servers: NATS_URL });
  try {
    const pub = new NatsPublisher(nc.jetstream(), {
      subjectPrefix: prefix, timeoutMs: 1000, maxAttempts: 20, backoffInitialMs: 50, backoffMaxMs: 200,
    });
    const publishing = pub.publishMany([event]);
    await new Promise((r) => setTimeout(r, 300));
    await (await nc.jetstreamManager()).streams.add({ name: stream, subjects: [`${prefix}.>`] });
    const r = await publishing;
    assert.equal(r.verdicts[0]!.status, "accepted");
    assert.ok(r.requests > 1, `requests ${r.requests}`);
    const stored = await storedMessages(stream, `${prefix}.>`);
    assert.deepEqual(stored.map((m) => [m.subject, m.msgId]), [[`${prefix}.acme.bot`, "acme:bot:late-1"]]);
  } finally {
    await nc.close();
    await deleteStreams([stream]);
  }
});

test("retries until the gateway is up, then until its stream is back", async () => {
  const own = await Gateway.create("sdkts_outage");
  try {
    const key = await own.createKeyCli("acme"); // the key store, before any gateway runs
    const client = new HttpClient(own.url, key, { maxAttempts: 30, backoffInitialMs: 50, backoffMaxMs: 500 });
    const batch = (run: string, n: number) =>
      Array.from({ length: n }, (_, i) =>
        llmTokensEvent({ customer: "acme", agent: "bot", id: `${run}-${i}`, model: "gpt-4o", kind: "output", tokens: 10 + i, time: T }),
      );

    // 1. connection refused until the gateway starts
    const down = batch("down", 5);
    const starting = new Promise<void>((ok, fail) => setTimeout(() => own.start(false).then(ok, fail), 400));
    const started = Date.now();
    const r1 = await client.send(down);
    await starting;
    assert.ok(r1.ok && r1.accepted === 5, JSON.stringify(r1.notStored()));
    assert.ok(r1.requests > 1 && Date.now() - started >= 400);
    assert.deepEqual((await own.messages("acme")).map((m) => m.event.id), down.map((e) => e.id));

    // 2. the stream is gone: 503, every event `failed`; the same ids are resent until it is back
    await deleteStreams([own.stream]);
    const probe = await new HttpClient(own.url, key, { maxAttempts: 1 }).send(batch("probe", 1));
    assert.deepEqual(probe.verdicts.map((v) => [v.status, v.code]), [["failed", "unavailable"]]);
    const gone = batch("gone", 4);
    const recreating = new Promise<void>((ok, fail) =>
      setTimeout(async () => {
        try {
          const nc = await connect({ servers: NATS_URL });
          await (await nc.jetstreamManager()).streams.add({ name: own.stream, subjects: [`${own.prefix}.>`] });
          await nc.close();
          ok();
        } catch (e) {
          fail(e);
        }
      }, 500),
    );
    const r2 = await client.send(gone);
    await recreating;
    assert.ok(r2.ok && r2.accepted === 4 && r2.requests > 1, JSON.stringify(r2));
    const stored = await own.messages("acme");
    assert.deepEqual(stored.map((m) => m.event.id), gone.map((e) => e.id));
    assert.deepEqual(stored.map((m) => m.msgId), gone.map((e) => `acme:bot:${e.id}`));

    // 3. a resend of everything is duplicate, stored once
    assert.equal((await client.send(gone)).duplicates, 4);
    assert.equal((await own.messages("acme")).length, 4);
  } finally {
    await own.cleanup();
  }
});
