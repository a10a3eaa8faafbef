//! The portal's charts: server-rendered inline SVG, one stacked bar per day of the period
//! (one colour per series: a meter or an agent), a value axis with round ticks and gridlines,
//! a day axis, both axes titled, and a legend with each series' total. Values are exact
//! decimals; pixel positions are computed in decimals and rounded to tenths of a pixel at the
//! end. No script, font file or external resource: system fonts only.
//! It never emits an unescaped name and never uses floats.

use std::fmt::Write;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

use tally_invoice::render::html::esc;

/// Colours of the series, in order (colour-blind friendly; repeat past eight).
pub const PALETTE: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f",
];

const WIDTH: i64 = 760;
const LEFT: i64 = 96;
const RIGHT: i64 = 16;
const PLOT_W: i64 = WIDTH - LEFT - RIGHT;
const TOP: i64 = 36;
const PLOT_H: i64 = 200;
/// Below the plot: day labels, the day axis title.
const BELOW: i64 = 54;
const LEGEND_ROW: i64 = 22;
const LEGEND_COLS: usize = 3;

/// One stacked part of every bar: a meter or an agent, with a value per day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub name: String,
    /// One value per day of [`Chart::days`] (missing days count as zero).
    pub values: Vec<Decimal>,
}

/// A stacked bar chart over days.
pub struct Chart<'a> {
    /// `data-chart` of the `<svg>` (a stable name for tests and styles).
    pub id: &'a str,
    pub title: &'a str,
    /// The value axis' title, with its unit: `Cost (USD)`, `tokens`.
    pub y_label: &'a str,
    /// The day axis' title.
    pub x_label: &'a str,
    /// Day starts (unix seconds, UTC), in order.
    pub days: &'a [i64],
    pub series: &'a [Series],
    /// How a value reads in tooltips and legend totals (ticks are bare numbers: the unit is
    /// in the axis title).
    pub format: &'a dyn Fn(Decimal) -> String,
}

/// The smallest step of 1, 2 or 5 times a power of ten with at most five steps to `max`.
pub fn nice_step(max: Decimal) -> Decimal {
    if max <= Decimal::ZERO {
        return Decimal::ONE;
    }
    let raw = max / Decimal::from(5);
    let ten = Decimal::TEN;
    let mut p = Decimal::ONE;
    while p * ten <= raw {
        p *= ten;
    }
    while p > raw && p.scale() < 20 {
        p /= ten;
    }
    [1, 2, 5, 10]
        .into_iter()
        .map(|k| p * Decimal::from(k))
        .find(|s| *s >= raw)
        .unwrap_or(p * ten)
        .normalize()
}

fn px(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(1, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
}

fn day_label(secs: i64, fmt: &str) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format(fmt).to_string())
        .unwrap_or_default()
}

/// A series' value on day `i`: missing days and negative values count as zero.
fn value(s: &Series, i: usize) -> Decimal {
    s.values
        .get(i)
        .copied()
        .unwrap_or_default()
        .max(Decimal::ZERO)
}

/// The value axis: round steps from zero to the first step at or above the largest day.
struct Scale {
    step: Decimal,
    /// How many steps the axis has (four on an empty chart).
    steps: Decimal,
    /// The value at the top of the plot.
    top: Decimal,
}

impl Scale {
    fn of(max: Decimal) -> Scale {
        let step = nice_step(max);
        let steps = if max > Decimal::ZERO {
            (max / step).ceil().max(Decimal::ONE)
        } else {
            Decimal::from(4)
        };
        Scale {
            step,
            steps,
            top: step * steps,
        }
    }

    /// The pixel height of value `v` (unrounded).
    fn y(&self, v: Decimal) -> Decimal {
        Decimal::from(TOP + PLOT_H) - v * Decimal::from(PLOT_H) / self.top
    }
}

/// Where the bars go: one slot per day, the bar centred in it, every `label_every`-th day
/// labelled.
struct Slots {
    slot: Decimal,
    bar_w: Decimal,
    label_every: usize,
}

impl Slots {
    fn of(days: usize) -> Slots {
        let n = days.max(1) as i64;
        let slot = Decimal::from(PLOT_W) / Decimal::from(n);
        Slots {
            slot,
            bar_w: (slot * Decimal::new(7, 1)).clamp(Decimal::from(3), Decimal::from(44)),
            label_every: days.div_ceil(16).max(1),
        }
    }

    /// The left edge of day `i`'s bar.
    fn x(&self, i: usize) -> Decimal {
        Decimal::from(LEFT)
            + self.slot * Decimal::from(i as i64)
            + (self.slot - self.bar_w) / Decimal::TWO
    }
}

/// The `<svg>` of `c`.
pub fn stacked_bars(c: &Chart<'_>) -> String {
    let totals: Vec<Decimal> = (0..c.days.len())
        .map(|i| c.series.iter().map(|s| value(s, i)).sum())
        .collect();
    let scale = Scale::of(totals.iter().copied().max().unwrap_or_default());
    let mut svg = String::new();
    header(&mut svg, c);
    value_axis(&mut svg, &scale);
    let slots = Slots::of(c.days.len());
    for (i, day) in c.days.iter().enumerate() {
        day_bar(&mut svg, c, &scale, &slots, i, *day, totals[i]);
    }
    axis_titles(&mut svg, c);
    legend(&mut svg, c);
    svg
}

/// The `<svg>` element, its size (room for the legend's rows) and the chart's title.
fn header(svg: &mut String, c: &Chart<'_>) {
    let legend_rows = c.series.len().div_ceil(LEGEND_COLS).max(1) as i64;
    let height = TOP + PLOT_H + BELOW + legend_rows * LEGEND_ROW + 8;
    let _ = write!(
        svg,
        r##"<svg class="chart" data-chart="{id}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{title}"><title>{title}</title><text class="chart-title" x="{LEFT}" y="20" font-size="15" font-weight="600" fill="#1f2933">{title}</text>"##,
        id = esc(c.id),
        title = esc(c.title),
    );
}

/// The value axis: a gridline and a round tick per step.
fn value_axis(svg: &mut String, scale: &Scale) {
    let ticks = scale.steps.to_i64().unwrap_or(4);
    for k in 0..=ticks {
        let v = scale.step * Decimal::from(k);
        let y = px(scale.y(v));
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{y}" y2="{y}" stroke="{stroke}" stroke-width="1"/><text class="y-tick" x="{tx}" y="{ty}" text-anchor="end" font-size="11" fill="#52606d">{label}</text>"##,
            x2 = LEFT + PLOT_W,
            stroke = if k == 0 { "#9aa5b1" } else { "#e4e7eb" },
            tx = LEFT - 6,
            ty = px(scale.y(v) + Decimal::from(4)),
            label = esc(&super::format::quantity(v)),
        );
    }
}

/// Day `i`'s stacked bar: a rect per series with a value (at least a pixel high), then the
/// day's label.
fn day_bar(
    svg: &mut String,
    c: &Chart<'_>,
    scale: &Scale,
    slots: &Slots,
    i: usize,
    day: i64,
    total: Decimal,
) {
    let x = slots.x(i);
    let date = day_label(day, "%Y-%m-%d");
    let _ = write!(
        svg,
        r#"<g class="day" data-day="{date}" data-total="{total}">"#,
        total = esc(&(c.format)(total))
    );
    let mut base = Decimal::ZERO;
    for (k, s) in c.series.iter().enumerate() {
        let v = value(s, i);
        if v.is_zero() {
            continue;
        }
        let (y0, y1) = (scale.y(base), scale.y(base + v));
        base += v;
        // at least one pixel: a small day stays visible
        let h = px(y0 - y1).max(Decimal::ONE);
        let _ = write!(
            svg,
            r##"<rect class="bar" data-series="{name}" x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}"><title>{date} · {name}: {val}</title></rect>"##,
            name = esc(&s.name),
            x = px(x),
            y = px(y0) - h,
            w = px(slots.bar_w),
            fill = PALETTE[k % PALETTE.len()],
            val = esc(&(c.format)(v)),
        );
    }
    day_tick(
        svg,
        i,
        slots.label_every,
        x + slots.bar_w / Decimal::TWO,
        day,
    );
    svg.push_str("</g>");
}

/// The two axes' titles.
fn axis_titles(svg: &mut String, c: &Chart<'_>) {
    let _ = write!(
        svg,
        r##"<text class="axis-label x-axis" x="{x}" y="{y}" text-anchor="middle" font-size="12" fill="#323f4b">{label}</text>"##,
        x = LEFT + PLOT_W / 2,
        y = TOP + PLOT_H + 38,
        label = esc(c.x_label),
    );
    let (yx, yy) = (16, TOP + PLOT_H / 2);
    let _ = write!(
        svg,
        r##"<text class="axis-label y-axis" x="{yx}" y="{yy}" transform="rotate(-90 {yx} {yy})" text-anchor="middle" font-size="12" fill="#323f4b">{label}</text>"##,
        label = esc(c.y_label),
    );
}

/// The legend: each series' colour, name and total, in rows of [`LEGEND_COLS`]; closes the
/// `<svg>`.
fn legend(svg: &mut String, c: &Chart<'_>) {
    svg.push_str(r#"<g class="legend">"#);
    let col_w = PLOT_W / LEGEND_COLS as i64;
    for (k, s) in c.series.iter().enumerate() {
        let (row, col) = ((k / LEGEND_COLS) as i64, (k % LEGEND_COLS) as i64);
        let (x, y) = (LEFT + col * col_w, TOP + PLOT_H + BELOW + row * LEGEND_ROW);
        let total: Decimal = (0..c.days.len()).map(|i| value(s, i)).sum();
        let _ = write!(
            svg,
            r##"<g class="legend-entry" data-series="{name}"><rect x="{x}" y="{ry}" width="12" height="12" rx="2" fill="{fill}"/><text x="{tx}" y="{y}" font-size="12" fill="#1f2933">{name} <tspan fill="#52606d">{total}</tspan></text></g>"##,
            name = esc(&s.name),
            ry = y - 10,
            fill = PALETTE[k % PALETTE.len()],
            tx = x + 17,
            total = esc(&(c.format)(total)),
        );
    }
    svg.push_str("</g></svg>");
}

/// The day's label under its bar (every `every`-th day when there are many).
fn day_tick(svg: &mut String, i: usize, every: usize, center: Decimal, day: i64) {
    if !i.is_multiple_of(every) {
        return;
    }
    let _ = write!(
        svg,
        r##"<text class="x-tick" x="{x}" y="{y}" text-anchor="middle" font-size="11" fill="#52606d">{label}</text>"##,
        x = px(center),
        y = TOP + PLOT_H + 16,
        label = esc(&day_label(day, "%b %-d")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    // 2026-03-01
    const MAR1: i64 = 1_772_323_200;

    fn d(v: i64) -> Decimal {
        Decimal::from(v)
    }

    fn chart(days: &[i64], series: &[Series]) -> String {
        stacked_bars(&Chart {
            id: "cost-by-meter",
            title: "Cost per day by meter",
            y_label: "Cost (USD)",
            x_label: "Day (UTC)",
            days,
            series,
            format: &|v: Decimal| crate::portal::format::money("USD", v),
        })
    }

    #[test]
    fn one_bar_per_day_stacked_by_series_with_legend_and_axes() {
        let days = [MAR1, MAR1 + DAY, MAR1 + 2 * DAY];
        let series = [
            Series {
                name: "tokens".into(),
                values: vec![d(10), d(0), d(30)],
            },
            Series {
                name: "tool_calls".into(),
                values: vec![d(10), d(5), d(0)],
            },
        ];
        let svg = chart(&days, &series);
        assert_eq!(svg.matches(r#"<g class="day""#).count(), 3, "{svg}");
        // a rect per non-zero value: 2 + 1 + 1
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), 4);
        assert!(svg.contains(r#"data-day="2026-03-01" data-total="20.00 USD""#));
        assert!(svg.contains(r#"data-day="2026-03-02" data-total="5.00 USD""#));
        // axis titles and ticks: the largest day (30) gets round ticks of 10 up to 30
        assert!(svg.contains(">Cost (USD)</text>"));
        assert!(svg.contains(">Day (UTC)</text>"));
        for t in ["0", "10", "20", "30"] {
            let tick = format!(r##"text-anchor="end" font-size="11" fill="#52606d">{t}</text>"##);
            assert!(svg.contains(&tick), "tick {t}: {svg}");
        }
        assert!(!svg.contains(">40</text>"));
        assert!(
            svg.contains(r#"class="y-tick" x="90" y="173.3""#),
            "10 is a third up"
        );
        for day in ["Mar 1", "Mar 2", "Mar 3"] {
            assert!(svg.contains(&format!(">{day}</text>")), "{day}");
        }
        // the legend: each series, its colour, its total
        assert!(svg.contains(r#"<g class="legend-entry" data-series="tokens">"#));
        assert!(svg.contains(r##"fill="#4e79a7"/><text"##));
        assert!(svg.contains(r##"tokens <tspan fill="#52606d">40.00 USD</tspan>"##));
        assert!(svg.contains(r##"tool_calls <tspan fill="#52606d">15.00 USD</tspan>"##));
        // the largest day fills the plot: 30 of 30 is 200 px from y 36
        assert!(svg.contains(r#"data-series="tokens" x="#));
        assert!(svg.contains(r#"y="36" width="#), "{svg}");
        assert!(svg.contains("<title>2026-03-03 · tokens: 30.00 USD</title>"));
        assert!(!svg.contains("<script") && svg.matches("http://").count() == 1);
    }

    #[test]
    fn names_are_escaped() {
        let series = [Series {
            name: "<script>alert(1)</script>&\"x\"".into(),
            values: vec![d(1)],
        }];
        let svg = stacked_bars(&Chart {
            id: "a\"b",
            title: "Usage of <b>",
            y_label: "a & b",
            x_label: "Day",
            days: &[MAR1],
            series: &series,
            format: &|v: Decimal| v.to_string(),
        });
        assert!(!svg.contains("<script>") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;x&quot;"));
        assert!(svg.contains(r#"data-chart="a&quot;b""#));
        assert!(svg.contains(">a &amp; b</text>"));
    }

    #[test]
    fn an_empty_period_draws_axes_and_no_bar() {
        let svg = chart(&[MAR1, MAR1 + DAY], &[]);
        assert_eq!(svg.matches(r#"<g class="day""#).count(), 2);
        assert_eq!(svg.matches("<rect").count(), 0);
        assert!(svg.contains(r##"fill="#52606d">0</text>"##));
    }

    #[test]
    fn a_tiny_value_is_still_a_visible_bar_and_many_days_are_labelled_sparsely() {
        let days: Vec<i64> = (0..31).map(|i| MAR1 + i * DAY).collect();
        let mut values = vec![Decimal::ZERO; 31];
        values[0] = d(1_000_000);
        values[30] = Decimal::new(1, 2);
        let svg = chart(
            &days,
            &[Series {
                name: "m".into(),
                values,
            }],
        );
        assert_eq!(svg.matches(r#"<g class="day""#).count(), 31);
        assert!(
            svg.contains(r##"height="1" fill="#4e79a7"><title>2026-03-31 · m: 0.01 USD"##),
            "{svg}"
        );
        assert!(svg.contains(r##"fill="#52606d">1,000,000</text>"##));
        // 31 days: every second day labelled
        assert_eq!(svg.matches(r#"class="x-tick""#).count(), 16);
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(d(30)), d(10));
        assert_eq!(nice_step(d(4000)), d(1000));
        assert_eq!(nice_step(d(1_000_000)), d(200_000));
        assert_eq!(nice_step(Decimal::new(7, 2)), Decimal::new(2, 2));
        assert_eq!(nice_step(d(11)), d(5));
        assert_eq!(nice_step(Decimal::ZERO), d(1));
    }
}
