//! Numbers as the portal shows them: amounts in their currency with thousands separators and
//! exactly the currency's minor digits (`1,234.50 USD`, `1,235 JPY`, `1.250 KWD`), quantities
//! with separators and no trailing zeros (`1,234,567.5`), percentages. Exact decimals
//! throughout; rounding (half away from zero, as invoices round) happens once, here.
//! It never uses floats and never drops a sign.

use rust_decimal::{Decimal, RoundingStrategy};
use tally_domain::Currency;

/// The minor digits of `currency` (2 for a code the domain does not know).
pub fn minor_digits(currency: &str) -> u32 {
    currency
        .parse::<Currency>()
        .map(|c| c.minor_units())
        .unwrap_or(2)
}

/// `minor` units of `currency`: `123456789` USD is `1,234,567.89 USD`.
pub fn money_minor(currency: &str, minor: i64) -> String {
    money(currency, Decimal::new(minor, minor_digits(currency)))
}

/// `amount` of `currency`, rounded to its minor digits: `-1234.5` EUR is `-1,234.50 EUR`.
pub fn money(currency: &str, amount: Decimal) -> String {
    let n = number(amount, Some(minor_digits(currency)));
    if currency.is_empty() {
        n
    } else {
        format!("{n} {currency}")
    }
}

/// A quantity with separators and its own decimals, trailing zeros dropped: `1234567.500`
/// is `1,234,567.5`.
pub fn quantity(q: Decimal) -> String {
    number(q, None)
}

/// `part` of `whole` in whole percent, rounded down (so 99.9 % is never shown as 100 %);
/// `None` when `whole` is not positive.
pub fn percent(part: Decimal, whole: Decimal) -> Option<Decimal> {
    (whole > Decimal::ZERO).then(|| {
        (part.max(Decimal::ZERO) * Decimal::ONE_HUNDRED / whole)
            .round_dp_with_strategy(0, RoundingStrategy::ToZero)
    })
}

/// `d` with thousands separators: exactly `digits` decimals when given (rounded half away
/// from zero), else its own without trailing zeros.
fn number(d: Decimal, digits: Option<u32>) -> String {
    let d = match digits {
        Some(n) => d.round_dp_with_strategy(n, RoundingStrategy::MidpointAwayFromZero),
        None => d.normalize(),
    };
    let mut s = d.abs().to_string();
    if let Some(n) = digits {
        // Decimal keeps the scale it rounded to only when it had as many places
        let have = s.split_once('.').map_or(0, |(_, f)| f.len() as u32);
        if n > have {
            if have == 0 {
                s.push('.');
            }
            s.extend(std::iter::repeat_n('0', (n - have) as usize));
        }
    }
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_owned(), Some(f.to_owned())),
        None => (s.clone(), None),
    };
    let mut grouped = String::with_capacity(int.len() + int.len() / 3 + 2);
    if d.is_sign_negative() && !d.is_zero() {
        grouped.push('-');
    }
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    if let Some(f) = frac.filter(|f| !f.is_empty()) {
        grouped.push('.');
        grouped.push_str(&f);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn amounts_have_separators_and_the_currencys_minor_digits() {
        assert_eq!(money_minor("USD", 123_456_789), "1,234,567.89 USD");
        assert_eq!(money_minor("USD", 1_077), "10.77 USD");
        assert_eq!(money_minor("USD", 100_000), "1,000.00 USD");
        assert_eq!(money_minor("USD", 99_999), "999.99 USD");
        assert_eq!(money_minor("JPY", 1_234_567), "1,234,567 JPY");
        assert_eq!(money_minor("KWD", 1_234_500), "1,234.500 KWD");
        assert_eq!(money_minor("EUR", 5), "0.05 EUR");
        // a code the domain does not know: two digits
        assert_eq!(money_minor("XTS", 123_456), "1,234.56 XTS");
        assert_eq!(money("EUR", d("1234.5")), "1,234.50 EUR");
        assert_eq!(money("EUR", d("1234.565")), "1,234.57 EUR");
        assert_eq!(money("JPY", d("1234.5")), "1,235 JPY");
        assert_eq!(money("USD", d("0.004")), "0.00 USD");
    }

    #[test]
    fn negatives_and_zero() {
        assert_eq!(money_minor("USD", -123_456), "-1,234.56 USD");
        assert_eq!(money_minor("JPY", -1_000), "-1,000 JPY");
        assert_eq!(money_minor("USD", 0), "0.00 USD");
        assert_eq!(money_minor("JPY", 0), "0 JPY");
        assert_eq!(money_minor("KWD", 0), "0.000 KWD");
        // rounds to zero: no "-0.00"
        assert_eq!(money("USD", d("-0.001")), "0.00 USD");
        assert_eq!(money("EUR", d("-1234.565")), "-1,234.57 EUR");
        assert_eq!(quantity(Decimal::ZERO), "0");
        assert_eq!(quantity(d("-1234567.25")), "-1,234,567.25");
        assert_eq!(
            money_minor("USD", i64::MIN),
            "-92,233,720,368,547,758.08 USD"
        );
    }

    #[test]
    fn quantities_keep_their_decimals_without_trailing_zeros() {
        assert_eq!(quantity(d("1234567.500")), "1,234,567.5");
        assert_eq!(quantity(d("999")), "999");
        assert_eq!(quantity(d("1000")), "1,000");
        assert_eq!(quantity(d("4000.000000000")), "4,000");
        assert_eq!(quantity(d("0.000000001")), "0.000000001");
        assert_eq!(
            quantity(d("12345678901234567890")),
            "12,345,678,901,234,567,890"
        );
    }

    #[test]
    fn percentages_round_down() {
        assert_eq!(percent(d("0.999"), d("1")), Some(d("99")));
        assert_eq!(percent(d("1.5"), d("1")), Some(d("150")));
        assert_eq!(percent(d("-1"), d("1")), Some(d("0")));
        assert_eq!(percent(d("1"), Decimal::ZERO), None);
    }
}
