/**
 * CloudEvents usage events, their identity and deterministic ids.
 *
 * An event is a CloudEvents 1.0 object in structured form (the Tally event contract):
 * `subject` is the customer and `source` the agent (`[A-Za-z0-9_-]{1,64}`), `id` is 1 to 128
 * printable ASCII characters. An event's identity is (customer, agent, id): it is billed at
 * most once however often it is sent, so a retry must resend the *same* id. Build ids with
 * {@link EventIds} (run id plus counter) or {@link stableEventId} (from your own keys), not
 * with a fresh random value per attempt.
 */

import { createHash, randomUUID } from "node:crypto";

/** A usage event as sent on the wire (CloudEvents 1.0, structured JSON). */
export interface CloudEvent {
  specversion: "1.0";
  id: string;
  /** The agent. */
  source: string;
  /** The customer. */
  subject: string;
  type: string;
  /** RFC 3339. */
  time: string;
  datacontenttype?: string;
  /** The spend hold this usage settles (extension attribute; docs/SPEND.md). */
  holdid?: string;
  data: Record<string, unknown>;
}

/** A quantity: a safe non-negative integer, a bigint, or a decimal string. Never a fraction
 * held in a float. */
export type Quantity = number | bigint | string;

/** An attribute breaks the event contract; `field` names it (`subject`, `source`, `id`,
 * `type`). */
export class InvalidEvent extends Error {
  readonly field: string;
  constructor(field: string, message: string) {
    super(message);
    this.name = "InvalidEvent";
    this.field = field;
  }
}

const TOKEN = /^[A-Za-z0-9_-]{1,64}$/;
const PRINTABLE = /^[\x21-\x7e]+$/;
const DECIMAL = /^(0|[1-9][0-9]*)(\.[0-9]+)?$/;

/** Namespace of {@link stableEventId}: the Python package uses the same one, so both give
 * the same id for the same parts. */
export const EVENT_ID_NAMESPACE = "f105c21a-08e0-5751-8548-82d7eca2ad03";

/** `value` if it is a customer or agent id, else {@link InvalidEvent} naming `field`. */
export function checkToken(value: unknown, field: "subject" | "source"): string {
  if (typeof value !== "string" || !TOKEN.test(value)) {
    throw new InvalidEvent(
      field,
      `attribute \`${field}\` is ${JSON.stringify(value)}, expected 1 to 64 characters of [A-Za-z0-9_-]`,
    );
  }
  return value;
}

function printable(value: string, max: number): boolean {
  return value.length > 0 && value.length <= max && PRINTABLE.test(value);
}

/** `value` if it is a valid event id (1 to 128 printable ASCII characters, no space). */
export function checkEventId(value: unknown): string {
  if (typeof value !== "string" || !printable(value, 128)) {
    throw new InvalidEvent(
      "id",
      `attribute \`id\` is ${JSON.stringify(value)}, expected 1 to 128 printable ASCII characters`,
    );
  }
  return value;
}

/**
 * The `Nats-Msg-Id` header of an event: `<customer>:<agent>:<id>`, the whole identity.
 * JetStream deduplicates message ids across the whole stream, so the bare id would let one
 * customer's (or agent's) event suppress another's that uses the same id. Customer and agent
 * ids never contain `:`, so the header names exactly one identity.
 */
export function natsMsgId(customer: string, agent: string, id: string): string {
  return `${checkToken(customer, "subject")}:${checkToken(agent, "source")}:${checkEventId(id)}`;
}

/** The NATS subject of an event: `<prefix>.<customer>.<agent>`. */
export function usageSubject(prefix: string, customer: string, agent: string): string {
  return `${prefix}.${checkToken(customer, "subject")}.${checkToken(agent, "source")}`;
}

/** `<runId>-<n>`: the n-th event of a run (deterministic, so a retry resends it). */
export function runEventId(runId: string, n: number): string {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(`event counter ${n} must be a non-negative integer`);
  }
  return checkEventId(`${runId}-${n}`);
}

/**
 * Deterministic ids for one run: `<runId>-0`, `<runId>-1`, ... Keep the run id (the agent's
 * task or conversation id) and the counter with the work they describe: the same pair gives
 * the same id on a retry or after a restart, which Tally counts once.
 */
export class EventIds {
  readonly runId: string;
  nextN: number;

  constructor(runId: string, start = 0) {
    runEventId(runId, start);
    this.runId = runId;
    this.nextN = start;
  }

  /** The id of the n-th event, without advancing. */
  at(n: number): string {
    return runEventId(this.runId, n);
  }

  /** The next id, advancing the counter. */
  next(): string {
    const id = runEventId(this.runId, this.nextN);
    this.nextN += 1;
    return id;
  }
}

function uuidBytes(uuid: string): Buffer {
  return Buffer.from(uuid.replace(/-/g, ""), "hex");
}

/**
 * A UUID v5 (36 characters) of `parts`: the same parts give the same id, here and in the
 * Python package (`stable_event_id`). Use the keys that name one unit of usage, for example
 * `stableEventId("chatcmpl-123", "output")`.
 */
export function stableEventId(...parts: string[]): string {
  if (parts.length === 0 || !parts.every((p) => typeof p === "string")) {
    throw new TypeError("stableEventId needs one or more strings");
  }
  const name = Buffer.from(JSON.stringify(parts), "utf8");
  const hash = createHash("sha1").update(uuidBytes(EVENT_ID_NAMESPACE)).update(name).digest();
  const b = hash.subarray(0, 16);
  b[6] = (b[6]! & 0x0f) | 0x50;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = b.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A random UUID v4. Store it with the work it describes *before* the first send and reuse it
 * on retries: a new id per attempt would be counted again. */
export function newEventId(): string {
  return randomUUID();
}

/** RFC 3339 in UTC with milliseconds (`2026-11-26T21:00:00.123Z`); undefined is now; strings
 * pass unchanged. */
export function formatTime(when?: Date | string): string {
  if (when === undefined) return new Date().toISOString();
  if (typeof when === "string") return when;
  if (Number.isNaN(when.getTime())) throw new RangeError("event time is an invalid Date");
  return when.toISOString();
}

function checkData(value: unknown, path: string): unknown {
  if (value === null || typeof value === "string" || typeof value === "boolean") return value;
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new TypeError(
        `${path} is ${value}: send quantities as safe integers, bigints or decimal strings`,
      );
    }
    return value;
  }
  if (typeof value === "bigint") return value.toString();
  if (Array.isArray(value)) return value.map((v, i) => checkData(v, `${path}[${i}]`));
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      if (v !== undefined) out[k] = checkData(v, `${path}.${k}`);
    }
    return out;
  }
  throw new TypeError(`${path} is a ${typeof value}, which JSON cannot carry`);
}

function quantity(value: Quantity, what: string): number | string {
  if (typeof value === "bigint") {
    if (value < 0n) throw new RangeError(`${what} must not be negative, got ${value}`);
    return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value.toString();
  }
  if (typeof value === "string") {
    if (!DECIMAL.test(value)) throw new TypeError(`${what} ${JSON.stringify(value)} is not a decimal`);
    return value;
  }
  if (typeof value !== "number" || !Number.isSafeInteger(value)) {
    throw new TypeError(`${what} must be a safe integer, a bigint or a decimal string, not ${value}`);
  }
  if (value < 0) throw new RangeError(`${what} must not be negative, got ${value}`);
  return value;
}

export interface EventFields {
  customer: string;
  agent: string;
  id: string;
  /** Event time; default now. */
  time?: Date | string;
  /** The spend hold this usage settles: the `holdId` of the authorization that allowed the
   * work (`SpendClient`, `NatsSpendClient`); sent as the `holdid` attribute. */
  holdId?: string;
}

/**
 * A usage event for `customer` (`subject`) and `agent` (`source`). Validates the identity and
 * `type` and copies `data`: integers stay JSON integers, bigints become decimal strings, a
 * number with a fraction anywhere throws (quantities are exact: use a decimal string).
 */
export function usageEvent(
  fields: EventFields & { type: string; data: Record<string, unknown> },
): CloudEvent {
  if (typeof fields.type !== "string" || !printable(fields.type, 128)) {
    throw new InvalidEvent(
      "type",
      `attribute \`type\` is ${JSON.stringify(fields.type)}, expected 1 to 128 printable ASCII characters`,
    );
  }
  return {
    specversion: "1.0",
    id: checkEventId(fields.id),
    source: checkToken(fields.agent, "source"),
    subject: checkToken(fields.customer, "subject"),
    type: fields.type,
    time: formatTime(fields.time),
    ...(fields.holdId !== undefined ? { holdid: checkEventId(fields.holdId) } : {}),
    data: checkData(fields.data, "data") as Record<string, unknown>,
  };
}

/** An `llm.tokens` event (`data`: `tokens`, `model`, `kind`): what the `llm_tokens` meter of
 * `config/tally.toml` sums by model and kind. */
export function llmTokensEvent(
  fields: EventFields & { model: string; kind: string; tokens: Quantity },
): CloudEvent {
  return usageEvent({
    customer: fields.customer,
    agent: fields.agent,
    id: fields.id,
    ...(fields.time !== undefined ? { time: fields.time } : {}),
    ...(fields.holdId !== undefined ? { holdId: fields.holdId } : {}),
    type: "llm.tokens",
    data: { tokens: quantity(fields.tokens, "tokens"), model: fields.model, kind: fields.kind },
  });
}

/** A `tool.call` event (`data`: `tool`): what the `tool_calls` meter counts. */
export function toolCallEvent(fields: EventFields & { tool: string }): CloudEvent {
  return usageEvent({
    customer: fields.customer,
    agent: fields.agent,
    id: fields.id,
    ...(fields.time !== undefined ? { time: fields.time } : {}),
    ...(fields.holdId !== undefined ? { holdId: fields.holdId } : {}),
    type: "tool.call",
    data: { tool: fields.tool },
  });
}

/** The event's compact JSON (UTF-8 bytes), encoded once and resent unchanged on retries. */
export function encodeEvent(event: object): Buffer {
  return Buffer.from(
    JSON.stringify(event, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v)),
    "utf8",
  );
}
