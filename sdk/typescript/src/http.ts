/**
 * Client of the Tally HTTP ingest gateway (`POST /v1/events`, docs/INGEST.md), on Node's
 * built-in `fetch` and `zlib`: no dependencies.
 *
 * - Batching: events go in requests of at most `batchMaxEvents` events and `batchMaxBytes`
 *   bytes of JSON (the gateway's defaults); a request the gateway finds too large (413) is
 *   split in halves and sent again.
 * - gzip: bodies are compressed (`Content-Encoding: gzip`) unless `gzip: false`.
 * - Retries: events answered `failed`, requests answered 5xx or 408, 429 (after
 *   `Retry-After`) and connection errors are sent again with the *same* ids and bytes after a
 *   capped exponential backoff, at most `maxAttempts` times in all. A retry of an event that
 *   was in fact stored comes back `duplicate`: it counts once.
 * - Verdicts: {@link HttpClient.send} resolves to one verdict per event in the caller's order.
 *   A request refused as a whole for a reason no retry fixes (bad key, wrong content type)
 *   rejects with {@link GatewayError}.
 */

import { promisify } from "node:util";
import { gzip as gzipCb } from "node:zlib";

import { encodeEvent, type CloudEvent } from "./events.js";
import { backoffMs, GatewayError, SendResult, sleep, verdict, type Verdict } from "./verdicts.js";

const gzipAsync = promisify(gzipCb);

export const BATCH_CONTENT_TYPE = "application/cloudevents-batch+json";

export interface HttpClientOptions {
  /** Compress request bodies. Default true. */
  gzip?: boolean;
  /** Events per request. Default 1000 (the gateway's `batch_max_events`). */
  batchMaxEvents?: number;
  /** JSON bytes per request. Default 1,000,000 (below the gateway's `body_max_bytes`). */
  batchMaxBytes?: number;
  /** Attempts per event, the first included. Default 6. */
  maxAttempts?: number;
  /** First backoff; doubles per attempt up to `backoffMaxMs`. Default 100. */
  backoffInitialMs?: number;
  /** Default 5000. */
  backoffMaxMs?: number;
  /** Longest wait a `Retry-After` may ask for. Default 60000. */
  retryAfterMaxMs?: number;
  /** Per request. Default 30000. */
  timeoutMs?: number;
}

interface Item {
  index: number;
  id: string | null;
  body: Buffer;
}

interface Answer {
  status: number;
  headers: Headers;
  json: unknown;
  text: string;
}

function errorOf(a: Answer): { code: string; message: string; field: string | undefined } {
  const err =
    a.json !== null && typeof a.json === "object" ? (a.json as { error?: unknown }).error : undefined;
  if (err !== null && typeof err === "object") {
    const e = err as Record<string, unknown>;
    return {
      code: typeof e.code === "string" ? e.code : `http_${a.status}`,
      message: typeof e.message === "string" ? e.message : "",
      field: typeof e.field === "string" ? e.field : undefined,
    };
  }
  return { code: `http_${a.status}`, message: a.text.slice(0, 500), field: undefined };
}

/**
 * Sends usage events to a Tally gateway. `url` is the gateway's base URL
 * (`http://127.0.0.1:8088`), `apiKey` a `tk_<id>_<secret>` key; the events' `subject` must be
 * the key's customer. Calls on one client run one after another.
 */
export class HttpClient {
  readonly gzip: boolean;
  readonly batchMaxEvents: number;
  readonly batchMaxBytes: number;
  readonly maxAttempts: number;
  readonly backoffInitialMs: number;
  readonly backoffMaxMs: number;
  readonly retryAfterMaxMs: number;
  readonly timeoutMs: number;
  private readonly endpoint: string;
  private readonly auth: string;
  private buffer: CloudEvent[] = [];
  private buffered = new SendResult();
  private tail: Promise<unknown> = Promise.resolve();

  constructor(url: string, apiKey: string, options: HttpClientOptions = {}) {
    const u = new URL(url);
    if (u.protocol !== "http:" && u.protocol !== "https:") {
      throw new TypeError(`gateway URL ${url} must be http:// or https://`);
    }
    this.endpoint = `${u.origin}${u.pathname.replace(/\/+$/, "")}/v1/events`;
    this.auth = `Bearer ${apiKey}`;
    this.gzip = options.gzip ?? true;
    this.batchMaxEvents = options.batchMaxEvents ?? 1000;
    this.batchMaxBytes = options.batchMaxBytes ?? 1_000_000;
    this.maxAttempts = options.maxAttempts ?? 6;
    this.backoffInitialMs = options.backoffInitialMs ?? 100;
    this.backoffMaxMs = options.backoffMaxMs ?? 5000;
    this.retryAfterMaxMs = options.retryAfterMaxMs ?? 60_000;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    if (this.batchMaxEvents < 1 || this.batchMaxBytes < 2 || this.maxAttempts < 1) {
      throw new RangeError("batchMaxEvents, batchMaxBytes and maxAttempts must be positive");
    }
  }

  /** Runs `fn` after every earlier call of this client. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /**
   * Sends `events` in as many requests as the limits need; one verdict per event, in order.
   * Each event is encoded once: every retry sends the same bytes and the same id.
   */
  send(events: readonly object[]): Promise<SendResult> {
    const items = events.map((e, index): Item => {
      const id = (e as { id?: unknown }).id;
      return { index, id: typeof id === "string" ? id : null, body: encodeEvent(e) };
    });
    return this.serial(() => this.sendItems(items));
  }

  /** Buffers `event`; a full batch is sent at once. The next {@link flush} resolves to the
   * verdicts of every event added since the last flush, in order. */
  add(event: CloudEvent): Promise<void> {
    return this.serial(async () => {
      this.buffer.push(event);
      if (this.buffer.length >= this.batchMaxEvents) await this.drain();
    });
  }

  /** Sends what {@link add} buffered. */
  flush(): Promise<SendResult> {
    return this.serial(async () => {
      await this.drain();
      const result = this.buffered;
      this.buffered = new SendResult();
      return result;
    });
  }

  /** Flushes; the client holds no connection of its own (fetch pools them). */
  close(): Promise<SendResult> {
    return this.flush();
  }

  private async drain(): Promise<void> {
    const batch = this.buffer;
    this.buffer = [];
    if (batch.length === 0) return;
    const items = batch.map((e, index): Item => ({ index, id: e.id, body: encodeEvent(e) }));
    this.buffered.extend(await this.sendItems(items));
  }

  private async sendItems(items: Item[]): Promise<SendResult> {
    const slots: (Verdict | undefined)[] = new Array(items.length);
    const result = new SendResult();
    for (const chunk of this.chunks(items)) await this.sendChunk(chunk, slots, result);
    result.verdicts = slots.filter((v): v is Verdict => v !== undefined);
    if (result.verdicts.length !== items.length) throw new Error("internal: a verdict is missing");
    return result;
  }

  private *chunks(items: Item[]): Generator<Item[]> {
    let chunk: Item[] = [];
    let size = 2;
    for (const item of items) {
      let grown = size + item.body.length + (chunk.length > 0 ? 1 : 0);
      if (chunk.length > 0 && (chunk.length >= this.batchMaxEvents || grown > this.batchMaxBytes)) {
        yield chunk;
        chunk = [];
        grown = 2 + item.body.length;
      }
      chunk.push(item);
      size = grown;
    }
    if (chunk.length > 0) yield chunk;
  }

  private async sendChunk(
    chunk: Item[],
    slots: (Verdict | undefined)[],
    result: SendResult,
  ): Promise<void> {
    let pending = chunk;
    let last = { code: "unavailable", detail: "not sent" };
    let attempt = 0;
    let delay = 0;
    while (pending.length > 0 && attempt < this.maxAttempts) {
      if (attempt > 0) {
        result.retries += 1;
        await sleep(delay);
      }
      attempt += 1;
      const body = Buffer.concat([
        Buffer.from("["),
        ...pending.flatMap((item, i) => (i === 0 ? [item.body] : [Buffer.from(","), item.body])),
        Buffer.from("]"),
      ]);
      const wire = this.gzip ? await gzipAsync(body) : body;
      result.requests += 1;
      result.bodyBytes += body.length;
      result.wireBytes += wire.length;
      let answer: Answer;
      try {
        answer = await this.post(wire);
      } catch (e) {
        const cause = (e as { cause?: { code?: string; message?: string } }).cause;
        last = {
          code: "connection_error",
          detail: `${(e as Error).name}: ${(e as Error).message}${cause ? ` (${cause.code ?? cause.message})` : ""}`,
        };
        delay = backoffMs(attempt, this.backoffInitialMs, this.backoffMaxMs);
        continue;
      }
      const results =
        answer.json !== null && typeof answer.json === "object"
          ? (answer.json as { results?: unknown }).results
          : undefined;
      if (Array.isArray(results) && [200, 400, 503].includes(answer.status)) {
        const still: Item[] = [];
        const answered = new Set<number>();
        for (const r of results as Record<string, unknown>[]) {
          const idx = r?.index;
          if (typeof idx !== "number" || idx < 0 || idx >= pending.length || answered.has(idx)) continue;
          answered.add(idx);
          const item = pending[idx]!;
          const status = r.status;
          if (status !== "accepted" && status !== "duplicate" && status !== "rejected") {
            still.push(item);
            last = {
              code: typeof r.code === "string" ? r.code : "unavailable",
              detail: typeof r.detail === "string" ? r.detail : "not stored",
            };
            continue;
          }
          slots[item.index] = verdict(item.index, typeof r.id === "string" ? r.id : item.id, status, r);
        }
        // an event the answer left out was not confirmed: send it again
        pending.forEach((item, i) => {
          if (!answered.has(i)) still.push(item);
        });
        still.sort((a, b) => a.index - b.index);
        pending = still;
        delay = backoffMs(attempt, this.backoffInitialMs, this.backoffMaxMs);
        continue;
      }
      const { code, message, field } = errorOf(answer);
      if (answer.status === 429) {
        last = { code, detail: message };
        delay = this.retryAfter(answer, attempt);
        continue;
      }
      if (answer.status === 413 && (code === "body_too_large" || code === "batch_too_large")) {
        await this.split(pending, slots, result, message);
        return;
      }
      if (answer.status === 408 || answer.status >= 500) {
        last = { code, detail: message };
        delay = backoffMs(attempt, this.backoffInitialMs, this.backoffMaxMs);
        continue;
      }
      throw new GatewayError(answer.status, code, message, field);
    }
    for (const item of pending) {
      slots[item.index] = verdict(item.index, item.id, "failed", last);
    }
  }

  /** The gateway's limits are below this client's: halve the request. A single event whose
   * body alone is too large is rejected (`too_large`). */
  private async split(
    pending: Item[],
    slots: (Verdict | undefined)[],
    result: SendResult,
    message: string,
  ): Promise<void> {
    if (pending.length === 1) {
      const item = pending[0]!;
      slots[item.index] = verdict(item.index, item.id, "rejected", { code: "too_large", detail: message });
      return;
    }
    const half = Math.floor(pending.length / 2);
    await this.sendChunk(pending.slice(0, half), slots, result);
    await this.sendChunk(pending.slice(half), slots, result);
  }

  private retryAfter(answer: Answer, attempt: number): number {
    const raw = answer.headers.get("retry-after");
    const seconds = raw === null ? NaN : Number(raw);
    if (!Number.isFinite(seconds) || seconds < 0) {
      return backoffMs(attempt, this.backoffInitialMs, this.backoffMaxMs);
    }
    return Math.min(this.retryAfterMaxMs, seconds * 1000);
  }

  private async post(wire: Buffer): Promise<Answer> {
    const headers: Record<string, string> = {
      authorization: this.auth,
      "content-type": BATCH_CONTENT_TYPE,
      accept: "application/json",
      "user-agent": "tally-sdk-typescript/0.1.0",
    };
    if (this.gzip) headers["content-encoding"] = "gzip";
    const response = await fetch(this.endpoint, {
      method: "POST",
      headers,
      body: wire,
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    const text = await response.text();
    let json: unknown = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    return { status: response.status, headers: response.headers, json, text };
  }
}
