/**
 * Client of the rater's usage query, `GET /v1/meters/{slug}/query` (docs/PRICING.md, "Usage
 * query API"): one customer's usage of one meter per window (`MINUTE`, `HOUR`, `DAY`, `MONTH`
 * in an IANA time zone) and per group, read from the rolled-up usage. Values are exact
 * decimal strings, kept as the rater wrote them. The rater's API takes an API token (any
 * role that reads: `reader` and up). No dependencies.
 */

import { isDecimal } from "./decimal.js";

export type WindowSize = "MINUTE" | "HOUR" | "DAY" | "MONTH";

export interface UsageQuery {
  /** The customer (required: API tokens are operator tokens, not scoped to a customer). */
  customer: string;
  /** A whole minute that starts a window of `windowSize` in `windowTimeZone`. A `Date` is
   * written in UTC. */
  from: Date | string;
  /** A whole minute after `from` (default: now, rounded up to a minute). */
  to?: Date | string;
  /** Default: one row per group for the whole range. */
  windowSize?: WindowSize;
  /** IANA zone where hours, days and months begin. Default `UTC`. */
  windowTimeZone?: string;
  /** The meter's group-by names, and `agent`. */
  groupBy?: readonly string[];
  /** Only usage whose group value `name` is the value (or one of the values). */
  filterGroup?: Readonly<Record<string, string | readonly string[]>>;
}

/** One window and group that holds usage. */
export interface UsageRow {
  /** RFC 3339 with the zone's offset. */
  windowStart: string;
  windowEnd: string;
  customer: string;
  /** The group values asked for in `groupBy`. */
  groupBy: Record<string, string>;
  /** Exact decimal string, folded by the meter's aggregation. */
  value: string;
}

export interface UsageQueryResult {
  meter: string;
  /** `SUM`, `COUNT`, `UNIQUE_COUNT`, `MIN`, `MAX`, `LATEST`. */
  aggregation: string;
  customer: string;
  from: string;
  to: string;
  windowSize: WindowSize | null;
  windowTimeZone: string;
  groupBy: string[];
  /** By window, then group values. */
  data: UsageRow[];
}

/** A query the rater refused: HTTP `status`, its stable `code` (`invalid_from`,
 * `unknown_parameter`, `not_found`, `window_size_too_small`, ...) and `detail`. */
export class UsageQueryError extends Error {
  readonly status: number;
  readonly code: string;
  readonly detail: string;
  constructor(status: number, code: string, detail: string) {
    super(`${status} ${code}: ${detail}`);
    this.name = "UsageQueryError";
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

function instant(value: Date | string, what: string): string {
  if (typeof value === "string") return value;
  if (!(value instanceof Date) || Number.isNaN(value.getTime())) {
    throw new TypeError(`${what} must be a Date or an RFC 3339 string`);
  }
  return value.toISOString().replace(/\.000Z$/, "Z");
}

/** The query string of `q` (repeated names for `groupBy` and multi-valued filters). */
export function usageQueryString(q: UsageQuery): string {
  const p = new URLSearchParams();
  if (typeof q.customer !== "string" || q.customer === "") throw new TypeError("customer is required");
  p.append("customer", q.customer);
  p.append("from", instant(q.from, "from"));
  if (q.to !== undefined) p.append("to", instant(q.to, "to"));
  if (q.windowSize !== undefined) p.append("window_size", q.windowSize);
  if (q.windowTimeZone !== undefined) p.append("window_time_zone", q.windowTimeZone);
  for (const g of q.groupBy ?? []) p.append("group_by", g);
  for (const [name, values] of Object.entries(q.filterGroup ?? {})) {
    for (const v of typeof values === "string" ? [values] : values) p.append(`filter_group_${name}`, v);
  }
  // URLSearchParams writes a space as `+` and `+` as `%2B`: what the rater decodes
  return p.toString();
}

function str(v: unknown, what: string): string {
  if (typeof v !== "string") throw new UsageQueryError(200, "invalid_answer", `${what} is not a string`);
  return v;
}

function resultOf(body: unknown): UsageQueryResult {
  if (body === null || typeof body !== "object" || !Array.isArray((body as { data?: unknown }).data)) {
    throw new UsageQueryError(200, "invalid_answer", `not a usage query answer: ${JSON.stringify(body)}`);
  }
  const b = body as Record<string, unknown>;
  const data = (b.data as unknown[]).map((row): UsageRow => {
    const r = row as Record<string, unknown>;
    const value = str(r.value, "value");
    if (!isDecimal(value)) throw new UsageQueryError(200, "invalid_answer", `value ${value} is not a decimal`);
    return {
      windowStart: str(r.window_start, "window_start"),
      windowEnd: str(r.window_end, "window_end"),
      customer: str(r.customer, "customer"),
      groupBy: { ...((r.group_by as Record<string, string> | null) ?? {}) },
      value,
    };
  });
  return {
    meter: str(b.meter, "meter"),
    aggregation: str(b.aggregation, "aggregation"),
    customer: str(b.customer, "customer"),
    from: str(b.from, "from"),
    to: str(b.to, "to"),
    windowSize: (b.window_size as WindowSize | null | undefined) ?? null,
    windowTimeZone: str(b.window_time_zone, "window_time_zone"),
    groupBy: Array.isArray(b.group_by) ? (b.group_by as string[]) : [],
    data,
  };
}

export interface UsageQueryClientOptions {
  /** Per request. Default 30000. */
  timeoutMs?: number;
}

/** Queries a rater's API (`url`: `http://` and its `rater.api_addr`) with an API token. */
export class UsageQueryClient {
  readonly timeoutMs: number;
  private readonly base: string;
  private readonly auth: string;

  constructor(url: string, token: string, options: UsageQueryClientOptions = {}) {
    const u = new URL(url);
    if (u.protocol !== "http:" && u.protocol !== "https:") {
      throw new TypeError(`rater URL ${url} must be http:// or https://`);
    }
    this.base = `${u.origin}${u.pathname.replace(/\/+$/, "")}`;
    this.auth = `Bearer ${token}`;
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** The usage of meter `meter` (its slug) as `q` asks; rejects with
   * {@link UsageQueryError} when the rater refuses the query. */
  async query(meter: string, q: UsageQuery): Promise<UsageQueryResult> {
    const url = `${this.base}/v1/meters/${encodeURIComponent(meter)}/query?${usageQueryString(q)}`;
    const r = await fetch(url, {
      headers: { authorization: this.auth, accept: "application/json" },
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    const text = await r.text();
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    if (r.status !== 200) {
      const e = (body ?? {}) as { code?: unknown; detail?: unknown; error?: { code?: unknown; message?: unknown } };
      const code = typeof e.code === "string" ? e.code : typeof e.error?.code === "string" ? e.error.code : `http_${r.status}`;
      const detail =
        typeof e.detail === "string" ? e.detail : typeof e.error?.message === "string" ? e.error.message : text.slice(0, 500);
      throw new UsageQueryError(r.status, code, detail);
    }
    return resultOf(body);
  }
}
