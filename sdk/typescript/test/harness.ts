/**
 * A real `tally-gateway` for the tests, over the test file's own JetStream streams, subject
 * prefix and ClickHouse database (created by `tally-migrate`), like the Rust tests' `TestEnv`:
 * suites run in parallel with each other and with `cargo test`.
 *
 * Binaries come from `TALLY_BIN_DIR` (default `target/debug` of the repository), servers from
 * `TALLY_TEST_NATS_URL` and `TALLY_TEST_CLICKHOUSE_URL` (defaults: the local stack).
 */

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { connect, type ConnectionOptions, type MsgRequest } from "nats";

const run = promisify(execFile);

/** sdk/typescript (this file is compiled to build/test/harness.js). */
export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const REPO = resolve(PACKAGE_DIR, "..", "..");
export const BIN_DIR = process.env.TALLY_BIN_DIR || join(REPO, "target", "debug");
export const NATS_URL = process.env.TALLY_TEST_NATS_URL || "nats://127.0.0.1:4222";
export const CLICKHOUSE_URL = process.env.TALLY_TEST_CLICKHOUSE_URL || "http://127.0.0.1:8123";

export function binary(name: string): string {
  const path = join(BIN_DIR, name);
  if (!existsSync(path)) {
    throw new Error(
      `${path} is missing: build it (cargo build -p tally-ingest -p tally-platform --bins) or point TALLY_BIN_DIR at it`,
    );
  }
  return path;
}

export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      s.close(() => (typeof addr === "object" && addr ? ok(addr.port) : fail(new Error("no port"))));
    });
  });
}

async function clickhouse(sql: string): Promise<string> {
  const r = await fetch(`${CLICKHOUSE_URL}/`, { method: "POST", body: sql });
  const text = await r.text();
  if (!r.ok) throw new Error(`ClickHouse ${r.status}: ${text}`);
  return text;
}

export interface StoredMessage {
  seq: number;
  subject: string;
  msgId: string | undefined;
  event: Record<string, any>;
}

/** Every message of `stream` on `subject` (a filter), in order; `connection` default: the
 * test stack's NATS. */
export async function storedMessages(
  stream: string,
  subject: string,
  connection: ConnectionOptions = { servers: NATS_URL },
): Promise<StoredMessage[]> {
  const nc = await connect(connection);
  try {
    const jsm = await nc.jetstreamManager();
    const out: StoredMessage[] = [];
    let seq = 1;
    for (;;) {
      let m;
      try {
        // STREAM.MSG.GET with next_by_subj (NATS 2.9+): the next message on the subject
        m = await jsm.streams.getMessage(stream, { seq, next_by_subj: subject } as unknown as MsgRequest);
      } catch (e) {
        if ((e as { code?: string }).code === "404") return out;
        throw e;
      }
      out.push({
        seq: m.seq,
        subject: m.subject,
        msgId: m.header?.get("Nats-Msg-Id") || undefined,
        event: JSON.parse(new TextDecoder().decode(m.data)),
      });
      seq = m.seq + 1;
    }
  } finally {
    await nc.close();
  }
}

export async function deleteStreams(names: string[]): Promise<void> {
  const nc = await connect({ servers: NATS_URL });
  try {
    const jsm = await nc.jetstreamManager();
    for (const name of names) {
      try {
        await jsm.streams.delete(name);
      } catch (e) {
        if ((e as { code?: string }).code !== "404") throw e;
      }
    }
  } finally {
    await nc.close();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One gateway process and its private corner of NATS and ClickHouse. */
export class Gateway {
  readonly stream: string;
  readonly prefix: string;
  readonly dlqStream: string;
  readonly database: string;
  readonly dir: string;
  readonly config: string;
  readonly log: string;
  port = 0;
  /** The admin API's own listener (`ingest.admin_addr`). */
  adminPort = 0;
  /** A `key_admin` API token made by `tally-access tokens-create`. */
  adminToken = "";
  private proc: ChildProcess | undefined;
  private exited: Promise<void> | undefined;

  private constructor(tag: string, ingest: Record<string, string | number>) {
    const unique = `${tag}_${process.pid}_${(Date.now() * 1000 + Math.floor(Math.random() * 1000)).toString(16)}`;
    this.stream = `T_${unique}`;
    this.prefix = `t_${unique}`;
    this.dlqStream = `T_${unique}_DLQ`;
    this.database = `test_${unique}`;
    this.dir = mkdtempSync(join(tmpdir(), `tally-sdk-${tag}-`));
    this.config = join(this.dir, "tally.toml");
    this.log = join(this.dir, "gateway.log");
    const settings: Record<string, string | number> = {
      metrics_addr: "127.0.0.1:0",
      ...ingest,
    };
    writeFileSync(
      this.config,
      `[nats]
url = "${NATS_URL}"
stream = "${this.stream}"
subject_prefix = "${this.prefix}"
dlq_stream = "${this.dlqStream}"
dlq_subject_prefix = "t_${unique}_dlq"
max_bytes = 268435456
dlq_max_bytes = 67108864

[clickhouse]
url = "${CLICKHOUSE_URL}"
database = "${this.database}"

[telemetry]
log = "warn"

[ingest]
${Object.entries(settings)
  .map(([k, v]) => `${k} = ${JSON.stringify(v)}`)
  .join("\n")}
`,
    );
  }

  /** Writes the config and applies the migrations (`tally-migrate`); does not start. */
  static async create(tag: string, ingest: Record<string, string | number> = {}): Promise<Gateway> {
    const gw = new Gateway(tag, ingest);
    await run(binary("tally-migrate"), ["--config", gw.config], { timeout: 120_000 });
    gw.port = await freePort();
    gw.adminPort = await freePort();
    const { stdout } = await run(
      binary("tally-access"),
      ["tokens-create", "--actor", "sdk-tests", "--role", "key_admin", "--config", gw.config],
      { timeout: 60_000 },
    );
    gw.adminToken = (JSON.parse(stdout) as { token: string }).token;
    return gw;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get adminUrl(): string {
    return `http://127.0.0.1:${this.adminPort}`;
  }

  /** Starts the gateway on `port` (a fresh port if that one turns out taken). */
  async start(wait = true): Promise<void> {
    for (let i = 0; i < 5; i++) {
      const fd = openSync(this.log, "a");
      const proc = spawn(binary("tally-gateway"), ["serve", "--config", this.config], {
        env: {
          ...process.env,
          TALLY_INGEST__LISTEN_ADDR: `127.0.0.1:${this.port}`,
          TALLY_INGEST__ADMIN_ADDR: `127.0.0.1:${this.adminPort}`,
        },
        stdio: ["ignore", fd, fd],
      });
      closeSync(fd);
      this.proc = proc;
      this.exited = new Promise((r) => proc.once("exit", () => r()));
      if (!wait) return;
      if (await this.waitReady()) return;
      const text = readFileSync(this.log, "utf8");
      if (!/in use/i.test(text)) throw new Error(`tally-gateway did not start:\n${text}`);
      this.port = await freePort();
      this.adminPort = await freePort();
    }
    throw new Error("tally-gateway found no free port");
  }

  private async waitReady(timeoutMs = 30_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.proc?.exitCode !== null || this.proc?.signalCode !== null) return false;
      try {
        const r = await fetch(`${this.url}/healthz`, { signal: AbortSignal.timeout(2000) });
        await r.arrayBuffer();
        if (r.status === 200) return true;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new Error(`tally-gateway not ready after ${timeoutMs} ms:\n${readFileSync(this.log, "utf8")}`);
  }

  async stop(): Promise<void> {
    const proc = this.proc;
    this.proc = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 15_000);
    await this.exited;
    clearTimeout(timer);
  }

  /** A key for `customer` through the admin API (docs/INGEST.md): the bearer token. */
  async createKey(customer: string, agents: string[] = []): Promise<string> {
    const r = await fetch(`${this.adminUrl}/v1/admin/keys`, {
      method: "POST",
      headers: { authorization: `Bearer ${this.adminToken}`, "content-type": "application/json" },
      body: JSON.stringify({ customer, agents, label: "sdk test" }),
    });
    const view = (await r.json()) as { customer: string; revoked: boolean; key: string };
    if (!r.ok || view.customer !== customer || view.revoked) {
      throw new Error(`key creation: ${r.status} ${JSON.stringify(view)}`);
    }
    return view.key;
  }

  /** A key written to the key store by `tally-gateway keys-create` (no gateway needed). */
  async createKeyCli(customer: string): Promise<string> {
    const { stdout } = await run(
      binary("tally-gateway"),
      ["keys-create", "--customer", customer, "--label", "sdk test", "--config", this.config],
      { timeout: 60_000 },
    );
    return (JSON.parse(stdout) as { key: string }).key;
  }

  async revokeKey(key: string): Promise<void> {
    const keyId = key.split("_")[1];
    const r = await fetch(`${this.adminUrl}/v1/admin/keys/${keyId}/revoke`, {
      method: "POST",
      headers: { authorization: `Bearer ${this.adminToken}` },
    });
    const view = (await r.json()) as { revoked: boolean };
    if (!view.revoked) throw new Error(`revocation: ${JSON.stringify(view)}`);
  }

  /** What the usage stream holds for one customer's subjects (or all), in order. */
  messages(customer?: string): Promise<StoredMessage[]> {
    return storedMessages(this.stream, customer ? `${this.prefix}.${customer}.*` : `${this.prefix}.>`);
  }

  async cleanup(): Promise<void> {
    await this.stop();
    await deleteStreams([this.stream, this.dlqStream]);
    await clickhouse(`DROP DATABASE IF EXISTS ${this.database}`);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
