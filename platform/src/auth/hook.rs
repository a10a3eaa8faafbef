//! The two calls an HTTP router makes: [`authorize`] before routing, answering 401/403 as
//! `{"code", "detail"}` with a `WWW-Authenticate` challenge, and [`audited`] around the
//! handler of a request that may change state; [`guard`] is both as an axum middleware.

use std::future::Future;

use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};

use super::audit::{self, AuditRow};
use super::authenticator::{AuthError, Authenticator, Principal};
use super::role::{self, Permission};
use crate::clock::now_ms;
use crate::http::{self, Body};

/// The refusal as a response: the error's status and code, and the challenge.
pub fn refusal(e: &AuthError) -> Response<Body> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut r = http::error(status, e.code(), e);
    let challenge = match e {
        AuthError::Forbidden { .. } => "Bearer realm=\"tally\", error=\"insufficient_scope\"",
        AuthError::Missing => "Bearer realm=\"tally\"",
        _ => "Bearer realm=\"tally\", error=\"invalid_token\"",
    };
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    r
}

/// Who `req` is, if its role may make it on an API whose changes need `writes` (reads need
/// [`Permission::Read`]: see [`role::needed`]); the refusal otherwise.
pub async fn authorize<B>(
    auth: &Authenticator,
    req: &Request<B>,
    writes: Permission,
) -> Result<Principal, Response<Body>> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let needed = role::needed(req.method().as_str(), writes);
    auth.authorize(header, needed).await.map_err(|e| {
        tracing::info!(service = auth.service(), path = %req.uri().path(), code = e.code(), "api request refused");
        refusal(&e)
    })
}

/// Runs `handler` for `who`; when `method` may change state, records the request in the
/// audit first (503 `audit_unavailable`, and `handler` never runs, when that fails) and its
/// answer after.
pub async fn audited<F>(
    auth: &Authenticator,
    who: &Principal,
    method: &str,
    path: &str,
    handler: F,
) -> Response<Body>
where
    F: Future<Output = Response<Body>>,
{
    if role::is_safe(method) {
        return handler.await;
    }
    let Some(db) = auth.db() else {
        return http::fail(
            http::ErrorCode::AuditUnavailable,
            "this API has no audit store: changes are refused",
        );
    };
    let request_id = crate::secrets::generate_hex(8).unwrap_or_default();
    let arrived = AuditRow::arrived(&request_id, auth.service(), who, method, path, now_ms());
    if let Err(e) = audit::append(db, &arrived).await {
        tracing::error!(service = auth.service(), error = %e, "writing the audit row failed; request refused");
        return http::fail(
            http::ErrorCode::AuditUnavailable,
            "the change could not be recorded, so it was not made; try again",
        );
    }
    let response = handler.await;
    let answered = arrived.answered(response.status().as_u16(), now_ms());
    if let Err(e) = audit::append(db, &answered).await {
        tracing::error!(service = auth.service(), request_id, error = %e, "writing the audit answer failed");
    }
    tracing::info!(service = auth.service(), actor = %who.actor_label(), role = who.role.name(),
        method, path, status = response.status().as_u16(), "api change");
    response
}

/// [`authorize`] then [`audited`] as an axum middleware
/// (`axum::middleware::from_fn_with_state`): the request goes on to `next` with its
/// [`Principal`] as an extension (`axum::Extension<Principal>`), and `next` never runs when
/// the token is refused or a change cannot be audited. `next`'s answer is passed on untouched.
pub async fn guard(
    auth: &Authenticator,
    writes: Permission,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // the body is not `Sync`: only the head is held while the token is checked
    let (parts, body) = req.into_parts();
    let head = Request::from_parts(parts, ());
    let who = match authorize(auth, &head, writes).await {
        Ok(who) => who,
        Err(refused) => return refused.into_response(),
    };
    let (method, path) = (head.method().to_string(), head.uri().path().to_owned());
    let (mut parts, ()) = head.into_parts();
    parts.extensions.insert(who.clone());
    let req = axum::extract::Request::from_parts(parts, body);
    // the audit needs only the answer's status
    let mut answered = None;
    let outcome = audited(auth, &who, &method, &path, async {
        let response = next.run(req).await;
        let mut status = Response::new(Body::default());
        *status.status_mut() = response.status();
        answered = Some(response);
        status
    })
    .await;
    answered.unwrap_or_else(|| outcome.into_response())
}
