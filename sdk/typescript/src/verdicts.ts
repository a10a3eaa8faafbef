/**
 * What happened to each event sent: the gateway's per-event answers, also used by the NATS
 * publisher so both ways of sending report alike.
 */

/**
 * `accepted`: stored. `duplicate`: already stored under the same identity, counts once.
 * `rejected`: invalid (`code` `malformed`, `too_large`, `subject_mismatch`; `field` the
 * attribute): resending it unchanged is rejected again. `failed`: not stored after every retry
 * (`code` `unavailable`, `connection_error`, `rate_limited` or `http_<status>`): resend it
 * later with the same id.
 */
export type Status = "accepted" | "duplicate" | "rejected" | "failed";

/** The outcome of one event; `index` is its position in what the caller passed. */
export interface Verdict {
  index: number;
  id: string | null;
  status: Status;
  code?: string;
  field?: string;
  detail?: string;
}

/** Accepted now or before: the event is in the stream and counts once. */
export function isStored(v: Verdict): boolean {
  return v.status === "accepted" || v.status === "duplicate";
}

export function verdict(
  index: number,
  id: string | null,
  status: Status,
  extra: { code?: unknown; field?: unknown; detail?: unknown } = {},
): Verdict {
  const v: Verdict = { index, id, status };
  if (typeof extra.code === "string") v.code = extra.code;
  if (typeof extra.field === "string") v.field = extra.field;
  if (typeof extra.detail === "string") v.detail = extra.detail;
  return v;
}

/** Verdicts in the caller's order, with what it took to get them. */
export class SendResult {
  verdicts: Verdict[] = [];
  /** HTTP requests (or JetStream publishes) made, retries included. */
  requests = 0;
  /** Bytes of JSON sent, retries included, before compression. */
  bodyBytes = 0;
  /** Bytes of request bodies on the wire (after gzip when on). */
  wireBytes = 0;
  retries = 0;

  private count(status: Status): number {
    return this.verdicts.filter((v) => v.status === status).length;
  }
  get accepted(): number {
    return this.count("accepted");
  }
  get duplicates(): number {
    return this.count("duplicate");
  }
  get rejected(): number {
    return this.count("rejected");
  }
  get failed(): number {
    return this.count("failed");
  }
  /** Every event is stored (accepted or duplicate). */
  get ok(): boolean {
    return this.verdicts.every(isStored);
  }
  /** The rejected and failed verdicts. */
  notStored(): Verdict[] {
    return this.verdicts.filter((v) => !isStored(v));
  }
  /** Appends `other`'s verdicts (re-indexed after this one's) and adds its counters. */
  extend(other: SendResult): void {
    const base = this.verdicts.length;
    for (const v of other.verdicts) this.verdicts.push({ ...v, index: base + v.index });
    this.requests += other.requests;
    this.bodyBytes += other.bodyBytes;
    this.wireBytes += other.wireBytes;
    this.retries += other.retries;
  }
}

/**
 * The gateway refused a request as a whole, with a stable `code` (docs/INGEST.md): 401
 * `invalid_key` or `revoked_key`, 415 `unsupported_media_type`, ... Retrying the same request
 * cannot help.
 */
export class GatewayError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field: string | undefined;
  constructor(status: number, code: string, message: string, field?: string) {
    super(`HTTP ${status} ${code}: ${message}`);
    this.name = "GatewayError";
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

/** Capped exponential backoff with jitter: half to all of min(max, initial * 2^(attempt-1)). */
export function backoffMs(attempt: number, initialMs: number, maxMs: number): number {
  const capped = Math.min(maxMs, initialMs * 2 ** (attempt - 1));
  return capped * (0.5 + Math.random() / 2);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
