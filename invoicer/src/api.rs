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

use clickhouse::Client;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tally_domain::InvoiceStatus;
use tally_platform::auth::{hook, Authenticator, Permission, Principal};
use tally_platform::http::{self, Body};
use tally_platform::openapi::{self, Route};

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

/// Serves until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: tally_platform::shutdown::Shutdown,
) {
    http::serve(
        listener,
        move |req| {
            let state = state.clone();
            async move { route(&state, req).await }
        },
        shutdown,
    )
    .await;
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

/// Authenticates, then routes; changes are audited.
async fn route(state: &ApiState, req: Request<Incoming>) -> Response<Body> {
    if req.method() == Method::GET && req.uri().path() == "/v1/openapi.json" {
        return openapi_reply();
    }
    let who = match hook::authorize(&state.auth, &req, Permission::OperateInvoices).await {
        Ok(who) => who,
        Err(refused) => return refused,
    };
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    hook::audited(
        &state.auth,
        &who,
        &method,
        &path,
        dispatch(state, req, &who),
    )
    .await
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

/// Every route: [`dispatch`] answers only these (404/405 otherwise), and the test checks them
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

async fn dispatch(state: &ApiState, req: Request<Incoming>, who: &Principal) -> Response<Body> {
    let (op, params) = match openapi::resolve(ROUTES, &req) {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let id = params.first().map(String::as_str).unwrap_or_default();
    match op {
        Op::List => list(state, req.uri().query()).await,
        // `{id}.json` is the JSON document too
        Op::Show => show(state, id.strip_suffix(".json").unwrap_or(id), "json").await,
        Op::Html => show(state, id, "html").await,
        Op::Pdf => show(state, id, "pdf").await,
        Op::Lineage => line_lineage(state, id, &params[1]).await,
        Op::SetStatus => set_status(state, id, req, who).await,
        Op::CreditNotes => match credit_notes::of_invoice(&state.db, id).await {
            Ok(notes) => http::json(StatusCode::OK, &notes),
            Err(e) => storage(e),
        },
        Op::AddCreditNote => credit(state, id, req, who).await,
        Op::Grant => grant(state, req).await,
        Op::Run => {
            let now = (state.now_ms)();
            match run::invoice_pass(&state.db, Some(&state.numbers), &state.cfg, now).await {
                Ok(invoices) => http::json(StatusCode::OK, &RunView::of(&invoices)),
                Err(e) => http::error(StatusCode::SERVICE_UNAVAILABLE, "run_failed", e),
            }
        }
        Op::Reconciliation => {
            let since = (state.now_ms)() - 400 * 86_400_000;
            match reconcile::run(&state.db, since).await {
                Ok(r) => http::json(StatusCode::OK, &r),
                Err(e) => storage(e),
            }
        }
        Op::OpenApi => openapi_reply(),
    }
}

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

async fn list(state: &ApiState, query: Option<&str>) -> Response<Body> {
    let customer = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("customer="))
        .unwrap_or_default()
        .to_owned();
    let rows = state
        .db
        .query(
            "SELECT invoice_id, number, customer, status, currency, toUInt32(period_start), toUInt32(period_end), \
             total_minor, tax_minor, amount_due_minor, toUInt32(due_at) FROM v_invoices \
             WHERE (? = '' OR customer = ?) ORDER BY customer, period_start LIMIT 10000",
        )
        .bind(&customer)
        .bind(&customer)
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

async fn show(state: &ApiState, id: &str, format: &str) -> Response<Body> {
    let (invoice, status) = match load(&state.db, id).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(id),
        Err(e) => return storage(e),
    };
    match format {
        "html" => http::bytes(
            StatusCode::OK,
            "text/html; charset=utf-8",
            render::html(&invoice).into_bytes(),
        ),
        "pdf" => match render::pdf(&invoice) {
            Ok(bytes) => http::bytes(StatusCode::OK, "application/pdf", bytes),
            Err(e) => http::error(StatusCode::UNPROCESSABLE_ENTITY, "render_failed", e),
        },
        _ => {
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
    req: Request<Incoming>,
    who: &Principal,
) -> Response<Body> {
    let body: StatusBody = match http::read_json(req, BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(r) => return r,
    };
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

async fn credit(
    state: &ApiState,
    id: &str,
    req: Request<Incoming>,
    who: &Principal,
) -> Response<Body> {
    let body: CreditBody = match http::read_json(req, BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(r) => return r,
    };
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
        currency: invoice.currency.clone(),
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
    customer: String,
    currency: String,
    amount_minor: i64,
    #[serde(default)]
    reason: String,
}

async fn grant(state: &ApiState, req: Request<Incoming>) -> Response<Body> {
    let b: GrantBody = match http::read_json(req, BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !(1..=GRANT_MINOR_MAX).contains(&b.amount_minor) {
        return http::error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("field amount_minor: must be 1 to {GRANT_MINOR_MAX}"),
        );
    }
    if b.currency.parse::<tally_domain::Currency>().is_err() {
        return http::error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!(
                "field currency: {:?} is not a known ISO 4217 code",
                b.currency
            ),
        );
    }
    let at = (state.now_ms)();
    match store::grant_credit(
        &state.db,
        &b.grant_id,
        &b.customer,
        &b.currency,
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

    #[test]
    fn every_route_is_described_and_every_description_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("JSON");
        assert_eq!(openapi::check_routes(ROUTES, &doc), Vec::<String>::new());
    }
}
