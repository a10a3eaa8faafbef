/**
 * Asking before spending against the real services: `tally-spend` decides, `tally-gateway`
 * passes `POST /v1/authorize` and `GET /v1/balance` to it over NATS, `tally-aggregator`
 * commits the usage that settles holds, `tally-rater` stored the plan the decider prices
 * with (per tool call 0.02 USD). Budgets are put through tally-spend's API. Over HTTP with
 * {@link SpendClient} and over NATS with {@link NatsSpendClient}; without a decider the
 * failure policy decides.
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";

import { failClosed, failOpenWithin, HttpClient, InvalidEvent, SpendClient, SpendError, toolCallEvent } from "../src/index.js";
import { NatsSpendClient } from "../src/nats.js";
import { freePort, PACKAGE_DIR } from "./harness.js";
import { Stack } from "./stack.js";

let stack: Stack;
let n = 0;
/** A customer no other test uses. */
const customer = (name: string) => `c${n++}-${name}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  stack = await Stack.create("tsspend");
  await stack.start(["rater", "spend", "gateway", "aggregator"]);
});

after(async () => {
  await stack?.cleanup();
});

/** Polls `read` until `done` holds (the decider reloads budgets every second). */
async function until<T>(what: string, read: () => Promise<T>, done: (v: T) => boolean): Promise<T> {
  let last: T | undefined;
  for (let i = 0; i < 150; i++) {
    last = await read();
    if (done(last)) return last;
    await sleep(100);
  }
  throw new Error(`${what}: not reached in 15 s; last ${JSON.stringify(last)}`);
}

type Balance = { holds?: number; held_amount?: string; spend?: string; budgets?: { limit: string }[] };

test("over HTTP: allowed while the budget has room, denied with its reason, a release gives the room back", async () => {
  const c = customer("http");
  // 0.10 USD: five tool calls at 0.02
  await stack.putBudget(c, "monthly", { kind: "amount", limit: "0.10", hard: true });
  const client = new SpendClient(stack.gatewayUrl, await stack.createKey(c));
  await until("the budget is loaded", () => client.balance() as Promise<Balance>, (b) => (b?.budgets ?? []).length === 1);

  const first = await client.authorize("bot-1", "tool_calls", 3, { deadlineMs: 30_000 });
  assert.equal(first.allow, true, JSON.stringify(first));
  assert.equal(first.offline, false);
  assert.ok(first.holdId);
  assert.equal(first.remaining, "0.04"); // 0.10 - 3 x 0.02, exact

  const second = await client.authorize("bot-1", "tool_calls", "3");
  assert.deepEqual(
    { allow: second.allow, reason: second.reason, detail: second.detail, remaining: second.remaining, offline: second.offline },
    { allow: false, reason: "budget_exceeded", detail: "budget monthly", remaining: "0.04", offline: false },
  );

  const held = (await client.balance()) as Balance;
  assert.equal(held.holds, 1);
  assert.equal(held.held_amount, "0.06");
  assert.equal(held.budgets?.[0]?.limit, "0.10");

  assert.equal(await client.release("bot-1", first.holdId!), true);
  assert.equal(await client.release("bot-1", first.holdId!), false, "a hold is given back once");
  const again = await client.authorize("bot-1", "tool_calls", 5n);
  assert.equal(again.allow, true, "the released room is there again");
  assert.equal(again.remaining, "0.00"); // as the decider wrote it: the strings are kept

  // the same request id is the same hold: a retry never holds twice
  const c2 = customer("retry");
  const retrying = new SpendClient(stack.gatewayUrl, await stack.createKey(c2));
  const a = await retrying.authorize("bot-1", "tool_calls", 2, { requestId: "work-item-17" });
  const b = await retrying.authorize("bot-1", "tool_calls", 2, { requestId: "work-item-17" });
  assert.equal(a.holdId, "work-item-17");
  assert.equal(b.holdId, "work-item-17");
  const bal = (await retrying.balance()) as Balance;
  assert.equal(bal.holds, 1);
  assert.equal(bal.held_amount, "0.04");
});

test("usage naming the hold settles it down to what was used; the rest stays held until released", async () => {
  const c = customer("settle");
  // 0.10 USD: five tool calls at 0.02
  await stack.putBudget(c, "monthly", { kind: "amount", limit: "0.10", hard: true });
  const key = await stack.createKey(c);
  const spend = new SpendClient(stack.gatewayUrl, key);
  await until("the budget is loaded", () => spend.balance() as Promise<Balance>, (b) => (b?.budgets ?? []).length === 1);
  const a = await spend.authorize("bot-1", "tool_calls", 4);
  assert.ok(a.allow && a.holdId, JSON.stringify(a));
  const events = [0, 1].map((i) => toolCallEvent({ customer: c, agent: "bot-1", id: `call-${i}`, tool: "search", holdId: a.holdId! }));
  assert.equal(events[0]!.holdid, a.holdId);
  const sent = await new HttpClient(stack.gatewayUrl, key).send(events);
  assert.ok(sent.ok, JSON.stringify(sent.notStored()));
  const settled = await until(
    "the committed usage settles the hold partially",
    () => spend.balance() as Promise<Balance>,
    (b) => b?.spend === "0.04",
  );
  assert.deepEqual([settled.holds, settled.held_amount], [1, "0.04"], "two of the four calls are still held");
  assert.equal((await spend.authorize("bot-1", "tool_calls", 3)).reason, "budget_exceeded"); // 0.04 + 0.04 + 0.06
  assert.equal(await spend.release("bot-1", a.holdId!), true);
  const released = (await spend.balance()) as Balance;
  assert.deepEqual([released.holds, released.held_amount], [0, "0"]);
  const fits = await spend.authorize("bot-1", "tool_calls", 3);
  assert.equal(fits.allow, true, "what the release gave back fits now");
  assert.equal(fits.remaining, "0.00");
  // a release names a valid agent and hold id before anything is sent
  await assert.rejects(spend.release("bot-1", "bad id with spaces"), InvalidEvent);
  await assert.rejects(spend.release("bot 1", "h-1"), InvalidEvent);
  await assert.rejects(new SpendClient(stack.gatewayUrl, "tk_nope_nope").release("bot-1", "h-1"), (e: unknown) => {
    assert.ok(e instanceof SpendError);
    assert.equal(e.status, 401);
    return true;
  });
});

test("over NATS: the decider answers on <root>.authorize.<customer>.<agent> and <root>.balance.<customer>", async () => {
  const c = customer("nats");
  await stack.putBudget(c, "tokens", { kind: "quantity", meter: "llm_tokens", limit: "1000.5", hard: true });
  const client = await NatsSpendClient.connect({ servers: stack.natsUrl }, { subjectRoot: stack.spendRoot });
  try {
    await until("the budget is loaded", () => client.balance(c) as Promise<Balance>, (b) => (b?.budgets ?? []).length === 1);
    const a = await client.authorize(c, "bot-1", "llm_tokens", "1000.25", { group: { model: "gpt-4o" } });
    assert.equal(a.allow, true, JSON.stringify(a));
    assert.equal(a.remaining, "0.25"); // exact decimals through the wire
    const b = await client.authorize(c, "bot-1", "llm_tokens", "0.5");
    assert.equal(b.reason, "budget_exceeded");
    const unknown = await client.authorize(c, "bot-1", "no_such_meter", 1);
    assert.deepEqual([unknown.allow, unknown.reason], [false, "unknown_meter"]);
    // only the agent that holds it gives a hold back
    assert.equal(await client.release(c, "bot-2", a.holdId!), false);
    assert.equal(await client.release(c, "bot-1", a.holdId!), true);
    assert.equal(await client.release(c, "bot-1", a.holdId!), false, "a hold is given back once");
    await assert.rejects(client.release(c, "bot-1", "bad id with spaces"), InvalidEvent);
    await assert.rejects(client.release("bad customer", "bot-1", a.holdId!), InvalidEvent);
    assert.equal((await client.authorize(c, "bot-1", "llm_tokens", "0.5")).allow, true);
    const bal = (await client.balance(c)) as Balance & { customer?: string };
    assert.equal(bal.customer, c);
    assert.equal(bal.holds, 1);
  } finally {
    await client.close();
  }
});

test("when no decider answers the failure policy decides: closed denies, open allows within its allowance only", async () => {
  // nobody subscribes under this root: NATS answers "no responders" at once
  const closed = await NatsSpendClient.connect({ servers: stack.natsUrl }, { subjectRoot: `${stack.spendRoot}_none` });
  const open = await NatsSpendClient.connect(
    { servers: stack.natsUrl },
    { subjectRoot: `${stack.spendRoot}_none`, policy: failOpenWithin("10") },
  );
  try {
    const denied = await closed.authorize("acme", "bot-1", "tool_calls", 1);
    assert.deepEqual([denied.allow, denied.reason, denied.offline], [false, "unavailable", true]);
    assert.equal(await closed.balance("acme"), undefined);
    assert.equal(await closed.release("acme", "bot-1", "h-1"), false);
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push(await open.authorize("acme", "bot-1", "tool_calls", 4));
    assert.deepEqual(answers.map((x) => x.allow), [true, true, false]);
    assert.equal(answers[1]!.remaining, "2");
    assert.ok(answers.every((x) => x.offline && x.holdId === undefined));
    assert.equal((await open.authorize("acme", "bot-1", "tool_calls", "1.5")).allow, true, "what still fits");
    assert.equal((await open.authorize("acme", "bot-1", "tool_calls", "0.6")).allow, false);
    assert.equal((await open.authorize("acme", "bot-1", "tool_calls", "0.5")).remaining, "0");
    // another meter and another customer have their own allowance
    assert.equal((await open.authorize("acme", "bot-1", "llm_tokens", 10)).allow, true);
    assert.equal((await open.authorize("globex", "bot-1", "tool_calls", 10)).allow, true);
  } finally {
    await closed.close();
    await open.close();
  }
  // over HTTP: a gateway that does not answer at all
  const gone = `http://127.0.0.1:${await freePort()}`;
  const httpClosed = new SpendClient(gone, "tk_x_y", { policy: failClosed() });
  const a = await httpClosed.authorize("bot-1", "tool_calls", 1);
  assert.deepEqual([a.allow, a.reason, a.offline], [false, "unavailable", true]);
  assert.equal(await httpClosed.balance(), undefined);
  const httpOpen = new SpendClient(gone, "tk_x_y", { policy: failOpenWithin(3) });
  assert.deepEqual(
    [await httpOpen.authorize("bot-1", "m", 2), await httpOpen.authorize("bot-1", "m", 2)].map((x) => x.allow),
    [true, false],
  );
});

test("a request refused as a whole raises SpendError; inexact quantities never leave the client", async () => {
  const c = customer("refused");
  await assert.rejects(new SpendClient(stack.gatewayUrl, "tk_nope_nope").authorize("bot-1", "tool_calls", 1), (e: unknown) => {
    assert.ok(e instanceof SpendError);
    assert.equal(e.status, 401);
    return true;
  });
  const scoped = new SpendClient(stack.gatewayUrl, await stack.createKey(c, ["bot-1"]));
  await assert.rejects(scoped.authorize("bot-2", "tool_calls", 1), (e: unknown) => {
    assert.ok(e instanceof SpendError);
    assert.deepEqual([e.status, e.code], [400, "invalid_field"]);
    return true;
  });
  await assert.rejects(scoped.authorize("bot-1", "tool_calls", 1.5), TypeError);
  await assert.rejects(scoped.authorize("bot-1", "tool_calls", 0), RangeError);
  await assert.rejects(scoped.authorize("bot-1", "tool_calls", "1e3"), TypeError);
  await assert.rejects(scoped.authorize("bot 1", "tool_calls", 1), /source/);
  // the decider's own refusals are answers with a reason, not errors
  const huge = await scoped.authorize("bot-1", "tool_calls", "10000000000000000000");
  assert.deepEqual([huge.allow, huge.reason], [false, "quantity_too_large"]);
});

test("the README's agent loop (examples/spend.ts) releases what a step did not use and stops when the budget is spent", async () => {
  const c = customer("example");
  await stack.putBudget(c, "monthly", { kind: "amount", limit: "0.06", hard: true }); // three calls
  const key = await stack.createKey(c);
  const client = new SpendClient(stack.gatewayUrl, key);
  await until("the budget is loaded", () => client.balance() as Promise<Balance>, (b) => (b?.budgets ?? []).length === 1);
  const { stdout } = await promisify(execFile)(process.execPath, [join(PACKAGE_DIR, "build", "examples", "spend.js")], {
    env: { ...process.env, TALLY_GATEWAY_URL: stack.gatewayUrl, TALLY_API_KEY: key, TALLY_CUSTOMER: c, TALLY_AGENT: "bot-1" },
    cwd: PACKAGE_DIR,
    timeout: 60_000,
  });
  // step 0 holds two searches and uses one (released), step 1 holds and uses two; step 2's two
  // more do not fit in 0.06 whether or not step 0's usage is committed yet
  const lines = stdout.trim().split("\n");
  assert.equal(lines.length, 3, stdout);
  assert.match(lines[0]!, /^step 0: allowed \(hold \S+, 0\.02 left\), used 1, released the rest$/);
  assert.match(lines[1]!, /^step 1: allowed \(hold \S+, 0\.0[02] left\), used 2$/);
  assert.equal(lines[2], "step 2: stopped: budget_exceeded (budget monthly)");
  // without the release step 0's unused search would stay held until its hold expires (35 s)
  const settled = await until(
    "the usage settles the holds and nothing stays held",
    () => client.balance() as Promise<Balance>,
    (b) => b?.holds === 0 && b.spend === "0.06",
  );
  assert.equal(settled.held_amount, "0");
});
