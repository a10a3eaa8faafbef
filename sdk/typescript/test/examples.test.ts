// The README's examples are the files in examples/, compiled with the tests and run as
// written: send, tokens and nats here against a real gateway and NATS, spend in
// spend.test.ts (a real decider) and query in query.test.ts (a real rater).

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";

import { Gateway, NATS_URL, PACKAGE_DIR } from "./harness.js";

const run = promisify(execFile);
const EXAMPLES = ["send", "tokens", "nats"];
/** Every example the README shows, in its order. */
const SHOWN = ["send", "tokens", "spend", "query", "nats"];
let gw: Gateway;

before(async () => {
  gw = await Gateway.create("sdkts_examples");
  await gw.start();
});

after(async () => {
  await gw?.cleanup();
});

test("the README shows the example files as they are", () => {
  const readme = readFileSync(join(PACKAGE_DIR, "README.md"), "utf8");
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.deepEqual(
    blocks,
    SHOWN.map((name) => readFileSync(join(PACKAGE_DIR, "examples", `${name}.ts`), "utf8")),
  );
});

test("every example runs and its events are stored", async () => {
  const key = await gw.createKey("acme");
  const env = {
    ...process.env,
    TALLY_GATEWAY_URL: gw.url,
    TALLY_API_KEY: key,
    TALLY_NATS_URL: NATS_URL,
    TALLY_SUBJECT_PREFIX: gw.prefix,
  };
  const outputs: string[] = [];
  for (const name of EXAMPLES) {
    const { stdout } = await run(process.execPath, [join(PACKAGE_DIR, "build", "examples", `${name}.js`)], {
      env, cwd: PACKAGE_DIR, timeout: 60_000,
    });
    outputs.push(stdout);
  }
  const shown = readFileSync(join(PACKAGE_DIR, "examples", "tokens.ts"), "utf8").match(/^\/\/ (\[\["input".*)$/m)![1];
  assert.equal(outputs[1]!.trim(), shown);
  const stored = await gw.messages("acme");
  assert.deepEqual(stored.map((m) => m.event.id), [
    "run-2026-11-26-0007-0", "run-2026-11-26-0007-1", "run-2026-11-26-0007-2",
    "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-input", "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-output",
    "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG-cached",
    "msg_013Zva2CMHLNnXjNJJKqJ2EF-input", "msg_013Zva2CMHLNnXjNJJKqJ2EF-output",
    "msg_013Zva2CMHLNnXjNJJKqJ2EF-cached", "msg_013Zva2CMHLNnXjNJJKqJ2EF-cache_write",
    "run-2026-11-26-0008-0", "run-2026-11-26-0008-1",
  ]);
  assert.ok(stored.every((m) => m.msgId === `acme:support-bot-7:${m.event.id}`));
});
