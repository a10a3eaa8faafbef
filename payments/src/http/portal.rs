//! Portal routes: `/portal/<token>` (the page), `/portal/<token>/invoices/<id>` (the invoice
//! as HTML) and `/portal/<token>/invoices/<id>.pdf` (download). A refused link is 403 with a
//! page that says only that; an invoice of another customer is 404, as if it did not exist.
//! It never serves a page or document of a customer other than the link's.

use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};

use super::routes::{AppState, PortalOp};
use super::server::{self, Body};
use crate::portal::{self, link, page};

/// Answers a portal route: the link's `token` and, for an invoice, its `id` (empty for the
/// page).
pub async fn route(state: &AppState, op: PortalOp, token: &str, id: &str) -> Response<Body> {
    let Some(secret) = &state.portal_secret else {
        return server::error(
            StatusCode::NOT_FOUND,
            "portal_off",
            "the portal feature is off",
        );
    };
    let now_ms = (state.now_ms)();
    let customer = match link::verify(secret, token, now_ms.div_euclid(1000)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "portal link refused");
            return server::html(StatusCode::FORBIDDEN, page::refused());
        }
    };
    let db = &state.settler.db;
    let (id, pdf) = match op {
        PortalOp::Page => {
            return match portal::load(db, state.portal_live.as_ref(), &customer, now_ms).await {
                Ok(v) => server::html(StatusCode::OK, page::render(&v, token)),
                Err(e) => internal(e),
            }
        }
        PortalOp::InvoicePdf => (id, true),
        PortalOp::InvoiceHtml => (id, false),
    };
    match portal::invoice_for(db, &customer, id).await {
        Ok(Some(inv)) if pdf => match tally_invoice::render::pdf(&inv) {
            Ok(bytes) => {
                let name = inv.number.clone().unwrap_or_else(|| inv.invoice_id.clone());
                let mut r = server::with_type(StatusCode::OK, "application/pdf", bytes);
                if let Ok(v) =
                    HeaderValue::from_str(&format!("attachment; filename=\"{name}.pdf\""))
                {
                    r.headers_mut().insert("content-disposition", v);
                }
                r
            }
            Err(e) => internal(crate::Error::Corrupt(e.to_string())),
        },
        Ok(Some(inv)) => server::html(StatusCode::OK, tally_invoice::render::html(&inv)),
        Ok(None) => server::error(StatusCode::NOT_FOUND, "not_found", "no such invoice"),
        Err(e) => internal(e),
    }
}

fn internal(e: crate::Error) -> Response<Body> {
    tracing::error!(error = %e, "portal failed");
    server::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "see the service log",
    )
}
