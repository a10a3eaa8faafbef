import { EventIds, HttpClient, llmTokensEvent, toolCallEvent } from "tally-sdk";

const ids = new EventIds("run-2026-11-26-0007"); // the agent run's own id: stable across retries
const who = { customer: "acme", agent: "support-bot-7" };
const events = [
  llmTokensEvent({ ...who, id: ids.next(), model: "gpt-4o", kind: "input", tokens: 1200 }),
  llmTokensEvent({ ...who, id: ids.next(), model: "gpt-4o", kind: "output", tokens: 340 }),
  toolCallEvent({ ...who, id: ids.next(), tool: "search" }),
];
const client = new HttpClient(process.env.TALLY_GATEWAY_URL!, process.env.TALLY_API_KEY!);
const result = await client.send(events);
for (const v of result.verdicts) console.log(v.index, v.id, v.status, v.code ?? "", v.field ?? "");
if (!result.ok) throw new Error(JSON.stringify(result.notStored())); // every event accepted or duplicate
