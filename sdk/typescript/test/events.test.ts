// Events, ids and the usage helpers, without servers.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  anthropicTokenCounts,
  anthropicTokenEvents,
  encodeEvent,
  EventIds,
  formatTime,
  InvalidEvent,
  llmTokensEvent,
  natsMsgId,
  openaiTokenCounts,
  openaiTokenEvents,
  runEventId,
  stableEventId,
  usageEvent,
  usageSubject,
} from "../src/index.js";

// The same vectors are checked by the Python package's tests (tests/test_events.py).
const STABLE_ID_VECTORS: [string[], string][] = [
  [["chatcmpl-1", "output"], "96e2405a-944d-5c05-9621-8ace1eb5d57d"],
  [["run-7"], "d47b7f3d-4f21-5ba1-a71d-d0df454143e1"],
  [["ütf", 'a"b', "\n"], "40457e8b-9798-5b21-b562-890d8539e0f2"],
];

const field = (fn: () => unknown): string => {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof InvalidEvent, String(e));
    return e.field;
  }
  assert.fail("no error");
};

test("the message id is the whole identity", () => {
  assert.equal(natsMsgId("acme", "bot-1", "order-42"), "acme:bot-1:order-42");
  assert.notEqual(natsMsgId("c1", "a", "x"), natsMsgId("c2", "a", "x"));
  assert.equal(natsMsgId("a", "b", "c:d"), "a:b:c:d");
  assert.equal(field(() => natsMsgId("a:b", "c", "d")), "subject");
  assert.equal(field(() => natsMsgId("a", "b".repeat(65), "d")), "source");
  assert.equal(field(() => natsMsgId("a", "b", "has space")), "id");
  assert.equal(usageSubject("usage", "acme", "bot-1"), "usage.acme.bot-1");
});

test("event ids are deterministic", () => {
  const ids = new EventIds("run-7");
  assert.deepEqual([ids.next(), ids.next(), ids.next()], ["run-7-0", "run-7-1", "run-7-2"]);
  assert.equal(new EventIds("run-7").at(2), runEventId("run-7", 2));
  assert.equal(new EventIds("run-7", 5).next(), "run-7-5");
  assert.throws(() => runEventId("run-7", -1), RangeError);
  assert.equal(field(() => new EventIds("x".repeat(127))), "id");
  assert.equal(runEventId("x".repeat(126), 0).length, 128);
});

test("stable ids match the vectors the Python package checks", () => {
  for (const [parts, expected] of STABLE_ID_VECTORS) assert.equal(stableEventId(...parts), expected);
  assert.notEqual(stableEventId("a", "bc"), stableEventId("ab", "c"));
});

test("time is RFC 3339 UTC with milliseconds", () => {
  assert.equal(formatTime(new Date("2026-11-26T22:00:00.123+01:00")), "2026-11-26T21:00:00.123Z");
  assert.match(formatTime(), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.throws(() => formatTime(new Date("nope")), RangeError);
});

test("quantities are integers or decimal strings, never fractions in floats", () => {
  const e = llmTokensEvent({
    customer: "acme", agent: "bot", id: "e-1", model: "gpt-4o", kind: "output", tokens: 340,
    time: "2026-11-26T21:00:00.123Z",
  });
  assert.ok(encodeEvent(e).toString().includes('"tokens":340,'));
  assert.deepEqual(e.data, { tokens: 340, model: "gpt-4o", kind: "output" });
  const big = llmTokensEvent({ customer: "a", agent: "b", id: "e", model: "m", kind: "input", tokens: 2n ** 60n });
  assert.equal(big.data.tokens, "1152921504606846976");
  const dec = usageEvent({ customer: "a", agent: "b", id: "e", type: "agent.seconds", data: { seconds: "1.250000000" } });
  assert.equal(dec.data.seconds, "1.250000000");
  assert.throws(() => usageEvent({ customer: "a", agent: "b", id: "e", type: "t", data: { x: 1.5 } }), TypeError);
  assert.throws(() => usageEvent({ customer: "a", agent: "b", id: "e", type: "t", data: { n: [{ x: 0.1 }] } }), TypeError);
  assert.throws(() => llmTokensEvent({ customer: "a", agent: "b", id: "e", model: "m", kind: "input", tokens: 2.5 }), TypeError);
  assert.throws(() => llmTokensEvent({ customer: "a", agent: "b", id: "e", model: "m", kind: "input", tokens: -1 }), RangeError);
  assert.throws(() => llmTokensEvent({ customer: "a", agent: "b", id: "e", model: "m", kind: "input", tokens: "1e3" }), TypeError);
  assert.equal(field(() => usageEvent({ customer: "a", agent: "b", id: "e", type: "has space", data: {} })), "type");
});

const OPENAI_CHAT = {
  id: "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  object: "chat.completion",
  model: "gpt-4o-2024-08-06",
  usage: {
    prompt_tokens: 2006,
    completion_tokens: 300,
    total_tokens: 2306,
    prompt_tokens_details: { cached_tokens: 1920, audio_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 64, audio_tokens: 0 },
  },
};

const OPENAI_RESPONSES = {
  id: "resp_67ccd2bed1ec8190b14f964abc054267",
  model: "gpt-4.1",
  usage: {
    input_tokens: 328,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: 52,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: 380,
  },
};

const ANTHROPIC = {
  id: "msg_013Zva2CMHLNnXjNJJKqJ2EF",
  type: "message",
  model: "claude-sonnet-4-5",
  usage: { input_tokens: 21, output_tokens: 305, cache_creation_input_tokens: 1200, cache_read_input_tokens: 5000 },
};

test("OpenAI chat usage counts each token once", () => {
  assert.deepEqual(openaiTokenCounts(OPENAI_CHAT), { input: 86, output: 300, cached: 1920 });
  const t = "2026-11-26T21:00:00Z";
  const events = openaiTokenEvents(OPENAI_CHAT, { customer: "acme", agent: "bot", time: t });
  assert.deepEqual(
    events.map((e) => [e.id, e.type, e.data]),
    [
      ["chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-input", "llm.tokens", { tokens: 86, model: "gpt-4o-2024-08-06", kind: "input" }],
      ["chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-output", "llm.tokens", { tokens: 300, model: "gpt-4o-2024-08-06", kind: "output" }],
      ["chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-cached", "llm.tokens", { tokens: 1920, model: "gpt-4o-2024-08-06", kind: "cached" }],
    ],
  );
  assert.deepEqual(openaiTokenEvents(OPENAI_CHAT, { customer: "acme", agent: "bot", time: t }), events);
  assert.equal(events.reduce((s, e) => s + (e.data.tokens as number), 0), OPENAI_CHAT.usage.total_tokens);
});

test("OpenAI Responses usage, and bare usage blocks", () => {
  const events = openaiTokenEvents(OPENAI_RESPONSES, { customer: "acme", agent: "bot" });
  assert.deepEqual(events.map((e) => [e.data.kind, e.data.tokens]), [["input", 328], ["output", 52]]);
  assert.deepEqual(openaiTokenCounts({ prompt_tokens: 10, completion_tokens: 5, prompt_tokens_details: null }), {
    input: 10, output: 5, cached: 0,
  });
  assert.throws(() => openaiTokenEvents(OPENAI_CHAT.usage, { customer: "acme", agent: "bot" }), TypeError);
  const bare = openaiTokenEvents(OPENAI_CHAT.usage, { customer: "acme", agent: "bot", model: "gpt-4o", idBase: "run-1-step-3" });
  assert.equal(bare[0]!.id, "run-1-step-3-input");
  assert.throws(() => openaiTokenCounts({ prompt_tokens: 1.5, completion_tokens: 2 }), TypeError);
  assert.throws(() => openaiTokenCounts({ prompt_tokens: 5, completion_tokens: 2, prompt_tokens_details: { cached_tokens: 6 } }), RangeError);
  assert.throws(() => openaiTokenCounts({ total_tokens: 3 }), TypeError);
});

test("Anthropic usage keeps cache reads and writes apart", () => {
  assert.deepEqual(anthropicTokenCounts(ANTHROPIC), { input: 21, output: 305, cached: 5000, cache_write: 1200 });
  const events = anthropicTokenEvents(ANTHROPIC, { customer: "acme", agent: "bot" });
  assert.deepEqual(
    events.map((e) => [e.id, e.data.kind, e.data.tokens]),
    [
      ["msg_013Zva2CMHLNnXjNJJKqJ2EF-input", "input", 21],
      ["msg_013Zva2CMHLNnXjNJJKqJ2EF-output", "output", 305],
      ["msg_013Zva2CMHLNnXjNJJKqJ2EF-cached", "cached", 5000],
      ["msg_013Zva2CMHLNnXjNJJKqJ2EF-cache_write", "cache_write", 1200],
    ],
  );
  const plain = { id: "msg_1", model: "claude-haiku-4-5", usage: { input_tokens: 7, output_tokens: 3, cache_read_input_tokens: null } };
  assert.deepEqual(anthropicTokenEvents(plain, { customer: "a", agent: "b" }).map((e) => e.data.kind), ["input", "output"]);
  assert.throws(() => anthropicTokenCounts({ input_tokens: true, output_tokens: 1 }), TypeError);
});
