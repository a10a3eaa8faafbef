import { anthropicTokenEvents, HttpClient, openaiTokenEvents } from "tally-sdk";

const openaiResponse = { // what client.chat.completions.create(...) resolved to
  id: "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", model: "gpt-4o-2024-08-06",
  usage: { prompt_tokens: 2006, completion_tokens: 300, prompt_tokens_details: { cached_tokens: 1920 } },
};
const anthropicMessage = { // what client.messages.create(...) resolved to
  id: "msg_013Zva2CMHLNnXjNJJKqJ2EF", model: "claude-sonnet-4-5",
  usage: { input_tokens: 21, output_tokens: 305, cache_creation_input_tokens: 1200, cache_read_input_tokens: 5000 },
};
const who = { customer: "acme", agent: "support-bot-7" };
const events = [...openaiTokenEvents(openaiResponse, who), ...anthropicTokenEvents(anthropicMessage, who)];
console.log(JSON.stringify(events.map((e) => [e.data.kind, e.data.tokens])));
// [["input",86],["output",300],["cached",1920],["input",21],["output",305],["cached",5000],["cache_write",1200]]
const result = await new HttpClient(process.env.TALLY_GATEWAY_URL!, process.env.TALLY_API_KEY!).send(events);
if (!result.ok) throw new Error(JSON.stringify(result.notStored()));
