//! Routing (the table [`ROUTES`], checked against the OpenAPI document [`OPENAPI`] both ways),
//! and the Stripe webhook endpoint. A webhook is verified (signature, tolerance)
//! before its payload is read; a refused one is answered 400 and logged without the secret
//! or the signature. Processing errors are 500 so the gateway delivers again (processing is
//! idempotent). It never stores or acts on a webhook whose signature did not verify.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Extension;
use hyper::{HeaderMap, Response, StatusCode};

use tally_platform::auth::Authenticator;
use tally_platform::http::{self, BodyLimit, ErrorCode, RawBody, Router};
use tally_platform::openapi::Route;

use super::server::{self, Body};
use crate::config::PortalConfig;
use crate::gateway::stripe::Stripe;
use crate::gateway::{Gateway, GatewayError};
use crate::settle::Settler;
use crate::signature::Secret;
use crate::{dunning, metrics};

/// What every request is served from.
pub struct AppState {
    pub settler: Settler,
    pub stripe: Stripe,
    /// Who may call the `/v1` API (the tokens of every Tally API).
    pub auth: std::sync::Arc<Authenticator>,
    /// `None` when the portal feature is off.
    pub portal_secret: Option<Secret>,
    pub portal: PortalConfig,
    /// Where the portal asks for live spend; `None`: the page shows none.
    pub portal_live: Option<crate::portal::live::LiveSpend>,
    pub now_ms: fn() -> i64,
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Health,
    OpenApi,
    StripeWebhook,
    /// The operator API ([`super::api`]), behind API tokens.
    Api(ApiOp),
    /// The customer portal ([`super::portal`]), behind a signed link.
    Portal(PortalOp),
}

/// An operator API route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiOp {
    ManualPayment,
    Refund,
    WriteOff,
    Invoice,
    TrialBalance,
    Revenue,
    Notifications,
    PortalLink,
    SetProfile,
    GetProfile,
    Wallet,
    Grant,
    TopUp,
    VoidGrant,
}

/// A portal route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortalOp {
    Page,
    InvoicePdf,
    InvoiceHtml,
}

/// Every route: [`router`] answers only these (404/405 otherwise), and a test checks them
/// against [`OPENAPI`] both ways. The `.pdf` portal route comes before the bare one.
pub const ROUTES: &[Route<Op>] = &[
    Route::new("GET", "/healthz", Op::Health),
    Route::new("GET", "/v1/openapi.json", Op::OpenApi),
    Route::new("POST", "/webhooks/stripe", Op::StripeWebhook),
    Route::new("POST", "/v1/payments", Op::Api(ApiOp::ManualPayment)),
    Route::new("POST", "/v1/refunds", Op::Api(ApiOp::Refund)),
    Route::new(
        "POST",
        "/v1/invoices/{id}/write-off",
        Op::Api(ApiOp::WriteOff),
    ),
    Route::new("GET", "/v1/invoices/{id}", Op::Api(ApiOp::Invoice)),
    Route::new(
        "GET",
        "/v1/ledger/trial-balance",
        Op::Api(ApiOp::TrialBalance),
    ),
    Route::new("GET", "/v1/reports/revenue", Op::Api(ApiOp::Revenue)),
    Route::new(
        "GET",
        "/v1/customers/{customer}/notifications",
        Op::Api(ApiOp::Notifications),
    ),
    Route::new("POST", "/v1/portal-links", Op::Api(ApiOp::PortalLink)),
    Route::new(
        "PUT",
        "/v1/customers/{customer}/payment-profile",
        Op::Api(ApiOp::SetProfile),
    ),
    Route::new(
        "GET",
        "/v1/customers/{customer}/payment-profile",
        Op::Api(ApiOp::GetProfile),
    ),
    Route::new(
        "GET",
        "/v1/customers/{customer}/wallet",
        Op::Api(ApiOp::Wallet),
    ),
    Route::new(
        "POST",
        "/v1/customers/{customer}/wallet/grants",
        Op::Api(ApiOp::Grant),
    ),
    Route::new(
        "POST",
        "/v1/customers/{customer}/wallet/top-ups",
        Op::Api(ApiOp::TopUp),
    ),
    Route::new(
        "POST",
        "/v1/customers/{customer}/wallet/grants/{grant_id}/void",
        Op::Api(ApiOp::VoidGrant),
    ),
    Route::new("GET", "/portal/{token}", Op::Portal(PortalOp::Page)),
    Route::new(
        "GET",
        "/portal/{token}/invoices/{id}.pdf",
        Op::Portal(PortalOp::InvoicePdf),
    ),
    Route::new(
        "GET",
        "/portal/{token}/invoices/{id}",
        Op::Portal(PortalOp::InvoiceHtml),
    ),
];

/// The OpenAPI 3.0 document of this service, served at `/v1/openapi.json` without a token.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The service's axum router, built from [`ROUTES`]: unrouted requests answer 404/405 in the
/// shared shape, bodies are read within [`server::BODY_BYTES_MAX`], the operator API passes
/// its token check and audit first ([`super::api::handler`]), and every answer is counted by
/// its route's group ([`count`]). The portal's `{id}.pdf` route is served by the bare `{id}`
/// one, whose [`PortalFile`] reads the suffix: axum matches no parameter followed by a suffix.
pub fn router(state: Arc<AppState>) -> Router {
    let served: Vec<Route<Op>> = ROUTES
        .iter()
        .filter(|r| r.op != Op::Portal(PortalOp::InvoicePdf))
        .copied()
        .collect();
    http::with_fallbacks(http::route_table(&served, |op, method| {
        handler(&state, op, method)
    }))
    .layer(middleware::from_fn(count))
    .layer(Extension(BodyLimit(server::BODY_BYTES_MAX)))
    .with_state(state)
}

type Shared = State<Arc<AppState>>;

/// What a route's method answers, its answers tagged with the route's [`Group`].
fn handler(state: &Arc<AppState>, op: Op, method: MethodFilter) -> MethodRouter<Arc<AppState>> {
    let group = Group::of(op);
    let route = match op {
        Op::Health => on(method, || async {
            server::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }),
        Op::OpenApi => on(method, || async {
            server::with_type(StatusCode::OK, "application/json", OPENAPI.into())
        }),
        Op::StripeWebhook => on(
            method,
            |State(s): Shared, headers: HeaderMap, RawBody(body): RawBody| async move {
                stripe_webhook(&s, &headers, &body).await
            },
        ),
        Op::Api(op) => super::api::handler(state, op, method),
        Op::Portal(PortalOp::Page) => on(
            method,
            |State(s): Shared, Path(token): Path<String>| async move {
                super::portal::route(&s, PortalOp::Page, &token, "").await
            },
        ),
        Op::Portal(_) => on(method, |State(s): Shared, f: PortalFile| async move {
            super::portal::route(&s, f.op, &f.token, &f.id).await
        }),
    };
    route.layer(middleware::map_response(
        move |mut r: axum::response::Response| async move {
            r.extensions_mut().insert(group);
            r
        },
    ))
}

/// The metrics group of a route's answers; unrouted requests (404, and 405 on a served path)
/// carry none and are counted as `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Group(&'static str);

impl Group {
    fn of(op: Op) -> Group {
        Group(match op {
            Op::Health => "health",
            Op::OpenApi | Op::Api(_) => "api",
            Op::StripeWebhook => "webhook",
            Op::Portal(_) => "portal",
        })
    }
}

/// Counts every answer by its route's [`Group`], with its latency.
async fn count(req: axum::extract::Request, next: Next) -> axum::response::Response {
    let started = Instant::now();
    let response = next.run(req).await;
    let group = response
        .extensions()
        .get::<Group>()
        .map_or("other", |g| g.0);
    metrics::request(group, response.status().as_u16(), started.elapsed());
    response
}

/// The portal's `/portal/{token}/invoices/{id}` as [`ROUTES`] spell it: `x.pdf` is invoice `x`
/// as a PDF (when `x` is not empty), anything else the invoice as HTML.
#[derive(Debug, PartialEq, Eq)]
struct PortalFile {
    token: String,
    id: String,
    op: PortalOp,
}

impl PortalFile {
    fn parse(token: String, file: &str) -> PortalFile {
        let (id, op) = match file.strip_suffix(".pdf").filter(|id| !id.is_empty()) {
            Some(id) => (id, PortalOp::InvoicePdf),
            None => (file, PortalOp::InvoiceHtml),
        };
        PortalFile {
            token,
            id: id.to_owned(),
            op,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PortalFile {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((token, file)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(PortalFile::parse(token, &file))
    }
}

async fn stripe_webhook(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let now_ms = (state.now_ms)();
    let event = match state
        .stripe
        .decode(signature, body, now_ms.div_euclid(1000))
    {
        Ok(e) => e,
        Err(e) => {
            let (reason, code) = match &e {
                GatewayError::Signature(_) => ("signature", "bad_signature"),
                GatewayError::Payload(_) => ("payload", "bad_payload"),
            };
            metrics::webhook_refused(reason);
            tracing::warn!(gateway = "stripe", error = %e, bytes = body.len(), "webhook refused");
            return server::error(StatusCode::BAD_REQUEST, code, e);
        }
    };
    let payload = String::from_utf8_lossy(body);
    match state
        .settler
        .apply(
            state.stripe.name(),
            &state.stripe.actor(),
            &event,
            &payload,
            now_ms,
        )
        .await
    {
        Ok(applied) => server::json(StatusCode::OK, &applied),
        Err(crate::Error::Invalid(why)) => {
            metrics::webhook_refused("amount");
            tracing::warn!(gateway = "stripe", event_id = %event.event_id, %why, "webhook refused");
            server::error(StatusCode::BAD_REQUEST, "invalid_amount", why)
        }
        Err(e) => {
            tracing::error!(gateway = "stripe", event_id = %event.event_id, error = %e, "webhook processing failed");
            server::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "processing_failed",
                "try again",
            )
        }
    }
}

/// Delivery log of a customer's notifications (the API's view of dunning).
pub async fn deliveries(state: &AppState, customer: &str) -> Response<Body> {
    match dunning::log::deliveries_of(&state.settler.db, customer).await {
        Ok(d) => server::json(StatusCode::OK, &d),
        Err(e) => server::fail(ErrorCode::Unavailable, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_platform::openapi;

    /// The portal's suffixed route as `openapi::find` matched it.
    #[test]
    fn a_portal_file_is_read_as_the_routes_spell_it() {
        for (file, id, op) in [
            ("in_1.pdf", "in_1", PortalOp::InvoicePdf),
            ("in_1", "in_1", PortalOp::InvoiceHtml),
            (".pdf", ".pdf", PortalOp::InvoiceHtml),
            ("a.pdf.pdf", "a.pdf", PortalOp::InvoicePdf),
        ] {
            let read = PortalFile::parse("t".into(), file);
            assert_eq!((read.id.as_str(), read.op), (id, op), "{file}");
            let segments = ["portal", "t", "invoices", file];
            assert_eq!(
                openapi::find(ROUTES, "GET", &segments),
                openapi::Found::Route(Op::Portal(op), vec!["t".into(), id.into()]),
                "{file}"
            );
        }
    }

    #[test]
    fn every_route_is_described_and_every_description_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("JSON");
        assert_eq!(openapi::check_routes(ROUTES, &doc), Vec::<String>::new());
    }
}
