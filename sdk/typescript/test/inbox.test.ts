/**
 * Issue 16, finding 6: a NATS user may receive replies only on `_INBOX.<user>.>`. On a
 * nats-server of the test's own with the authorization `tally-gateway nats-config` generates,
 * where the gateway and the real `tally-spend` run as their own users, the SDK's `connect`
 * helpers log in as `agent-acme` without naming an inbox prefix and their request/reply works:
 * publishes are acknowledged, the decider's answers arrive. A client on the default `_INBOX`
 * prefix gets no reply; an `inboxPrefix` given explicitly is used as given.
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connect as natsConnect } from "nats";

import { llmTokensEvent, SpendError } from "../src/index.js";
import { connect, inboxPrefix, NatsPublisher, NatsSpendClient, withUserInbox } from "../src/nats.js";
import { storedMessages } from "./harness.js";
import { NatsServer, Stack } from "./stack.js";

let stack: Stack;
let server: NatsServer;
let acme: { servers: string; user: string; pass: string };

before(async () => {
  stack = await Stack.create("tsinbox");
  server = await NatsServer.start(stack.config, ["acme", "globex"]);
  stack.useNats(server.url, server.users);
  // the gateway declares the usage stream; the decider answers as tally-spend
  await stack.start(["rater", "spend", "gateway"]);
  acme = { servers: server.url, user: "agent-acme", pass: server.users["agent-acme"]! };
});

after(async () => {
  await stack?.cleanup();
  await server?.stop();
});

const event = (id: string) => llmTokensEvent({ customer: "acme", agent: "bot-1", id, model: "m1", kind: "input", tokens: 5 });

test("the prefix is _INBOX.<user> whenever a user is given, unless inboxPrefix says otherwise", () => {
  assert.equal(inboxPrefix("agent-acme"), "_INBOX.agent-acme");
  assert.equal(withUserInbox({ user: "agent-acme", pass: "p" }).inboxPrefix, "_INBOX.agent-acme");
  assert.equal(withUserInbox({ servers: "nats://agent-acme:p@127.0.0.1:4222" }).inboxPrefix, "_INBOX.agent-acme");
  assert.equal(withUserInbox({ user: "agent-acme", inboxPrefix: "_INBOX.mine" }).inboxPrefix, "_INBOX.mine");
  assert.equal(withUserInbox({ servers: "nats://127.0.0.1:4222" }).inboxPrefix, undefined);
});

test("the publisher logged in as the agent's restricted user gets its acks without naming a prefix", async () => {
  const publisher = await NatsPublisher.connect(acme, { subjectPrefix: stack.prefix, timeoutMs: 3000, maxAttempts: 1 });
  try {
    const result = await publisher.publishMany([event("inbox-1"), event("inbox-2")]);
    assert.deepEqual(result.verdicts.map((v) => v.status), ["accepted", "accepted"]);
    assert.equal((await publisher.publish(event("inbox-1"))).status, "duplicate");
  } finally {
    await publisher.close();
  }
  const stored = await storedMessages(stack.stream, `${stack.prefix}.acme.*`, {
    servers: server.url,
    user: "tally-admin",
    pass: server.users["tally-admin"]!,
  });
  assert.deepEqual(stored.map((m) => m.msgId), ["acme:bot-1:inbox-1", "acme:bot-1:inbox-2"]);
});

test("the spend client asks the real decider as the agent's user: allowed with a hold, its balance answered", async () => {
  const client = await NatsSpendClient.connect(acme, { subjectRoot: stack.spendRoot, timeoutMs: 3000 });
  try {
    const a = await client.authorize("acme", "bot-1", "llm_tokens", "100");
    assert.equal(a.allow, true, JSON.stringify(a));
    assert.equal(a.offline, false);
    assert.ok(a.holdId);
    const balance = await client.balance("acme");
    assert.equal(balance?.customer, "acme");
    assert.equal(balance?.holds, 1);
    assert.equal(await client.release("acme", "bot-1", a.holdId!), true);
    // another customer's subjects are not the agent's to ask on
    await assert.rejects(client.balance("globex"), (e: unknown) => {
      assert.ok(e instanceof SpendError, String(e));
      assert.equal(e.code, "PERMISSIONS_VIOLATION");
      return true;
    });
  } finally {
    await client.close();
  }
});

test("a client on the default _INBOX prefix gets no reply; an explicit prefix is used as given", async () => {
  // nats.js itself, no prefix: the subscription to _INBOX.> is refused, the ack never arrives
  const bare = await natsConnect(acme);
  try {
    await assert.rejects(
      bare.jetstream().publish(`${stack.prefix}.acme.bot-1`, new TextEncoder().encode("{}"), { timeout: 1500 }),
    );
  } finally {
    await bare.close();
  }
  // the SDK's connect with a prefix of the user's own below _INBOX.agent-acme: answered there
  const mine = await connect({ ...acme, inboxPrefix: "_INBOX.agent-acme.mine" });
  const spend = new NatsSpendClient(mine, { subjectRoot: stack.spendRoot, timeoutMs: 1500 });
  try {
    assert.equal((await spend.balance("acme"))?.customer, "acme");
  } finally {
    await mine.close();
  }
  // overridden with a prefix the user may not receive on: the server refuses the reply
  // subscription, which the client reports (it is no decider's denial)
  const wrong = await connect({ ...acme, inboxPrefix: "_INBOX" });
  const refused = new NatsSpendClient(wrong, { subjectRoot: stack.spendRoot, timeoutMs: 1000 });
  try {
    await assert.rejects(refused.authorize("acme", "bot-1", "llm_tokens", 1), (e: unknown) => {
      assert.ok(e instanceof SpendError, String(e));
      assert.equal(e.code, "PERMISSIONS_VIOLATION");
      return true;
    });
  } finally {
    await wrong.close();
  }
});
