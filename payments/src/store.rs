//! Reading invoices and writing payments, webhook events and ledger journals in ClickHouse.
//! Append-only: nothing here updates or deletes a row. Every id written is deterministic, so
//! a retried append collapses in `v_payments` and `v_ledger_entries`.
//!
//! Invoice facts beyond the header columns (tax, amount due after prepaid credits, due date,
//! number) are read from the invoice document the invoicer stored (frozen at finalization),
//! with the total as the amount due and no tax when an older document has none.

use std::collections::HashSet;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_domain::{Currency, CustomerId};
use tally_platform::store::datetime_secs;

use crate::ledger::{Journal, TrialBalance};

pub type Result<T, E = clickhouse::error::Error> = std::result::Result<T, E>;

/// What payments needs to know about an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceFacts {
    pub invoice_id: String,
    pub number: String,
    pub customer: CustomerId,
    pub currency: Currency,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    /// `v_invoices.status` as the invoicer wrote it (`draft` / `finalized`).
    pub invoicer_status: String,
    pub total_minor: i64,
    pub tax_minor: i64,
    pub amount_due_minor: i64,
    pub due_at_ms: Option<i64>,
    /// The stored document (JSON), for rendering.
    #[serde(skip)]
    pub document: String,
}

#[derive(clickhouse::Row, Deserialize)]
struct InvoiceRow {
    invoice_id: String,
    /// As stored: typed one row at a time ([`facts`]), so one bad row never fails a read of
    /// every customer's invoices.
    customer: String,
    period_start: u32,
    period_end: u32,
    status: String,
    currency: String,
    total_minor: i64,
    document: String,
}

const INVOICE_COLUMNS: &str = "SELECT invoice_id, customer, toUInt32(period_start), \
     toUInt32(period_end), status, currency, total_minor, document FROM v_invoices";

impl InvoiceFacts {
    /// Whether the invoicer stored the document finalized (`v_invoices.status`); the invoice's
    /// status is [`tally_invoice::lifecycle::current`] of this and its lifecycle.
    pub fn document_finalized(&self) -> bool {
        self.invoicer_status == tally_invoice::Status::Finalized.as_str()
    }
}

/// The facts of a stored invoice; none (logged) when its customer id or currency does not
/// validate.
fn facts(r: InvoiceRow) -> Option<InvoiceFacts> {
    let (customer, currency) =
        tally_invoice::invoice::customer_currency("invoices", r.customer, &r.currency)?;
    let doc: serde_json::Value = serde_json::from_str(&r.document).unwrap_or_default();
    let int = |k: &str| doc.get(k).and_then(serde_json::Value::as_i64);
    let due_at_ms = int("due_at_ms").filter(|ms| *ms > 0).or_else(|| {
        doc.get("due_date")
            .and_then(serde_json::Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis())
    });
    Some(InvoiceFacts {
        number: doc
            .get("number")
            .and_then(|n| {
                n.as_str()
                    .map(str::to_owned)
                    .or_else(|| n.as_u64().map(|n| n.to_string()))
            })
            .unwrap_or_default(),
        tax_minor: int("tax_minor").unwrap_or(0),
        amount_due_minor: int("amount_due_minor").unwrap_or(r.total_minor),
        due_at_ms,
        invoice_id: r.invoice_id,
        customer,
        currency,
        period_start_ms: i64::from(r.period_start) * 1000,
        period_end_ms: i64::from(r.period_end) * 1000,
        invoicer_status: r.status,
        total_minor: r.total_minor,
        document: r.document,
    })
}

/// One invoice, if it exists.
pub async fn invoice(db: &Client, invoice_id: &str) -> Result<Option<InvoiceFacts>> {
    let row = db
        .query(&format!("{INVOICE_COLUMNS} WHERE invoice_id = ?"))
        .bind(invoice_id)
        .fetch_optional::<InvoiceRow>()
        .await?;
    let Some(row) = row else { return Ok(None) };
    facts(row).map(Some).ok_or_else(|| {
        clickhouse::error::Error::Custom(format!(
            "invoice {invoice_id}: its stored customer id or currency does not validate"
        ))
    })
}

/// A customer's invoices, newest period first.
pub async fn invoices_of(db: &Client, customer: &str) -> Result<Vec<InvoiceFacts>> {
    let rows = db
        .query(&format!(
            "{INVOICE_COLUMNS} WHERE customer = ? ORDER BY period_start DESC, invoice_id"
        ))
        .bind(customer)
        .fetch_all::<InvoiceRow>()
        .await?;
    Ok(rows.into_iter().filter_map(facts).collect())
}

/// Every invoice the invoicer finalized.
pub async fn finalized_invoices(db: &Client) -> Result<Vec<InvoiceFacts>> {
    let rows = db
        .query(&format!(
            "{INVOICE_COLUMNS} WHERE status != 'draft' ORDER BY invoice_id"
        ))
        .fetch_all::<InvoiceRow>()
        .await?;
    // a bad row is left out (logged): the others' ledger, dunning and collection go on
    Ok(rows.into_iter().filter_map(facts).collect())
}

/// A payment, a failed attempt or a refund (table `payments`, in column order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct PaymentRow {
    pub payment_id: String,
    pub invoice_id: String,
    pub customer: String,
    pub gateway: String,
    pub gateway_ref: String,
    /// `payment`, `attempt` (failed) or `refund`.
    pub kind: String,
    /// `succeeded`, `failed` or `refunded`.
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub failure_reason: String,
    pub event_id: String,
    pub actor: String,
    pub at_ms: i64,
    pub at: u32,
    /// The provider's payment method (Stripe `pm_...`), empty when unknown.
    pub payment_method: String,
}

const PAYMENT_COLUMNS: &str = "SELECT payment_id, invoice_id, customer, gateway, gateway_ref, \
     kind, status, amount_minor, currency, failure_reason, event_id, actor, at_ms, toUInt32(at), \
     payment_method FROM v_payments";

pub async fn append_payment(db: &Client, row: &PaymentRow) -> Result<()> {
    let mut insert = db.insert::<PaymentRow>("payments").await?;
    insert.write(row).await?;
    insert.end().await
}

/// The payments, attempts and refunds of an invoice, oldest first.
pub async fn payments_of(db: &Client, invoice_id: &str) -> Result<Vec<PaymentRow>> {
    db.query(&format!(
        "{PAYMENT_COLUMNS} WHERE invoice_id = ? ORDER BY at_ms, payment_id"
    ))
    .bind(invoice_id)
    .fetch_all()
    .await
}

/// Every payment, attempt and refund (dunning reads the failures of open invoices).
pub async fn all_payments(db: &Client) -> Result<Vec<PaymentRow>> {
    db.query(&format!(
        "{PAYMENT_COLUMNS} ORDER BY invoice_id, at_ms, payment_id"
    ))
    .fetch_all()
    .await
}

/// The successful payment whose gateway reference is `gateway_ref`.
pub async fn payment_by_ref(
    db: &Client,
    gateway: &str,
    gateway_ref: &str,
) -> Result<Option<PaymentRow>> {
    db.query(&format!(
        "{PAYMENT_COLUMNS} WHERE gateway = ? AND gateway_ref = ? AND kind = 'payment' LIMIT 1"
    ))
    .bind(gateway)
    .bind(gateway_ref)
    .fetch_optional()
    .await
}

#[derive(clickhouse::Row, Serialize)]
struct EventRow<'a> {
    event_id: &'a str,
    gateway: &'a str,
    event_type: &'a str,
    invoice_id: &'a str,
    outcome: &'a str,
    payload: &'a str,
    received_at_ms: i64,
    received_at: u32,
}

/// A gateway event that was processed.
pub struct EventRecord<'a> {
    pub event_id: &'a str,
    pub gateway: &'a str,
    pub event_type: &'a str,
    pub invoice_id: &'a str,
    pub outcome: &'a str,
    pub payload: &'a str,
}

pub async fn append_event(db: &Client, e: &EventRecord<'_>, now_ms: i64) -> Result<()> {
    let mut insert = db.insert::<EventRow<'_>>("webhook_events").await?;
    insert
        .write(&EventRow {
            event_id: e.event_id,
            gateway: e.gateway,
            event_type: e.event_type,
            invoice_id: e.invoice_id,
            outcome: e.outcome,
            payload: e.payload,
            received_at_ms: now_ms,
            received_at: datetime_secs(now_ms),
        })
        .await?;
    insert.end().await
}

/// The outcome recorded for an event already processed, if any.
pub async fn event_outcome(db: &Client, gateway: &str, event_id: &str) -> Result<Option<String>> {
    db.query(
        "SELECT outcome FROM webhook_events WHERE gateway = ? AND event_id = ? \
         ORDER BY received_at_ms LIMIT 1",
    )
    .bind(gateway)
    .bind(event_id)
    .fetch_optional()
    .await
}

#[derive(clickhouse::Row, Serialize)]
struct EntryRow<'a> {
    entry_id: String,
    journal_id: &'a str,
    line_no: u32,
    kind: &'a str,
    account: &'a str,
    currency: &'a str,
    debit_minor: i64,
    credit_minor: i64,
    invoice_id: &'a str,
    customer: &'a str,
    actor: &'a str,
    at_ms: i64,
    at: u32,
}

/// Appends a journal's lines (ids `<journal_id>#<line_no>`) to `ledger_entries_by_time`, then
/// to `ledger_entries`.
pub async fn append_journal(
    db: &Client,
    j: &Journal,
    customer: &str,
    actor: &str,
    at_ms: i64,
) -> Result<()> {
    if j.lines.is_empty() {
        return Ok(());
    }
    // the time-ordered copy first: every row of ledger_entries is then also there (a crash
    // in between leaves a copy that the retry's rows collapse with, by entry id)
    for table in ["ledger_entries_by_time", "ledger_entries"] {
        let mut insert = db.insert::<EntryRow<'_>>(table).await?;
        for (i, l) in j.lines.iter().enumerate() {
            let line_no = i as u32 + 1;
            insert
                .write(&EntryRow {
                    entry_id: format!("{}#{line_no}", j.journal_id),
                    journal_id: &j.journal_id,
                    line_no,
                    kind: j.kind,
                    account: l.account.as_str(),
                    currency: j.currency.code(),
                    debit_minor: l.debit_minor,
                    credit_minor: l.credit_minor,
                    invoice_id: &j.invoice_id,
                    customer,
                    actor,
                    at_ms,
                    at: datetime_secs(at_ms),
                })
                .await?;
        }
        insert.end().await?;
    }
    Ok(())
}

/// Copies the lines of `ledger_entries` that `ledger_entries_by_time` lacks (journals posted
/// before migration 0052); returns how many. A full read of both tables, run once by an
/// operator (`tally-payments index-ledger`); running it again copies nothing.
pub async fn index_ledger(db: &Client) -> Result<u64> {
    const COLS: &str = "entry_id, journal_id, line_no, kind, account, currency, debit_minor, \
         credit_minor, invoice_id, customer, actor, at_ms, at";
    let missing = "FROM ledger_entries WHERE entry_id NOT IN \
         (SELECT entry_id FROM ledger_entries_by_time)";
    let n: u64 = db
        .query(&format!("SELECT count() {missing}"))
        .fetch_one()
        .await?;
    if n > 0 {
        db.query(&format!(
            "INSERT INTO ledger_entries_by_time ({COLS}) SELECT {COLS} {missing}"
        ))
        .execute()
        .await?;
    }
    Ok(n)
}

/// Ids of every journal posted.
pub async fn journal_ids(db: &Client) -> Result<HashSet<String>> {
    let ids: Vec<String> = db
        .query("SELECT DISTINCT journal_id FROM v_ledger_entries")
        .fetch_all()
        .await?;
    Ok(ids.into_iter().collect())
}

/// Whether a journal is posted in `currency` (a journal's lines are all in its currency).
/// Reads the base table by its sorting key, (currency, journal_id, line_no): a point lookup,
/// not the whole ledger through `v_ledger_entries`. Any record of a line counts, as in the
/// view (an entry's journal id never changes between its records).
pub async fn journal_exists(db: &Client, currency: &str, journal_id: &str) -> Result<bool> {
    let n: u64 = db
        .query(
            "SELECT count() FROM (SELECT 1 FROM ledger_entries \
             WHERE currency = ? AND journal_id = ? LIMIT 1)",
        )
        .bind(currency)
        .bind(journal_id)
        .fetch_one()
        .await?;
    Ok(n > 0)
}

/// One ledger line as stored (the API and the tests read these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct EntryView {
    pub journal_id: String,
    pub line_no: u32,
    pub kind: String,
    pub account: String,
    pub currency: String,
    pub debit_minor: i64,
    pub credit_minor: i64,
    pub actor: String,
    pub at_ms: i64,
}

/// The ledger lines of an invoice, in journal order.
pub async fn entries_of(db: &Client, invoice_id: &str) -> Result<Vec<EntryView>> {
    db.query(
        "SELECT journal_id, line_no, kind, account, currency, debit_minor, credit_minor, actor, at_ms \
         FROM v_ledger_entries WHERE invoice_id = ? ORDER BY at_ms, journal_id, line_no",
    )
    .bind(invoice_id)
    .fetch_all()
    .await
}

#[derive(clickhouse::Row, Deserialize)]
struct TotalsRow {
    currency: String,
    account: String,
    d: i64,
    c: i64,
}

/// The trial balance of everything posted.
pub async fn trial_balance(db: &Client) -> Result<TrialBalance, crate::Error> {
    let rows: Vec<TotalsRow> = db
        .query(
            "SELECT currency, account, sum(debit_minor) AS d, sum(credit_minor) AS c \
             FROM v_ledger_entries GROUP BY currency, account ORDER BY currency, account",
        )
        .fetch_all()
        .await?;
    let mut tb = TrialBalance::default();
    for r in rows {
        let account = crate::ledger::Account::ALL
            .into_iter()
            .find(|a| a.as_str() == r.account)
            .ok_or_else(|| {
                crate::Error::Corrupt(format!("unknown ledger account {:?}", r.account))
            })?;
        tb.add(
            &r.currency,
            &crate::ledger::Line {
                account,
                debit_minor: r.d,
                credit_minor: r.c,
            },
        );
    }
    Ok(tb)
}

/// Whether a table or view exists in the current database (for reading what another stage
/// may not have created yet, such as `v_credit_notes`).
pub async fn exists(db: &Client, name: &str) -> Result<bool> {
    let n: u64 = db
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = ?")
        .bind(name)
        .fetch_one()
        .await?;
    Ok(n > 0)
}
