//! The invoicer's HTTP API, version 1. Invoices are read from storage per request (the
//! document of the latest version, with the lifecycle status); nothing is cached.
//!
//! Routes: `GET /v1/invoices?customer=` (list), `GET /v1/invoices/{id}` (JSON document with
//! status, transitions and credit notes), `GET /v1/invoices/{id}.html`, `GET
//! /v1/invoices/{id}.pdf`, `GET /v1/invoices/{id}/lines/{n}/lineage`, `POST
//! /v1/invoices/{id}/status` (`paid`, `void`, `uncollectible`), `GET`/`POST
//! /v1/invoices/{id}/credit_notes`, `POST /v1/credits` (prepaid credit grant), `POST /v1/runs`
//! (an invoicing pass now), `GET /v1/reconciliation`, `GET /v1/openapi.json`.
//!
//! [`ROUTES`] lists every route; a test checks it against [`OPENAPI`] both ways.
//!
//! Every route but the OpenAPI document needs `Authorization: Bearer <token>`
//! ([`tally_platform::auth`]): reads any role with `read`, changes `operate_invoices`
//! (`invoice_operator` or `admin`); 401/403 otherwise. The actor of a lifecycle change or a
//! credit note is the token's (`api:<actor>`), never a name the client sends, and every
//! change is recorded in `api_audit` before it is made. Money in bodies is checked: amounts
//! whose sums overflow are refused 400 before anything is read or stored.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Extension;
use clickhouse::Client;
use hyper::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tally_domain::{Currency, CustomerId, InvoiceStatus};
use tally_platform::auth::{hook, Authenticator, Permission, Principal};
use tally_platform::http::{self, Body, BodyLimit, Json, ListenerLimits, Router};
use tally_platform::openapi::Route;

use crate::config::InvoicerConfig;
use crate::credit_notes::{self, CreditNote};
use crate::invoice::Invoice;
use crate::lifecycle::{self, LifecycleError};
use crate::numbering::Numbers;
use crate::{lineage, reconcile, render, run, store};

/// Largest request body accepted.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// Largest prepaid credit one grant may give (10^15 minor units): grants are summed per
/// customer, and no sum of plausible grants may come near `i64::MAX`.
pub const GRANT_MINOR_MAX: i64 = 1_000_000_000_000_000;

/// What requests are answered from.
pub struct ApiState {
    pub db: Client,
    pub numbers: Numbers,
    pub cfg: InvoicerConfig,
    pub now_ms: fn() -> i64,
    /// Who may call: every route but `/v1/openapi.json`.
    pub auth: Arc<Authenticator>,
}

/// Serves until `shutdown` on the shared server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: tally_platform::shutdown::Shutdown,
) {
    http::serve_router(
        "invoicer",
        listener,
        router(state),
        ListenerLimits::default(),
        shutdown,
    )
    .await;
}

/// The API's axum router, built from [`ROUTES`]: unrouted requests answer 404/405 in the
/// shared shape, bodies are read within [`BODY_BYTES_MAX`], and every request but the OpenAPI
/// document passes [`guard`] first (the 401/403 of an unknown path included, as before). The
/// suffixed invoice routes (`{id}.html`, `{id}.pdf`) are served by the bare `{id}` route,
/// whose [`InvoiceFile`] reads the suffix: axum matches no parameter followed by a suffix.
pub fn router(state: Arc<ApiState>) -> Router {
    let served: Vec<Route<Op>> = ROUTES
        .iter()
        .filter(|r| !matches!(r.op, Op::Html | Op::Pdf))
        .copied()
        .collect();
    // the guard wraps the routed router rather than its routes, so it answers before routing:
    // its 401 never carries the `Allow` of a method router
    let routed =
        http::with_fallbacks(http::route_table(&served, handler)).with_state(state.clone());
    Router::new()
        .fallback_service(routed)
        .layer(middleware::from_fn_with_state(state, guard))
        .layer(Extension(BodyLimit(BODY_BYTES_MAX)))
}

type Shared = State<Arc<ApiState>>;

/// Authenticates every request but `GET /v1/openapi.json` (reads need `read`, changes
/// `operate_invoices`), hands the [`Principal`] to the handler as an extension, and audits
/// the request when it may change state (the handler never runs when the audit row cannot be
/// written).
async fn guard(
    State(state): Shared,
    req: axum::extract::Request,
    next: Next,
) -> axum::response::Response {
    if req.method() == Method::GET && req.uri().path() == "/v1/openapi.json" {
        return next.run(req).await;
    }
    hook::guard(&state.auth, Permission::OperateInvoices, req, next).await
}

/// What a route's method answers.
fn handler(op: Op, method: MethodFilter) -> MethodRouter<Arc<ApiState>> {
    type Who = Extension<Principal>;
    type Id = Path<String>;
    match op {
        Op::List => on(
            method,
            |State(s): Shared, Query(q): Query<Vec<(String, String)>>| async move {
                // the first `customer` named; none lists every customer's
                let customer = q.into_iter().find(|(k, _)| k == "customer");
                list(&s, &customer.map(|(_, v)| v).unwrap_or_default()).await
            },
        ),
        Op::Show | Op::Html | Op::Pdf => {
            on(method, |State(s): Shared, f: InvoiceFile| async move {
                show(&s, &f.id, f.format).await
            })
        }
        Op::Lineage => on(
            method,
            |State(s): Shared, Path((id, n)): Path<(String, String)>| async move {
                line_lineage(&s, &id, &n).await
            },
        ),
        Op::SetStatus => on(
            method,
            |State(s): Shared, Path(id): Id, Extension(who): Who, Json(body): Json<StatusBody>| async move {
                set_status(&s, &id, body, &who).await
            },
        ),
        Op::CreditNotes => on(method, |State(s): Shared, Path(id): Id| async move {
            match credit_notes::of_invoice(&s.db, &id).await {
                Ok(notes) => http::json(StatusCode::OK, &notes),
                Err(e) => storage(e),
            }
        }),
        Op::AddCreditNote => on(
            method,
            |State(s): Shared, Path(id): Id, Extension(who): Who, Json(body): Json<CreditBody>| async move {
                credit(&s, &id, body, &who).await
            },
        ),
        Op::Grant => on(
            method,
            |State(s): Shared, Json(body): Json<GrantBody>| async move { grant(&s, body).await },
        ),
        Op::Run => on(method, |State(s): Shared| async move {
            let now = (s.now_ms)();
            match run::invoice_pass(&s.db, Some(&s.numbers), &s.cfg, now).await {
                Ok(invoices) => http::json(StatusCode::OK, &RunView::of(&invoices)),
                Err(e) => http::error(StatusCode::SERVICE_UNAVAILABLE, "run_failed", e),
            }
        }),
        Op::Reconciliation => on(method, |State(s): Shared| async move {
            let since = (s.now_ms)() - 400 * 86_400_000;
            match reconcile::run(&s.db, since).await {
                Ok(r) => http::json(StatusCode::OK, &r),
                Err(e) => storage(e),
            }
        }),
        Op::OpenApi => on(method, || async { openapi_reply() }),
    }
}

/// How an invoice is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Html,
    Pdf,
}

/// The `{id}` segment of `/v1/invoices/{id}` read as the routes in [`ROUTES`] spell it:
/// `x.html` and `x.pdf` are invoice `x` rendered (when `x` is not empty), `x.json` and `x`
/// its JSON document.
#[derive(Debug, PartialEq, Eq)]
struct InvoiceFile {
    id: String,
    format: Format,
}

impl InvoiceFile {
    fn parse(file: &str) -> InvoiceFile {
        let rendered = [(".html", Format::Html), (".pdf", Format::Pdf)]
            .into_iter()
            .find_map(|(suffix, format)| {
                let id = file.strip_suffix(suffix).filter(|id| !id.is_empty())?;
                Some((id, format))
            });
        let (id, format) =
            rendered.unwrap_or((file.strip_suffix(".json").unwrap_or(file), Format::Json));
        InvoiceFile {
            id: id.to_owned(),
            format,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for InvoiceFile {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(file) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(InvoiceFile::parse(&file))
    }
}

/// The OpenAPI 3.0 document of this API, served at `/v1/openapi.json` without a token.
pub const OPENAPI: &str = include_str!("api_openapi.json");

fn openapi_reply() -> Response<Body> {
    http::bytes(
        StatusCode::OK,
        "application/json",
        OPENAPI.as_bytes().to_vec(),
    )
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    List,
    Show,
    Html,
    Pdf,
    Lineage,
    SetStatus,
    CreditNotes,
    AddCreditNote,
    Grant,
    Run,
    Reconciliation,
    OpenApi,
}

/// Every route: [`router`] answers only these (404/405 otherwise), and the test checks them
/// against the OpenAPI document both ways. The suffixed invoice routes come before the bare
/// one, which they would otherwise match.
pub const ROUTES: &[Route<Op>] = &[
    Route::new("GET", "/v1/invoices", Op::List),
    Route::new("GET", "/v1/invoices/{id}.html", Op::Html),
    Route::new("GET", "/v1/invoices/{id}.pdf", Op::Pdf),
    Route::new("GET", "/v1/invoices/{id}", Op::Show),
    Route::new("GET", "/v1/invoices/{id}/lines/{n}/lineage", Op::Lineage),
    Route::new("POST", "/v1/invoices/{id}/status", Op::SetStatus),
    Route::new("GET", "/v1/invoices/{id}/credit_notes", Op::CreditNotes),
    Route::new("POST", "/v1/invoices/{id}/credit_notes", Op::AddCreditNote),
    Route::new("POST", "/v1/credits", Op::Grant),
    Route::new("POST", "/v1/runs", Op::Run),
    Route::new("GET", "/v1/reconciliation", Op::Reconciliation),
    Route::new("GET", "/v1/openapi.json", Op::OpenApi),
];

fn storage(e: impl std::fmt::Display) -> Response<Body> {
    http::fail(http::ErrorCode::Unavailable, e)
}

/// A pass's outcome.
#[derive(Serialize)]
struct RunView {
    drafts: usize,
    finalized: usize,
    invoice_ids: Vec<String>,
}

impl RunView {
    fn of(invoices: &[Invoice]) -> RunView {
        let finalized = invoices.iter().filter(|i| i.number.is_some()).count();
        RunView {
            drafts: invoices.len() - finalized,
            finalized,
            invoice_ids: invoices.iter().map(|i| i.invoice_id.clone()).collect(),
        }
    }
}

#[derive(Serialize, Deserialize, clickhouse::Row)]
struct Summary {
    invoice_id: String,
    number: String,
    /// As stored: the list shows every row; one bad row must not fail it for every caller.
    customer: String,
    status: String,
    currency: String,
    period_start: u32,
    period_end: u32,
    total_minor: i64,
    tax_minor: i64,
    amount_due_minor: i64,
    due_at: u32,
}

async fn list(state: &ApiState, customer: &str) -> Response<Body> {
    let rows = state
        .db
        .query(
            "SELECT invoice_id, number, customer, status, currency, toUInt32(period_start), toUInt32(period_end), \
             total_minor, tax_minor, amount_due_minor, toUInt32(due_at) FROM v_invoices \
             WHERE (? = '' OR customer = ?) ORDER BY customer, period_start LIMIT 10000",
        )
        .bind(customer)
        .bind(customer)
        .fetch_all::<Summary>()
        .await;
    match rows {
        Ok(rows) => http::json(StatusCode::OK, &rows),
        Err(e) => storage(e),
    }
}

/// The latest document of an invoice and its lifecycle status.
pub async fn load(db: &Client, id: &str) -> Result<Option<(Invoice, String)>, String> {
    #[derive(Deserialize, clickhouse::Row)]
    struct Doc {
        document: String,
        status: String,
    }
    let doc: Option<Doc> = db
        .query("SELECT document, status FROM v_invoices WHERE invoice_id = ? LIMIT 1")
        .bind(id)
        .fetch_optional()
        .await
        .map_err(|e| e.to_string())?;
    match doc {
        None => Ok(None),
        Some(d) => serde_json::from_str::<Invoice>(&d.document)
            .map(|inv| Some((inv, d.status)))
            .map_err(|e| format!("stored document of {id}: {e}")),
    }
}

#[derive(Serialize)]
struct Shown {
    #[serde(flatten)]
    invoice: Invoice,
    lifecycle_status: String,
    transitions: Vec<lifecycle::Transition>,
    credit_notes: Vec<CreditNote>,
}

async fn show(state: &ApiState, id: &str, format: Format) -> Response<Body> {
    let (invoice, status) = match load(&state.db, id).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(id),
        Err(e) => return storage(e),
    };
    match format {
        Format::Html => http::bytes(
            StatusCode::OK,
            "text/html; charset=utf-8",
            render::html(&invoice).into_bytes(),
        ),
        Format::Pdf => match render::pdf(&invoice) {
            Ok(bytes) => http::bytes(StatusCode::OK, "application/pdf", bytes),
            Err(e) => http::error(StatusCode::UNPROCESSABLE_ENTITY, "render_failed", e),
        },
        Format::Json => {
            let transitions = lifecycle::history(&state.db, id).await;
            let notes = credit_notes::of_invoice(&state.db, id).await;
            match (transitions, notes) {
                (Ok(transitions), Ok(credit_notes)) => http::json(
                    StatusCode::OK,
                    &Shown {
                        invoice,
                        lifecycle_status: status,
                        transitions,
                        credit_notes,
                    },
                ),
                (Err(e), _) => storage(e),
                (_, Err(e)) => storage(e),
            }
        }
    }
}

fn not_found(id: &str) -> Response<Body> {
    http::error(
        StatusCode::NOT_FOUND,
        "invoice_not_found",
        format!("invoice {id:?} does not exist"),
    )
}

async fn line_lineage(state: &ApiState, id: &str, n: &str) -> Response<Body> {
    let Ok(n) = n.parse::<u32>() else {
        return http::error(
            StatusCode::BAD_REQUEST,
            "invalid_line",
            format!("line number {n:?} is not a positive integer"),
        );
    };
    let invoice = match load(&state.db, id).await {
        Ok(Some((inv, _))) => inv,
        Ok(None) => return not_found(id),
        Err(e) => return storage(e),
    };
    let Some(line) = invoice.lines.iter().find(|l| l.line_no == n) else {
        return http::error(
            StatusCode::NOT_FOUND,
            "line_not_found",
            format!(
                "invoice {id} has {} lines; no line {n}",
                invoice.lines.len()
            ),
        );
    };
    match lineage::of_line(&state.db, id, line).await {
        Ok(Some(l)) => http::json(StatusCode::OK, &l),
        Ok(None) => http::error(
            StatusCode::NOT_FOUND,
            "charge_not_found",
            format!("charge {} of line {n} is not stored", line.charge_id),
        ),
        Err(e) => storage(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: InvoiceStatus,
    #[serde(default)]
    reason: String,
}

async fn set_status(
    state: &ApiState,
    id: &str,
    body: StatusBody,
    who: &Principal,
) -> Response<Body> {
    if matches!(body.status, InvoiceStatus::Draft | InvoiceStatus::Finalized) {
        return http::error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "field status: only paid, void or uncollectible are set through the API",
        );
    }
    match load(&state.db, id).await {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(id),
        Err(e) => return storage(e),
    }
    let at = (state.now_ms)();
    let actor = who.actor_label();
    match lifecycle::record(&state.db, id, body.status, &actor, &body.reason, at).await {
        Ok(r) => http::json(StatusCode::OK, r.transition()),
        Err(e @ LifecycleError::Status { .. }) => {
            http::error(StatusCode::CONFLICT, "transition_not_allowed", e)
        }
        Err(e) => storage(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditBody {
    /// Optional idempotency key; the same key issues the note once.
    #[serde(default)]
    key: String,
    amount_minor: i64,
    #[serde(default)]
    tax_minor: i64,
    reason: String,
}

/// The amount a credit note takes off an invoice (`amount_minor + tax_minor`): both
/// non-negative, not both zero, and their sum representable; the refusal names the field.
fn credit_total(amount_minor: i64, tax_minor: i64) -> Result<i64, &'static str> {
    if amount_minor < 0 || tax_minor < 0 {
        return Err("field amount_minor: the credited amount and tax must be non-negative");
    }
    match amount_minor.checked_add(tax_minor) {
        None => Err("field amount_minor: amount_minor + tax_minor exceeds the largest amount"),
        Some(0) => Err("field amount_minor: the credited amount and tax must not both be zero"),
        Some(total) => Ok(total),
    }
}

async fn credit(state: &ApiState, id: &str, body: CreditBody, who: &Principal) -> Response<Body> {
    let total = match credit_total(body.amount_minor, body.tax_minor) {
        Ok(t) => t,
        Err(detail) => return http::error(StatusCode::BAD_REQUEST, "invalid_body", detail),
    };
    let (invoice, status) = match load(&state.db, id).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(id),
        Err(e) => return storage(e),
    };
    if !matches!(status.as_str(), "finalized" | "paid" | "uncollectible") {
        return http::error(
            StatusCode::CONFLICT,
            "invoice_not_finalized",
            format!("invoice {id} is {status}: credit notes are issued against finalized invoices"),
        );
    }
    let prior = match credit_notes::of_invoice(&state.db, id).await {
        Ok(n) => n,
        Err(e) => return storage(e),
    };
    // stored notes were checked when issued; a sum that still overflows is corrupt data
    let credited = prior.iter().try_fold(0i64, |acc, n| {
        acc.checked_add(n.amount_minor)?.checked_add(n.tax_minor)
    });
    let Some(credited) = credited else {
        return storage(format!("the credit notes of invoice {id} do not sum"));
    };
    let key = if body.key.is_empty() {
        format!("{}", (state.now_ms)())
    } else {
        body.key.clone()
    };
    let note_id = credit_notes::id(&["manual", id, &key]);
    if let Some(existing) = prior.iter().find(|n| n.credit_note_id == note_id) {
        return http::json(StatusCode::OK, existing);
    }
    if credited
        .checked_add(total)
        .is_none_or(|after| after > invoice.total_minor)
    {
        return http::error(
            StatusCode::CONFLICT,
            "credit_exceeds_invoice",
            format!(
                "invoice {id} totals {} minor units and {credited} are already credited",
                invoice.total_minor
            ),
        );
    }
    let note = CreditNote {
        credit_note_id: note_id,
        invoice_id: id.to_owned(),
        charge_id: String::new(),
        customer: invoice.customer.clone(),
        currency: invoice.currency,
        amount_minor: body.amount_minor,
        tax_minor: body.tax_minor,
        reason: body.reason,
        lines: "[]".into(),
        actor: who.actor_label(),
        issued_at_ms: (state.now_ms)(),
    };
    match credit_notes::issue(&state.db, std::slice::from_ref(&note)).await {
        Ok(()) => http::json(StatusCode::CREATED, &note),
        Err(e) => storage(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    grant_id: String,
    customer: CustomerId,
    currency: Currency,
    amount_minor: i64,
    #[serde(default)]
    reason: String,
}

async fn grant(state: &ApiState, b: GrantBody) -> Response<Body> {
    if !(1..=GRANT_MINOR_MAX).contains(&b.amount_minor) {
        return http::error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("field amount_minor: must be 1 to {GRANT_MINOR_MAX}"),
        );
    }
    let at = (state.now_ms)();
    match store::grant_credit(
        &state.db,
        &b.grant_id,
        b.customer.as_str(),
        b.currency.code(),
        b.amount_minor,
        &b.reason,
        at,
    )
    .await
    {
        Ok(()) => http::json(
            StatusCode::CREATED,
            &serde_json::json!({"grant_id": b.grant_id}),
        ),
        Err(e) => storage(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_platform::openapi;

    /// Issue 16, finding 10: `i64::MAX + 1` wrapped to a negative total and passed both the
    /// "not both zero" check and the "not above the invoice" check.
    #[test]
    fn a_credit_whose_amount_and_tax_overflow_is_refused() {
        assert!(credit_total(i64::MAX, 1).is_err());
        assert!(credit_total(i64::MAX, i64::MAX).is_err());
        assert!(credit_total(-1, 2).is_err());
        assert!(credit_total(0, 0).is_err());
        assert_eq!(credit_total(i64::MAX - 1, 1), Ok(i64::MAX));
        assert_eq!(credit_total(100, 19), Ok(119));
    }

    /// The suffixed routes of [`ROUTES`] as `openapi::find` matched them: a suffix after a
    /// non-empty id renders, `.json` or none is the document, an empty id is not rendered.
    #[test]
    fn an_invoice_file_is_read_as_the_routes_spell_it() {
        let read = |f: &str| {
            let InvoiceFile { id, format } = InvoiceFile::parse(f);
            (id, format)
        };
        assert_eq!(read("in_1.pdf"), ("in_1".into(), Format::Pdf));
        assert_eq!(read("in_1.html"), ("in_1".into(), Format::Html));
        assert_eq!(read("in_1.json"), ("in_1".into(), Format::Json));
        assert_eq!(read("in_1"), ("in_1".into(), Format::Json));
        assert_eq!(read(".pdf"), (".pdf".into(), Format::Json));
        assert_eq!(read("a.pdf.html"), ("a.pdf".into(), Format::Html));
        for f in ["in_1.pdf", "in_1.html", "in_1", ".pdf"] {
            let segments = ["v1", "invoices", f];
            let openapi::Found::Route(op, params) = openapi::find(ROUTES, "GET", &segments) else {
                panic!("{f} not found");
            };
            let format = match op {
                Op::Html => Format::Html,
                Op::Pdf => Format::Pdf,
                _ => Format::Json,
            };
            assert_eq!(read(f), (params[0].clone(), format), "{f}");
        }
    }

    #[test]
    fn every_route_is_described_and_every_description_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("JSON");
        assert_eq!(openapi::check_routes(ROUTES, &doc), Vec::<String>::new());
    }
}
