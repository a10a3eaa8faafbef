//! The usage chart: an inline SVG bar chart per meter, one bar per day of the period. Bar
//! heights are computed in exact decimals and rounded to whole pixels only at the end; no
//! script, font or external resource.
//! It never uses floats for quantities.

use std::collections::BTreeMap;
use std::fmt::Write;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use tally_invoicer::render::html::esc;

const HEIGHT_PX: i64 = 120;
const BAR_PX: i64 = 14;
const GAP_PX: i64 = 4;

/// One `<svg>` for one meter's daily quantities (day start in unix secs).
pub fn bars(meter: &str, days: &BTreeMap<i64, Decimal>) -> String {
    let max = days.values().copied().max().unwrap_or_default();
    let width = (days.len() as i64).max(1) * (BAR_PX + GAP_PX) + GAP_PX;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" data-meter="{m}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" role="img" aria-label="daily {m}">"#,
        m = esc(meter),
        h = HEIGHT_PX + 20
    );
    for (i, (day, q)) in days.iter().enumerate() {
        let h = if max > Decimal::ZERO {
            (*q * Decimal::from(HEIGHT_PX) / max)
                .round()
                .to_i64()
                .unwrap_or(0)
                .max(1)
        } else {
            0
        };
        let x = GAP_PX + i as i64 * (BAR_PX + GAP_PX);
        let date = chrono::DateTime::from_timestamp(*day, 0)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let _ = write!(
            svg,
            r##"<rect x="{x}" y="{y}" width="{BAR_PX}" height="{h}" fill="#3b6ea5"><title>{date}: {q}</title></rect>"##,
            y = HEIGHT_PX - h,
            q = q.normalize()
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{GAP_PX}" y="{}" font-size="11" fill="#333">{} (max {}/day)</text></svg>"##,
        HEIGHT_PX + 15,
        esc(meter),
        max.normalize()
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_day_fills_the_height_and_others_scale_exactly() {
        let days = BTreeMap::from([(0, Decimal::from(10)), (86_400, Decimal::from(5))]);
        let svg = bars("tokens", &days);
        assert!(svg.contains(r#"y="0" width="14" height="120""#), "{svg}");
        assert!(svg.contains(r#"y="60" width="14" height="60""#), "{svg}");
        assert!(svg.contains("1970-01-02: 5"));
        assert!(!svg.contains("http://") || svg.matches("http://").count() == 1);
        // only the xmlns
    }
}
