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
 * subjects and receive replies (acks, answers) only on `_INBOX.<user>.>`. {@link connect}
 * (and the `connect` of the publisher and the spend client) sets the inbox prefix to
 * `_INBOX.<user>` whenever a `user` is given, unless `inboxPrefix` says otherwise.
 *
 * {@link NatsSpendClient} asks the spend deciders over NATS request/reply
 * (`<root>.authorize.<customer>.<agent>`, `<root>.balance.<customer>`).
 */

import {
  connect as natsConnect,
  type ConnectionOptions,
  type JetStreamClient,
  type JetStreamPublishOptions,
  type NatsConnection,
} from "nats";

import { checkEventId, checkToken, encodeEvent, InvalidEvent, natsMsgId, type Quantity } from "./events.js";
import {
  authorizationOf,
  authorizeBody,
  failClosed,
  OfflineLedger,
  SpendError,
  type AuthorizeOptions,
  type Authorization,
  type FailurePolicy,
} from "./spend.js";
import { backoffMs, SendResult, sleep, verdict, type Verdict } from "./verdicts.js";

/** The reply-subject prefix a NATS user may receive on: `_INBOX.<user>` (the permissions
 * `tally-gateway nats-config` writes allow `_INBOX.<user>.>` and nothing else). */
export function inboxPrefix(user: string): string {
  return `_INBOX.${user}`;
}

function urlUser(servers: string | string[] | undefined): string | undefined {
  const first = Array.isArray(servers) ? servers[0] : servers;
  if (!first) return undefined;
  try {
    const u = new URL(first.includes("://") ? first : `nats://${first}`);
    return u.username ? decodeURIComponent(u.username) : undefined;
  } catch {
    return undefined;
  }
}

/** `connection` with `inboxPrefix` set to `_INBOX.<user>` when a user is given (`user`, or
 * the first server URL's `nats://user:pass@...`) and no `inboxPrefix` is; otherwise
 * unchanged. */
export function withUserInbox(connection: ConnectionOptions): ConnectionOptions {
  if (connection.inboxPrefix !== undefined) return connection;
  const user = connection.user || urlUser(connection.servers);
  if (!user) return connection;
  return { ...connection, inboxPrefix: inboxPrefix(user) };
}

/** `connect` of the `nats` package, with the user's own inbox prefix by default
 * ({@link withUserInbox}): without it a restricted user's requests get no replies (its
 * publishes time out waiting for acks). */
export function connect(connection: ConnectionOptions = {}): Promise<NatsConnection> {
  return natsConnect(withUserInbox(connection));
}

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

  /** Connects (`connection`: `servers`, `user`, `pass`, `authenticator`, `inboxPrefix`, ...
   * of `nats`; the inbox prefix is `_INBOX.<user>` unless given) and returns a publisher
   * owning the connection; {@link close} drains it. */
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

export interface NatsSpendClientOptions {
  /** The deciders' subject root (`spend.subject_root`). Default `tally`. */
  subjectRoot?: string;
  /** Wait for each answer. Default 2000. */
  timeoutMs?: number;
  /** Default {@link failClosed}. */
  policy?: FailurePolicy;
}

/**
 * Asks the spend deciders (`tally-spend`) over NATS request/reply: `authorize` and `release`
 * on `<root>.authorize.<customer>.<agent>`, `balance` on `<root>.balance.<customer>`. A
 * customer's NATS user (`agent-<customer>`) may ask for its own customer only. The offline
 * allowance of {@link failOpenWithin} counts per customer and meter.
 */
export class NatsSpendClient {
  readonly nc: NatsConnection;
  readonly subjectRoot: string;
  readonly timeoutMs: number;
  readonly policy: FailurePolicy;
  private readonly offline: OfflineLedger;
  private owned = false;

  /** From a connection you own; see {@link NatsSpendClient.connect} for one that owns it. */
  constructor(nc: NatsConnection, options: NatsSpendClientOptions = {}) {
    this.nc = nc;
    this.subjectRoot = options.subjectRoot ?? "tally";
    this.timeoutMs = options.timeoutMs ?? 2000;
    this.policy = options.policy ?? failClosed();
    this.offline = new OfflineLedger(this.policy);
  }

  /** Connects (the inbox prefix is `_INBOX.<user>` unless given) and returns a client owning
   * the connection; {@link close} drains it. */
  static async connect(
    connection: ConnectionOptions,
    options: NatsSpendClientOptions = {},
  ): Promise<NatsSpendClient> {
    const client = new NatsSpendClient(await connect(connection), options);
    client.owned = true;
    return client;
  }

  /** Drains and closes the connection when {@link connect} opened it. */
  async close(): Promise<void> {
    if (this.owned) {
      this.owned = false;
      await this.nc.drain();
    }
  }

  /** May `agent` of `customer` use up to `maxQuantity` of `meter`? A lost answer is asked
   * again once with the same request id; then the failure policy decides. */
  async authorize(
    customer: string,
    agent: string,
    meter: string,
    maxQuantity: Quantity,
    options: AuthorizeOptions = {},
  ): Promise<Authorization> {
    const subject = this.authorizeSubject(customer, agent);
    const body = authorizeBody(meter, maxQuantity, options);
    const bytes = Buffer.from(JSON.stringify(body), "utf8");
    for (let i = 0; i < 2; i++) {
      const answer = await this.ask(subject, bytes);
      if (answer !== undefined) return authorizationOf(answer);
    }
    return this.offline.decide(`${customer}\u0000${meter}`, body.max_quantity as string);
  }

  /** Gives what is left of hold `holdId` back: call it once the work is done below its
   * `maxQuantity` (after its usage events are stored) or was cancelled, otherwise the rest
   * stays reserved until the hold expires. False when the decider did not hold it (used up,
   * released, expired, another agent's) or did not answer. Rejects with `InvalidEvent` for a
   * bad customer, agent or hold id. */
  async release(customer: string, agent: string, holdId: string): Promise<boolean> {
    const body = Buffer.from(JSON.stringify({ release: checkEventId(holdId) }), "utf8");
    const answer = await this.ask(this.authorizeSubject(customer, agent), body);
    return answer !== undefined && (answer as { allow?: unknown }).allow === true;
  }

  /** The customer's spend of the period, holds and budgets (amounts are decimal strings);
   * undefined when no decider answered. */
  async balance(customer: string): Promise<Record<string, unknown> | undefined> {
    const subject = `${this.subjectRoot}.balance.${checkToken(customer, "subject")}`;
    return (await this.ask(subject, new Uint8Array())) as Record<string, unknown> | undefined;
  }

  private authorizeSubject(customer: string, agent: string): string {
    return `${this.subjectRoot}.authorize.${checkToken(customer, "subject")}.${checkToken(agent, "source")}`;
  }

  /** One request: the answer's JSON; undefined when nobody answered in time. */
  private async ask(subject: string, body: Uint8Array): Promise<unknown> {
    let data: Uint8Array;
    try {
      data = (await this.nc.request(subject, body, { timeout: this.timeoutMs })).data;
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === "503" || code === "TIMEOUT") return undefined;
      // e.g. PERMISSIONS_VIOLATION: a subject or inbox prefix the user may not use, which no
      // failure policy should paper over
      throw new SpendError(0, String(code ?? "nats_error"), (err as Error).message ?? String(err));
    }
    try {
      return JSON.parse(new TextDecoder().decode(data));
    } catch {
      throw new SpendError(200, "invalid_answer", `the decider's answer is not JSON on ${subject}`);
    }
  }
}
