/**
 * Token events from the usage block of an OpenAI- or Anthropic-style model response, for the
 * `llm_tokens` meter of `config/tally.toml` (type `llm.tokens`, SUM of `$.tokens` by `$.model`
 * and `$.kind`). Kinds:
 *
 * - `input`: prompt tokens not read from a cache
 * - `output`: completion tokens (OpenAI's reasoning tokens are part of them, as OpenAI bills)
 * - `cached`: prompt tokens read from a cache (OpenAI `cached_tokens`, Anthropic
 *   `cache_read_input_tokens`)
 * - `cache_write`: prompt tokens written to a cache (Anthropic `cache_creation_input_tokens`)
 *
 * Each token counts once: OpenAI's `prompt_tokens` include the cached ones, so `input` is
 * `prompt_tokens - cached_tokens`; Anthropic's `input_tokens` exclude cache reads and writes.
 * Event ids are `<idBase>-<kind>`, `idBase` being the response's own id by default, so the same
 * response handed in again yields the same ids (counted once).
 */

import { checkEventId, llmTokensEvent, type CloudEvent } from "./events.js";

export const INPUT = "input";
export const OUTPUT = "output";
export const CACHED = "cached";
export const CACHE_WRITE = "cache_write";
/** Every kind, in the order events are emitted. */
export const TOKEN_KINDS = [INPUT, OUTPUT, CACHED, CACHE_WRITE] as const;
export type TokenKind = (typeof TOKEN_KINDS)[number];
export type TokenCounts = Partial<Record<TokenKind, number>>;

type Obj = Record<string, unknown>;

function field(obj: unknown, name: string): unknown {
  return obj !== null && typeof obj === "object" ? (obj as Obj)[name] : undefined;
}

function count(obj: unknown, name: string, what: string, required = false): number {
  const v = field(obj, name);
  if (v === undefined || v === null) {
    if (required) throw new TypeError(`usage block has no \`${name}\``);
    return 0;
  }
  if (typeof v !== "number" || !Number.isSafeInteger(v)) {
    throw new TypeError(`${what} \`${name}\` is ${JSON.stringify(v)}, expected a whole number of tokens`);
  }
  if (v < 0) throw new RangeError(`${what} \`${name}\` is negative (${v})`);
  return v;
}

function usageOf(responseOrUsage: unknown): unknown {
  const usage = field(responseOrUsage, "usage");
  return usage !== undefined && usage !== null ? usage : responseOrUsage;
}

/**
 * Tokens by kind (`input`, `output`, `cached`) of an OpenAI usage block: the Chat Completions
 * form (`prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens`) or the
 * Responses form (`input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens`).
 * Accepts the whole response.
 */
export function openaiTokenCounts(responseOrUsage: unknown): TokenCounts {
  const usage = usageOf(responseOrUsage);
  let prompt: number;
  let output: number;
  let details: unknown;
  if (field(usage, "prompt_tokens") != null || field(usage, "completion_tokens") != null) {
    prompt = count(usage, "prompt_tokens", "OpenAI usage", true);
    output = count(usage, "completion_tokens", "OpenAI usage", true);
    details = field(usage, "prompt_tokens_details");
  } else if (field(usage, "input_tokens") != null) {
    prompt = count(usage, "input_tokens", "OpenAI usage", true);
    output = count(usage, "output_tokens", "OpenAI usage", true);
    details = field(usage, "input_tokens_details");
  } else {
    throw new TypeError(
      "not an OpenAI usage block: expected prompt_tokens/completion_tokens or input_tokens/output_tokens",
    );
  }
  const cached = count(details, "cached_tokens", "OpenAI usage details");
  if (cached > prompt) {
    throw new RangeError(`cached_tokens (${cached}) exceed the prompt's tokens (${prompt})`);
  }
  return { input: prompt - cached, output, cached };
}

/**
 * Tokens by kind (`input`, `output`, `cached`, `cache_write`) of an Anthropic usage block
 * (`input_tokens`, `output_tokens`, `cache_read_input_tokens`, `cache_creation_input_tokens`).
 * Accepts the whole message.
 */
export function anthropicTokenCounts(responseOrUsage: unknown): TokenCounts {
  const usage = usageOf(responseOrUsage);
  if (field(usage, "input_tokens") == null && field(usage, "output_tokens") == null) {
    throw new TypeError("not an Anthropic usage block: expected input_tokens and output_tokens");
  }
  return {
    input: count(usage, "input_tokens", "Anthropic usage", true),
    output: count(usage, "output_tokens", "Anthropic usage", true),
    cached: count(usage, "cache_read_input_tokens", "Anthropic usage"),
    cache_write: count(usage, "cache_creation_input_tokens", "Anthropic usage"),
  };
}

export interface TokenEventFields {
  customer: string;
  agent: string;
  /** Default: the response's `model`. */
  model?: string;
  /** Default: the response's `id`. Event ids are `<idBase>-<kind>`. */
  idBase?: string;
  time?: Date | string;
}

/** One `llm.tokens` event per kind in `counts` (kinds with 0 tokens are left out unless
 * `includeZero`), with ids `<idBase>-<kind>`. */
export function tokenEvents(
  counts: TokenCounts,
  fields: TokenEventFields & { model: string; idBase: string; includeZero?: boolean },
): CloudEvent[] {
  if (typeof fields.model !== "string" || fields.model === "") {
    throw new TypeError("model must be a non-empty string");
  }
  checkEventId(`${fields.idBase}-${CACHE_WRITE}`); // the longest id this base can produce
  const events: CloudEvent[] = [];
  for (const kind of TOKEN_KINDS) {
    const tokens = counts[kind];
    if (tokens === undefined || (tokens === 0 && !fields.includeZero)) continue;
    events.push(
      llmTokensEvent({
        customer: fields.customer,
        agent: fields.agent,
        id: `${fields.idBase}-${kind}`,
        model: fields.model,
        kind,
        tokens,
        ...(fields.time !== undefined ? { time: fields.time } : {}),
      }),
    );
  }
  return events;
}

function responseEvents(
  counts: (r: unknown) => TokenCounts,
  responseOrUsage: unknown,
  fields: TokenEventFields,
): CloudEvent[] {
  const model = fields.model ?? field(responseOrUsage, "model");
  if (typeof model !== "string" || model === "") {
    throw new TypeError("no model: pass model or the whole response (it names its model)");
  }
  const idBase = fields.idBase ?? field(responseOrUsage, "id");
  if (typeof idBase !== "string" || idBase === "") {
    throw new TypeError("no idBase: pass idBase or the whole response (it has an id)");
  }
  return tokenEvents(counts(responseOrUsage), { ...fields, model, idBase });
}

/** `llm.tokens` events for an OpenAI response (Chat Completions or Responses API). */
export function openaiTokenEvents(responseOrUsage: unknown, fields: TokenEventFields): CloudEvent[] {
  return responseEvents(openaiTokenCounts, responseOrUsage, fields);
}

/** `llm.tokens` events for an Anthropic message. */
export function anthropicTokenEvents(responseOrUsage: unknown, fields: TokenEventFields): CloudEvent[] {
  return responseEvents(anthropicTokenCounts, responseOrUsage, fields);
}
