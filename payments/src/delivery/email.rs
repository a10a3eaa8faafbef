//! The invoice email: one `multipart/mixed` message (RFC 5322 / MIME, built by `lettre`) with a
//! `text/plain` part that states the number, period and amounts, and the invoice's PDF
//! (`tally_invoice::render::pdf`, base64) attached as `<number>.pdf`; and the SMTP client that
//! submits it (`lettre`'s async transport over rustls: `STARTTLS` the server must offer,
//! implicit TLS, or, in `dev` only, none; the server's certificate verified against the
//! system's roots plus `invoice_delivery.smtp_ca_file`; AUTH PLAIN or LOGIN when a user is
//! set). The `Message-ID` is deterministic (`<invoice.email.<invoice>@<sender's domain>>`), so
//! a message sent twice after a crash is recognizably the same one.
//! Never logs the password or the message.

use std::time::Duration;

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Attachment, Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tally_invoice::Invoice;

use crate::config::{InvoiceDeliveryConfig, SmtpTls};
use crate::portal::format::money_minor;

/// Parses a sender or recipient, `Name <address>` or `address`, checked as a billing address
/// ([`check_address`]).
pub fn mailbox(s: &str) -> Result<Mailbox, String> {
    let m: Mailbox = s
        .parse()
        .map_err(|e| format!("{s:?} is not an address: {e}"))?;
    check_address(m.email.as_ref())?;
    Ok(m)
}

/// The rules of the catalog's `billing_email` (the rater's `check_billing_email`; stages do not
/// import each other): one plain ASCII `local@domain`, a domain of at least two labels, nothing
/// a header could be split on. Checked again before a stored contact is used.
pub fn check_address(email: &str) -> Result<(), String> {
    let ok = email.len() <= 254
        && email.rsplit_once('@').is_some_and(|(local, domain)| {
            let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
            let labels: Vec<&str> = domain.split('.').collect();
            !local.is_empty()
                && local.len() <= 64
                && local
                    .split('.')
                    .all(|a| !a.is_empty() && a.chars().all(atext))
                && labels.len() >= 2
                && labels.iter().all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{email:?} is not a plain address local@domain"))
    }
}

/// The certificates of the PEM file `path` (for `smtp_ca_file`).
pub fn ca_certificates(path: &str) -> Result<Certificate, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{path}: no certificate in the file"));
    }
    Certificate::from_pem(&pem).map_err(|e| format!("{path}: {e}"))
}

/// The subject: `Invoice INV-000042 from Acme Billing Ltd` (without the issuer when it has no
/// name).
pub fn subject(inv: &Invoice) -> String {
    match inv.issuer.name.trim() {
        "" => format!("Invoice {}", number(inv)),
        name => format!("Invoice {} from {name}", number(inv)),
    }
}

/// The number printed on the invoice (its id when it has none).
pub fn number(inv: &Invoice) -> String {
    inv.number.clone().unwrap_or_else(|| inv.invoice_id.clone())
}

/// The deterministic `Message-ID` of an invoice's email, at the sender's domain.
pub fn message_id(invoice_id: &str, from: &Mailbox) -> String {
    format!("<invoice.email.{invoice_id}@{}>", from.email.domain())
}

/// The text part: who issued it, number, period, the amounts (subtotal, discount, tax, total,
/// credit applied, amount due) and the due date, in the invoice currency with its minor digits.
pub fn text(inv: &Invoice) -> String {
    let m = |minor: i64| money_minor(inv.currency.code(), minor);
    let day = |rfc3339: &str| rfc3339.get(..10).unwrap_or(rfc3339).to_owned();
    let mut out = format!(
        "{}\n\nPeriod: {} to {}\nCustomer: {}\n\n",
        subject(inv),
        day(&inv.period_start),
        day(&inv.period_end),
        inv.customer,
    );
    out.push_str(&format!("Subtotal: {}\n", m(inv.subtotal_minor)));
    if inv.discount_minor != 0 {
        out.push_str(&format!("Discount: -{}\n", m(inv.discount_minor)));
    }
    out.push_str(&format!("Tax: {}\n", m(inv.tax_minor)));
    out.push_str(&format!("Total: {}\n", m(inv.total_minor)));
    if inv.credits_applied_minor != 0 {
        out.push_str(&format!(
            "Prepaid credit applied: -{}\n",
            m(inv.credits_applied_minor)
        ));
    }
    out.push_str(&format!(
        "Amount due: {}\nDue date: {}\n\nThe invoice is attached as a PDF.\n",
        m(inv.amount_due_minor),
        day(&inv.due_date),
    ));
    out
}

/// What one email says besides its attachment (stored in the notification log).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    pub to: String,
    pub from: String,
    #[serde(default)]
    pub reply_to: String,
    pub subject: String,
    pub message_id: String,
    pub text: String,
    pub attachment_name: String,
}

/// The message of `envelope` with `pdf` attached, dated `date_ms`.
pub fn message(envelope: &Envelope, pdf: Vec<u8>, date_ms: i64) -> Result<Message, String> {
    let from = mailbox(&envelope.from)?;
    let to = mailbox(&envelope.to)?;
    let pdf_type = ContentType::parse("application/pdf").map_err(|e| e.to_string())?;
    let body = Body::new_with_encoding(pdf, ContentTransferEncoding::Base64)
        .map_err(|_| "the PDF cannot be base64-encoded".to_owned())?;
    let date = std::time::UNIX_EPOCH + Duration::from_millis(date_ms.max(0).unsigned_abs());
    let mut builder = Message::builder()
        .from(from)
        .to(to)
        .subject(envelope.subject.clone())
        .message_id(Some(envelope.message_id.clone()))
        .date(date);
    if !envelope.reply_to.is_empty() {
        builder = builder.reply_to(mailbox(&envelope.reply_to)?);
    }
    builder
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain(envelope.text.clone()))
                .singlepart(Attachment::new(envelope.attachment_name.clone()).body(body, pdf_type)),
        )
        .map_err(|e| format!("message: {e}"))
}

/// Submits messages to the configured SMTP server, one connection per message.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    timeout: Duration,
}

impl Mailer {
    /// A client for `cfg`'s server (validated: [`InvoiceDeliveryConfig::validate`]).
    pub fn new(cfg: &InvoiceDeliveryConfig) -> Result<Mailer, String> {
        let from = mailbox(&cfg.from)?;
        let tls = match cfg.smtp_tls {
            SmtpTls::None => Tls::None,
            mode => {
                let mut params = TlsParameters::builder(cfg.smtp_host.clone());
                if !cfg.smtp_ca_file.is_empty() {
                    params = params.add_root_certificate(ca_certificates(&cfg.smtp_ca_file)?);
                }
                let params = params
                    .build_rustls()
                    .map_err(|e| format!("smtp tls: {e}"))?;
                if mode == SmtpTls::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.smtp_host)
            .port(cfg.smtp_port)
            .tls(tls)
            .timeout(Some(timeout))
            .hello_name(ClientId::Domain(from.email.domain().to_owned()));
        if !cfg.smtp_username.is_empty() {
            builder = builder.credentials(Credentials::new(
                cfg.smtp_username.clone(),
                cfg.smtp_password.expose().to_owned(),
            ));
        }
        Ok(Mailer {
            transport: builder.build(),
            timeout,
        })
    }

    /// Sends `message`; the server's answer to the data (`250 ...`) or why it failed.
    pub async fn send(&self, message: Message) -> Result<String, String> {
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(r)) => Ok(format!(
                "{} {}",
                r.code(),
                r.message().collect::<Vec<_>>().join(" ")
            )),
            Ok(Err(e)) => Err(format!("smtp: {e}")),
            Err(_) => Err(format!("timed out after {} ms", self.timeout.as_millis())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            to: "ap@acme.example".into(),
            from: "Tally Billing <billing@tally.example>".into(),
            reply_to: String::new(),
            subject: "Invoice INV-000042 from Tally".into(),
            message_id: "<invoice.email.inv_1@tally.example>".into(),
            text: "Amount due: 12.00 USD\n".into(),
            attachment_name: "INV-000042.pdf".into(),
        }
    }

    #[test]
    fn the_message_is_multipart_mixed_with_the_pdf_in_base64() {
        let pdf = b"%PDF-1.7\n\xe2\xe3\xcf\xd3\nbinary\x00\x01".to_vec();
        let raw = message(&envelope(), pdf.clone(), 1_800_000_000_000)
            .expect("message")
            .formatted();
        let raw = String::from_utf8(raw).expect("7-bit text");
        assert!(
            raw.contains("Subject: Invoice INV-000042 from Tally\r\n"),
            "{raw}"
        );
        assert!(raw.contains("Message-ID: <invoice.email.inv_1@tally.example>\r\n"));
        assert!(raw.contains("Content-Type: multipart/mixed;"));
        assert!(raw.contains("Content-Type: application/pdf"));
        assert!(raw.contains("filename=\"INV-000042.pdf\""));
        assert!(raw.contains("Content-Transfer-Encoding: base64"));
        assert!(raw.contains("Amount due: 12.00 USD"));
        assert!(raw.lines().all(|l| l.len() <= 998), "line length");
    }

    #[test]
    fn addresses_are_plain_and_header_safe() {
        assert_eq!(
            mailbox("Tally Billing <billing@tally.example>")
                .unwrap()
                .email
                .to_string(),
            "billing@tally.example"
        );
        for bad in [
            "",
            "billing",
            "billing@localhost",
            "a@b.example\r\nBcc: x@evil.example",
            "a@b.example, c@d.example",
        ] {
            assert!(mailbox(bad).is_err(), "{bad:?}");
        }
        let from = mailbox("billing@tally.example").unwrap();
        assert_eq!(
            message_id("inv_ab", &from),
            "<invoice.email.inv_ab@tally.example>"
        );
    }
}
