/**
 * Publish usage events straight to NATS JetStream with the `nats` package (import from
 * `tally-sdk/nats`; `nats` is an optional peer dependency: `npm install nats`).
 *
 * Each event goes to `<prefix>.<customer>.<agent>` with the header
 * `Nats-Msg-Id: <customer>:<agent>:<id>`: the event's whole identity, so JetStream's
 * deduplication never lets one customer's or agent's event suppress another's that uses the
 * same id. Unacknowledged publishes (timeouts, no stream, a lost connection) are retried with
 * the same bytes and message id after a capped exponential backoff; a retry of a message that
 * was in fact stored is acknowledged as a duplicate.
 *
 * Log in as the customer's NATS user (docs/SECURITY.md): it may publish only on its own
 * subjects.
 */

import {
  connect,
  type ConnectionOptions,
  type JetStreamClient,
  type JetStreamPublishOptions,
  type NatsConnection,
} from "nats";

import { checkEventId, checkToken, encodeEvent, InvalidEvent, natsMsgId } from "./events.js";
import { backoffMs, SendResult, sleep, verdict, type Verdict } from "./verdicts.js";

export interface NatsPublisherOptions {
  /** First subject token. Default `usage`. */
  subjectPrefix?: string;
  /** When set, the server refuses publishes that would land in another stream. */
  stream?: string;
  /** Wait for each ack. Default 5000. */
  timeoutMs?: number;
  /** Attempts per event, the first included. Default 6. */
  maxAttempts?: number;
  /** Default 100, doubling up to `backoffMaxMs`. */
  backoffInitialMs?: number;
  /** Default 5000. */
  backoffMaxMs?: number;
  /** Publishes awaiting their acks at once in {@link NatsPublisher.publishMany}. Default 256. */
  inFlightMax?: number;
}

/** Publishes CloudEvents to JetStream with the `Nats-Msg-Id` contract. */
export class NatsPublisher {
  readonly js: JetStreamClient;
  readonly subjectPrefix: string;
  readonly stream: string | undefined;
  readonly timeoutMs: number;
  readonly maxAttempts: number;
  readonly backoffInitialMs: number;
  readonly backoffMaxMs: number;
  readonly inFlightMax: number;
  private nc: NatsConnection | undefined;

  /** From a JetStream client you own; see {@link NatsPublisher.connect} for one that owns
   * its connection. */
  constructor(js: JetStreamClient, options: NatsPublisherOptions = {}) {
    this.js = js;
    this.subjectPrefix = options.subjectPrefix ?? "usage";
    this.stream = options.stream;
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.maxAttempts = options.maxAttempts ?? 6;
    this.backoffInitialMs = options.backoffInitialMs ?? 100;
    this.backoffMaxMs = options.backoffMaxMs ?? 5000;
    this.inFlightMax = options.inFlightMax ?? 256;
    if (this.maxAttempts < 1 || this.inFlightMax < 1) {
      throw new RangeError("maxAttempts and inFlightMax must be positive");
    }
  }

  /** Connects (`connection`: `servers`, `user`, `pass`, `authenticator`, ... of `nats`) and
   * returns a publisher owning the connection; {@link close} drains it. */
  static async connect(
    connection: ConnectionOptions,
    options: NatsPublisherOptions = {},
  ): Promise<NatsPublisher> {
    const nc = await connect(connection);
    const publisher = new NatsPublisher(nc.jetstream(), options);
    publisher.nc = nc;
    return publisher;
  }

  /** Drains and closes the connection when {@link connect} opened it. */
  async close(): Promise<void> {
    const nc = this.nc;
    this.nc = undefined;
    if (nc) await nc.drain();
  }

  /** Publishes one event; its verdict (index 0). */
  publish(event: object): Promise<Verdict> {
    return this.publishOne(0, event, new SendResult());
  }

  /** Publishes `events` with at most `inFlightMax` awaiting their acks; one verdict per event,
   * in order. */
  async publishMany(events: readonly object[]): Promise<SendResult> {
    const result = new SendResult();
    const verdicts: Verdict[] = new Array(events.length);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < events.length) {
        const i = next++;
        verdicts[i] = await this.publishOne(i, events[i]!, result);
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.inFlightMax, events.length) }, worker));
    result.verdicts = verdicts;
    return result;
  }

  private async publishOne(index: number, event: object, result: SendResult): Promise<Verdict> {
    const e = event as Record<string, unknown>;
    const id = typeof e.id === "string" ? e.id : null;
    let customer: string;
    let agent: string;
    try {
      customer = checkToken(e.subject, "subject");
      agent = checkToken(e.source, "source");
      checkEventId(e.id);
    } catch (err) {
      if (err instanceof InvalidEvent) {
        return verdict(index, id, "rejected", { code: "malformed", field: err.field, detail: err.message });
      }
      throw err;
    }
    const subject = `${this.subjectPrefix}.${customer}.${agent}`;
    const options: Partial<JetStreamPublishOptions> = {
      msgID: natsMsgId(customer, agent, id!),
      timeout: this.timeoutMs,
    };
    if (this.stream !== undefined) options.expect = { streamName: this.stream };
    const body = encodeEvent(event);
    let detail = "not sent";
    for (let attempt = 1; attempt <= this.maxAttempts; attempt++) {
      if (attempt > 1) {
        result.retries += 1;
        await sleep(backoffMs(attempt - 1, this.backoffInitialMs, this.backoffMaxMs));
      }
      result.requests += 1;
      result.bodyBytes += body.length;
      result.wireBytes += body.length;
      try {
        const ack = await this.js.publish(subject, body, options);
        return verdict(index, id, ack.duplicate ? "duplicate" : "accepted");
      } catch (err) {
        const code = (err as { code?: unknown }).code;
        if (code === "MAX_PAYLOAD_EXCEEDED") {
          return verdict(index, id, "rejected", { code: "too_large", detail: String(err) });
        }
        detail =
          code === "503"
            ? `no stream answered on ${subject}`
            : `${(err as Error).name ?? "Error"}: ${(err as Error).message ?? String(err)}`;
      }
    }
    return verdict(index, id, "failed", { code: "unavailable", detail });
  }
}
