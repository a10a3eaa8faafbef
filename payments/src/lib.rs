//! Payments: money moving against invoices, the books that record it, reminding customers
//! who have not paid, and the page where a customer sees usage, invoices and payments.
//!
//! It owns: the gateway adapters and verified inbound webhooks, payments and refunds, the
//! append-only double-entry ledger and its trial balance, dunning (payment retries and overdue
//! reminders as signed notifications with a delivery log), the webhooks of spend alerts (the
//! same signed notifications) and the customer portal (signed, expiring links). It does not
//! own invoices or their numbers, lines and totals (the invoicer's). It never imports the
//! invoicer stage: the invoice document, its rendering and its lifecycle come from the shared
//! `tally-invoice` crate, and it reads and moves an invoice's status only through
//! `tally_invoice::lifecycle` (the one fold of the transitions).
//! It never updates or deletes a stored row: every change is an appended record with its actor.
//!
//! # Layout
//! - [`bootstrap`]: the process's configuration file and what `serve` checks on it first.
//! - [`config`]: the `[payments]`, `[portal]` and `[dunning]` sections (secrets redacted).
//! - [`signature`]: HMAC-SHA256 `t=...,v1=...` signatures (Stripe's scheme).
//! - [`gateway`]: the adapter trait, [`gateway::stripe`] and [`gateway::manual`].
//! - [`ledger`]: posting rules and the trial balance (pure).
//! - [`settle`]: applying payment events, refunds, write-offs and the ledger sync; what they
//!   decide is pure ([`settle::decide`]: payment kinds and statuses, outcomes).
//! - [`disputes`]: payment disputes: the disputed amount held, released or lost, versioned.
//! - [`revenue`]: the revenue report (billed, collected, credited, outstanding) from the ledger.
//! - [`collect`]: the first charge of a finalized invoice through the customer's gateway.
//! - [`profiles`]: how each customer pays (gateway, saved payment method), append-only.
//! - [`grants`]: the invoicer's prepaid credit grants still to post.
//! - [`credit_notes`]: the invoicer's credit notes still to post.
//! - [`store`]: ClickHouse reads and appends.
//! - [`dunning`]: retry and reminder schedules, signed notifications, the delivery log.
//! - [`delivery`]: each finalized invoice emailed over SMTP with its PDF and sent as a signed
//!   `invoice.finalized` webhook, exactly once (attempt claims in NATS KV, dunning's log).
//! - [`spend_alerts`]: the spend deciders' threshold alerts as signed notifications (a durable
//!   JetStream consumer, dunning's log, signing and retries).
//! - [`portal`]: link tokens, the customer page, its usage chart.
//! - [`wallet`]: prepaid credit wallets: grants and top-ups with priority and expiry,
//!   consumed by rated usage in near real time, every movement a ledger journal.
//! - [`http`]: the HTTP server and its routes.
//! - [`outbound`]: outgoing HTTP(S) requests (notifications, gateway API calls).
//! - [`metrics`]: every metric this crate emits.

pub mod bootstrap;
pub mod collect;
pub mod config;
pub mod credit_notes;
pub mod delivery;
pub mod disputes;
pub mod dunning;
pub mod gateway;
pub mod grants;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod outbound;
pub mod portal;
pub mod profiles;
pub mod revenue;
pub mod settle;
pub mod signature;
pub mod spend_alerts;
pub mod store;
pub mod wallet;

/// Why a payments operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("clickhouse: {0}")]
    Store(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Lifecycle(#[from] tally_invoice::lifecycle::LifecycleError),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Wallet(#[from] wallet::WalletError),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// A request or event whose amounts cannot be applied (a sum that overflows); the API
    /// answers 400.
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("configuration: {0}")]
    Config(String),
}
