//! The conditions grammar of §5.2: validation of a condition tree as sent in a body, and its
//! evaluation against an event (or any JSON context the caller resolves paths in).
//!
//! Trees are kept as the JSON the client sent (aliases included, so they echo back as sent);
//! both functions read that JSON directly instead of a typed tree, which keeps "stored as
//! sent" and "evaluated" from drifting apart.

use std::borrow::Cow;
use std::cmp::Ordering;

use chrono::DateTime;
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use crate::validate::{FieldErrors, join};

/// Every operator, in the order of the spec.
pub const OPS: [&str; 15] = [
    "eq",
    "neq",
    "gt",
    "gte",
    "lt",
    "lte",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "in",
    "not_in",
    "exists",
    "not_exists",
    "matches",
];

/// Deepest nesting accepted; the root node is level 1.
pub const MAX_DEPTH: usize = 10;
/// Most leaves accepted in one tree.
pub const MAX_LEAVES: usize = 100;
/// Longest `matches` pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Compiled-program limit: keeps a short but explosive pattern (`(a{100}){100}`) from
/// costing memory at every evaluation.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

const CODE: &str = "invalid_condition";
const LEAF_KEYS: [&str; 5] = ["field", "path", "op", "operator", "value"];
const EVENT_ROOTS: [&str; 4] = ["eventType", "deviceId", "payload", "receivedAt"];

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// Records every grammar violation of `node` under `field_prefix` (e.g. `conditions`), with
/// field code `invalid_condition`. `null` and `{}` are valid (no conditions).
pub fn validate(node: &Value, field_prefix: &str, errs: &mut FieldErrors) {
    match node {
        Value::Null => return,
        Value::Object(m) if m.is_empty() => return,
        _ => {}
    }
    let mut cx = Cx {
        leaves: 0,
        too_deep: false,
        errs,
    };
    cx.node(node, field_prefix, 1);
    if cx.leaves > MAX_LEAVES {
        let field = if field_prefix.is_empty() {
            "conditions"
        } else {
            field_prefix
        };
        cx.errs.push(
            field,
            CODE,
            format!(
                "conditions have {} leaves; at most {MAX_LEAVES} are allowed",
                cx.leaves
            ),
        );
    }
}

struct Cx<'e> {
    leaves: usize,
    too_deep: bool,
    errs: &'e mut FieldErrors,
}

impl Cx<'_> {
    fn bad(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.errs.push(field, CODE, msg);
    }

    fn node(&mut self, v: &Value, path: &str, depth: usize) {
        let Some(m) = v.as_object() else {
            self.bad(path, "a condition must be an object");
            return;
        };
        if depth > MAX_DEPTH {
            // One report is enough; every deeper branch would repeat it.
            if !self.too_deep {
                self.too_deep = true;
                self.bad(
                    path,
                    format!("conditions are nested deeper than {MAX_DEPTH} levels"),
                );
            }
            return;
        }
        let mut unknown = false;
        for k in m.keys() {
            if !matches!(k.as_str(), "all" | "any" | "not") && !LEAF_KEYS.contains(&k.as_str()) {
                unknown = true;
                self.bad(join(path, k), format!("unknown condition key '{k}'"));
            }
        }
        let is_group = m.contains_key("all") || m.contains_key("any");
        let is_not = m.contains_key("not");
        let is_leaf = LEAF_KEYS.iter().any(|k| m.contains_key(*k));
        match (is_group, is_not, is_leaf) {
            (true, false, false) => self.group(m, path, depth),
            (false, true, false) => self.node(&m["not"], &join(path, "not"), depth + 1),
            (false, false, true) => self.leaf(m, path),
            (false, false, false) => {
                if !unknown {
                    self.bad(
                        path,
                        "a condition must be a group (all/any), a not, or a leaf (field, op, value)",
                    );
                }
            }
            _ => self.bad(
                path,
                "a condition must be exactly one of a group (all/any), a not, or a leaf",
            ),
        }
    }

    fn group(&mut self, m: &Map<String, Value>, path: &str, depth: usize) {
        for key in ["all", "any"] {
            let Some(v) = m.get(key) else { continue };
            let p = join(path, key);
            match v.as_array() {
                Some(items) => {
                    for (i, child) in items.iter().enumerate() {
                        self.node(child, &format!("{p}[{i}]"), depth + 1);
                    }
                }
                None => self.bad(p, format!("{key} must be an array of conditions")),
            }
        }
    }

    fn leaf(&mut self, m: &Map<String, Value>, path: &str) {
        self.leaves += 1;
        match (m.get("field"), m.get("path")) {
            (Some(_), Some(_)) => {
                self.bad(join(path, "path"), "send either field or path, not both")
            }
            (None, None) => self.bad(join(path, "field"), "field is required"),
            (Some(f), None) => self.path_string(f, &join(path, "field")),
            (None, Some(p)) => self.path_string(p, &join(path, "path")),
        }
        let op = match (m.get("op"), m.get("operator")) {
            (Some(_), Some(_)) => {
                self.bad(
                    join(path, "operator"),
                    "send either op or operator, not both",
                );
                None
            }
            (None, None) => {
                self.bad(join(path, "op"), "op is required");
                None
            }
            (Some(o), None) => self.op(o, &join(path, "op")),
            (None, Some(o)) => self.op(o, &join(path, "operator")),
        };
        let Some(op) = op else { return };
        let vpath = join(path, "value");
        let value = m.get("value");
        match (op, value) {
            ("exists" | "not_exists", _) => {}
            (_, None) => self.bad(vpath, format!("value is required for op {op}")),
            ("in" | "not_in", Some(v)) if !v.is_array() => {
                self.bad(vpath, format!("value must be an array for op {op}"))
            }
            ("starts_with" | "ends_with" | "matches", Some(v)) if !v.is_string() => {
                self.bad(vpath, format!("value must be a string for op {op}"))
            }
            ("matches", Some(Value::String(p))) => {
                if p.len() > MAX_PATTERN_BYTES {
                    self.bad(
                        vpath,
                        format!("regex must be at most {MAX_PATTERN_BYTES} bytes"),
                    );
                } else if let Err(e) = compile_regex(p) {
                    self.bad(vpath, format!("invalid regex: {}", one_line(&e)));
                }
            }
            _ => {}
        }
    }

    fn path_string(&mut self, v: &Value, field: &str) {
        match v.as_str() {
            Some(s) if parse_path(s).is_some() => {}
            Some(s) => self.bad(
                field,
                format!("'{s}' is not a valid path (dot-separated names, [n] for indices)"),
            ),
            None => self.bad(field, "must be a string path"),
        }
    }

    fn op<'v>(&mut self, v: &'v Value, field: &str) -> Option<&'v str> {
        match v.as_str() {
            Some(s) if OPS.contains(&s) => Some(s),
            Some(s) => {
                self.bad(
                    field,
                    format!("unknown op '{s}'; expected one of: {}", OPS.join(", ")),
                );
                None
            }
            None => {
                self.bad(field, "op must be a string");
                None
            }
        }
    }
}

fn compile_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

/// Splits a path into segments: `payload.items[0].name` and `payload.items.0.name` both give
/// `["payload", "items", "0", "name"]`. `None` for an empty segment or a malformed index.
pub fn parse_path(path: &str) -> Option<Vec<String>> {
    if path.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() {
            return None;
        }
        out.push(name.to_string());
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[')?;
            let close = inner.find(']')?;
            let idx = &inner[..close];
            if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            out.push(idx.to_string());
            rest = &inner[close + 1..];
        }
    }
    Some(out)
}

/// Follows segments from `root`: object keys by name, array elements by numeric segment.
pub fn resolve_segments<'a, S: AsRef<str>>(root: &'a Value, segs: &[S]) -> Option<&'a Value> {
    let mut cur = root;
    for s in segs {
        let s = s.as_ref();
        cur = match cur {
            Value::Object(m) => m.get(s)?,
            Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Resolves a condition path against an event `{eventType, deviceId, payload, receivedAt}`:
/// a first segment naming one of those addresses the event, any other resolves under
/// `payload` (`sender` ≡ `payload.sender`).
pub fn resolve_event<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    let segs = parse_path(path)?;
    if EVENT_ROOTS.contains(&segs[0].as_str()) {
        resolve_segments(event, &segs)
    } else {
        resolve_segments(event.get("payload")?, &segs)
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------

/// Evaluates a condition tree against an event object.
pub fn evaluate_event(node: &Value, event: &Value) -> bool {
    evaluate(node, &|p| resolve_event(event, p))
}

/// Evaluates a condition tree; `resolve` maps a leaf's path to its value (`None` = missing).
/// `null` and `{}` are true. A malformed node is false.
pub fn evaluate<'a>(node: &Value, resolve: &dyn Fn(&str) -> Option<&'a Value>) -> bool {
    evaluate_with(node, resolve, &|v| Cow::Borrowed(v))
}

/// Like [`evaluate`], with every leaf's `value` passed through `value` first (`flow.if`
/// resolves templates in string values before comparing).
pub fn evaluate_with<'a>(
    node: &Value,
    resolve: &dyn Fn(&str) -> Option<&'a Value>,
    value: &dyn for<'v> Fn(&'v Value) -> Cow<'v, Value>,
) -> bool {
    match node {
        Value::Null => true,
        Value::Object(m) if m.is_empty() => true,
        _ => eval_node(node, resolve, value),
    }
}

fn eval_node<'a>(
    node: &Value,
    resolve: &dyn Fn(&str) -> Option<&'a Value>,
    value: &dyn for<'v> Fn(&'v Value) -> Cow<'v, Value>,
) -> bool {
    let Some(m) = node.as_object() else {
        return false;
    };
    if let Some(inner) = m.get("not") {
        return !eval_node(inner, resolve, value);
    }
    if m.contains_key("all") || m.contains_key("any") {
        let all = match m.get("all") {
            None => true,
            Some(Value::Array(items)) => items.iter().all(|c| eval_node(c, resolve, value)),
            Some(_) => false,
        };
        // An empty `any` counts as absent, i.e. it passes.
        let any = match m.get("any") {
            None => true,
            Some(Value::Array(items)) if items.is_empty() => true,
            Some(Value::Array(items)) => items.iter().any(|c| eval_node(c, resolve, value)),
            Some(_) => false,
        };
        return all && any;
    }
    let path = m
        .get("field")
        .or_else(|| m.get("path"))
        .and_then(Value::as_str);
    let op = m
        .get("op")
        .or_else(|| m.get("operator"))
        .and_then(Value::as_str);
    let (Some(path), Some(op)) = (path, op) else {
        return false;
    };
    let expected = m.get("value").map(value);
    apply(op, resolve(path), expected.as_deref())
}

/// One operator on a resolved field (`None` = missing) and the leaf's value.
pub fn apply(op: &str, field: Option<&Value>, expected: Option<&Value>) -> bool {
    let Some(field) = field else {
        // A missing field fails every op, negations included, except not_exists.
        return op == "not_exists";
    };
    match op {
        "exists" => !field.is_null(),
        "not_exists" => field.is_null(),
        _ => {
            let Some(expected) = expected else {
                return false;
            };
            match op {
                "eq" => json_eq(field, expected),
                "neq" => !json_eq(field, expected),
                "gt" => compare(field, expected) == Some(Ordering::Greater),
                "gte" => matches!(
                    compare(field, expected),
                    Some(Ordering::Greater | Ordering::Equal)
                ),
                "lt" => compare(field, expected) == Some(Ordering::Less),
                "lte" => matches!(
                    compare(field, expected),
                    Some(Ordering::Less | Ordering::Equal)
                ),
                "contains" => contains(field, expected).unwrap_or(false),
                "not_contains" => contains(field, expected).is_some_and(|c| !c),
                "starts_with" => match (field, expected) {
                    (Value::String(f), Value::String(e)) => f.starts_with(e.as_str()),
                    _ => false,
                },
                "ends_with" => match (field, expected) {
                    (Value::String(f), Value::String(e)) => f.ends_with(e.as_str()),
                    _ => false,
                },
                "in" => match expected {
                    Value::Array(items) => items.iter().any(|e| json_eq(field, e)),
                    _ => false,
                },
                "not_in" => match expected {
                    Value::Array(items) => !items.iter().any(|e| json_eq(field, e)),
                    _ => false,
                },
                "matches" => match (field, expected) {
                    (Value::String(f), Value::String(p)) if p.len() <= MAX_PATTERN_BYTES => {
                        compile_regex(p).is_ok_and(|re| re.is_match(f))
                    }
                    _ => false,
                },
                _ => false,
            }
        }
    }
}

/// `Some(found)` when the field is a string (substring of a string value) or an array (has an
/// equal element); `None` when the field is neither.
fn contains(field: &Value, expected: &Value) -> Option<bool> {
    match field {
        Value::String(f) => Some(match expected {
            Value::String(e) => f.contains(e.as_str()),
            _ => false,
        }),
        Value::Array(items) => Some(items.iter().any(|i| json_eq(i, expected))),
        _ => None,
    }
}

/// JSON equality where numbers compare by value (`1 == 1.0`), recursively.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => num_cmp(a, b) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn num_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    let (Value::Number(x), Value::Number(y)) = (a, b) else {
        return None;
    };
    let int = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(x), int(y)) {
        (Some(i), Some(j)) => Some(i.cmp(&j)),
        _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
    }
}

/// Ordering for gt/gte/lt/lte: numbers numerically; strings as instants when both are
/// RFC 3339 date-times, else by code point; anything else is incomparable.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => num_cmp(a, b),
        (Value::String(x), Value::String(y)) => {
            match (
                DateTime::parse_from_rfc3339(x),
                DateTime::parse_from_rfc3339(y),
            ) {
                (Ok(p), Ok(q)) => Some(p.cmp(&q)),
                _ => Some(x.as_str().cmp(y.as_str())),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(node: Value) -> Vec<(String, String)> {
        let mut errs = FieldErrors::new();
        validate(&node, "conditions", &mut errs);
        for e in &errs.0 {
            assert_eq!(e.code.as_deref(), Some(CODE), "{e:?}");
        }
        errs.0.into_iter().map(|e| (e.field, e.message)).collect()
    }

    fn fields(node: Value) -> Vec<String> {
        errors(node).into_iter().map(|(f, _)| f).collect()
    }

    fn event() -> Value {
        json!({
            "eventType": "order.created",
            "deviceId": "d-1",
            "receivedAt": "2026-03-01T10:00:00.000Z",
            "payload": {
                "amount": 42,
                "price": 9.5,
                "currency": "EUR",
                "sender": "alice@example.com",
                "tags": ["vip", "new", 7],
                "items": [{"name": "apple", "qty": 2}, {"name": "pear", "qty": 1}],
                "meta": {"a": 1, "b": [1, 2]},
                "nothing": null,
                "flag": true,
                "when": "2026-03-01T11:00:00+01:00",
                "eventType": "shadowed"
            }
        })
    }

    fn leaf(field: &str, op: &str, value: Value) -> Value {
        json!({"field": field, "op": op, "value": value})
    }

    fn t(field: &str, op: &str, value: Value) -> bool {
        evaluate_event(&leaf(field, op, value), &event())
    }

    // --- validation ---------------------------------------------------------------------

    #[test]
    fn null_and_empty_pass() {
        assert!(fields(Value::Null).is_empty());
        assert!(fields(json!({})).is_empty());
        assert!(fields(json!({"all": [], "any": []})).is_empty());
    }

    #[test]
    fn valid_trees_pass() {
        let tree = json!({
            "all": [
                {"field": "amount", "op": "gt", "value": 10},
                {"path": "payload.items[0].name", "operator": "eq", "value": "apple"},
                {"not": {"field": "currency", "op": "in", "value": ["USD"]}},
                {"any": [
                    {"field": "sender", "op": "exists"},
                    {"field": "sender", "op": "matches", "value": "^a.*@example\\.com$"}
                ]}
            ]
        });
        assert_eq!(fields(tree), Vec::<String>::new());
        assert!(fields(json!({"field": "x", "op": "not_exists"})).is_empty());
        assert!(fields(json!({"field": "x", "op": "eq", "value": null})).is_empty());
    }

    #[test]
    fn mixing_kinds_is_rejected() {
        assert_eq!(
            fields(json!({"all": [], "field": "x", "op": "exists"})),
            ["conditions"]
        );
        assert_eq!(
            fields(json!({"not": {"field": "x", "op": "exists"}, "any": []})),
            ["conditions"]
        );
        assert_eq!(
            fields(json!({"all": [{"not": {}, "op": "eq"}]})),
            ["conditions.all[0]"]
        );
    }

    #[test]
    fn aliases_exclusive_and_required() {
        assert_eq!(
            fields(json!({"field": "a", "path": "b", "op": "exists"})),
            ["conditions.path"]
        );
        assert_eq!(
            fields(json!({"field": "a", "op": "exists", "operator": "exists"})),
            ["conditions.operator"]
        );
        assert_eq!(
            fields(json!({"any": [{"op": "exists"}, {"field": "a"}]})),
            ["conditions.any[0].field", "conditions.any[1].op"]
        );
    }

    #[test]
    fn unknown_key_and_unknown_op() {
        assert_eq!(
            fields(json!({"all": [{"field": "a", "op": "eq", "value": 1, "extra": 2}]})),
            ["conditions.all[0].extra"]
        );
        assert_eq!(
            fields(json!({"all": [{"field": "a", "op": "equals", "value": 1}]})),
            ["conditions.all[0].op"]
        );
        assert_eq!(
            fields(json!({"field": "a", "operator": 3, "value": 1})),
            ["conditions.operator"]
        );
        assert_eq!(fields(json!({"bogus": 1})), ["conditions.bogus"]);
    }

    #[test]
    fn value_rules() {
        assert_eq!(
            fields(json!({"all": [{"field": "a", "op": "eq"}]})),
            ["conditions.all[0].value"]
        );
        assert!(fields(json!({"field": "a", "op": "exists"})).is_empty());
        assert_eq!(
            fields(json!({"field": "a", "op": "in", "value": "x"})),
            ["conditions.value"]
        );
        assert_eq!(
            fields(json!({"field": "a", "op": "not_in", "value": null})),
            ["conditions.value"]
        );
        for op in ["starts_with", "ends_with", "matches"] {
            assert_eq!(
                fields(json!({"field": "a", "op": op, "value": 1})),
                ["conditions.value"],
                "{op}"
            );
        }
    }

    #[test]
    fn regex_rules() {
        let e = errors(json!({"field": "a", "op": "matches", "value": "(unclosed"}));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "conditions.value");
        assert!(e[0].1.starts_with("invalid regex"));
        // Look-around and backreferences are not supported by a linear-time engine.
        assert_eq!(
            fields(json!({"field": "a", "op": "matches", "value": "(?=x)"})),
            ["conditions.value"]
        );
        assert_eq!(
            fields(json!({"field": "a", "op": "matches", "value": "(a)\\1"})),
            ["conditions.value"]
        );
        let long = "a".repeat(MAX_PATTERN_BYTES + 1);
        assert_eq!(
            fields(json!({"field": "a", "op": "matches", "value": long})),
            ["conditions.value"]
        );
        let ok = "a".repeat(MAX_PATTERN_BYTES);
        assert!(fields(json!({"field": "a", "op": "matches", "value": ok})).is_empty());
    }

    #[test]
    fn structural_types() {
        assert_eq!(fields(json!([1])), ["conditions"]);
        assert_eq!(fields(json!({"all": {}})), ["conditions.all"]);
        assert_eq!(
            fields(json!({"all": [1, {}]})),
            ["conditions.all[0]", "conditions.all[1]"]
        );
        assert_eq!(fields(json!({"not": null})), ["conditions.not"]);
        assert_eq!(
            fields(json!({"field": 1, "op": "exists"})),
            ["conditions.field"]
        );
        assert_eq!(
            fields(json!({"field": "a..b", "op": "exists"})),
            ["conditions.field"]
        );
        assert_eq!(
            fields(json!({"path": "a[x]", "op": "exists"})),
            ["conditions.path"]
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let f = fields(json!({"all": [
            {"field": "a", "op": "nope", "value": 1},
            {"field": "b", "op": "in", "value": 1},
            {"not": {"field": "c", "path": "d", "op": "exists"}}
        ], "any": [{"op": "eq", "value": 1, "x": 1}]}));
        assert_eq!(
            f,
            [
                "conditions.all[0].op",
                "conditions.all[1].value",
                "conditions.all[2].not.path",
                "conditions.any[0].x",
                "conditions.any[0].field",
            ]
        );
    }

    fn nested_nots(levels: usize) -> Value {
        let mut node = json!({"field": "a", "op": "exists"});
        for _ in 1..levels {
            node = json!({ "not": node });
        }
        node
    }

    #[test]
    fn depth_limit() {
        assert!(fields(nested_nots(MAX_DEPTH)).is_empty());
        let f = fields(nested_nots(MAX_DEPTH + 1));
        assert_eq!(f.len(), 1);
        assert!(f[0].starts_with("conditions.not.not"));
        // Groups count as levels too.
        let mut node = json!({"field": "a", "op": "exists"});
        for _ in 0..MAX_DEPTH {
            node = json!({"all": [node]});
        }
        assert_eq!(fields(node).len(), 1);
    }

    #[test]
    fn leaf_limit() {
        let leaves: Vec<Value> = (0..MAX_LEAVES)
            .map(|i| json!({"field": format!("f{i}"), "op": "exists"}))
            .collect();
        assert!(fields(json!({ "all": leaves.clone() })).is_empty());
        let mut more = leaves;
        more.push(json!({"field": "x", "op": "exists"}));
        assert_eq!(fields(json!({ "any": more })), ["conditions"]);
    }

    // --- paths --------------------------------------------------------------------------

    #[test]
    fn path_syntax() {
        assert_eq!(
            parse_path("payload.items[0].name").unwrap(),
            ["payload", "items", "0", "name"]
        );
        assert_eq!(
            parse_path("payload.items.0.name"),
            parse_path("payload.items[0].name")
        );
        assert_eq!(parse_path("m[1][2]").unwrap(), ["m", "1", "2"]);
        for bad in [
            "", ".", "a.", ".a", "a[", "a[]", "a[-1]", "[0]", "a]0[", "a[0]b",
        ] {
            assert!(parse_path(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn path_resolution() {
        let e = event();
        assert_eq!(
            resolve_event(&e, "eventType"),
            Some(&json!("order.created"))
        );
        assert_eq!(resolve_event(&e, "deviceId"), Some(&json!("d-1")));
        assert_eq!(
            resolve_event(&e, "receivedAt"),
            Some(&json!("2026-03-01T10:00:00.000Z"))
        );
        assert_eq!(resolve_event(&e, "payload.amount"), Some(&json!(42)));
        assert_eq!(resolve_event(&e, "amount"), Some(&json!(42)));
        assert_eq!(resolve_event(&e, "items[1].name"), Some(&json!("pear")));
        assert_eq!(resolve_event(&e, "payload.items.1.qty"), Some(&json!(1)));
        assert_eq!(resolve_event(&e, "meta.b[1]"), Some(&json!(2)));
        assert_eq!(resolve_event(&e, "items[5]"), None);
        assert_eq!(resolve_event(&e, "amount.x"), None);
        assert_eq!(resolve_event(&e, "nope"), None);
        assert_eq!(resolve_event(&e, "nothing"), Some(&Value::Null));
        // Event roots win over payload keys of the same name.
        assert_eq!(
            resolve_event(&e, "eventType"),
            Some(&json!("order.created"))
        );
        assert_eq!(
            resolve_event(&e, "payload.eventType"),
            Some(&json!("shadowed"))
        );
    }

    // --- operators ----------------------------------------------------------------------

    #[test]
    fn eq_and_neq() {
        assert!(t("amount", "eq", json!(42)));
        assert!(t("amount", "eq", json!(42.0)));
        assert!(t("price", "eq", json!(9.5)));
        assert!(!t("amount", "eq", json!("42")));
        assert!(t("currency", "eq", json!("EUR")));
        assert!(!t("currency", "eq", json!("eur")));
        assert!(t("meta", "eq", json!({"b": [1.0, 2], "a": 1})));
        assert!(!t("meta", "eq", json!({"a": 1})));
        assert!(t("tags", "eq", json!(["vip", "new", 7.0])));
        assert!(t("nothing", "eq", Value::Null));
        assert!(t("flag", "eq", json!(true)));
        assert!(t("amount", "neq", json!(41)));
        assert!(!t("amount", "neq", json!(42.0)));
        assert!(t("nothing", "neq", json!(1)));
    }

    #[test]
    fn ordering_ops() {
        assert!(t("amount", "gt", json!(41.5)));
        assert!(!t("amount", "gt", json!(42)));
        assert!(t("amount", "gte", json!(42)));
        assert!(t("amount", "lt", json!(100)));
        assert!(t("amount", "lte", json!(42.0)));
        assert!(!t("amount", "lte", json!(41)));
        // Strings: code-point order.
        assert!(t("currency", "gt", json!("ABC")));
        assert!(t("currency", "lt", json!("eur")));
        // Both RFC 3339: compared as instants (11:00+01:00 == 10:00Z).
        assert!(t("when", "gte", json!("2026-03-01T10:00:00Z")));
        assert!(t("when", "lte", json!("2026-03-01T10:00:00Z")));
        assert!(!t("when", "gt", json!("2026-03-01T10:00:00Z")));
        assert!(t("when", "lt", json!("2026-03-01T10:00:01Z")));
        // As plain strings "2026-03-01T11…" > "2026-03-01T10:30…"; as instants it is less.
        assert!(t("when", "lt", json!("2026-03-01T10:30:00Z")));
        assert!(t("receivedAt", "lt", json!("2026-03-01T10:00:00.001Z")));
        // Mixed types are incomparable.
        assert!(!t("amount", "gt", json!("1")));
        assert!(!t("amount", "lt", json!("100")));
        assert!(!t("currency", "gt", json!(1)));
        assert!(!t("flag", "gte", json!(true)));
        assert!(!t("nothing", "lte", Value::Null));
    }

    #[test]
    fn contains_ops() {
        assert!(t("sender", "contains", json!("@example")));
        assert!(!t("sender", "contains", json!("@EXAMPLE")));
        assert!(t("tags", "contains", json!("vip")));
        assert!(t("tags", "contains", json!(7.0)));
        assert!(!t("tags", "contains", json!("vi")));
        assert!(t("sender", "not_contains", json!("bob")));
        assert!(!t("sender", "not_contains", json!("alice")));
        assert!(t("tags", "not_contains", json!("old")));
        assert!(!t("tags", "not_contains", json!("new")));
        // Neither string nor array: both false.
        assert!(!t("amount", "contains", json!(4)));
        assert!(!t("amount", "not_contains", json!(4)));
        assert!(!t("meta", "contains", json!("a")));
        assert!(!t("meta", "not_contains", json!("a")));
    }

    #[test]
    fn prefix_suffix() {
        assert!(t("sender", "starts_with", json!("alice")));
        assert!(!t("sender", "starts_with", json!("Alice")));
        assert!(t("sender", "ends_with", json!(".com")));
        assert!(!t("sender", "ends_with", json!(".org")));
        assert!(!t("amount", "starts_with", json!("4")));
        assert!(!t("tags", "ends_with", json!("7")));
    }

    #[test]
    fn in_ops() {
        assert!(t("currency", "in", json!(["USD", "EUR"])));
        assert!(!t("currency", "in", json!(["USD"])));
        assert!(t("amount", "in", json!([1, 42.0])));
        assert!(t("currency", "not_in", json!(["USD"])));
        assert!(!t("currency", "not_in", json!(["EUR"])));
        assert!(t("currency", "not_in", json!([])));
        assert!(!t("currency", "in", json!([])));
        assert!(t("nothing", "in", json!([null])));
    }

    #[test]
    fn existence() {
        assert!(t("amount", "exists", Value::Null));
        assert!(!t("nothing", "exists", Value::Null));
        assert!(!t("nope", "exists", Value::Null));
        assert!(t("nothing", "not_exists", Value::Null));
        assert!(t("nope", "not_exists", Value::Null));
        assert!(!t("amount", "not_exists", Value::Null));
        assert!(evaluate_event(
            &json!({"field": "nope", "op": "not_exists"}),
            &event()
        ));
    }

    #[test]
    fn matches_op() {
        assert!(t("sender", "matches", json!("^[a-z]+@example\\.com$")));
        assert!(t("sender", "matches", json!("ice@ex")));
        assert!(!t("sender", "matches", json!("^bob")));
        assert!(!t("amount", "matches", json!("42")));
        assert!(!t("sender", "matches", json!("(unclosed")));
    }

    #[test]
    fn missing_fails_everything_but_not_exists() {
        for op in OPS {
            let expected = op == "not_exists";
            let value = match op {
                "in" | "not_in" => json!(["x"]),
                _ => json!("x"),
            };
            assert_eq!(t("missing.deep", op, value), expected, "{op}");
        }
    }

    #[test]
    fn groups_and_not() {
        let yes = leaf("amount", "eq", json!(42));
        let no = leaf("amount", "eq", json!(1));
        let e = event();
        assert!(evaluate_event(&json!({"all": [yes, yes]}), &e));
        assert!(!evaluate_event(&json!({"all": [yes, no]}), &e));
        assert!(evaluate_event(&json!({"any": [no, yes]}), &e));
        assert!(!evaluate_event(&json!({"any": [no, no]}), &e));
        assert!(evaluate_event(&json!({"all": [yes], "any": [no, yes]}), &e));
        assert!(!evaluate_event(&json!({"all": [no], "any": [yes]}), &e));
        assert!(!evaluate_event(&json!({"all": [yes], "any": [no]}), &e));
        // Empty arrays count as absent.
        assert!(evaluate_event(&json!({"all": [], "any": []}), &e));
        assert!(evaluate_event(&json!({"all": [yes], "any": []}), &e));
        assert!(evaluate_event(&json!({"not": no}), &e));
        assert!(!evaluate_event(&json!({"not": yes}), &e));
        assert!(evaluate_event(&json!({"not": {"not": yes}}), &e));
        // `not` of a missing-field leaf is true: the leaf is false.
        assert!(evaluate_event(
            &json!({"not": leaf("nope", "neq", json!(1))}),
            &e
        ));
        assert!(evaluate_event(&json!({}), &e));
        assert!(evaluate_event(&Value::Null, &e));
        let nested = json!({"any": [
            {"all": [leaf("eventType", "eq", json!("order.created")), {"not": no}]},
            no
        ]});
        assert!(evaluate_event(&nested, &e));
    }

    #[test]
    fn aliases_evaluate_like_canonical_keys() {
        let e = event();
        assert!(evaluate_event(
            &json!({"path": "payload.items.0.name", "operator": "eq", "value": "apple"}),
            &e
        ));
        assert!(evaluate_event(
            &json!({"field": "deviceId", "operator": "starts_with", "value": "d-"}),
            &e
        ));
    }

    #[test]
    fn malformed_nodes_are_false() {
        let e = event();
        assert!(!evaluate_event(
            &json!({"field": "amount", "op": "bogus", "value": 1}),
            &e
        ));
        assert!(!evaluate_event(&json!({"field": "amount"}), &e));
        assert!(!evaluate_event(&json!({"all": [1]}), &e));
        assert!(!evaluate_event(&json!("x"), &e));
        assert!(!evaluate_event(&json!({"field": "amount", "op": "eq"}), &e));
    }

    #[test]
    fn custom_resolver_and_value_mapping() {
        let ctx = json!({"event": {"payload": {"n": 5}}, "vars": {"limit": "5"}});
        let resolve = |p: &str| resolve_segments(&ctx, &parse_path(p)?);
        assert!(evaluate(&leaf("event.payload.n", "eq", json!(5)), &resolve));
        // Values can be rewritten (e.g. templates) before the comparison.
        let mapped = evaluate_with(
            &leaf("event.payload.n", "eq", json!("{{vars.limit}}")),
            &resolve,
            &|v| match v {
                Value::String(s) if s == "{{vars.limit}}" => Cow::Owned(json!(5)),
                other => Cow::Borrowed(other),
            },
        );
        assert!(mapped);
    }

    #[test]
    fn big_integers_compare_exactly() {
        let e = json!({"payload": {"big": 9007199254740993u64}});
        assert!(evaluate_event(
            &leaf("big", "gt", json!(9007199254740992u64)),
            &e
        ));
        assert!(!evaluate_event(
            &leaf("big", "eq", json!(9007199254740992u64)),
            &e
        ));
    }
}
