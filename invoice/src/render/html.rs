//! The invoice as one self-contained HTML page: inline CSS, no scripts, no external fonts,
//! images or CDNs, so it renders offline and prints as is. Every text is escaped.

use std::fmt::Write;

use super::view::View;

/// The HTML page of a view.
pub fn page(v: &View) -> String {
    let mut o = String::with_capacity(4096 + v.lines.len() * 512);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title><style>{CSS}</style></head><body><main>\n\
         <header><div class=\"issuer\">{issuer}</div>\
         <div class=\"meta\"><h1>{title}</h1><dl>\
         <dt>Invoice number</dt><dd class=\"number\">{number}</dd>\
         <dt>Status</dt><dd>{status}</dd>\
         <dt>Issued</dt><dd>{issued}</dd>\
         <dt>Due</dt><dd class=\"due\">{due}</dd>\
         <dt>Terms</dt><dd>{terms}</dd></dl></div></header>\n\
         <section class=\"parties\"><div><h2>Bill to</h2><p class=\"customer\">{customer}</p></div>\
         <div><h2>Service period</h2><p class=\"period\">{period}</p><p>Plan {plan}</p></div></section>\n\
         <table class=\"lines\"><thead><tr><th>#</th><th>Description</th>\
         <th class=\"num\">Quantity</th><th class=\"num\">Amount</th></tr></thead><tbody>\n",
        title = esc(&v.title),
        issuer = v
            .issuer
            .iter()
            .enumerate()
            .map(|(i, l)| if i == 0 {
                format!("<strong>{}</strong>", esc(l))
            } else {
                esc(l)
            })
            .collect::<Vec<_>>()
            .join("<br>"),
        number = esc(&v.number),
        status = esc(&v.status),
        issued = esc(&v.issued),
        due = esc(&v.due),
        terms = esc(&v.terms),
        customer = esc(&v.customer),
        period = esc(&v.period),
        plan = esc(&v.plan),
    );
    for l in &v.lines {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}<div class=\"detail\">{}</div></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&l.no),
            esc(&l.description),
            l.details
                .iter()
                .map(|d| esc(d))
                .collect::<Vec<_>>()
                .join("<br>"),
            esc(&l.quantity),
            esc(&l.amount)
        );
    }
    o.push_str("</tbody></table>\n<table class=\"totals\"><tbody>\n");
    for t in &v.totals {
        let class = if t.strong { " class=\"strong\"" } else { "" };
        let _ = writeln!(
            o,
            "<tr{class}><th>{}</th><td class=\"num\">{}</td></tr>",
            esc(&t.label),
            esc(&t.amount)
        );
    }
    let _ = write!(
        o,
        "</tbody></table>\n<footer>Invoice id {} · amounts in {}</footer>\n</main></body></html>\n",
        esc(&v.invoice_id),
        esc(&v.currency)
    );
    o
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = "body{font-family:Helvetica,Arial,sans-serif;color:#222;margin:0;background:#fff}\
main{max-width:800px;margin:2em auto;padding:0 1em}\
header{display:flex;justify-content:space-between;gap:2em}\
h1{font-size:1.5em;margin:0 0 .5em}h2{font-size:.8em;text-transform:uppercase;color:#666;margin:1.5em 0 .3em}\
dl{display:grid;grid-template-columns:auto auto;gap:.2em 1em;margin:0}dt{color:#666}dd{margin:0}\
.parties{display:flex;gap:4em}table{width:100%;border-collapse:collapse;margin-top:1.5em}\
th,td{text-align:left;padding:.4em;vertical-align:top}thead th{border-bottom:2px solid #222}\
tbody td{border-bottom:1px solid #ddd}.num{text-align:right;white-space:nowrap}\
.detail{font-size:.8em;color:#666}.totals{width:auto;margin-left:auto}\
.totals th{font-weight:normal;padding-right:2em}.totals .strong th,.totals .strong td{font-weight:bold;border-top:1px solid #222}\
footer{margin-top:2em;font-size:.8em;color:#666}@media print{main{margin:0}}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
