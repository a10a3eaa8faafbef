import { EventIds, llmTokensEvent } from "tally-sdk";
import { NatsPublisher } from "tally-sdk/nats";

const ids = new EventIds("run-2026-11-26-0008");
const events = [["input", 800], ["output", 120]].map(([kind, tokens]) =>
  llmTokensEvent({ customer: "acme", agent: "support-bot-7", id: ids.next(), model: "gpt-4o-mini",
                   kind: kind as string, tokens: tokens as number }));
const publisher = await NatsPublisher.connect(
  { servers: process.env.TALLY_NATS_URL ?? "nats://127.0.0.1:4222" },
  // { servers, user: "agent-acme", pass: process.env.TALLY_NATS_PASSWORD },
  { subjectPrefix: process.env.TALLY_SUBJECT_PREFIX ?? "usage" },
);
const result = await publisher.publishMany(events);
await publisher.close();
console.log(result.verdicts.map((v) => `${v.id} ${v.status}`).join("\n"));
if (!result.ok) throw new Error(JSON.stringify(result.notStored()));
