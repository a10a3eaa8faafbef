//! OpenAPI documents checked against the code that serves them.
//!
//! Every Tally HTTP API routes through a table of [`Route`]s (method, path pattern, and the
//! operation the dispatcher runs): [`find`] is the only way a request reaches a handler, so the
//! table is the complete list of what is served. [`check_routes`] compares a table with the
//! API's hand-written OpenAPI 3.0 document both ways (no route without its description, no
//! description without its route) and checks the document's own references;
//! [`check_response`] and [`check_request`] validate real bodies against the document's
//! schemas with a small validator ([`validate`]) for the subset the documents use;
//! [`render_markdown`] renders a document for `docs/API.md`.
//!
//! A path pattern is `/`-separated; a segment is a literal, a parameter `{name}` (any
//! non-empty segment) or a parameter with a literal suffix `{name}.pdf`. The first route whose
//! pattern and method match wins, so a suffixed pattern comes before the bare one.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::Value;

/// One served route.
#[derive(Debug, Clone, Copy)]
pub struct Route<T> {
    /// `GET`, `POST`, `PUT`, `DELETE`.
    pub method: &'static str,
    /// The path pattern, as the OpenAPI document's `paths` key spells it.
    pub path: &'static str,
    /// What the dispatcher does for it.
    pub op: T,
}

impl<T> Route<T> {
    pub const fn new(method: &'static str, path: &'static str, op: T) -> Self {
        Route { method, path, op }
    }
}

/// What a request resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<T> {
    /// The route's operation and its path parameters, in pattern order.
    Route(T, Vec<String>),
    /// The path is served, not with this method (405).
    MethodNotAllowed,
    /// No route has this path (404).
    NotFound,
}

/// Matches one segment against one pattern segment: `Some(None)` for a literal match,
/// `Some(Some(value))` for a parameter, `None` for no match.
fn match_segment<'a>(pattern: &str, segment: &'a str) -> Option<Option<&'a str>> {
    match pattern.strip_prefix('{').and_then(|p| p.split_once('}')) {
        None => (pattern == segment).then_some(None),
        Some((_, suffix)) => {
            let value = segment.strip_suffix(suffix)?;
            (!value.is_empty()).then_some(Some(value))
        }
    }
}

/// The parameters of `segments` under `pattern`, or `None` when it does not match.
fn match_path<'a>(pattern: &str, segments: &[&'a str]) -> Option<Vec<&'a str>> {
    let parts: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, s) in parts.iter().zip(segments) {
        if let Some(v) = match_segment(p, s)? {
            params.push(v);
        }
    }
    Some(params)
}

/// The segments of a path: `/v1/a/b/` is `["v1", "a", "b"]`.
pub fn segments(path: &str) -> Vec<&str> {
    path.trim_matches('/').split('/').collect()
}

/// Resolves a request: the first route whose pattern and method match.
pub fn find<T: Copy>(routes: &[Route<T>], method: &str, segments: &[&str]) -> Found<T> {
    let mut path_served = false;
    for r in routes {
        if let Some(params) = match_path(r.path, segments) {
            if r.method == method {
                return Found::Route(r.op, params.into_iter().map(str::to_owned).collect());
            }
            path_served = true;
        }
    }
    if path_served {
        Found::MethodNotAllowed
    } else {
        Found::NotFound
    }
}

/// Resolves a request through `routes`: its operation and path parameters, or the answer to
/// give instead (404 `not_found`, 405 `method_not_allowed`, in the shared `{code, detail}`
/// shape of [`crate::http::error`]).
// one answer per request, never stored: boxing it would only cost an allocation
#[allow(clippy::result_large_err)]
pub fn resolve<T: Copy, B>(
    routes: &[Route<T>],
    req: &hyper::Request<B>,
) -> Result<(T, Vec<String>), hyper::Response<crate::http::Body>> {
    use hyper::StatusCode;
    let path = req.uri().path();
    match find(routes, req.method().as_str(), &segments(path)) {
        Found::Route(op, params) => Ok((op, params)),
        Found::MethodNotAllowed => Err(crate::http::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} {path}", req.method()),
        )),
        Found::NotFound => Err(crate::http::error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "{} {path}: no such route; see /v1/openapi.json",
                req.method()
            ),
        )),
    }
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every (method, path) the document describes, methods upper-case.
pub fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for m in METHODS {
                if item.get(m).is_some() {
                    out.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
    }
    out
}

/// Compares a route table with its document both ways, and checks the document: every
/// operation has a summary and responses, every path parameter is declared, every `$ref`
/// resolves. The problems, one a line; empty when they agree.
pub fn check_routes<T>(routes: &[Route<T>], doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let served: BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    if served.len() != routes.len() {
        problems.push("the route table lists a (method, path) twice".to_owned());
    }
    let described = documented(doc);
    for (m, p) in served.difference(&described) {
        problems.push(format!("{m} {p}: served but not described"));
    }
    for (m, p) in described.difference(&served) {
        problems.push(format!("{m} {p}: described but not served"));
    }
    for (m, p) in &described {
        let op = &doc["paths"][p][m.to_lowercase()];
        if op["summary"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{m} {p}: no summary"));
        }
        if op["responses"].as_object().is_none_or(|r| r.is_empty()) {
            problems.push(format!("{m} {p}: no responses"));
        }
        let declared: BTreeSet<&str> = parameters(doc, p, m)
            .iter()
            .filter(|x| x["in"] == "path")
            .filter_map(|x| x["name"].as_str())
            .collect();
        for part in p.split('/') {
            if let Some((name, _)) = part.strip_prefix('{').and_then(|x| x.split_once('}')) {
                if !declared.contains(name) {
                    problems.push(format!("{m} {p}: path parameter {name} not declared"));
                }
            }
        }
    }
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    for r in refs {
        if resolve_ref(doc, &r).is_none() {
            problems.push(format!("$ref {r} does not resolve"));
        }
    }
    problems
}

/// The parameters of an operation: the path item's and the operation's.
fn parameters<'a>(doc: &'a Value, path: &str, method: &str) -> Vec<&'a Value> {
    let item = &doc["paths"][path];
    let op = &item[method.to_lowercase()];
    [&item["parameters"], &op["parameters"]]
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .map(|p| deref(doc, p))
        .collect()
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The value a local `$ref` (`#/components/schemas/X`) points at.
fn resolve_ref<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    doc.pointer(r.strip_prefix('#')?)
}

/// A schema with its `$ref` followed (a dangling one resolves to `null`, which
/// [`check_routes`] reports).
fn deref<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let mut s = schema;
    for _ in 0..16 {
        match s["$ref"].as_str().and_then(|r| resolve_ref(doc, r)) {
            Some(next) => s = next,
            None => break,
        }
    }
    s
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Validates `value` against `schema` (resolving `$ref`s in `doc`): `type` (with OpenAPI's
/// `nullable`), `enum`, `required`, `properties`, `additionalProperties`, `items`, `oneOf`,
/// `anyOf`, `allOf`, `minimum`, `maximum`, `minLength`, `maxLength`, `minItems`. Other keywords
/// (`pattern`, `format`) are documentation only. The problems, each with its JSON path.
pub fn validate(doc: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    validate_at(doc, schema, value, "$", &mut problems);
    problems
}

fn validate_at(doc: &Value, schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    let s = deref(doc, schema);
    if s.is_null() {
        out.push(format!("{at}: the schema does not resolve"));
        return;
    }
    if v.is_null() && s["nullable"] == true {
        return;
    }
    if let Some(t) = s["type"].as_str() {
        let actual = type_of(v);
        let fits = actual == t || (t == "number" && actual == "integer");
        if !fits {
            out.push(format!("{at}: {actual}, the schema says {t}"));
            return;
        }
    }
    if let Some(options) = s["enum"].as_array() {
        if !options.contains(v) {
            out.push(format!("{at}: {v} is not one of {}", s["enum"]));
        }
    }
    for (kw, one) in [("oneOf", true), ("anyOf", false)] {
        if let Some(alts) = s[kw].as_array() {
            let fitting = alts
                .iter()
                .filter(|a| validate(doc, a, v).is_empty())
                .count();
            if fitting == 0 || (one && fitting > 1) {
                out.push(format!("{at}: fits {fitting} of the {kw} alternatives"));
            }
        }
    }
    if let Some(all) = s["allOf"].as_array() {
        all.iter().for_each(|a| validate_at(doc, a, v, at, out));
    }
    if let Some(n) = v.as_f64() {
        if s["minimum"].as_f64().is_some_and(|m| n < m) {
            out.push(format!("{at}: {n} below the minimum {}", s["minimum"]));
        }
        if s["maximum"].as_f64().is_some_and(|m| n > m) {
            out.push(format!("{at}: {n} above the maximum {}", s["maximum"]));
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as u64;
        if s["minLength"].as_u64().is_some_and(|m| n < m) {
            out.push(format!("{at}: shorter than {}", s["minLength"]));
        }
        if s["maxLength"].as_u64().is_some_and(|m| n > m) {
            out.push(format!("{at}: longer than {}", s["maxLength"]));
        }
    }
    if let Some(items) = v.as_array() {
        validate_items(doc, s, items, at, out);
    }
    if let Some(obj) = v.as_object() {
        validate_properties(doc, s, obj, at, out);
    }
}

/// [`validate_at`] for an array: `minItems`, and each item against `items`.
fn validate_items(doc: &Value, s: &Value, items: &[Value], at: &str, out: &mut Vec<String>) {
    if s["minItems"]
        .as_u64()
        .is_some_and(|m| (items.len() as u64) < m)
    {
        out.push(format!("{at}: fewer than {} items", s["minItems"]));
    }
    if !s["items"].is_null() {
        for (i, item) in items.iter().enumerate() {
            validate_at(doc, &s["items"], item, &format!("{at}[{i}]"), out);
        }
    }
}

/// [`validate_at`] for an object: `required`, then each property against `properties` or
/// `additionalProperties`.
fn validate_properties(
    doc: &Value,
    s: &Value,
    obj: &serde_json::Map<String, Value>,
    at: &str,
    out: &mut Vec<String>,
) {
    for name in s["required"].as_array().into_iter().flatten() {
        if let Some(name) = name.as_str() {
            if !obj.contains_key(name) {
                out.push(format!("{at}: required property {name} is missing"));
            }
        }
    }
    let props = s["properties"].as_object();
    for (k, x) in obj {
        let here = format!("{at}.{k}");
        match (props.and_then(|p| p.get(k)), &s["additionalProperties"]) {
            (Some(p), _) => validate_at(doc, p, x, &here, out),
            (None, Value::Bool(false)) => {
                out.push(format!("{here}: not a property the schema names"));
            }
            (None, extra @ Value::Object(_)) => validate_at(doc, extra, x, &here, out),
            _ => {}
        }
    }
}

/// The document's path template that `path` (query ignored) is an instance of: the one with
/// the most literal segments among those that match.
pub fn template_of<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    let path = path.split('?').next().unwrap_or_default();
    let segs = segments(path);
    doc["paths"]
        .as_object()?
        .keys()
        .filter_map(|t| {
            let params = match_path(t, &segs)?;
            Some((segs.len() - params.len(), t.as_str()))
        })
        .max_by_key(|(literal, _)| *literal)
        .map(|(_, t)| t)
}

/// Validates a real response: `method path` must be described, `status` among its responses,
/// and `body` must fit the JSON schema described for that status.
pub fn check_response(
    doc: &Value,
    method: &str,
    path: &str,
    status: u16,
    body: &Value,
) -> Result<(), String> {
    let (template, op) = operation(doc, method, path)?;
    let responses = &op["responses"];
    let code = status.to_string();
    let range = format!("{}XX", status / 100);
    let described = [code.as_str(), range.as_str(), "default"]
        .into_iter()
        .map(|c| deref(doc, &responses[c]))
        .find(|r| !r.is_null())
        .ok_or_else(|| format!("{method} {template}: status {status} is not described"))?;
    fits(
        doc,
        described,
        body,
        &format!("{method} {template} {status}"),
    )
}

/// Validates `body` against the JSON schema of `described` (a response or a request body).
fn fits(doc: &Value, described: &Value, body: &Value, what: &str) -> Result<(), String> {
    let schema = &described["content"]["application/json"]["schema"];
    if schema.is_null() {
        if body.is_null() {
            return Ok(());
        }
        return Err(format!(
            "{what}: no JSON schema described for the body {}",
            excerpt(body)
        ));
    }
    let problems = validate(doc, schema, body);
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{what}: the body does not fit its schema: {}; body: {}",
        problems.join("; "),
        excerpt(body)
    ))
}

/// At most 600 bytes of a body, for messages.
fn excerpt(body: &Value) -> String {
    let mut shown = body.to_string();
    if shown.len() > 600 {
        let cut = (0..=600).rev().find(|&i| shown.is_char_boundary(i));
        shown.truncate(cut.unwrap_or(0));
        shown.push_str("...");
    }
    shown
}

/// Validates a request body against the described JSON request body.
pub fn check_request(doc: &Value, method: &str, path: &str, body: &Value) -> Result<(), String> {
    let (template, op) = operation(doc, method, path)?;
    let described = deref(doc, &op["requestBody"]);
    fits(
        doc,
        described,
        body,
        &format!("{method} {template} request"),
    )
}

/// What a test client checks of each exchange with a described API: when `method path` is
/// described, the response must fit what is described for its status, and a request the API
/// accepted (2xx) must fit the described request body. Requests to paths or methods the
/// document does not describe are left to the route table checks (a test may probe them).
/// `body` is the response as JSON (`Null` when it was not JSON); a response that is not JSON
/// (an HTML page, a PDF) is not given here.
pub fn check_exchange(
    doc: &Value,
    method: &str,
    path: &str,
    request: Option<&Value>,
    status: u16,
    body: &Value,
) -> Result<(), String> {
    if operation(doc, method, path).is_err() {
        return Ok(());
    }
    check_response(doc, method, path, status, body)?;
    let (_, op) = operation(doc, method, path)?;
    let described_body = !deref(doc, &op["requestBody"])["content"]["application/json"].is_null();
    match request {
        Some(r) if (200..300).contains(&status) && described_body => {
            check_request(doc, method, path, r)
        }
        _ => Ok(()),
    }
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> Result<(&'a str, &'a Value), String> {
    let template =
        template_of(doc, path).ok_or_else(|| format!("{path}: no described path matches"))?;
    let op = &doc["paths"][template][method.to_lowercase()];
    if op.is_null() {
        return Err(format!("{method} {template}: not described"));
    }
    Ok((template, op))
}

/// A one-line description of a schema's type: `string`, `array of Invoice`, `Error`.
fn type_text(schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        return r.rsplit('/').next().unwrap_or(r).to_owned();
    }
    let nullable = if schema["nullable"] == true {
        " or null"
    } else {
        ""
    };
    let base = match schema["type"].as_str() {
        Some("array") => format!("array of {}", type_text(&schema["items"])),
        Some("object") if schema["properties"].is_null() => match &schema["additionalProperties"] {
            v @ Value::Object(_) => format!("map of {}", type_text(v)),
            _ => "object".to_owned(),
        },
        Some(t) => t.to_owned(),
        None => ["oneOf", "anyOf"]
            .iter()
            .find_map(|k| schema[*k].as_array())
            .map(|alts| alts.iter().map(type_text).collect::<Vec<_>>().join(" or "))
            .unwrap_or_else(|| "any".to_owned()),
    };
    let values = schema["enum"]
        .as_array()
        .map(|e| {
            let names: Vec<String> = e.iter().map(|v| format!("`{v}`")).collect();
            format!(" (one of {})", names.join(", "))
        })
        .unwrap_or_default();
    format!("{base}{values}{nullable}")
}

/// Table cell text: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn property_rows(doc: &Value, schema: &Value, out: &mut String) {
    let s = deref(doc, schema);
    let Some(props) = s["properties"].as_object() else {
        return;
    };
    let required: BTreeSet<&str> = s["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    out.push_str("| Property | Type | Required | Description |\n|---|---|---|---|\n");
    for (name, p) in props {
        let yes = if required.contains(name.as_str()) {
            "yes"
        } else {
            ""
        };
        let text = p["description"].as_str().unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{name}` | {} | {yes} | {} |",
            cell(&type_text(p)),
            cell(text)
        );
    }
    out.push('\n');
}

/// Renders a document as Markdown under a `##` heading: its description, a summary table of
/// every operation, each operation (parameters, request body, responses) and each schema. No
/// fenced blocks (the docs test requires a marker before each).
pub fn render_markdown(doc: &Value) -> String {
    let mut out = String::new();
    markdown_heading(doc, &mut out);
    let ordered = operations_in_order(doc);
    out.push_str("| Method | Path | Summary |\n|---|---|---|\n");
    for (m, p) in &ordered {
        let op = &doc["paths"][p][m.to_lowercase()];
        let _ = writeln!(
            out,
            "| {m} | `{p}` | {} |",
            cell(op["summary"].as_str().unwrap_or_default())
        );
    }
    out.push('\n');
    for (m, p) in &ordered {
        markdown_operation(doc, m, p, &mut out);
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        out.push_str("### Schemas\n\n");
        for (name, s) in schemas {
            let _ = writeln!(out, "#### {name}\n");
            if let Some(d) = s["description"].as_str() {
                let _ = writeln!(out, "{}\n", d.trim());
            }
            if s["properties"].is_null() {
                let _ = writeln!(out, "Type: {}\n", cell(&type_text(s)));
            } else {
                property_rows(doc, s, &mut out);
            }
        }
    }
    out
}

/// The `##` heading, the description and the authentication schemes.
fn markdown_heading(doc: &Value, out: &mut String) {
    let info = &doc["info"];
    let _ = writeln!(
        out,
        "## {} (version {})\n",
        info["title"].as_str().unwrap_or("API"),
        info["version"].as_str().unwrap_or("?")
    );
    if let Some(d) = info["description"].as_str() {
        let _ = writeln!(out, "{}\n", d.trim());
    }
    if let Some(d) = doc["components"]["securitySchemes"].as_object() {
        for (name, scheme) in d {
            let _ = writeln!(
                out,
                "Authentication `{name}` ({} {}): {}\n",
                scheme["type"].as_str().unwrap_or_default(),
                scheme["scheme"]
                    .as_str()
                    .or(scheme["name"].as_str())
                    .unwrap_or_default(),
                cell(scheme["description"].as_str().unwrap_or_default())
            );
        }
    }
}

/// Every operation as (METHOD, path), in the document's path order then [`METHODS`] order.
fn operations_in_order(doc: &Value) -> Vec<(String, String)> {
    let mut ordered: Vec<(String, String)> = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for m in METHODS {
                if item.get(m).is_some() {
                    ordered.push((m.to_uppercase(), path.clone()));
                }
            }
        }
    }
    debug_assert_eq!(ordered.len(), documented(doc).len());
    ordered
}

/// One operation: its summary, description, parameters, request body and responses.
fn markdown_operation(doc: &Value, m: &str, p: &str, out: &mut String) {
    let op = &doc["paths"][p][m.to_lowercase()];
    let _ = writeln!(out, "### {m} `{p}`\n");
    let _ = writeln!(out, "{}\n", op["summary"].as_str().unwrap_or_default());
    if let Some(d) = op["description"].as_str() {
        let _ = writeln!(out, "{}\n", d.trim());
    }
    if op["security"].as_array().is_some_and(Vec::is_empty) {
        out.push_str("No authentication.\n\n");
    }
    let params = parameters(doc, p, m);
    if !params.is_empty() {
        out.push_str("| Parameter | In | Type | Required | Description |\n|---|---|---|---|---|\n");
        for x in params {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                x["name"].as_str().unwrap_or_default(),
                x["in"].as_str().unwrap_or_default(),
                cell(&type_text(&x["schema"])),
                if x["required"] == true { "yes" } else { "" },
                cell(x["description"].as_str().unwrap_or_default())
            );
        }
        out.push('\n');
    }
    let body = deref(doc, &op["requestBody"]);
    if let Some(content) = body["content"].as_object() {
        for (media, c) in content {
            let _ = writeln!(
                out,
                "Request body (`{media}`{}): {}\n",
                if body["required"] == true {
                    ", required"
                } else {
                    ""
                },
                cell(&type_text(&c["schema"]))
            );
        }
        if let Some(d) = body["description"].as_str() {
            let _ = writeln!(out, "{}\n", d.trim());
        }
    }
    markdown_responses(doc, op, out);
}

/// An operation's responses: status, description and body types.
fn markdown_responses(doc: &Value, op: &Value, out: &mut String) {
    out.push_str("| Status | Description | Body |\n|---|---|---|\n");
    if let Some(responses) = op["responses"].as_object() {
        for (status, r) in responses {
            let r = deref(doc, r);
            let bodies: Vec<String> = r["content"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(media, c)| {
                    if c["schema"].is_null() {
                        format!("`{media}`")
                    } else {
                        format!("`{media}`: {}", type_text(&c["schema"]))
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "| {status} | {} | {} |",
                cell(r["description"].as_str().unwrap_or_default()),
                cell(&bodies.join("; "))
            );
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Op {
        Html,
        Show,
        List,
        Put,
    }

    const ROUTES: &[Route<Op>] = &[
        Route::new("GET", "/v1/invoices/{id}.html", Op::Html),
        Route::new("GET", "/v1/invoices/{id}", Op::Show),
        Route::new("GET", "/v1/invoices", Op::List),
        Route::new("PUT", "/v1/invoices/{id}", Op::Put),
    ];

    fn doc() -> Value {
        let ok = json!({"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Invoice"}}}}});
        let id =
            json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
        json!({
            "openapi": "3.0.3",
            "info": {"title": "T", "version": "1"},
            "paths": {
                "/v1/invoices/{id}.html": {"get": {"summary": "html", "parameters": id, "responses": ok}},
                "/v1/invoices/{id}": {"parameters": id, "get": {"summary": "show", "responses": ok},
                                      "put": {"summary": "put", "responses": ok,
                                              "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Invoice"}}}}}},
                "/v1/invoices": {"get": {"summary": "list", "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Invoice"}}}}}}}}
            },
            "components": {"schemas": {"Invoice": {
                "type": "object", "required": ["id", "status"], "additionalProperties": false,
                "properties": {"id": {"type": "string", "minLength": 1},
                               "status": {"type": "string", "enum": ["draft", "paid"]},
                               "total": {"type": "integer", "nullable": true},
                               "lines": {"type": "array", "items": {"type": "number"}}}}}}
        })
    }

    #[test]
    fn find_resolves_patterns_suffixes_and_methods() {
        let f = |m, p| find(ROUTES, m, &segments(p));
        assert_eq!(
            f("GET", "/v1/invoices/a1.html"),
            Found::Route(Op::Html, vec!["a1".into()])
        );
        assert_eq!(
            f("GET", "/v1/invoices/a1"),
            Found::Route(Op::Show, vec!["a1".into()])
        );
        assert_eq!(
            f("PUT", "/v1/invoices/a1/"),
            Found::Route(Op::Put, vec!["a1".into()])
        );
        assert_eq!(f("GET", "/v1/invoices"), Found::Route(Op::List, vec![]));
        assert_eq!(f("POST", "/v1/invoices"), Found::MethodNotAllowed);
        assert_eq!(f("GET", "/v1/invoices/a1/x"), Found::NotFound);
        assert_eq!(
            f("GET", "/v1/invoices/.html"),
            Found::Route(Op::Show, vec![".html".into()])
        );
    }

    #[test]
    fn check_routes_reports_both_directions_and_dangling_refs() {
        assert_eq!(check_routes(ROUTES, &doc()), Vec::<String>::new());
        let mut d = doc();
        d["paths"]["/v1/extra"] = json!({"post": {"summary": "x", "responses": {"200": {"$ref": "#/components/responses/Nope"}}}});
        d["paths"]["/v1/invoices/{id}"]
            .as_object_mut()
            .unwrap()
            .remove("put");
        d["paths"]["/v1/invoices/{id}"]
            .as_object_mut()
            .unwrap()
            .remove("parameters");
        let problems = check_routes(ROUTES, &d);
        assert_eq!(
            problems,
            vec![
                "PUT /v1/invoices/{id}: served but not described",
                "POST /v1/extra: described but not served",
                "GET /v1/invoices/{id}: path parameter id not declared",
                "$ref #/components/responses/Nope does not resolve",
            ]
        );
    }

    #[test]
    fn validate_covers_the_subset() {
        let d = doc();
        let inv = json!({"$ref": "#/components/schemas/Invoice"});
        assert!(validate(
            &d,
            &inv,
            &json!({"id": "a", "status": "paid", "total": null, "lines": [1, 2.5]})
        )
        .is_empty());
        let bad = validate(
            &d,
            &inv,
            &json!({"id": "", "status": "lost", "total": 1.5, "lines": ["x"], "other": 1}),
        );
        assert_eq!(
            bad,
            vec![
                "$.id: shorter than 1",
                "$.lines[0]: string, the schema says number",
                "$.other: not a property the schema names",
                "$.status: \"lost\" is not one of [\"draft\",\"paid\"]",
                "$.total: number, the schema says integer",
            ]
        );
        assert_eq!(
            validate(&d, &inv, &json!({"id": "a"})),
            vec!["$: required property status is missing"]
        );
        assert_eq!(
            validate(&d, &inv, &json!([])),
            vec!["$: array, the schema says object"]
        );
    }

    #[test]
    fn check_response_finds_the_template_and_status() {
        let d = doc();
        let ok = json!({"id": "a", "status": "draft"});
        assert_eq!(
            check_response(&d, "GET", "/v1/invoices/a?x=1", 200, &ok),
            Ok(())
        );
        assert_eq!(
            check_response(&d, "GET", "/v1/invoices", 200, &json!([ok])),
            Ok(())
        );
        assert!(check_response(&d, "GET", "/v1/invoices/a", 404, &ok)
            .unwrap_err()
            .contains("status 404 is not described"));
        assert!(check_response(&d, "GET", "/v1/invoices", 200, &ok)
            .unwrap_err()
            .contains("object, the schema says array"));
        assert!(check_response(&d, "DELETE", "/v1/invoices/a", 200, &ok).is_err());
        assert_eq!(check_request(&d, "PUT", "/v1/invoices/a", &ok), Ok(()));
        let put = |req: &Value, status| {
            check_exchange(&d, "PUT", "/v1/invoices/a", Some(req), status, &ok)
        };
        assert_eq!(put(&ok, 200), Ok(()));
        assert!(
            put(&json!({"id": 1}), 200).is_err(),
            "an accepted request must fit"
        );
        assert!(check_exchange(&d, "GET", "/v1/nowhere", None, 404, &Value::Null).is_ok());
        assert!(check_exchange(&d, "GET", "/v1/invoices", None, 200, &ok).is_err());
        assert!(check_request(&d, "PUT", "/v1/invoices/a", &json!({})).is_err());
    }

    #[test]
    fn render_lists_every_operation_and_schema() {
        let md = render_markdown(&doc());
        for needle in [
            "## T (version 1)",
            "| GET | `/v1/invoices/{id}.html` | html |",
            "### PUT `/v1/invoices/{id}`",
            "Request body (`application/json`): Invoice",
            "| 200 | ok | `application/json`: array of Invoice |",
            "| `status` | string (one of `\"draft\"`, `\"paid\"`) | yes |  |",
            "| `total` | integer or null |  |  |",
        ] {
            assert!(md.contains(needle), "{needle} missing from\n{md}");
        }
        assert!(!md.contains("```"));
    }
}
