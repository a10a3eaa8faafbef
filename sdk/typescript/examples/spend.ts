import { EventIds, failClosed, HttpClient, newEventId, SpendClient, toolCallEvent } from "tally-sdk";

const [url, key] = [process.env.TALLY_GATEWAY_URL!, process.env.TALLY_API_KEY!];
const who = { customer: process.env.TALLY_CUSTOMER ?? "acme", agent: process.env.TALLY_AGENT ?? "support-bot-7" };
const steps = Number(process.env.TALLY_STEPS ?? "10");
const MAX_SEARCHES = 2; // a step may search up to twice
const spend = new SpendClient(url, key, { policy: failClosed() }); // no decider answering: deny
const usage = new HttpClient(url, key);
const ids = new EventIds(`run-${newEventId()}`); // the run's own id: keep it with the work
for (let step = 0; step < steps; step++) {
  const ok = await spend.authorize(who.agent, "tool_calls", MAX_SEARCHES, { group: { tool: "search" } });
  if (!ok.allow) {
    console.log(`step ${step}: stopped: ${ok.reason} (${ok.detail})`);
    break;
  }
  const used = 1 + (step % 2); // ... the searches run here: this step needed `used` of them ...
  const events = Array.from({ length: used }, () => toolCallEvent({ ...who, id: ids.next(), tool: "search", holdId: ok.holdId }));
  const stored = await usage.send(events); // their usage names the hold and settles it
  if (!stored.ok) throw new Error(JSON.stringify(stored.notStored()));
  // below the maximum: give the rest back once the usage is stored (else it stays held until expiry)
  const released = ok.holdId !== undefined && used < MAX_SEARCHES && (await spend.release(who.agent, ok.holdId));
  console.log(`step ${step}: allowed (hold ${ok.holdId}, ${ok.remaining ?? "no budget"} left), used ${used}${released ? ", released the rest" : ""}`);
}
