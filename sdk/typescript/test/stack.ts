/**
 * The real services for the spend and usage query tests, over the test file's own streams,
 * subject prefixes, spend subject root and ClickHouse database: `tally-rater` (it stores the
 * meters and plan of the config and serves the usage query), `tally-spend` (the decider),
 * `tally-gateway` and `tally-aggregator` (usage committed to ClickHouse), each the
 * workspace's binary (`TALLY_BIN_DIR`). With `natsUsers` (from `tally-gateway nats-config`)
 * each service logs in as its own NATS user, as in production.
 *
 * Also {@link NatsServer}: a nats-server of the test's own with the authorization
 * `tally-gateway nats-config` generates.
 */

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

import { connect } from "nats";

import { binary, CLICKHOUSE_URL, freePort, NATS_URL, PACKAGE_DIR } from "./harness.js";

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function clickhouse(sql: string): Promise<string> {
  const r = await fetch(`${CLICKHOUSE_URL}/`, { method: "POST", body: sql });
  const text = await r.text();
  if (!r.ok) throw new Error(`ClickHouse ${r.status}: ${text}`);
  return text;
}

/** Deletes every stream (and KV bucket) whose name holds `tag`. */
export async function deleteStreamsTagged(natsUrl: string, tag: string, auth: { user?: string; pass?: string } = {}) {
  const nc = await connect({ servers: natsUrl, ...auth });
  try {
    const jsm = await nc.jetstreamManager();
    const names: string[] = [];
    for await (const s of jsm.streams.list()) if (s.config.name.includes(tag)) names.push(s.config.name);
    for (const name of names) await jsm.streams.delete(name).catch(() => undefined);
  } finally {
    await nc.close();
  }
}

export type Service = "rater" | "spend" | "gateway" | "aggregator";

export interface StackOptions {
  /** Default: the test stack's NATS. */
  natsUrl?: string;
  /** user to password (`nats-credentials.txt`); each service logs in as `tally-<service>`. */
  natsUsers?: Record<string, string>;
}

/** The stacks' configuration, shared with the Python suite: `@NAME@` for each value. */
const STACK_TOML = join(PACKAGE_DIR, "..", "testdata", "stack.toml");

/** One test file's services and its private corner of NATS and ClickHouse. */
export class Stack {
  readonly tag: string;
  readonly stream: string;
  readonly prefix: string;
  readonly spendRoot: string;
  readonly database: string;
  readonly dir: string;
  readonly config: string;
  natsUrl: string;
  natsUsers: Record<string, string> | undefined;
  readonly ports: Record<"rater" | "gateway" | "admin" | "spend", number>;
  /** An `admin` API token (`tally-access tokens-create`). */
  adminToken = "";
  /** A `reader` API token. */
  readerToken = "";
  private procs = new Map<Service, ChildProcess>();

  private constructor(tag: string, ports: Stack["ports"], options: StackOptions) {
    this.tag = `${tag}_${process.pid}_${(Date.now() * 1000 + Math.floor(Math.random() * 1000)).toString(16)}`;
    this.stream = `T_${this.tag}`;
    this.prefix = `t_${this.tag}`;
    this.spendRoot = `t_${this.tag}_spend`;
    this.database = `test_${this.tag}`;
    this.natsUrl = options.natsUrl ?? NATS_URL;
    this.natsUsers = options.natsUsers;
    this.ports = ports;
    this.dir = mkdtempSync(join(tmpdir(), `tally-sdk-${tag}-`));
    this.config = join(this.dir, "tally.toml");
    const values: Record<string, string | number> = {
      NATS_URL: this.natsUrl,
      STREAM: this.stream,
      PREFIX: this.prefix,
      CLICKHOUSE_URL,
      DATABASE: this.database,
      SPEND_ROOT: this.spendRoot,
      RATER_PORT: ports.rater,
      GATEWAY_PORT: ports.gateway,
      ADMIN_PORT: ports.admin,
      SPEND_PORT: ports.spend,
    };
    const text = Object.entries(values).reduce(
      (t, [name, value]) => t.replaceAll(`@${name}@`, String(value)),
      readFileSync(STACK_TOML, "utf8"),
    );
    writeFileSync(this.config, text);
  }

  /** Writes the config, applies the migrations and makes an admin token; starts nothing. */
  static async create(tag: string, options: StackOptions = {}): Promise<Stack> {
    const ports = { rater: await freePort(), gateway: await freePort(), admin: await freePort(), spend: await freePort() };
    const s = new Stack(tag, ports, options);
    await run(binary("tally-migrate"), ["--config", s.config], { timeout: 120_000 });
    // made before the services start, which load tokens then (and every second after)
    s.adminToken = await s.apiToken("sdk-tests", "admin");
    s.readerToken = await s.apiToken("sdk-reader", "reader");
    return s;
  }

  /** Points the services at `url` (a {@link NatsServer} of the test's own), logging in with
   * `users`; call before {@link start}. */
  useNats(url: string, users: Record<string, string>): void {
    const text = readFileSync(this.config, "utf8").replace(`url = "${this.natsUrl}"`, `url = "${url}"`);
    writeFileSync(this.config, text);
    this.natsUrl = url;
    this.natsUsers = users;
  }

  /** An API token of `role` (`tally-access tokens-create`): the bearer token. */
  async apiToken(actor: string, role: string): Promise<string> {
    const { stdout } = await run(
      binary("tally-access"),
      ["tokens-create", "--actor", actor, "--role", role, "--config", this.config],
      { timeout: 60_000 },
    );
    return (JSON.parse(stdout) as { token: string }).token;
  }

  get raterUrl(): string {
    return `http://127.0.0.1:${this.ports.rater}`;
  }
  get gatewayUrl(): string {
    return `http://127.0.0.1:${this.ports.gateway}`;
  }
  get spendApiUrl(): string {
    return `http://127.0.0.1:${this.ports.spend}`;
  }

  private log(service: Service): string {
    return join(this.dir, `${service}.log`);
  }

  private spawn(service: Service): void {
    const bin = { rater: "tally-rater", spend: "tally-spend", gateway: "tally-gateway", aggregator: "tally-aggregator" }[service];
    const args = service === "rater" || service === "gateway" ? ["serve", "--config", this.config] : ["--config", this.config];
    const env: Record<string, string | undefined> = { ...process.env };
    const user = `tally-${service}`;
    if (this.natsUsers && this.natsUsers[user] !== undefined) {
      env.TALLY_NATS__USER = user;
      env.TALLY_NATS__PASSWORD = this.natsUsers[user];
    }
    const fd = openSync(this.log(service), "a");
    const proc = spawn(binary(bin), args, { env, stdio: ["ignore", fd, fd] });
    closeSync(fd);
    this.procs.set(service, proc);
  }

  private exited(service: Service): boolean {
    const p = this.procs.get(service);
    return !p || p.exitCode !== null || p.signalCode !== null;
  }

  private async waitFor(service: Service, ready: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.exited(service)) {
        throw new Error(`${service} exited:\n${readFileSync(this.log(service), "utf8")}`);
      }
      try {
        if (await ready()) return;
      } catch {
        // not answering yet
      }
      await sleep(100);
    }
    throw new Error(`${service} not ready after ${timeoutMs} ms:\n${readFileSync(this.log(service), "utf8")}`);
  }

  /** Starts `services` (the rater first: it stores the catalog the decider reads) and waits
   * until each answers. */
  async start(services: Service[]): Promise<void> {
    const auth = { authorization: `Bearer ${this.adminToken}` };
    if (services.includes("rater")) {
      this.spawn("rater");
      await this.waitFor("rater", async () => {
        const r = await fetch(`${this.raterUrl}/v1/plans`, { headers: auth });
        await r.arrayBuffer();
        return r.status === 200;
      });
    }
    for (const s of services) if (s !== "rater") this.spawn(s);
    if (services.includes("gateway")) {
      await this.waitFor("gateway", async () => (await fetch(`${this.gatewayUrl}/healthz`)).status === 200);
    }
    if (services.includes("spend")) {
      // the decider answers once it holds the partition and has rebuilt its book
      const nc = await connect({
        servers: this.natsUrl,
        ...(this.natsUsers ? { user: "tally-admin", pass: this.natsUsers["tally-admin"] } : {}),
      });
      try {
        await this.waitFor("spend", async () => {
          await nc.request(`${this.spendRoot}.balance.ready-probe`, new Uint8Array(), { timeout: 1000 });
          return true;
        });
      } finally {
        await nc.close();
      }
    }
  }

  /** A gateway API key for `customer` (the admin API). */
  async createKey(customer: string, agents: string[] = []): Promise<string> {
    const r = await fetch(`http://127.0.0.1:${this.ports.admin}/v1/admin/keys`, {
      method: "POST",
      headers: { authorization: `Bearer ${this.adminToken}`, "content-type": "application/json" },
      body: JSON.stringify({ customer, agents, label: "sdk test" }),
    });
    const view = (await r.json()) as { key?: string };
    if (!r.ok || !view.key) throw new Error(`key creation: ${r.status} ${JSON.stringify(view)}`);
    return view.key;
  }

  /** Puts a budget through tally-spend's API (`PUT /v1/customers/{id}/budgets/{budget}`). */
  async putBudget(customer: string, budgetId: string, budget: Record<string, unknown>): Promise<void> {
    const r = await fetch(`${this.spendApiUrl}/v1/customers/${customer}/budgets/${budgetId}`, {
      method: "PUT",
      headers: { authorization: `Bearer ${this.adminToken}`, "content-type": "application/json" },
      body: JSON.stringify(budget),
    });
    const text = await r.text();
    if (r.status !== 200) throw new Error(`budget: ${r.status} ${text}`);
  }

  async stop(): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const [service, proc] of this.procs) {
      if (this.exited(service)) continue;
      waits.push(
        new Promise<void>((ok) => {
          const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
          proc.once("exit", () => {
            clearTimeout(timer);
            ok();
          });
          proc.kill("SIGTERM");
        }),
      );
    }
    await Promise.all(waits);
    this.procs.clear();
  }

  /** Stops the services, deletes the streams and buckets and drops the database. */
  async cleanup(): Promise<void> {
    await this.stop();
    const auth = this.natsUsers ? { user: "tally-admin", pass: this.natsUsers["tally-admin"] } : {};
    await deleteStreamsTagged(this.natsUrl, this.tag, auth).catch(() => undefined);
    await clickhouse(`DROP DATABASE IF EXISTS ${this.database}`);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function findNatsServer(): string {
  const candidates = [
    process.env.TALLY_TEST_NATS_SERVER,
    ...(process.env.PATH ?? "").split(":").map((d) => join(d, "nats-server")),
    "/usr/sbin/nats-server",
    "/usr/bin/nats-server",
  ];
  const found = candidates.find((p) => p && existsSync(p));
  if (!found) throw new Error("nats-server is missing: run scripts/stack.sh up (it installs it)");
  return found;
}

/**
 * A nats-server of the test's own with JetStream and the authorization `tally-gateway
 * nats-config` generates for `customers` from `config` (its stream, prefixes and spend root):
 * the production permissions, `_INBOX.<user>.>` only for replies.
 */
export class NatsServer {
  readonly url: string;
  /** user to password, from `nats-credentials.txt`. */
  readonly users: Record<string, string>;
  readonly dir: string;
  private readonly proc: ChildProcess;

  private constructor(url: string, users: Record<string, string>, dir: string, proc: ChildProcess) {
    this.url = url;
    this.users = users;
    this.dir = dir;
    this.proc = proc;
  }

  static async start(config: string, customers: string[]): Promise<NatsServer> {
    const dir = mkdtempSync(join(tmpdir(), "tally-sdk-nats-"));
    await run(
      binary("tally-gateway"),
      ["nats-config", "--customers", customers.join(","), "--out-dir", dir, "--config", config],
      { timeout: 60_000 },
    );
    const users: Record<string, string> = {};
    for (const line of readFileSync(join(dir, "nats-credentials.txt"), "utf8").split("\n")) {
      const [user, password] = line.trim().split(/\s+/);
      if (user && password) users[user] = password;
    }
    const port = await freePort();
    writeFileSync(
      join(dir, "nats.conf"),
      `listen: "127.0.0.1:${port}"\njetstream { store_dir: "${join(dir, "js")}" }\ninclude "nats-auth.conf"\n`,
    );
    const proc = spawn(findNatsServer(), ["-c", join(dir, "nats.conf")], { stdio: "ignore" });
    const server = new NatsServer(`nats://127.0.0.1:${port}`, users, dir, proc);
    for (let i = 0; i < 100; i++) {
      const up = await new Promise<boolean>((ok) => {
        const s = createConnection(port, "127.0.0.1", () => {
          s.destroy();
          ok(true);
        });
        s.on("error", () => ok(false));
      });
      if (up) return server;
      await sleep(50);
    }
    await server.stop();
    throw new Error(`nats-server did not start on port ${port}`);
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      await new Promise<void>((ok) => {
        this.proc.once("exit", () => ok());
        this.proc.kill("SIGTERM");
      });
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
