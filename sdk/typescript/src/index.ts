/**
 * Tally SDK for TypeScript and JavaScript (Node 18+): send AI-agent usage to Tally.
 *
 * - {@link HttpClient}: the HTTP ingest gateway (batching, gzip, retries with the same ids,
 *   per-event verdicts). No dependencies.
 * - `NatsPublisher` from `tally-sdk/nats`: straight to NATS JetStream (the `nats` package),
 *   with `Nats-Msg-Id: <customer>:<agent>:<id>`.
 * - {@link openaiTokenEvents}, {@link anthropicTokenEvents}: `llm.tokens` events from a model
 *   response's usage block.
 * - {@link EventIds}, {@link stableEventId}: deterministic event ids, so retries count once.
 * - {@link SpendClient}: ask before spending through the gateway (`POST /v1/authorize`,
 *   `GET /v1/balance`); `NatsSpendClient` from `tally-sdk/nats` asks over NATS.
 * - {@link UsageQueryClient}: the rater's usage query (`GET /v1/meters/{slug}/query`).
 */

export {
  checkEventId,
  checkToken,
  encodeEvent,
  EVENT_ID_NAMESPACE,
  EventIds,
  formatTime,
  InvalidEvent,
  llmTokensEvent,
  natsMsgId,
  newEventId,
  runEventId,
  stableEventId,
  toolCallEvent,
  usageEvent,
  usageSubject,
  type CloudEvent,
  type EventFields,
  type Quantity,
} from "./events.js";
export { BATCH_CONTENT_TYPE, HttpClient, type HttpClientOptions } from "./http.js";
export {
  anthropicTokenCounts,
  anthropicTokenEvents,
  CACHE_WRITE,
  CACHED,
  INPUT,
  openaiTokenCounts,
  openaiTokenEvents,
  OUTPUT,
  TOKEN_KINDS,
  tokenEvents,
  type TokenCounts,
  type TokenEventFields,
  type TokenKind,
} from "./usage.js";
export { GatewayError, isStored, SendResult, type Status, type Verdict } from "./verdicts.js";
export { decimalAdd, decimalCompare, decimalSub, isDecimal } from "./decimal.js";
export {
  authorizationOf,
  authorizeBody,
  failClosed,
  failOpenWithin,
  SpendClient,
  SpendError,
  type Authorization,
  type AuthorizeOptions,
  type FailurePolicy,
  type SpendClientOptions,
} from "./spend.js";
export {
  UsageQueryClient,
  UsageQueryError,
  usageQueryString,
  type UsageQuery,
  type UsageQueryClientOptions,
  type UsageQueryResult,
  type UsageRow,
  type WindowSize,
} from "./query.js";
