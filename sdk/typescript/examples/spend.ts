import { EventIds, failClosed, HttpClient, newEventId, SpendClient, toolCallEvent } from "tally-sdk";

const [url, key] = [process.env.TALLY_GATEWAY_URL!, process.env.TALLY_API_KEY!];
const who = { customer: process.env.TALLY_CUSTOMER ?? "acme", agent: process.env.TALLY_AGENT ?? "support-bot-7" };
const spend = new SpendClient(url, key, { policy: failClosed() }); // no decider answering: deny
const usage = new HttpClient(url, key);
const ids = new EventIds(`run-${newEventId()}`); // the run's own id: keep it with the work
for (let step = 0; step < 10; step++) {
  const ok = await spend.authorize(who.agent, "tool_calls", 1, { group: { tool: "search" } });
  if (!ok.allow) {
    console.log(`step ${step}: stopped: ${ok.reason} (${ok.detail})`);
    break;
  }
  // ... the tool call runs here; its usage names the hold, which it settles ...
  await usage.add(toolCallEvent({ ...who, id: ids.next(), tool: "search", holdId: ok.holdId }));
  console.log(`step ${step}: allowed (hold ${ok.holdId}, ${ok.remaining ?? "no budget"} left)`);
}
const result = await usage.flush();
if (!result.ok) throw new Error(JSON.stringify(result.notStored()));
