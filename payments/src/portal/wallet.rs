//! The wallet section of the portal page: what the customer's prepaid wallet holds per
//! currency, and each grant with what is left of it, its status and when it expires (a grant
//! expiring within [`EXPIRING_SOON_DAYS`] days is flagged). Rendered from the wallet view that
//! the wallet API serves ([`crate::wallet::http::view`]); every value escaped. It never reads
//! anything itself.

use std::fmt::Write;

use tally_invoice::render::html::esc;

use super::format::money_minor;
use crate::wallet::http::WalletView;
use crate::wallet::GrantKind;

/// A grant expiring within this many days is flagged on the page.
pub const EXPIRING_SOON_DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;

fn day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// When a grant expires, as the page says it at `now_ms`, and whether that is soon.
fn expiry(expires_at_ms: Option<i64>, status: &str, now_ms: i64) -> (String, bool) {
    let Some(at) = expires_at_ms else {
        return ("never".into(), false);
    };
    if status != "active" {
        return (day(at), false);
    }
    let days = (at - now_ms).div_euclid(DAY_MS);
    if days < EXPIRING_SOON_DAYS {
        let when = match days {
            0 => "today".to_owned(),
            1 => "in 1 day".to_owned(),
            n => format!("in {n} days"),
        };
        (format!("{} ({when})", day(at)), true)
    } else {
        (day(at), false)
    }
}

/// Appends the wallet section of `w` at `now_ms`.
pub fn section(h: &mut String, w: &WalletView, now_ms: i64) {
    h.push_str("<section id=\"wallet\"><h2>Prepaid wallet</h2>");
    if w.grants.is_empty() {
        h.push_str("<p class=\"note\">No wallet credit.</p></section>");
        return;
    }
    let balances: Vec<String> = w
        .balances
        .iter()
        .map(|(c, m)| esc(&money_minor(c.code(), *m)))
        .collect();
    let _ = write!(
        h,
        "<p>Available: <strong id=\"wallet-balance\">{}</strong> <span class=\"note\">(used by \
         this period's usage as it is rated: the lowest priority first, then the soonest \
         expiry)</span></p>\
         <table id=\"wallet-grants\"><tr><th>Grant</th><th>Status</th><th class=\"n\">Left</th>\
         <th class=\"n\">Granted</th><th>Expires</th></tr>",
        balances.join(" · ")
    );
    for g in &w.grants {
        let kind = match g.kind {
            GrantKind::Promotional => "credit",
            GrantKind::TopUp => "top-up",
        };
        let label = if g.reason.is_empty() {
            format!("{kind} {}", g.grant_id)
        } else {
            format!("{} ({kind})", g.reason)
        };
        let (expires, soon) = expiry(g.expires_at_ms, g.status, now_ms);
        let _ = write!(
            h,
            "<tr class=\"wallet-grant{}\" data-grant=\"{}\" data-status=\"{}\"><td>{}</td><td>{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            if soon { " expiring" } else { "" },
            esc(&g.grant_id),
            g.status,
            esc(&label),
            g.status,
            esc(&money_minor(g.currency.code(), g.remaining_minor)),
            esc(&money_minor(g.currency.code(), g.amount_minor)),
            esc(&expires),
        );
    }
    h.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wallet::http::GrantView;

    const NOW: i64 = 1_772_323_200_000; // 2026-03-01

    fn grant(id: &str, status: &'static str, left: i64, expires: Option<i64>) -> GrantView {
        GrantView {
            grant_id: id.into(),
            kind: GrantKind::Promotional,
            currency: "USD".parse().unwrap(),
            amount_minor: 10_000,
            remaining_minor: left,
            priority: 0,
            expires_at_ms: expires,
            created_at_ms: NOW - DAY_MS,
            status,
            payable_id: None,
            reason: String::new(),
            actor: "ops".into(),
        }
    }

    #[test]
    fn grants_show_what_is_left_and_when_they_expire() {
        let w = WalletView {
            customer: tally_domain::CustomerId::new("acme").unwrap(),
            balances: [("USD".parse().unwrap(), 12_345)].into(),
            grants: vec![
                GrantView {
                    reason: "Launch <promo>".into(),
                    ..grant("soon", "active", 2_345, Some(NOW + 3 * DAY_MS + 5))
                },
                grant("later", "active", 10_000, Some(NOW + 90 * DAY_MS)),
                grant("forever", "used", 0, None),
                grant("gone", "expired", 0, Some(NOW - DAY_MS)),
            ],
            movements: vec![],
        };
        let mut h = String::new();
        section(&mut h, &w, NOW);
        assert!(
            h.contains("<strong id=\"wallet-balance\">123.45 USD</strong>"),
            "{h}"
        );
        assert!(h.contains("Launch &lt;promo&gt; (credit)"), "{h}");
        assert!(h.contains(
            "class=\"wallet-grant expiring\" data-grant=\"soon\" data-status=\"active\""
        ));
        assert!(h.contains("2026-03-04 (in 3 days)"), "{h}");
        assert!(h.contains("data-grant=\"later\" data-status=\"active\""));
        assert!(h.contains("<td>2026-05-30</td>"), "{h}");
        assert!(h.contains("data-grant=\"forever\" data-status=\"used\""));
        assert!(h.contains("<td>never</td>"));
        assert!(h.contains("data-grant=\"gone\" data-status=\"expired\""));
        assert_eq!(h.matches(" expiring\"").count(), 1);
    }

    #[test]
    fn an_empty_wallet_says_so() {
        let w = WalletView {
            customer: tally_domain::CustomerId::new("acme").unwrap(),
            balances: Default::default(),
            grants: vec![],
            movements: vec![],
        };
        let mut h = String::new();
        section(&mut h, &w, NOW);
        assert!(h.contains("No wallet credit."));
    }
}
