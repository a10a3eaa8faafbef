/**
 * The usage query client against a real `tally-rater` over real ClickHouse: events go through
 * the real gateway into JetStream, the real aggregator commits them as window partials, and
 * {@link UsageQueryClient} reads them back per MINUTE, per HOUR in Asia/Kolkata (hours begin
 * at :30 UTC, the `+` of the offsets escaped), for the whole range by group and agent, with
 * filters; every value equals what the test sent, as exact decimal strings.
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";

import { HttpClient, llmTokensEvent, toolCallEvent, UsageQueryClient, UsageQueryError, usageQueryString } from "../src/index.js";
import { PACKAGE_DIR } from "./harness.js";
import { Stack } from "./stack.js";

let stack: Stack;
let client: UsageQueryClient;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MINUTE = 60_000;
/** Two whole minutes a few minutes ago: inside the aggregator's allowed lateness. */
const base = Math.floor(Date.now() / MINUTE) * MINUTE - 5 * MINUTE;
const iso = (ms: number) => new Date(ms).toISOString().replace(".000Z", "Z");
const customer = "acme-query";

before(async () => {
  stack = await Stack.create("tsquery");
  await stack.start(["rater", "gateway", "aggregator"]);
  client = new UsageQueryClient(stack.raterUrl, stack.readerToken);
  const who = { customer, agent: "bot-a" };
  const events = [
    llmTokensEvent({ ...who, id: "t1", time: new Date(base + 1000), model: "m1", kind: "input", tokens: "0.1" }),
    llmTokensEvent({ ...who, id: "t2", time: new Date(base + 2000), model: "m1", kind: "input", tokens: "0.2" }),
    llmTokensEvent({ ...who, id: "t3", time: new Date(base + MINUTE + 1000), model: "m2", kind: "output", tokens: "1.25" }),
    llmTokensEvent({ ...who, agent: "bot-b", id: "t4", time: new Date(base + MINUTE + 2000), model: "m1", kind: "output", tokens: 40 }),
    // another customer's usage of the same minutes is never in acme's answers
    llmTokensEvent({ customer: "other", agent: "bot-a", id: "t5", time: new Date(base + 1000), model: "m1", kind: "input", tokens: 7 }),
    ...[0, 1, 2].map((i) => toolCallEvent({ ...who, id: `c${i}`, time: new Date(base + 3000 + i), tool: "search" })),
  ];
  const key = await stack.createKey(customer);
  const other = await stack.createKey("other");
  const sent = await new HttpClient(stack.gatewayUrl, key).send(events.filter((e) => e.subject === customer));
  assert.ok(sent.ok, JSON.stringify(sent.notStored()));
  assert.ok((await new HttpClient(stack.gatewayUrl, other).send(events.filter((e) => e.subject === "other"))).ok);
  // wait until the aggregator committed all of it
  for (let i = 0; i < 300; i++) {
    const r = await client.query("llm_tokens", { customer, from: new Date(base), to: new Date(base + 2 * MINUTE) });
    if (r.data[0]?.value === "41.55") return;
    await sleep(100);
  }
  throw new Error("the aggregator did not commit the events within 30 s");
});

after(async () => {
  await stack?.cleanup();
});

test("per MINUTE by model: each window's exact sum, by window then group", async () => {
  const r = await client.query("llm_tokens", {
    customer,
    from: new Date(base),
    to: new Date(base + 2 * MINUTE),
    windowSize: "MINUTE",
    groupBy: ["model"],
  });
  assert.equal(r.meter, "llm_tokens");
  assert.equal(r.aggregation, "SUM");
  assert.equal(r.windowSize, "MINUTE");
  assert.equal(r.windowTimeZone, "UTC");
  assert.deepEqual(r.groupBy, ["model"]);
  assert.deepEqual(
    r.data.map((row) => [row.windowStart, row.windowEnd, row.customer, row.groupBy, row.value]),
    [
      [iso(base), iso(base + MINUTE), customer, { model: "m1" }, "0.3"], // 0.1 + 0.2, not 0.30000000000000004
      [iso(base + MINUTE), iso(base + 2 * MINUTE), customer, { model: "m1" }, "40"],
      [iso(base + MINUTE), iso(base + 2 * MINUTE), customer, { model: "m2" }, "1.25"],
    ],
  );
});

test("the whole range by agent, filtered by group values; COUNT meters count", async () => {
  const byAgent = await client.query("llm_tokens", {
    customer,
    from: iso(base),
    to: iso(base + 2 * MINUTE),
    groupBy: ["agent"],
    filterGroup: { kind: "output" },
  });
  assert.equal(byAgent.windowSize, null);
  assert.deepEqual(
    byAgent.data.map((row) => [row.groupBy, row.value]),
    [
      [{ agent: "bot-a" }, "1.25"],
      [{ agent: "bot-b" }, "40"],
    ],
  );
  const anyOf = await client.query("llm_tokens", {
    customer,
    from: iso(base),
    to: iso(base + 2 * MINUTE),
    filterGroup: { model: ["m2", "m3"], agent: "bot-a" },
  });
  assert.deepEqual(anyOf.data.map((row) => row.value), ["1.25"]);
  const calls = await client.query("tool_calls", { customer, from: iso(base), to: iso(base + 2 * MINUTE), groupBy: ["tool"] });
  assert.equal(calls.aggregation, "COUNT");
  assert.deepEqual(calls.data.map((row) => [row.groupBy, row.value]), [[{ tool: "search" }, "3"]]);
});

test("HOUR windows in Asia/Kolkata begin at :30 UTC and are written with +05:30", async () => {
  const KOLKATA = 330 * MINUTE;
  const hour = 60 * MINUTE;
  // the Kolkata hour the events are in (a whole local hour, :30 UTC), and the next one
  const start = Math.floor((base + KOLKATA) / hour) * hour - KOLKATA;
  const local = (ms: number) => `${new Date(ms + KOLKATA).toISOString().slice(0, 19)}+05:30`;
  assert.equal(new Date(start).getUTCMinutes(), 30);
  const q = { customer, from: local(start), to: local(start + 2 * hour), windowSize: "HOUR" as const, windowTimeZone: "Asia/Kolkata" };
  assert.match(usageQueryString(q), /from=\d{4}-\d\d-\d\dT\d\d%3A00%3A00%2B05%3A30&/);
  const r = await client.query("llm_tokens", q);
  assert.equal(r.from, local(start));
  // the first minute holds 0.3, the second 41.25: one window, or two when a Kolkata hour
  // begins between them
  const hourOf = (ms: number) => Math.floor((ms + KOLKATA) / hour) * hour - KOLKATA;
  const expected =
    hourOf(base) === hourOf(base + MINUTE)
      ? [[local(start), local(start + hour), "41.55"]]
      : [
          [local(start), local(start + hour), "0.3"],
          [local(start + hour), local(start + 2 * hour), "41.25"],
        ];
  assert.deepEqual(
    r.data.map((row) => [row.windowStart, row.windowEnd, row.value]),
    expected,
  );
});

test("refused queries reject with the rater's status and code", async () => {
  const refused = async (p: Promise<unknown>, status: number, code: string) =>
    assert.rejects(p, (e: unknown) => {
      assert.ok(e instanceof UsageQueryError, String(e));
      assert.deepEqual([e.status, e.code], [status, code], e.message);
      return true;
    });
  await refused(client.query("no_such_meter", { customer, from: iso(base) }), 404, "not_found");
  await refused(client.query("llm_tokens", { customer, from: "yesterday" }), 400, "invalid_from");
  await refused(client.query("llm_tokens", { customer, from: iso(base + 1000) }), 400, "invalid_from");
  await refused(client.query("llm_tokens", { customer, from: iso(base), groupBy: ["colour"] }), 400, "invalid_group_by");
  await refused(
    client.query("llm_tokens", { customer, from: iso(base), windowSize: "WEEK" as unknown as "DAY" }),
    400,
    "invalid_window_size",
  );
  const anonymous = new UsageQueryClient(stack.raterUrl, "tly_nope_nope");
  await assert.rejects(anonymous.query("llm_tokens", { customer, from: iso(base) }), (e: unknown) => {
    assert.ok(e instanceof UsageQueryError);
    assert.equal(e.status, 401);
    return true;
  });
});

test("the README's query example (examples/query.ts) prints the output tokens per hour and model", async () => {
  const token = stack.readerToken;
  const { stdout } = await promisify(execFile)(process.execPath, [join(PACKAGE_DIR, "build", "examples", "query.js")], {
    env: { ...process.env, TALLY_RATER_URL: stack.raterUrl, TALLY_TOKEN: token, TALLY_CUSTOMER: customer },
    cwd: PACKAGE_DIR,
    timeout: 60_000,
  });
  const hour = 60 * MINUTE;
  const start = iso(Math.floor((base + MINUTE) / hour) * hour); // both output events are in the second minute
  assert.deepEqual(stdout.trim().split("\n"), [`${start} m1 40`, `${start} m2 1.25`]);
});
