//! The invoice as both the invoicer and payments know it: the document, its lifecycle and its
//! rendering. The invoicer builds, numbers, stores and finalizes invoices; payments moves their
//! lifecycle and shows and sends them; what both need lives here, so neither stage imports the
//! other.
//!
//! It owns the invoice document (identity, lines, totals, terms; built from charges, pure),
//! the invoice ids of a period with several currencies, the lifecycle (the one place an
//! invoice's status is read, folded and appended), and rendering for people (text, HTML, PDF).
//! It never prices usage, assigns numbers, schedules passes or moves money.
//!
//! # Layout
//! - [`invoice`]: the invoice document and how it is built from charges (pure).
//! - [`currency_split`]: one invoice per currency of a period, and their ids.
//! - [`lifecycle`]: appending and reading lifecycle transitions (who, when, why) and every
//!   invoice's status from them.
//! - [`render`]: invoices for people (text, HTML, PDF).

pub mod currency_split;
pub mod invoice;
pub mod lifecycle;
pub mod render;

pub use invoice::{Invoice, InvoiceLine, Status};
