/**
 * Ask before spending (docs/SPEND.md): may this agent use up to this much of a meter? An
 * allowed answer carries a `holdId`; put it on the usage events of that work (`holdId` of the
 * event helpers, the `holdid` attribute) so their committed usage settles the hold. A denial
 * says why (`reason`: `budget_exceeded`, `entitlement_exceeded`, `unknown_meter`, ...).
 *
 * - {@link SpendClient}: through the gateway's `POST /v1/authorize` and `GET /v1/balance`
 *   with the customer's API key. No dependencies.
 * - `NatsSpendClient` (from `tally-sdk/nats`): straight to the spend deciders over NATS
 *   request/reply, `<root>.authorize.<customer>.<agent>` and `<root>.balance.<customer>`.
 *
 * Quantities and amounts are exact decimal strings, never floats. When no decider answers
 * (HTTP 502/503/504, a timeout, a refused connection, no responders on NATS), the failure
 * policy decides: {@link failClosed} (the default) denies with reason `unavailable`;
 * {@link failOpenWithin} allows, without a hold, while the declared quantities of a meter
 * summed over the client's life stay within the allowance, never beyond.
 */

import { checkEventId, checkToken, newEventId, type Quantity } from "./events.js";
import { decimalAdd, decimalCompare, decimalSub, isDecimal, positiveQuantity } from "./decimal.js";

/** What to do when no decider answers. */
export type FailurePolicy =
  | { readonly kind: "closed" }
  | { readonly kind: "openWithin"; readonly allowance: string };

/** Deny when no decider answers (the default). */
export function failClosed(): FailurePolicy {
  return { kind: "closed" };
}

/** Allow, without a hold, up to `allowance` of declared quantity per meter for the client's
 * life when no decider answers; deny beyond it. */
export function failOpenWithin(allowance: Quantity): FailurePolicy {
  return { kind: "openWithin", allowance: positiveQuantity(allowance, "allowance") };
}

/** A decider's answer, or the failure policy's (`offline`). */
export interface Authorization {
  allow: boolean;
  /** The hold placed: name it as `holdId` on the work's usage events. */
  holdId?: string;
  /** What is left of the tightest budget after this request (or of the offline allowance),
   * an exact decimal. */
  remaining?: string;
  /** The currency of amounts (the customer's billing currency). */
  currency?: string;
  /** The stable reason code of a denial. */
  reason?: string;
  detail?: string;
  /** Decided by the failure policy: no decider answered. */
  offline: boolean;
}

/** What an authorize request may say besides the meter and quantity. */
export interface AuthorizeOptions {
  /** Group-by values the usage will carry (`{ model: "gpt-4o" }`), for prices per group. */
  group?: Record<string, string>;
  /** How long the work may take (ms); the hold lasts this long plus the decider's grace. */
  deadlineMs?: number;
  /** The hold's id (an event id); a retry with the same id gets the same hold. Default: a
   * new UUID per call, reused for the one retry after a lost answer. */
  requestId?: string;
}

/** A request refused as a whole (a bad API key, an agent the key may not act for, a
 * malformed request): `status` and the gateway's `code`. A denial is never this. */
export class SpendError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(`${status} ${code}: ${message}`);
    this.name = "SpendError";
    this.status = status;
    this.code = code;
  }
}

/** The JSON body of an authorize request as the decider reads it (without the agent, which
 * is a subject token on NATS and a body field over HTTP). */
export function authorizeBody(
  meter: string,
  maxQuantity: Quantity,
  options: AuthorizeOptions = {},
): Record<string, unknown> {
  if (typeof meter !== "string" || !/^[A-Za-z0-9_-]{1,64}$/.test(meter)) {
    throw new TypeError(`meter ${JSON.stringify(meter)} is not a meter slug`);
  }
  const body: Record<string, unknown> = {
    meter,
    max_quantity: positiveQuantity(maxQuantity, "maxQuantity"),
  };
  if (options.group && Object.keys(options.group).length > 0) {
    for (const [k, v] of Object.entries(options.group)) {
      if (typeof v !== "string") throw new TypeError(`group value ${k} must be a string`);
    }
    body.group = { ...options.group };
  }
  if (options.deadlineMs !== undefined) {
    if (!Number.isSafeInteger(options.deadlineMs) || options.deadlineMs < 1) {
      throw new RangeError(`deadlineMs must be a positive integer, got ${options.deadlineMs}`);
    }
    body.deadline_ms = options.deadlineMs;
  }
  body.request_id = checkEventId(options.requestId ?? newEventId().replaceAll("-", ""));
  return body;
}

/** An answer's JSON as an {@link Authorization}. */
export function authorizationOf(answer: unknown): Authorization {
  if (answer === null || typeof answer !== "object" || typeof (answer as { allow?: unknown }).allow !== "boolean") {
    throw new SpendError(200, "invalid_answer", `not an authorization: ${JSON.stringify(answer)}`);
  }
  const a = answer as Record<string, unknown>;
  const out: Authorization = { allow: a.allow as boolean, offline: false };
  if (typeof a.hold_id === "string") out.holdId = a.hold_id;
  if (typeof a.remaining === "string" || typeof a.remaining === "number") {
    const remaining = String(a.remaining);
    if (!isDecimal(remaining)) throw new SpendError(200, "invalid_answer", `remaining ${remaining}`);
    out.remaining = remaining;
  }
  if (typeof a.currency === "string") out.currency = a.currency;
  if (typeof a.reason === "string") out.reason = a.reason;
  if (typeof a.detail === "string") out.detail = a.detail;
  return out;
}

/** The failure policy's decisions over a client's life: declared quantities allowed offline
 * per key (meter, or customer and meter). */
export class OfflineLedger {
  readonly policy: FailurePolicy;
  private readonly used = new Map<string, string>();

  constructor(policy: FailurePolicy) {
    this.policy = policy;
  }

  decide(key: string, quantity: string): Authorization {
    if (this.policy.kind !== "openWithin") {
      return { allow: false, reason: "unavailable", detail: "no spend decider answered (fail closed)", offline: true };
    }
    const total = decimalAdd(this.used.get(key) ?? "0", quantity);
    if (decimalCompare(total, this.policy.allowance) > 0) {
      return {
        allow: false,
        reason: "unavailable",
        detail: "no spend decider answered and the offline allowance is used up",
        offline: true,
      };
    }
    this.used.set(key, total);
    return {
      allow: true,
      remaining: decimalSub(this.policy.allowance, total),
      detail: "no spend decider answered: allowed within the offline allowance",
      offline: true,
    };
  }
}

export interface SpendClientOptions {
  /** Wait for each answer. Default 2000. */
  timeoutMs?: number;
  /** Default {@link failClosed}. */
  policy?: FailurePolicy;
}

/**
 * Asks the spend deciders through a Tally gateway (`url`, e.g. `http://127.0.0.1:8088`) with
 * a customer's API key (`tk_...`): the key names the customer, `agent` must be one the key
 * may act for.
 */
export class SpendClient {
  readonly timeoutMs: number;
  readonly policy: FailurePolicy;
  private readonly base: string;
  private readonly auth: string;
  private readonly offline: OfflineLedger;

  constructor(url: string, apiKey: string, options: SpendClientOptions = {}) {
    const u = new URL(url);
    if (u.protocol !== "http:" && u.protocol !== "https:") {
      throw new TypeError(`gateway URL ${url} must be http:// or https://`);
    }
    this.base = `${u.origin}${u.pathname.replace(/\/+$/, "")}`;
    this.auth = `Bearer ${apiKey}`;
    this.timeoutMs = options.timeoutMs ?? 2000;
    this.policy = options.policy ?? failClosed();
    this.offline = new OfflineLedger(this.policy);
  }

  /** May `agent` use up to `maxQuantity` of `meter`? A lost answer is asked again once with
   * the same request id (the decider answers with the same hold); then the policy decides. */
  async authorize(
    agent: string,
    meter: string,
    maxQuantity: Quantity,
    options: AuthorizeOptions = {},
  ): Promise<Authorization> {
    const decider = authorizeBody(meter, maxQuantity, options);
    const body = { agent: checkToken(agent, "source"), ...decider };
    for (let i = 0; i < 2; i++) {
      const answer = await this.call("POST", "/v1/authorize", body);
      if (answer !== undefined) return authorizationOf(answer);
    }
    return this.offline.decide(meter, decider.max_quantity as string);
  }

  /** Gives what is left of a hold back: call it once the work is done below its `maxQuantity`
   * (after its usage events, which name the hold, are stored) or was cancelled; usage settles
   * a hold only down to what was used, and the rest stays reserved until the hold expires
   * otherwise. False when it was not held any more (used up, released, expired) or no decider
   * answered. Rejects with `InvalidEvent` for a bad agent or hold id and `SpendError` when the
   * gateway refuses the request. */
  async release(agent: string, holdId: string): Promise<boolean> {
    const answer = await this.call("POST", "/v1/authorize", {
      agent: checkToken(agent, "source"),
      release: checkEventId(holdId),
    });
    return answer !== undefined && (answer as { allow?: unknown }).allow === true;
  }

  /** The customer's spend of the period, holds and budgets as the decider holds them
   * (amounts are decimal strings); undefined when no decider answered. */
  async balance(): Promise<Record<string, unknown> | undefined> {
    return (await this.call("GET", "/v1/balance", undefined)) as Record<string, unknown> | undefined;
  }

  /** One request: the answer's JSON, undefined when no decider answered. */
  private async call(method: string, path: string, body: unknown): Promise<unknown> {
    let r: Response;
    let text: string;
    try {
      r = await fetch(this.base + path, {
        method,
        headers: { authorization: this.auth, "content-type": "application/json" },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      text = await r.text();
    } catch {
      return undefined; // refused, reset or timed out: no decider answered
    }
    if (r.status === 200) return JSON.parse(text);
    if (r.status === 502 || r.status === 503 || r.status === 504) return undefined;
    let code = `http_${r.status}`;
    let message = text.slice(0, 500);
    try {
      const err = (JSON.parse(text) as { error?: { code?: unknown; message?: unknown } }).error;
      if (typeof err?.code === "string") code = err.code;
      if (typeof err?.message === "string") message = err.message;
    } catch {
      // not JSON: the text is the message
    }
    throw new SpendError(r.status, code, message);
  }
}
