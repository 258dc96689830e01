//! Action params against a catalog entry's `paramsSchema` (§3.4, §5.9).
//!
//! Two moments check params. When an action is configured (`POST`/`PATCH /actions`) the
//! values may still hold `{{ … }}` templates, which only get their real value at run time, so
//! a template-bearing string satisfies any constraint of the place it sits in
//! ([`Mode::Configured`]). When a step starts, the resolved params are checked strictly
//! ([`Mode::Resolved`]). Both report every problem as a [`FieldError`] whose path starts at a
//! caller-chosen prefix (`params.credentials[0].packageName`).
//!
//! Independently of the schema, `deviceId` is never a param of a device method: the step acts
//! on the execution's device (§5.12), so configuring one would be silently ignored.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use crate::catalog::{self, CatalogEntry};
use crate::validate::{FieldErrors, type_name};

/// Which check to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Stored configuration: template-bearing strings pass any constraint.
    Configured,
    /// Values after template resolution: no relaxation.
    Resolved,
}

/// Whether a string holds at least one complete `{{ … }}` token (non-blank inside).
///
/// An unclosed `{{` is not a token: depending on the flow's template version it is either
/// literal text or a template error, and both are judged elsewhere.
pub fn contains_template(s: &str) -> bool {
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return false;
        };
        if !after[..close].trim().is_empty() {
            return true;
        }
        rest = &after[close + 2..];
    }
    false
}

/// Checks configured params (`POST`/`PATCH /actions`): paths under `params`, templates relaxed.
pub fn validate_configured(entry: &CatalogEntry, params: &Value) -> Result<(), FieldErrors> {
    check(entry, params, Mode::Configured, "params").into_result()
}

/// Checks params after template resolution (step start, pre-resolution, dry-runs), strictly.
/// `prefix` is the path the caller reports under, e.g. `params` or `actions.login.params`.
pub fn validate_resolved(
    entry: &CatalogEntry,
    params: &Value,
    prefix: &str,
) -> Result<(), FieldErrors> {
    check(entry, params, Mode::Resolved, prefix).into_result()
}

/// Every problem of `params` for this entry, in `mode`, with paths under `prefix`.
pub fn check(entry: &CatalogEntry, params: &Value, mode: Mode, prefix: &str) -> FieldErrors {
    let validator = match entry.params_schema.as_ref() {
        None => None,
        Some(schema) => match validator_of(entry, schema) {
            Ok(v) => Some(v),
            Err(msg) => {
                // A broken schema is a server defect, never the caller's; still refuse
                // rather than store params nobody can check.
                let mut errs = FieldErrors::new();
                errs.push(prefix, "invalid_schema", msg);
                return errs;
            }
        },
    };
    check_with(
        validator.as_deref(),
        entry.needs_device(),
        &entry.method,
        params,
        mode,
        prefix,
    )
}

/// Like [`check`] for a schema that is not a catalog entry's (e.g. an action's stored copy
/// of `paramsSchema`). `method`/`service` decide the rules that do not live in the schema.
pub fn check_schema(
    schema: Option<&Value>,
    method: &str,
    service: &str,
    params: &Value,
    mode: Mode,
    prefix: &str,
) -> FieldErrors {
    let validator = match schema.map(compile) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(msg)) => {
            let mut errs = FieldErrors::new();
            errs.push(prefix, "invalid_schema", msg);
            return errs;
        }
    };
    check_with(
        validator.as_ref(),
        catalog::needs_device(method, service),
        method,
        params,
        mode,
        prefix,
    )
}

fn check_with(
    validator: Option<&Validator>,
    needs_device: bool,
    method: &str,
    params: &Value,
    mode: Mode,
    prefix: &str,
) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let Some(map) = params.as_object() else {
        errs.push(
            prefix,
            "invalid_type",
            format!("params must be an object, got {}", type_name(params)),
        );
        return errs;
    };
    let device_id_sent = needs_device && map.contains_key("deviceId");
    if device_id_sent {
        errs.push(
            join_key(prefix, "deviceId"),
            "not_allowed",
            "deviceId is not a param: device methods act on the execution's device",
        );
    }
    if let Some(v) = validator {
        for e in v.iter_errors(params) {
            if mode == Mode::Configured && is_template_string(&e.instance) {
                // Validate-then-filter instead of substituting placeholder values: a
                // placeholder would have to satisfy every keyword of its location (type,
                // range, enum, format, pattern, anyOf branches), which means reimplementing
                // the schema. An error whose instance *is* the template-bearing string is
                // exactly a constraint of that location; errors of enclosing objects
                // (`required`, unknown keys) have the object as instance and are kept. The
                // catalog's schemas combine alternatives (`anyOf`) only at leaves, so no
                // ancestor-level error is ever caused by a template alone.
                continue;
            }
            convert(&e, params, prefix, device_id_sent, &mut errs);
        }
    }
    semantic_checks(method, map, mode, prefix, &mut errs);
    errs
}

fn is_template_string(v: &Value) -> bool {
    v.as_str().is_some_and(contains_template)
}

/// Rules the schema language cannot express.
fn semantic_checks(
    method: &str,
    map: &serde_json::Map<String, Value>,
    mode: Mode,
    prefix: &str,
    errs: &mut FieldErrors,
) {
    if method == "flow.for_each"
        && let Some(Value::String(var)) = map.get("itemVariable")
        && crate::keys::is_valid_key(var)
        && crate::keys::is_reserved(var)
        && !(mode == Mode::Configured && contains_template(var))
    {
        errs.push(
            join_key(prefix, "itemVariable"),
            "reserved_key",
            format!("itemVariable '{var}' is a reserved word"),
        );
    }
    // A `flow.if` condition is a condition tree with the grammar of trigger conditions;
    // string values inside it may hold templates, which the grammar check leaves alone.
    if method == "flow.if"
        && let Some(cond @ Value::Object(_)) = map.get("condition")
    {
        crate::conditions::validate(cond, &join_key(prefix, "condition"), errs);
    }
}

static CACHE: LazyLock<Mutex<HashMap<uuid::Uuid, Arc<Validator>>>> =
    LazyLock::new(Default::default);

/// Built-in entries are compiled once; anything else (same id, other content) is compiled
/// per call so a cached validator can never belong to a different schema.
fn validator_of(entry: &CatalogEntry, schema: &Value) -> Result<Arc<Validator>, String> {
    let builtin = catalog::by_id(entry.id).is_some_and(|b| std::ptr::eq(b, entry));
    if !builtin {
        return compile(schema).map(Arc::new);
    }
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = cache.get(&entry.id) {
        return Ok(v.clone());
    }
    let v = Arc::new(compile(schema)?);
    cache.insert(entry.id, v.clone());
    Ok(v)
}

fn compile(schema: &Value) -> Result<Validator, String> {
    // Formats are annotations by default in 2020-12; the catalog uses them as constraints
    // (`webhookId` is a uuid).
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| format!("paramsSchema is not a valid JSON Schema: {}", e.masked()))
}

/// `params` + `"a b"` → `params.a b`; keys are used verbatim (the API's paths are for
/// humans and never parsed back).
fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Turns a JSON pointer into the API's path notation, using the instance to tell array
/// indices (`[0]`) from object keys that happen to be numeric (`.0`).
fn field_path(prefix: &str, pointer: &str, root: &Value) -> String {
    let mut out = prefix.to_string();
    let mut cur = Some(root);
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        match cur {
            Some(Value::Array(a)) => {
                out.push_str(&format!("[{seg}]"));
                cur = seg.parse::<usize>().ok().and_then(|i| a.get(i));
            }
            Some(Value::Object(m)) => {
                cur = m.get(&seg);
                out = join_key(&out, &seg);
            }
            _ => {
                out = join_key(&out, &seg);
                cur = None;
            }
        }
    }
    out
}

fn convert(
    e: &ValidationError<'_>,
    root: &Value,
    prefix: &str,
    skip_device_id: bool,
    errs: &mut FieldErrors,
) {
    let at = field_path(prefix, e.instance_path.as_str(), root);
    // Messages name the param by its path below `params` so nested problems stay readable.
    let name = match at.strip_prefix(prefix).map(|r| r.trim_start_matches('.')) {
        Some("") | None => "params".to_string(),
        Some(rel) => rel.to_string(),
    };
    let push = |errs: &mut FieldErrors, code: &str, msg: String| errs.push(at.clone(), code, msg);
    match &e.kind {
        ValidationErrorKind::Required { property } => {
            let prop = property.as_str().unwrap_or_default();
            errs.push(
                join_key(&at, prop),
                "required",
                format!("{prop} is required"),
            );
        }
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            for key in unexpected {
                if skip_device_id && at == prefix && key == "deviceId" {
                    continue;
                }
                errs.push(
                    join_key(&at, key),
                    "not_allowed",
                    format!("{key} is not a parameter of this action"),
                );
            }
        }
        ValidationErrorKind::Type { kind } => {
            let want = match kind {
                TypeKind::Single(t) => article(&t.to_string()),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| article(&t.to_string()))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            push(
                errs,
                "invalid_type",
                format!("{name} must be {want}, got {}", type_name(&e.instance)),
            );
        }
        ValidationErrorKind::Minimum { limit } => push(
            errs,
            "invalid_value",
            format!("{name} must be at least {limit}"),
        ),
        ValidationErrorKind::Maximum { limit } => push(
            errs,
            "invalid_value",
            format!("{name} must be at most {limit}"),
        ),
        ValidationErrorKind::ExclusiveMinimum { limit } => push(
            errs,
            "invalid_value",
            format!("{name} must be greater than {limit}"),
        ),
        ValidationErrorKind::ExclusiveMaximum { limit } => push(
            errs,
            "invalid_value",
            format!("{name} must be less than {limit}"),
        ),
        ValidationErrorKind::MinLength { limit } => push(
            errs,
            "invalid_value",
            if *limit == 1 {
                format!("{name} must not be empty")
            } else {
                format!("{name} must have at least {limit} characters")
            },
        ),
        ValidationErrorKind::MaxLength { limit } => push(
            errs,
            "too_long",
            format!("{name} must have at most {limit} characters"),
        ),
        ValidationErrorKind::Enum { options } => {
            let list = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            push(
                errs,
                "invalid_value",
                format!("{name} must be one of: {list}"),
            );
        }
        ValidationErrorKind::Format { format } => push(
            errs,
            "invalid_value",
            format!("{name} must be a valid {format}"),
        ),
        ValidationErrorKind::Pattern { pattern } => push(
            errs,
            "invalid_value",
            format!("{name} must match {pattern}"),
        ),
        ValidationErrorKind::AnyOf | ValidationErrorKind::OneOfNotValid => push(
            errs,
            "invalid_value",
            format!("{name} does not match any allowed form"),
        ),
        _ => push(
            errs,
            "invalid_value",
            format!("{name}: {}", e.masked_with(&name)),
        ),
    }
}

fn article(t: &str) -> String {
    match t {
        "integer" | "array" | "object" => format!("an {t}"),
        "null" => "null".to_string(),
        _ => format!("a {t}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(method: &str) -> &'static CatalogEntry {
        catalog::by_method(method).unwrap()
    }

    fn fields(errs: &FieldErrors) -> Vec<(&str, &str)> {
        errs.0
            .iter()
            .map(|e| (e.field.as_str(), e.code.as_deref().unwrap_or("")))
            .collect()
    }

    fn configured(method: &str, params: Value) -> FieldErrors {
        check(entry(method), &params, Mode::Configured, "params")
    }

    #[test]
    fn detects_template_tokens() {
        assert!(contains_template("{{event.payload.x}}"));
        assert!(contains_template("Hello {{ steps.a.body.name }}!"));
        assert!(contains_template("{{}} then {{x}}"));
        assert!(!contains_template("{{ unclosed"));
        assert!(!contains_template("{{  }}"));
        assert!(!contains_template("plain } { text"));
    }

    #[test]
    fn valid_params_pass() {
        assert!(configured("devices.tap", json!({"x": 1, "y": 2})).is_empty());
        assert!(configured("devices.key", json!({"key": "home"})).is_empty());
        assert!(configured("devices.key", json!({"key": 4})).is_empty());
        assert!(configured("devices.screenshot", json!({})).is_empty());
        assert!(
            configured(
                "webhooks.send",
                json!({"webhookId": "0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87"})
            )
            .is_empty()
        );
    }

    #[test]
    fn reports_every_problem_with_paths_and_codes() {
        let errs = configured(
            "devices.swipe",
            json!({"startX": -1, "startY": "a", "endX": 1.5, "durationMs": 0, "speed": 1}),
        );
        let mut got = fields(&errs);
        got.sort();
        assert_eq!(
            got,
            [
                ("params.durationMs", "invalid_value"),
                ("params.endX", "invalid_type"),
                ("params.endY", "required"),
                ("params.speed", "not_allowed"),
                ("params.startX", "invalid_value"),
                ("params.startY", "invalid_type"),
            ]
        );
    }

    #[test]
    fn nested_paths_use_brackets() {
        let errs = configured(
            "tasks.run",
            json!({"task": "t", "credentials": [{"packageName": "a", "credentialNames": []},
                                                {"packageName": 3, "credentialNames": ["x"]}]}),
        );
        assert_eq!(
            fields(&errs),
            [("params.credentials[1].packageName", "invalid_type")]
        );
        let errs = configured("tasks.run", json!({"task": "t", "credentials": [{}]}));
        let mut got = fields(&errs);
        got.sort();
        assert_eq!(
            got,
            [
                ("params.credentials[0].credentialNames", "required"),
                ("params.credentials[0].packageName", "required"),
            ]
        );
    }

    #[test]
    fn templates_satisfy_type_range_enum_and_format() {
        let cases = [
            (
                "devices.tap",
                json!({"x": "{{event.payload.x}}", "y": "{{ event.payload.y }}"}),
            ),
            ("devices.key", json!({"key": "{{event.payload.key}}"})),
            (
                "tasks.run",
                json!({"task": "t", "vpnCountry": "{{flow.name}}", "maxSteps": "{{x}}"}),
            ),
            (
                "webhooks.send",
                json!({"webhookId": "{{event.payload.hook}}"}),
            ),
            ("flow.wait", json!({"seconds": "{{event.payload.delay}}"})),
            ("flow.if", json!({"condition": "{{event.payload.cond}}"})),
            (
                "tasks.run",
                json!({"task": "t", "credentials": [{"packageName": "a", "credentialNames": "{{x}}"}]}),
            ),
        ];
        for (method, params) in cases {
            let errs = configured(method, params.clone());
            assert!(errs.is_empty(), "{method} {params}: {errs:?}");
        }
    }

    #[test]
    fn templates_do_not_excuse_missing_or_unknown_keys() {
        let errs = configured("devices.tap", json!({"x": "{{a}}", "z": "{{b}}"}));
        let mut got = fields(&errs);
        got.sort();
        assert_eq!(got, [("params.y", "required"), ("params.z", "not_allowed")]);
        // Text without a complete token is checked like any string.
        let errs = configured("devices.tap", json!({"x": "{{a", "y": 1}));
        assert_eq!(fields(&errs), [("params.x", "invalid_type")]);
    }

    #[test]
    fn resolved_mode_is_strict() {
        let params = json!({"x": "{{event.payload.x}}", "y": 1});
        let errs =
            validate_resolved(entry("devices.tap"), &params, "actions.tap.params").unwrap_err();
        assert_eq!(fields(&errs), [("actions.tap.params.x", "invalid_type")]);
        assert!(
            validate_resolved(entry("devices.tap"), &json!({"x": 5, "y": 1}), "params").is_ok()
        );
    }

    #[test]
    fn device_id_is_never_a_param_of_device_methods() {
        let errs = configured("devices.tap", json!({"x": 1, "y": 1, "deviceId": "d"}));
        assert_eq!(fields(&errs), [("params.deviceId", "not_allowed")]);
        assert!(errs.0[0].message.contains("execution's device"));
        // Device-free methods just reject it as an unknown key.
        let errs = configured("flow.wait", json!({"seconds": 1, "deviceId": "d"}));
        assert_eq!(fields(&errs), [("params.deviceId", "not_allowed")]);
    }

    #[test]
    fn format_and_enum_and_length() {
        let errs = configured("webhooks.send", json!({"webhookId": "nope"}));
        assert_eq!(fields(&errs), [("params.webhookId", "invalid_value")]);
        let errs = configured("tasks.run", json!({"task": "", "vpnCountry": "XX"}));
        let mut got = fields(&errs);
        got.sort();
        assert_eq!(
            got,
            [
                ("params.task", "invalid_value"),
                ("params.vpnCountry", "invalid_value")
            ]
        );
        let errs = configured("devices.type", json!({"text": "a".repeat(10001)}));
        assert_eq!(fields(&errs), [("params.text", "too_long")]);
        let errs = configured("devices.key", json!({"key": 401}));
        assert_eq!(fields(&errs), [("params.key", "invalid_value")]);
    }

    #[test]
    fn item_variable_must_not_be_reserved() {
        let errs = configured(
            "flow.for_each",
            json!({"items": [1], "itemVariable": "steps"}),
        );
        assert_eq!(fields(&errs), [("params.itemVariable", "reserved_key")]);
        let errs = configured(
            "flow.for_each",
            json!({"items": [1], "itemVariable": "Bad Name"}),
        );
        assert_eq!(fields(&errs), [("params.itemVariable", "invalid_value")]);
        assert!(
            configured(
                "flow.for_each",
                json!({"items": "{{event.payload.list}}", "itemVariable": "row"})
            )
            .is_empty()
        );
    }

    #[test]
    fn messages_name_the_nested_param() {
        let errs = configured(
            "tasks.run",
            json!({"task": "t", "apps": [1], "credentials": [{"packageName": 3, "credentialNames": []}]}),
        );
        let msgs: Vec<_> = errs.0.iter().map(|e| e.message.as_str()).collect();
        assert!(
            msgs.contains(&"apps[0] must be a string, got integer"),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&"credentials[0].packageName must be a string, got integer"),
            "{msgs:?}"
        );
        let errs = configured("flow.wait", json!({"seconds": 86401}));
        assert_eq!(errs.0[0].message, "seconds must be at most 86400");
    }

    #[test]
    fn params_must_be_an_object() {
        let errs = configured("devices.tap", json!([1]));
        assert_eq!(fields(&errs), [("params", "invalid_type")]);
    }

    #[test]
    fn numeric_object_keys_are_not_indices() {
        let root = json!({"a": {"0": 1}, "b": [[1]]});
        assert_eq!(field_path("params", "/a/0", &root), "params.a.0");
        assert_eq!(field_path("params", "/b/0/0", &root), "params.b[0][0]");
        assert_eq!(field_path("params", "/c~1d", &json!({})), "params.c/d");
    }

    #[test]
    fn schemas_outside_the_catalog() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let errs = check_schema(
            Some(&schema),
            "devices.tap",
            "devices_api",
            &json!({"n": "x", "deviceId": 1}),
            Mode::Resolved,
            "params",
        );
        let mut got = fields(&errs);
        got.sort();
        assert_eq!(
            got,
            [
                ("params.deviceId", "not_allowed"),
                ("params.n", "invalid_type")
            ]
        );
        assert!(
            check_schema(
                None,
                "x.y",
                "integrations_api",
                &json!({"a": 1}),
                Mode::Resolved,
                "params"
            )
            .is_empty()
        );
    }

    #[test]
    fn flow_if_condition_follows_the_condition_grammar() {
        let entry = catalog::by_method("flow.if").unwrap();
        let ok = serde_json::json!({"condition": {"field": "event.payload.n", "op": "gt", "value": "{{ steps.a.body.n }}"}});
        assert!(validate_configured(entry, &ok).is_ok());
        let bad = serde_json::json!({"condition": {"field": "x", "op": "almost"}});
        let errs = validate_configured(entry, &bad).unwrap_err();
        assert!(
            errs.0
                .iter()
                .all(|e| e.code.as_deref() == Some("invalid_condition")),
            "{errs:?}"
        );
        assert!(
            errs.0
                .iter()
                .all(|e| e.field.starts_with("params.condition")),
            "{errs:?}"
        );
    }
}
