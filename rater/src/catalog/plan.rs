//! One plan version and how its configuration is validated: every price checked against
//! the declared meters, every error naming the field (`plans[0].prices[1].tiers`). Pure.

use std::collections::HashMap;

use rust_decimal::Decimal;
use tally_domain::{Currency, Meter, MeterSlug};
use tally_platform::ConfigError;

use crate::config::{CouponSpec, PlanSpec, PriceSpec};
use crate::pricing::discount::{Coupon, Duration, Off, PERIODS_MAX};
use crate::pricing::{graduated, Billing, Dimensional, Price, PriceModel};

/// One immutable plan version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    pub version: u32,
    pub currency: Currency,
    pub effective_from_ms: i64,
    pub prices: HashMap<MeterSlug, Price>,
    /// Features and metered limits per period.
    pub entitlements: crate::catalog::entitlements::Entitlements,
}

/// Validates `plans[i]`.
pub fn validate(spec: PlanSpec, i: usize, meters: &[Meter]) -> Result<Plan, ConfigError> {
    let setting = |f: &str| format!("plans[{i}].{f}");
    if spec.id.is_empty() {
        return Err(ConfigError::invalid(setting("id"), "is empty"));
    }
    if spec.version == 0 {
        return Err(ConfigError::invalid(
            setting("version"),
            "must be at least 1",
        ));
    }
    let currency: Currency = spec
        .currency
        .parse()
        .map_err(|e| ConfigError::invalid(setting("currency"), e))?;
    let mut prices = HashMap::new();
    for (j, p) in spec.prices.into_iter().enumerate() {
        let field = |f: &str| format!("plans[{i}].prices[{j}].{f}");
        let Some(meter) = meters.iter().find(|m| m.slug.as_str() == p.meter) else {
            return Err(ConfigError::invalid(
                field("meter"),
                format!("no meter {:?} is declared", p.meter),
            ));
        };
        let price =
            validate_price(p, meter).map_err(|(f, d)| ConfigError::invalid(field(&f), d))?;
        if prices.insert(meter.slug.clone(), price).is_some() {
            return Err(ConfigError::invalid(
                field("meter"),
                format!("meter {} is priced twice", meter.slug),
            ));
        }
    }
    let entitlements = crate::catalog::entitlements::validate(spec.entitlements, i, meters)
        .map_err(|(f, d)| ConfigError::invalid(f, d))?;
    Ok(Plan {
        entitlements,
        id: spec.id,
        version: spec.version,
        currency,
        effective_from_ms: spec.effective_from.timestamp_millis(),
        prices,
    })
}

type FieldError = (String, String);

fn validate_price(p: PriceSpec, meter: &Meter) -> Result<Price, FieldError> {
    let model = validate_model(&p, meter)?;
    let free_units = non_negative("free_units", p.free_units)?.unwrap_or(Decimal::ZERO);
    let minimum = non_negative("minimum", p.minimum)?;
    let maximum = non_negative("maximum", p.maximum)?;
    if let (Some(min), Some(max)) = (minimum, maximum) {
        if min > max {
            return Err((
                "maximum".into(),
                format!("{max} is below the minimum {min}"),
            ));
        }
    }
    let tax_code = match p.tax_code {
        Some(c) if c.is_empty() => return Err(("tax_code".into(), "is empty".into())),
        Some(c) => c,
        None => crate::catalog::tax::DEFAULT_TAX_CODE.to_owned(),
    };
    let billing = match p.billing.as_deref() {
        None | Some("in_arrears") => Billing::InArrears,
        Some("in_advance") if !matches!(model, PriceModel::Flat { .. }) => {
            return Err((
                "billing".into(),
                format!(
                    "in_advance is only for a flat fee, not a {} price",
                    model.name()
                ),
            ))
        }
        Some("in_advance") if minimum.is_some() || maximum.is_some() => {
            return Err((
                "billing".into(),
                "a fee billed in advance takes no minimum or maximum".into(),
            ))
        }
        Some("in_advance") => Billing::InAdvance,
        Some(other) => {
            return Err((
                "billing".into(),
                format!("{other:?} is not in_arrears or in_advance"),
            ))
        }
    };
    Ok(Price {
        model,
        free_units,
        minimum,
        maximum,
        tax_code,
        billing,
    })
}

fn validate_model(p: &PriceSpec, meter: &Meter) -> Result<PriceModel, FieldError> {
    let allowed: &[&str] = match p.model.as_str() {
        "per_unit" => &["unit_price"],
        "graduated" | "volume" => &["tiers"],
        "package" => &["package_size", "package_price"],
        "flat" => &["amount"],
        "dimensional" => &["dimensions", "rates", "default_unit_price"],
        other => {
            return Err((
                "model".into(),
                format!(
                "unknown model {other:?} (per_unit, graduated, volume, package, flat, dimensional)"
            ),
            ))
        }
    };
    for (name, present) in [
        ("unit_price", p.unit_price.is_some()),
        ("tiers", p.tiers.is_some()),
        ("package_size", p.package_size.is_some()),
        ("package_price", p.package_price.is_some()),
        ("amount", p.amount.is_some()),
        ("dimensions", p.dimensions.is_some()),
        ("rates", p.rates.is_some()),
        ("default_unit_price", p.default_unit_price.is_some()),
    ] {
        if present && !allowed.contains(&name) {
            return Err((name.into(), format!("is not used by model {}", p.model)));
        }
    }
    let model = match p.model.as_str() {
        "per_unit" => PriceModel::PerUnit {
            unit_price: required("unit_price", non_negative("unit_price", p.unit_price)?)?,
        },
        "graduated" | "volume" => {
            let tiers = required("tiers", p.tiers.clone())?;
            graduated::validate(&tiers).map_err(|e| ("tiers".to_owned(), e))?;
            if p.model == "volume" {
                PriceModel::Volume { tiers }
            } else {
                PriceModel::Graduated { tiers }
            }
        }
        "package" => {
            let size = required("package_size", p.package_size)?;
            if size <= Decimal::ZERO {
                return Err(("package_size".into(), format!("{size} must be positive")));
            }
            PriceModel::Package {
                size,
                price: required(
                    "package_price",
                    non_negative("package_price", p.package_price)?,
                )?,
            }
        }
        "flat" => PriceModel::Flat {
            amount: required("amount", non_negative("amount", p.amount)?)?,
        },
        _ => {
            let group_by: Vec<String> = meter.group_by.iter().map(|(n, _)| n.clone()).collect();
            PriceModel::Dimensional(Dimensional::new(
                required("dimensions", p.dimensions.clone())?,
                required("rates", p.rates.clone())?,
                p.default_unit_price,
                &group_by,
            )?)
        }
    };
    Ok(model)
}

fn required<T>(field: &str, v: Option<T>) -> Result<T, FieldError> {
    v.ok_or_else(|| (field.to_owned(), "is required by this model".to_owned()))
}

fn non_negative(field: &str, v: Option<Decimal>) -> Result<Option<Decimal>, FieldError> {
    match v {
        Some(d) if d.is_sign_negative() && !d.is_zero() => {
            Err((field.to_owned(), format!("{d} is negative")))
        }
        _ => Ok(v),
    }
}

/// Validates one coupon of a subscription; errors name the field within the coupon.
pub fn validate_coupon(c: CouponSpec, meters: &[Meter]) -> Result<Coupon, FieldError> {
    if c.id.is_empty() {
        return Err(("id".into(), "is empty".into()));
    }
    let off = match (c.percent_off, c.amount_off) {
        (Some(p), None) if p > Decimal::ZERO && p <= Decimal::ONE_HUNDRED => Off::Percent(p),
        (Some(p), None) => {
            return Err((
                "percent_off".into(),
                format!("{p} is not above 0 and at most 100"),
            ))
        }
        (None, Some(a)) if a > Decimal::ZERO => Off::Amount(a),
        (None, Some(a)) => return Err(("amount_off".into(), format!("{a} must be positive"))),
        _ => {
            return Err((
                "percent_off".into(),
                "give exactly one of percent_off and amount_off".into(),
            ))
        }
    };
    let meter = match &c.meter {
        None if matches!(off, Off::Amount(_)) => {
            return Err(("meter".into(), "is required with amount_off".into()))
        }
        None => None,
        Some(m) => Some(
            meters
                .iter()
                .find(|x| x.slug.as_str() == m)
                .map(|x| x.slug.clone())
                .ok_or_else(|| ("meter".to_owned(), format!("no meter {m:?} is declared")))?,
        ),
    };
    let duration = match (c.duration.as_str(), c.periods) {
        ("once", None) => Duration::Once,
        ("forever", None) => Duration::Forever,
        ("repeating", Some(n)) if (1..=PERIODS_MAX).contains(&n) => Duration::Periods(n),
        ("repeating", _) => {
            return Err((
                "periods".into(),
                format!("a repeating coupon needs periods from 1 to {PERIODS_MAX}"),
            ))
        }
        ("once" | "forever", Some(_)) => {
            return Err(("periods".into(), "is only for a repeating coupon".into()))
        }
        (other, _) => {
            return Err((
                "duration".into(),
                format!("{other:?} is not once, repeating or forever"),
            ))
        }
    };
    Ok(Coupon {
        id: c.id,
        off,
        meter,
        starts_ms: c.starts.timestamp_millis(),
        duration,
    })
}
