//! The invoicer: turns charges into invoices, one per customer and billing period.
//!
//! It owns invoice identity (a deterministic id per customer and period), building lines
//! from the latest charges (each line links to its charge and repeats its plan version,
//! price model, tiers, quantity and amount), totals in minor units, the draft/finalized
//! status (draft until the period has ended and its grace period passed), storing invoices
//! append-only, and rendering them as JSON. A finalized invoice is never rewritten. It never
//! prices usage: amounts come from the rater's charges, already rounded.
//!
//! # Layout
//! - [`config`]: the `[invoicer]` section.
//! - [`invoice`]: the invoice document and how it is built from charges (pure).
//! - [`currency_split`]: one invoice per currency of a period, and their ids.
//! - [`numbering`]: gapless numbers per issuer, assigned once, and the frozen documents of
//!   finalized invoices (NATS KV).
//! - [`lifecycle`]: appending and reading lifecycle transitions (who, when, why).
//! - [`late`]: late usage after finalization, as adjustment lines or credit notes.
//! - [`credit_notes`]: credit notes against finalized invoices.
//! - [`lineage`]: where a line comes from (its charge, the usage windows, the events).
//! - [`reconcile`]: committed usage, charges and lines of a period compared (read-only).
//! - [`render`]: invoices for people (text, HTML, PDF).
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

// the document, its lifecycle and its rendering live in `tally-invoice` (shared with
// payments); re-exported so `tally_invoicer::invoice::…` paths keep working
pub use tally_invoice::{currency_split, invoice, lifecycle, render};

pub use config::InvoicerConfig;
pub use invoice::{Invoice, InvoiceLine, Status};
pub use run::{invoice_once, invoice_pass, InvoiceError};
