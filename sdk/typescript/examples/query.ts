import { UsageQueryClient } from "tally-sdk";

const rater = new UsageQueryClient(process.env.TALLY_RATER_URL!, process.env.TALLY_TOKEN!);
const hour = 3_600_000;
const usage = await rater.query("llm_tokens", {
  customer: process.env.TALLY_CUSTOMER ?? "acme",
  from: new Date(Math.floor(Date.now() / hour) * hour - 24 * hour), // the last day, from a whole hour
  windowSize: "HOUR",
  windowTimeZone: "UTC",
  groupBy: ["model"],
  filterGroup: { kind: "output" },
});
for (const row of usage.data) console.log(row.windowStart, row.groupBy.model, row.value); // value: "1.25"
