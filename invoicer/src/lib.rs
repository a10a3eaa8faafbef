//! The invoicer: turns charges into invoices, one per customer and billing period.
//!
//! It owns invoicing passes: when a period's invoice is built from the latest charges, when
//! it is finalized (draft until the period has ended and its grace period passed) and
//! numbered, storing invoices append-only, late usage and credit notes, lineage and
//! reconciliation, and the invoicer's HTTP API. A finalized invoice is never rewritten. It
//! never prices usage: amounts come from the rater's charges, already rounded.
//!
//! The invoice document (identity, lines, totals), the ids of a period's invoices per
//! currency, the lifecycle (the one source of an invoice's status) and rendering are in the
//! `tally-invoice` crate, shared with payments; they are re-exported here under their old
//! paths ([`invoice`], [`currency_split`], [`lifecycle`], [`render`]).
//!
//! # Layout
//! - [`config`]: the `[invoicer]` section.
//! - [`numbering`]: gapless numbers per issuer, assigned once, and the frozen documents of
//!   finalized invoices (NATS KV).
//! - [`late`]: late usage after finalization, as adjustment lines or credit notes.
//! - [`credit_notes`]: credit notes against finalized invoices.
//! - [`lineage`]: where a line comes from (its charge, the usage windows, the events).
//! - [`reconcile`]: committed usage, charges and lines of a period compared (read-only).
//! - [`store`]: reading charges and existing invoices, writing invoices and lines.
//! - [`run`]: one invoicing pass; [`schedule`]: when passes run (cron).
//! - [`api`]: the HTTP API and its OpenAPI document.
//! - [`metrics`]: every metric this crate emits.

pub mod api;
pub mod config;
pub mod credit_notes;
pub mod late;
pub mod lineage;
pub mod metrics;
pub mod numbering;
pub mod reconcile;
pub mod run;
pub mod schedule;
pub mod store;

/// From `tally-invoice`: the document, its ids per currency, its lifecycle and its rendering.
pub use tally_invoice::{currency_split, invoice, lifecycle, render};

pub use config::InvoicerConfig;
pub use invoice::{Invoice, InvoiceLine, Status};
pub use run::{invoice_once, invoice_pass, invoice_pass_each, InvoiceError, PassReport};
