//! Template resolution (§5.10): `{{ path }}` tokens inside the string values of step params.
//!
//! Three resolution versions exist per flow (`templateResolutionVersion`):
//!
//! * **1 (legacy)**: missing paths, forbidden paths and null all become `""`; an unclosed `{{`
//!   is literal text; steps are addressed by slug (`{{<slug>.<field>}}` into the body).
//! * **2 (typed)**: missing and forbidden paths are errors, a whole-token null stays null; steps
//!   are addressed by key (`{{<key>.<field>}}` into the body).
//! * **3 (typed, key-based)**: as 2, but steps live under `steps.<key>` as whole records,
//!   `prev`/`results.<n>` are records and the payload aliases do not exist.
//!
//! Resolution runs in two moments. *Pre-resolution* (`late == false`: claim time, dry runs,
//! validate) resolves every token that only needs the roots known before the first step and
//! leaves tokens that reference step outputs or loop variables as their literal `{{…}}` text.
//! *Late* resolution (`late == true`, at step start) resolves everything.
//!
//! Paths follow §5.2 ([`parse_path`]): dot-separated names, array elements by numeric segment
//! or `[n]`.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use crate::conditions::{parse_path, resolve_segments};
use crate::keys::{KEY_PATTERN, RESERVED};
use crate::time::Ts;
use crate::validate::join;

/// A step's record as templates see it: `{status, body, error, startedAt, finishedAt}`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRef {
    /// The step's key (versions 2–3 address steps by it).
    pub key: String,
    /// The slug of the step's display name, without collision suffixes (version 1).
    pub slug: String,
    /// `{status, body, error, startedAt, finishedAt}`.
    pub record: Value,
}

/// Loop variables inside a `flow.for_each` body.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopCtx {
    pub item: Value,
    pub index: usize,
    pub first: bool,
    pub last: bool,
    /// The loop's `itemVariable` (default `item`): `{{<itemVariable>}}` ≡ `{{loop.item}}`.
    pub item_variable: String,
}

impl LoopCtx {
    /// The `loop` root: `{item, index, first, last}`.
    pub fn to_value(&self) -> Value {
        json!({
            "item": self.item,
            "index": self.index,
            "first": self.first,
            "last": self.last,
        })
    }
}

/// Everything a template can see.
#[derive(Debug, Clone, Copy)]
pub struct TemplateScope<'a> {
    /// 1, 2 or 3 (anything else is treated as 3).
    pub version: i64,
    /// Roots as the engine builds them, full objects: `event`, `trigger`, `flow`, `execution`,
    /// `schedule`, `source`, `now`, `chainDepth`, `owner`, `user`. The resolver applies the
    /// forbidden-path rules and the version rules itself (payload aliases only in 1–2, `owner`
    /// and `user` projected to `{id}`, secret-named keys never exposed). Unknown keys are
    /// ignored. A missing `now` is the current time.
    pub roots: &'a Map<String, Value>,
    /// Records of steps that already ran, in execution order (a later entry with the same key
    /// or slug wins, e.g. the current loop iteration's child).
    pub steps: &'a [StepRef],
    /// The previous step's record (v1/v2: `prev.<field>` addresses its body; v3: the record).
    pub prev: Option<&'a Value>,
    /// Top-level step records by index (v1/v2: `results.<n>.<field>` into the body; v3: records).
    pub results: &'a [Value],
    /// Set inside a `flow.for_each` body only.
    pub loop_ctx: Option<&'a LoopCtx>,
    /// `false` = pre-resolution: late tokens stay literal; `true` = everything resolves.
    pub late: bool,
}

/// Why a template did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// An unclosed `{{` or a token whose path is not a valid path (versions 2–3).
    /// Code `invalid_template`.
    InvalidSyntax {
        /// Where in the resolved value the string sits (`url`, `headers.x`, `items[0]`; empty
        /// for a top-level string).
        field: String,
        /// The offending text (the whole string for an unclosed `{{`, else the token).
        text: String,
        /// Human-readable reason.
        reason: String,
    },
    /// A path that does not resolve (versions 2–3). Code `template_error`.
    Missing { field: String, path: String },
    /// A path that addresses a secret (versions 2–3). Code `forbidden_path`; reported as
    /// `template_error` in execution errors (see [`TemplateError::execution_code`]).
    Forbidden { field: String, path: String },
}

impl TemplateError {
    /// The field/validation code: `invalid_template`, `template_error` or `forbidden_path`.
    pub fn code(&self) -> &'static str {
        match self {
            TemplateError::InvalidSyntax { .. } => "invalid_template",
            TemplateError::Missing { .. } => "template_error",
            TemplateError::Forbidden { .. } => "forbidden_path",
        }
    }

    /// The code used in execution errors (`"<code>: <message>"`, step failures): always
    /// `template_error`.
    pub fn execution_code(&self) -> &'static str {
        "template_error"
    }

    /// A human-readable message (no location; see [`TemplateError::field`]).
    pub fn message(&self) -> String {
        match self {
            TemplateError::InvalidSyntax { reason, .. } => reason.clone(),
            TemplateError::Missing { path, .. } => {
                format!("template path '{path}' does not resolve")
            }
            TemplateError::Forbidden { path, .. } => {
                format!(
                    "template path '{path}' is forbidden: secrets are never exposed to templates"
                )
            }
        }
    }

    /// Where in the resolved value the failing string sits, with bracketed indices
    /// (`headers.Authorization`, `items[0]`); empty when the value itself is the string.
    pub fn field(&self) -> &str {
        match self {
            TemplateError::InvalidSyntax { field, .. }
            | TemplateError::Missing { field, .. }
            | TemplateError::Forbidden { field, .. } => field,
        }
    }

    /// The template path (or offending text for syntax errors).
    pub fn path(&self) -> &str {
        match self {
            TemplateError::InvalidSyntax { text, .. } => text,
            TemplateError::Missing { path, .. } | TemplateError::Forbidden { path, .. } => path,
        }
    }

    fn with_field(mut self, at: &str) -> Self {
        match &mut self {
            TemplateError::InvalidSyntax { field, .. }
            | TemplateError::Missing { field, .. }
            | TemplateError::Forbidden { field, .. } => *field = at.to_string(),
        }
        self
    }
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for TemplateError {}

// ---------------------------------------------------------------------------------------
// Names and rules
// ---------------------------------------------------------------------------------------

/// Segment names that are never exposed under `flow`, `trigger` and `execution`.
pub const FORBIDDEN_SEGMENTS: [&str; 8] = [
    "apiKey",
    "apiKeys",
    "secret",
    "secrets",
    "signingSecret",
    "credentials",
    "password",
    "token",
];

/// Roots whose values exist before the first step, per version (v1–2 add the `payload` alias).
const EARLY_ROOTS: [&str; 10] = [
    "event",
    "trigger",
    "flow",
    "execution",
    "schedule",
    "source",
    "now",
    "chainDepth",
    "owner",
    "user",
];

/// Roots that only exist once steps ran or inside a loop.
const LATE_ROOTS: [&str; 3] = ["prev", "results", "loop"];

/// The version actually applied: 1, 2, or 3 for anything else.
fn norm(version: i64) -> i64 {
    match version {
        1 | 2 => version,
        _ => 3,
    }
}

fn is_forbidden_segment(s: &str) -> bool {
    // Case-insensitive: `Token` or `APIKEY` is just as secret.
    FORBIDDEN_SEGMENTS.iter().any(|f| f.eq_ignore_ascii_case(s))
}

/// Whether a parsed path addresses a secret (§5.10 forbidden paths). Static: it does not
/// depend on the values.
fn is_forbidden(segs: &[String], version: i64) -> bool {
    let rest = &segs[1..];
    match segs[0].as_str() {
        "owner" | "user" => rest.first().is_some_and(|s| s != "id"),
        "flow" | "execution" => rest.iter().any(|s| is_forbidden_segment(s)),
        "trigger" => {
            if norm(version) < 3 && rest.first().is_some_and(|s| s == "payload") {
                // The payload alias is user data.
                false
            } else {
                rest.iter().any(|s| is_forbidden_segment(s))
            }
        }
        _ => false,
    }
}

/// Whether a root name of this version (v1–2 root names win over step keys/slugs).
fn is_root_name(name: &str, version: i64) -> bool {
    EARLY_ROOTS.contains(&name)
        || LATE_ROOTS.contains(&name)
        || (norm(version) < 3 && name == "payload")
        || (norm(version) == 3 && name == "steps")
}

/// Whether a token stays literal in pre-resolution: it references step outputs (`steps`,
/// `prev`, `results`, v1–2 step slugs/keys), loop variables or anything that is not a root
/// available before the first step (the loop's item variable included, whose name is only
/// known inside the loop).
fn is_late(segs: &[String], version: i64) -> bool {
    let first = segs[0].as_str();
    let early = EARLY_ROOTS.contains(&first) || (norm(version) < 3 && first == "payload");
    !early
}

// ---------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Piece<'s> {
    Text(&'s str),
    /// `raw` = the token as written (`{{ a.b }}`), `path` = its trimmed inside.
    Token {
        raw: &'s str,
        path: &'s str,
    },
}

/// Splits a string into text and tokens. A blank token (`{{ }}`) is text. An unclosed `{{`
/// is text in version 1 and an error in 2–3.
fn tokenize(s: &str, version: i64) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(rel) = s[pos..].find("{{") {
        let open = pos + rel;
        let Some(close_rel) = s[open + 2..].find("}}") else {
            if norm(version) == 1 {
                break;
            }
            return Err(TemplateError::InvalidSyntax {
                field: String::new(),
                text: s.to_string(),
                reason: format!("unclosed '{{{{' in template '{s}'"),
            });
        };
        let close = open + 2 + close_rel;
        let end = close + 2;
        let inner = s[open + 2..close].trim();
        if open > pos {
            out.push(Piece::Text(&s[pos..open]));
        }
        if inner.is_empty() {
            out.push(Piece::Text(&s[open..end]));
        } else {
            out.push(Piece::Token {
                raw: &s[open..end],
                path: inner,
            });
        }
        pos = end;
    }
    if pos < s.len() {
        out.push(Piece::Text(&s[pos..]));
    }
    Ok(out)
}

fn invalid_path(raw: &str) -> TemplateError {
    TemplateError::InvalidSyntax {
        field: String::new(),
        text: raw.to_string(),
        reason: format!(
            "'{raw}' is not a valid template path (dot-separated names, [n] for indices)"
        ),
    }
}

/// Where a string sits inside a value (`a.b[2]`), kept as a chain of borrowed steps and
/// written out only when an error names it: walking a value then allocates nothing.
#[derive(Clone, Copy)]
enum Loc<'a> {
    Root,
    Key(&'a Loc<'a>, &'a str),
    Index(&'a Loc<'a>, usize),
}

impl Loc<'_> {
    fn text(&self) -> String {
        match self {
            Loc::Root => String::new(),
            Loc::Key(parent, key) => join(&parent.text(), key),
            Loc::Index(parent, i) => format!("{}[{i}]", parent.text()),
        }
    }
}

/// Calls `f` with every string inside `value` and its location.
fn walk_strings<E>(
    value: &Value,
    at: &Loc<'_>,
    f: &mut dyn FnMut(&str, &Loc<'_>) -> Result<(), E>,
) -> Result<(), E> {
    match value {
        Value::String(s) => f(s, at),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk_strings(v, &Loc::Index(at, i), f)?;
            }
            Ok(())
        }
        Value::Object(m) => {
            for (k, v) in m {
                walk_strings(v, &Loc::Key(at, k), f)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------------------

/// Why a path did not give a value.
enum Fail {
    Missing,
    Forbidden,
}

/// Resolves every `{{ path }}` inside any string of `value` (objects and arrays recursively;
/// keys never). Errors carry the location of the failing string in [`TemplateError::field`].
pub fn resolve(value: &Value, scope: &TemplateScope) -> Result<Value, TemplateError> {
    resolve_at(value, scope, &Loc::Root)
}

fn resolve_at(value: &Value, scope: &TemplateScope, at: &Loc<'_>) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(s) => resolve_string(s, scope).map_err(|e| e.with_field(&at.text()))?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| resolve_at(v, scope, &Loc::Index(at, i)))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                out.insert(k.clone(), resolve_at(v, scope, &Loc::Key(at, k))?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Resolves the tokens of one string: a whole token takes the JSON type of its value, tokens
/// inside longer text are interpolated.
pub fn resolve_string(s: &str, scope: &TemplateScope) -> Result<Value, TemplateError> {
    let pieces = tokenize(s, scope.version)?;
    if let [Piece::Token { raw, path }] = pieces.as_slice()
        && raw.len() == s.len()
    {
        return Ok(match resolve_token(raw, path, scope)? {
            Some(v) => v.into_owned(),
            None => Value::String(s.to_string()),
        });
    }
    let mut out = String::with_capacity(s.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Token { raw, path } => match resolve_token(raw, path, scope)? {
                Some(v) => render_into(&mut out, &v),
                None => out.push_str(raw),
            },
        }
    }
    Ok(Value::String(out))
}

/// Text form of an interpolated value: strings raw, numbers/booleans as JSON text,
/// objects/arrays as compact JSON, null as empty text.
fn render_into(out: &mut String, v: &Value) {
    match v {
        Value::Null => {}
        Value::String(s) => out.push_str(s),
        other => out.push_str(&other.to_string()),
    }
}

/// One token's value; `None` = stays literal (a late token in pre-resolution). Applies the
/// version's policy: v1 turns missing, forbidden, invalid and null into `""`.
fn resolve_token<'a>(
    raw: &str,
    path: &str,
    scope: &TemplateScope<'a>,
) -> Result<Option<Cow<'a, Value>>, TemplateError> {
    let v1 = norm(scope.version) == 1;
    let empty = || Some(Cow::Owned(Value::String(String::new())));
    let Some(segs) = parse_path(path) else {
        return if v1 {
            Ok(empty())
        } else {
            Err(invalid_path(raw))
        };
    };
    if !scope.late && is_late(&segs, scope.version) {
        return Ok(None);
    }
    match lookup(&segs, scope) {
        Ok(v) if v1 && v.is_null() => Ok(empty()),
        Ok(v) => Ok(Some(v)),
        Err(_) if v1 => Ok(empty()),
        Err(Fail::Missing) => Err(TemplateError::Missing {
            field: String::new(),
            path: path.to_string(),
        }),
        Err(Fail::Forbidden) => Err(TemplateError::Forbidden {
            field: String::new(),
            path: path.to_string(),
        }),
    }
}

fn found<'a>(v: Option<&'a Value>) -> Result<Cow<'a, Value>, Fail> {
    v.map(Cow::Borrowed).ok_or(Fail::Missing)
}

fn sub<'a>(root: Option<&'a Value>, rest: &[String]) -> Result<Cow<'a, Value>, Fail> {
    found(root.and_then(|r| resolve_segments(r, rest)))
}

/// A copy of `v` without any key named like a secret, at any depth.
fn strip_secrets(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !is_forbidden_segment(k))
                .map(|(k, v)| (k.clone(), strip_secrets(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_secrets).collect()),
        other => other.clone(),
    }
}

fn has_secrets(v: &Value) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| is_forbidden_segment(k) || has_secrets(v)),
        Value::Array(items) => items.iter().any(has_secrets),
        _ => false,
    }
}

/// `v` with secret-named keys removed, borrowed when there are none.
fn sanitized(v: Cow<'_, Value>) -> Cow<'_, Value> {
    if has_secrets(&v) {
        Cow::Owned(strip_secrets(&v))
    } else {
        v
    }
}

/// The body of a step record (v1/v2 addressing).
fn body(record: &Value) -> Option<&Value> {
    record.get("body")
}

fn lookup<'a>(segs: &[String], scope: &TemplateScope<'a>) -> Result<Cow<'a, Value>, Fail> {
    let version = norm(scope.version);
    let v3 = version == 3;
    if is_forbidden(segs, version) {
        return Err(Fail::Forbidden);
    }
    let first = segs[0].as_str();
    let rest = &segs[1..];
    let roots = scope.roots;
    let event_payload = || roots.get("event").and_then(|e| e.get("payload"));
    if is_root_name(first, version) {
        return match first {
            "payload" => sub(event_payload(), rest),
            "trigger" if !v3 && rest.first().is_some_and(|s| s == "payload") => {
                sub(event_payload(), &rest[1..])
            }
            "trigger" if rest.is_empty() => {
                let Some(t) = roots.get("trigger") else {
                    return Err(Fail::Missing);
                };
                let mut t = strip_secrets(t);
                if let Value::Object(m) = &mut t {
                    m.remove("payload");
                    if !v3 {
                        m.insert(
                            "payload".to_string(),
                            event_payload().cloned().unwrap_or(Value::Null),
                        );
                    }
                }
                Ok(Cow::Owned(t))
            }
            "trigger" if v3 && rest.first().is_some_and(|s| s == "payload") => Err(Fail::Missing),
            "trigger" | "flow" | "execution" => sub(roots.get(first), rest).map(sanitized),
            "owner" | "user" => match roots.get(first) {
                // `{{owner}}` / `{{user}}`: only the id is visible.
                Some(Value::Object(m)) if rest.is_empty() => {
                    let mut o = Map::new();
                    if let Some(id) = m.get("id") {
                        o.insert("id".to_string(), id.clone());
                    }
                    Ok(Cow::Owned(Value::Object(o)))
                }
                r => sub(r, rest),
            },
            "now" => match roots.get("now") {
                Some(n) => sub(Some(n), rest),
                None if rest.is_empty() => Ok(Cow::Owned(Value::String(Ts::now().to_rfc3339()))),
                None => Err(Fail::Missing),
            },
            "steps" => match rest.split_first() {
                None => {
                    let mut m = Map::new();
                    for s in scope.steps {
                        m.insert(s.key.clone(), s.record.clone());
                    }
                    Ok(Cow::Owned(Value::Object(m)))
                }
                Some((key, rest)) => {
                    let record = scope.steps.iter().rev().find(|s| &s.key == key);
                    sub(record.map(|s| &s.record), rest)
                }
            },
            "prev" => {
                let prev = if v3 {
                    scope.prev
                } else {
                    scope.prev.and_then(body)
                };
                sub(prev, rest)
            }
            "results" => match rest.split_first() {
                None => Ok(Cow::Owned(Value::Array(
                    scope
                        .results
                        .iter()
                        .map(|r| {
                            if v3 {
                                r.clone()
                            } else {
                                body(r).cloned().unwrap_or(Value::Null)
                            }
                        })
                        .collect(),
                ))),
                Some((n, rest)) => {
                    let record = n.parse::<usize>().ok().and_then(|n| scope.results.get(n));
                    let target = if v3 { record } else { record.and_then(body) };
                    sub(target, rest)
                }
            },
            "loop" => {
                let Some(l) = scope.loop_ctx else {
                    return Err(Fail::Missing);
                };
                match rest.split_first() {
                    None => Ok(Cow::Owned(l.to_value())),
                    Some((name, rest)) => match name.as_str() {
                        "item" => sub(Some(&l.item), rest),
                        "index" | "first" | "last" if rest.is_empty() => {
                            Ok(Cow::Owned(l.to_value()[name.as_str()].clone()))
                        }
                        _ => Err(Fail::Missing),
                    },
                }
            }
            // event, schedule, source, chainDepth
            _ => sub(roots.get(first), rest),
        };
    }
    if let Some(l) = scope.loop_ctx
        && l.item_variable == first
    {
        return sub(Some(&l.item), rest);
    }
    let step = match version {
        1 => scope.steps.iter().rev().find(|s| s.slug == first),
        2 => scope.steps.iter().rev().find(|s| s.key == first),
        _ => None,
    };
    sub(step.map(|s| &s.record).and_then(body), rest)
}

// ---------------------------------------------------------------------------------------
// Static checks
// ---------------------------------------------------------------------------------------

/// How a value's templates depend on the run: [`Dependence::late`] when some token
/// references step outputs, loop variables or anything else not known before step one (such
/// a token stays literal in pre-resolution); [`Dependence::moving`] when some token may
/// resolve differently from one step to the next (late tokens and `now`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dependence {
    pub late: bool,
    pub moving: bool,
}

/// One scan of `value`'s strings for [`Dependence`]. Lenient: an unclosed `{{` ends a
/// string's scan and a token that is not a path counts as moving (both are judged by
/// `resolve`).
pub fn dependence(value: &Value, version: i64) -> Dependence {
    let mut dep = Dependence::default();
    let _ = walk_strings::<()>(value, &Loc::Root, &mut |s, _| {
        if !s.contains("{{") {
            return Ok(());
        }
        for piece in tokenize(s, 1).unwrap_or_default() {
            let Piece::Token { path, .. } = piece else {
                continue;
            };
            match parse_path(path) {
                Some(segs) if is_late(&segs, version) => {
                    dep.late = true;
                    dep.moving = true;
                }
                Some(segs) if segs[0] == "now" => dep.moving = true,
                Some(_) => {}
                None => dep.moving = true,
            }
        }
        // Nothing more to learn once both are set.
        if dep.late { Err(()) } else { Ok(()) }
    });
    dep
}

/// Whether any token in `value` stays literal in pre-resolution (see [`Dependence::late`]).
pub fn has_late_refs(value: &Value, version: i64) -> bool {
    dependence(value, version).late
}

/// Whether `value` resolves the same at every step of a run: no late token (see
/// [`has_late_refs`]) and none of `now`, the one root that moves from step to step.
pub fn is_fixed_for_run(value: &Value, version: i64) -> bool {
    !dependence(value, version).moving
}

/// Step references for `POST /flows/validate`: the keys named by `steps.<key>…` tokens in
/// `value`, one entry per token in order of appearance (duplicates kept), for version 3.
/// Versions 1–2 have no `steps` root and give an empty list. Fails with the first syntax
/// error (`invalid_template`) or forbidden path (`forbidden_path`).
pub fn step_references(value: &Value, version: i64) -> Result<Vec<String>, TemplateError> {
    let mut refs = Vec::new();
    walk_strings(value, &Loc::Root, &mut |s, at| {
        for piece in tokenize(s, version).map_err(|e| e.with_field(&at.text()))? {
            let Piece::Token { raw, path } = piece else {
                continue;
            };
            let Some(segs) = parse_path(path) else {
                if norm(version) == 1 {
                    continue;
                }
                return Err(invalid_path(raw).with_field(&at.text()));
            };
            if is_forbidden(&segs, version) {
                if norm(version) == 1 {
                    continue;
                }
                return Err(TemplateError::Forbidden {
                    field: at.text(),
                    path: path.to_string(),
                });
            }
            if norm(version) == 3 && segs[0] == "steps" && segs.len() > 1 {
                refs.push(segs[1].clone());
            }
        }
        Ok(())
    })?;
    Ok(refs)
}

/// Every static template problem of `value` for a version: syntax errors (`invalid_template`)
/// and forbidden paths (`forbidden_path`), each with its location. Version 1 has none (it
/// resolves both to `""`).
pub fn check(value: &Value, version: i64) -> Vec<TemplateError> {
    let mut errs = Vec::new();
    if norm(version) == 1 {
        return errs;
    }
    let _ = walk_strings::<()>(value, &Loc::Root, &mut |s, at| {
        match tokenize(s, version) {
            Err(e) => errs.push(e.with_field(&at.text())),
            Ok(pieces) => {
                for piece in pieces {
                    let Piece::Token { raw, path } = piece else {
                        continue;
                    };
                    match parse_path(path) {
                        None => errs.push(invalid_path(raw).with_field(&at.text())),
                        Some(segs) if is_forbidden(&segs, version) => {
                            errs.push(TemplateError::Forbidden {
                                field: at.text(),
                                path: path.to_string(),
                            })
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        Ok(())
    });
    errs
}

// ---------------------------------------------------------------------------------------
// GET /flows/template-context
// ---------------------------------------------------------------------------------------

fn nullable(shape: Value) -> Value {
    json!({"anyOf": [shape, {"type": "null"}]})
}

fn record_shape() -> Value {
    json!({
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["pending", "running", "success", "failed", "skipped", "cancelled"]},
            "body": {"description": "the method's output (catalog outputSchema); null until success"},
            "error": {"type": ["string", "null"]},
            "startedAt": {"type": ["string", "null"], "format": "date-time"},
            "finishedAt": {"type": ["string", "null"], "format": "date-time"}
        }
    })
}

fn root(name: &str, description: &str, shape: Value) -> Value {
    json!({"name": name, "description": description, "shape": shape})
}

/// The `TemplateContext` of `GET /flows/template-context` for a version (1, 2 or 3; anything
/// else is 3).
pub fn template_context(version: i64) -> Value {
    let version = norm(version);
    let v3 = version == 3;
    let s = || json!({"type": "string"});
    let ns = || json!({"type": ["string", "null"]});
    let dt = || json!({"type": "string", "format": "date-time"});

    let mut trigger_props = json!({
        "id": s(),
        "name": s(),
        "activation": {"type": "string", "enum": ["event", "schedule", "custom"]},
        "eventType": ns(),
    });
    if !v3 {
        trigger_props["payload"] =
            json!({"type": "object", "description": "alias of event.payload"});
    }
    let body_any = json!({"description": "the step's body (any JSON)"});

    let mut roots = vec![
        root(
            "event",
            "The event that caused the execution (simulated for dry runs; custom payload for fire and run).",
            json!({"type": "object", "properties": {
                "id": ns(),
                "eventType": ns(),
                "deviceId": ns(),
                "payload": {"type": "object"},
                "receivedAt": dt(),
            }}),
        ),
        root(
            "trigger",
            if v3 {
                "The flow's trigger."
            } else {
                "The flow's trigger; trigger.payload is an alias of event.payload."
            },
            json!({"type": "object", "properties": trigger_props}),
        ),
        root(
            "flow",
            "The flow being executed.",
            json!({"type": "object", "properties": {
                "id": s(),
                "name": s(),
                "description": ns(),
                "deviceIds": {"type": "array", "items": s()},
                "templateResolutionVersion": {"type": "integer"},
            }}),
        ),
        root(
            "execution",
            "The execution row.",
            json!({"type": "object", "properties": {
                "id": s(),
                "kind": {"type": "string", "enum": ["live", "dry_run", "verification"]},
                "deviceId": ns(),
                "invocationId": ns(),
                "eventId": ns(),
                "startedAt": dt(),
                "attempt": {"type": "integer"},
                "device": nullable(json!({"type": "object", "properties": {
                    "id": s(), "name": s(), "provider": s(), "address": ns(),
                }})),
            }}),
        ),
    ];
    if v3 {
        roots.push(root(
            "steps",
            "Records of the steps that already ran, by key: {{steps.<key>.body.<field>}}. Inside a loop, a child's record is the current iteration's; after the loop, the last iteration's.",
            json!({"type": "object", "additionalProperties": record_shape()}),
        ));
    }
    roots.push(root(
        "prev",
        if v3 {
            "The previous step's record."
        } else {
            "The previous step's body: {{prev.<field>}}."
        },
        if v3 {
            nullable(record_shape())
        } else {
            body_any.clone()
        },
    ));
    roots.push(root(
        "results",
        if v3 {
            "Records of the top-level steps by index: {{results.<n>.body.<field>}}."
        } else {
            "Bodies of the top-level steps by index: {{results.<n>.<field>}}."
        },
        json!({"type": "array", "items": if v3 { record_shape() } else { body_any }}),
    ));
    roots.push(root(
        "loop",
        "Loop variables, inside a flow.for_each body only; the loop's itemVariable (default \"item\") is an alias of loop.item.",
        json!({"type": "object", "properties": {
            "item": {"description": "the current item (any JSON)"},
            "index": {"type": "integer", "minimum": 0},
            "first": {"type": "boolean"},
            "last": {"type": "boolean"},
        }}),
    ));
    roots.push(root(
        "schedule",
        "The schedule fire that caused the execution; null unless the trigger is a schedule.",
        nullable(json!({"type": "object", "properties": {
            "triggerId": s(),
            "nominalTime": dt(),
            "fireTime": dt(),
        }})),
    ));
    roots.push(root(
        "source",
        "What started the execution.",
        json!({"type": "string", "enum": ["event", "schedule", "custom", "run", "verification"]}),
    ));
    roots.push(root(
        "now",
        "The current time (RFC 3339) at resolution.",
        dt(),
    ));
    roots.push(root(
        "chainDepth",
        "How many flow executions led to this one.",
        json!({"type": "integer", "minimum": 0}),
    ));
    roots.push(root(
        "owner",
        "The owner (tenant); only owner.id is readable.",
        json!({"type": "object", "properties": {"id": s()}}),
    ));
    roots.push(root(
        "user",
        "The actor whose call caused the execution (null for scheduled rows); only user.id is readable.",
        nullable(json!({"type": "object", "properties": {"id": s()}})),
    ));

    let grammar = format!(
        "{{{{ path }}}} inside any string value of params (nested objects and arrays included; keys are never \
         resolved). Whitespace inside the braces is ignored. A path is dot-separated; array elements by numeric \
         segment or [n] (items.0.name == items[0].name). A string that is exactly one token takes the JSON type of \
         the resolved value; tokens inside longer text are interpolated (strings raw, numbers/booleans as JSON \
         text, objects/arrays as compact JSON, null as empty text). {}",
        match version {
            1 =>
                "Version 1 (legacy): an unclosed {{ is literal text; a missing path, a forbidden path and null all resolve to \"\".",
            2 =>
                "Version 2 (typed): an unclosed {{ is an invalid_template error; a missing or forbidden path is a template_error; a whole-token null stays null.",
            _ =>
                "Version 3 (typed, key-based): an unclosed {{ is an invalid_template error; a missing or forbidden path is a template_error; a whole-token null stays null.",
        }
    );

    let forbidden_note = "Forbidden: anything under owner or user other than .id; any segment named apiKey, \
                          apiKeys, secret, secrets, signingSecret, credentials, password or token under flow, \
                          trigger or execution.";
    let (pattern, note) = match version {
        1 => (
            "{{<slug>.<field>}}",
            format!(
                "Steps are addressed by the slug of their display name, into the step's body; prev.<field> and \
                 results.<n>.<field> address bodies too; payload.* and trigger.payload.* alias event.payload.*. \
                 Root names win over slugs of the same name. {forbidden_note}"
            ),
        ),
        2 => (
            "{{<key>.<field>}}",
            format!(
                "Steps are addressed by key, into the step's body; prev.<field> and results.<n>.<field> address \
                 bodies too; payload.* and trigger.payload.* alias event.payload.*. Root names win over step keys \
                 of the same name. {forbidden_note}"
            ),
        ),
        _ => (
            "{{steps.<key>.body.<field>}}",
            format!(
                "steps.<key> is the step's record {{status, body, error, startedAt, finishedAt}}; prev and \
                 results.<n> are records; the event payload is event.payload.* (no payload or trigger.payload \
                 aliases). {forbidden_note}"
            ),
        ),
    };
    let key_rule = (version >= 2).then(|| {
        format!(
            "{KEY_PATTERN}; reserved words: {}, and anything starting with __; unique across the flow",
            RESERVED.join(", ")
        )
    });
    let slug_rule = (version == 1).then(|| {
        "the display name (nameOverride, else the action's name) lowercased; each run of characters outside \
         [a-z0-9] becomes -; leading and trailing - trimmed; a leading digit gets a _ prefix; empty becomes step; \
         at most 64 characters (no collision suffixes)"
            .to_string()
    });

    json!({
        "templateResolutionVersion": version,
        "grammar": grammar,
        "roots": roots,
        "payloadAliases": if v3 { json!([]) } else { json!(["payload", "trigger.payload"]) },
        "stepReference": {
            "pattern": pattern,
            "note": note,
            "keyRule": key_rule,
            "slugRule": slug_rule,
        },
        "loop": {
            "name": "loop",
            "itemVariableDefault": "item",
            "context": ["item", "index", "first", "last"],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Map<String, Value> {
        json!({
            "event": {
                "id": "ev1", "eventType": "app.opened", "deviceId": "d1",
                "payload": {"n": 5, "ok": true, "obj": {"a": [1, 2]}, "nil": null, "name": "Bob",
                            "items": [{"x": "first"}, {"x": "second"}], "token": "user-data"},
                "receivedAt": "2026-01-01T00:00:00.000Z"
            },
            "trigger": {"id": "t1", "name": "T", "activation": "event", "eventType": "app.opened",
                        "signingSecret": "shh", "payload": {"stale": true}},
            "flow": {"id": "f1", "name": "F", "description": null, "deviceIds": ["d1"],
                     "templateResolutionVersion": 3, "apiKey": "sk"},
            "execution": {"id": "x1", "kind": "live", "deviceId": "d1", "attempt": 1,
                          "device": {"id": "d1", "name": "Pixel", "provider": "p", "address": null,
                                     "credentials": {"password": "pw"}}},
            "schedule": null,
            "source": "event",
            "now": "2026-01-01T00:00:01.000Z",
            "chainDepth": 0,
            "owner": {"id": "own", "email": "o@example.com"},
            "user": {"id": "usr", "apiKeys": ["k"]}
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn steps() -> Vec<StepRef> {
        vec![
            StepRef {
                key: "open_app".into(),
                slug: "open-app".into(),
                record: json!({"status": "success", "body": {"pkg": "com.x", "count": 2},
                               "error": null, "startedAt": "s", "finishedAt": "f"}),
            },
            StepRef {
                key: "event_2".into(),
                slug: "event".into(),
                record: json!({"status": "success", "body": {"shadow": true}, "error": null,
                               "startedAt": null, "finishedAt": null}),
            },
            StepRef {
                key: "open_app".into(),
                slug: "open-app".into(),
                record: json!({"status": "failed", "body": null, "error": "logic: nope",
                               "startedAt": "s2", "finishedAt": "f2"}),
            },
        ]
    }

    struct Fx {
        roots: Map<String, Value>,
        steps: Vec<StepRef>,
        results: Vec<Value>,
        prev: Value,
        lp: LoopCtx,
    }

    fn fx() -> Fx {
        let steps = steps();
        let results: Vec<Value> = steps.iter().map(|s| s.record.clone()).collect();
        Fx {
            roots: roots(),
            prev: steps[0].record.clone(),
            results,
            steps,
            lp: LoopCtx {
                item: json!({"name": "it"}),
                index: 1,
                first: false,
                last: true,
                item_variable: "row".into(),
            },
        }
    }

    impl Fx {
        fn scope(&self, version: i64, late: bool, in_loop: bool) -> TemplateScope<'_> {
            TemplateScope {
                version,
                roots: &self.roots,
                steps: &self.steps,
                prev: Some(&self.prev),
                results: &self.results,
                loop_ctx: in_loop.then_some(&self.lp),
                late,
            }
        }
        fn r(&self, version: i64, s: &str) -> Result<Value, TemplateError> {
            resolve(&json!(s), &self.scope(version, true, true))
        }
        fn ok(&self, version: i64, s: &str) -> Value {
            self.r(version, s)
                .unwrap_or_else(|e| panic!("v{version} {s}: {e}"))
        }
        fn code(&self, version: i64, s: &str) -> &'static str {
            self.r(version, s).expect_err(s).code()
        }
    }

    #[test]
    fn whole_tokens_are_typed() {
        let f = fx();
        for v in [1, 2, 3] {
            assert_eq!(f.ok(v, "{{event.payload.n}}"), json!(5));
            assert_eq!(f.ok(v, "{{ event.payload.ok }}"), json!(true));
            assert_eq!(f.ok(v, "{{event.payload.obj}}"), json!({"a": [1, 2]}));
            assert_eq!(f.ok(v, "{{event.payload.obj.a[1]}}"), json!(2));
            assert_eq!(f.ok(v, "{{event.payload.items.0.x}}"), json!("first"));
            assert_eq!(f.ok(v, "{{chainDepth}}"), json!(0));
            assert_eq!(f.ok(v, "{{now}}"), json!("2026-01-01T00:00:01.000Z"));
            assert_eq!(f.ok(v, "{{source}}"), json!("event"));
            assert_eq!(
                f.ok(v, "{{schedule}}"),
                if v == 1 { json!("") } else { Value::Null }
            );
        }
        assert_eq!(f.ok(1, "{{event.payload.nil}}"), json!(""));
        assert_eq!(f.ok(2, "{{event.payload.nil}}"), Value::Null);
        assert_eq!(f.ok(3, "{{event.payload.nil}}"), Value::Null);
        // Exactly one token: surrounding text (even a space) makes it interpolation.
        assert_eq!(f.ok(3, " {{event.payload.n}}"), json!(" 5"));
    }

    #[test]
    fn interpolation_renders_text() {
        let f = fx();
        for v in [1, 2, 3] {
            assert_eq!(
                f.ok(v, "n={{event.payload.n}} ok={{event.payload.ok}} o={{event.payload.obj}} nil=[{{event.payload.nil}}] name={{event.payload.name}}"),
                json!(r#"n=5 ok=true o={"a":[1,2]} nil=[] name=Bob"#)
            );
            assert_eq!(
                f.ok(v, "{{}} and {{  }} stay"),
                json!("{{}} and {{  }} stay")
            );
            assert_eq!(f.ok(v, "no tokens } {"), json!("no tokens } {"));
            assert_eq!(f.ok(v, "{{source}}}"), json!("event}"));
        }
    }

    #[test]
    fn missing_paths_per_version() {
        let f = fx();
        assert_eq!(f.ok(1, "{{event.payload.nope}}"), json!(""));
        assert_eq!(f.ok(1, "a{{nope.x}}b"), json!("ab"));
        assert_eq!(f.ok(1, "{{schedule.triggerId}}"), json!(""));
        for v in [2, 3] {
            let e = f.r(v, "{{event.payload.nope}}").unwrap_err();
            assert_eq!(e.code(), "template_error");
            assert_eq!(e.path(), "event.payload.nope");
            assert!(e.message().contains("event.payload.nope"));
            assert_eq!(f.code(v, "x {{nope}}"), "template_error");
            assert_eq!(f.code(v, "{{event.payload.items[5]}}"), "template_error");
            assert_eq!(f.code(v, "{{now.x}}"), "template_error");
        }
    }

    #[test]
    fn forbidden_paths_per_version() {
        let f = fx();
        let forbidden = [
            "{{owner.email}}",
            "{{user.apiKeys}}",
            "{{flow.apiKey}}",
            "{{trigger.signingSecret}}",
            "{{execution.device.credentials}}",
            "{{execution.device.credentials.password}}",
            "{{flow.TOKEN}}",
        ];
        for p in forbidden {
            assert_eq!(f.ok(1, p), json!(""), "{p}");
            for v in [2, 3] {
                let e = f.r(v, p).unwrap_err();
                assert_eq!(e.code(), "forbidden_path", "{p}");
                assert_eq!(e.execution_code(), "template_error");
            }
        }
        for v in [1, 2, 3] {
            assert_eq!(f.ok(v, "{{owner.id}}"), json!("own"));
            assert_eq!(f.ok(v, "{{user.id}}"), json!("usr"));
            // Whole objects only show what is readable.
            assert_eq!(f.ok(v, "{{owner}}"), json!({"id": "own"}));
            assert_eq!(f.ok(v, "{{user}}"), json!({"id": "usr"}));
            assert!(f.ok(v, "{{flow}}").get("apiKey").is_none());
            assert_eq!(f.ok(v, "{{execution.device}}")["name"], json!("Pixel"));
            assert!(f.ok(v, "{{execution.device}}").get("credentials").is_none());
            assert!(f.ok(v, "{{trigger}}").get("signingSecret").is_none());
            // Payloads are user data.
            assert_eq!(f.ok(v, "{{event.payload.token}}"), json!("user-data"));
        }
        assert_eq!(f.ok(2, "{{payload.token}}"), json!("user-data"));
        assert_eq!(f.ok(1, "{{trigger.payload.token}}"), json!("user-data"));
    }

    #[test]
    fn unclosed_braces_per_version() {
        let f = fx();
        assert_eq!(
            f.ok(1, "a {{ event.payload.n"),
            json!("a {{ event.payload.n")
        );
        assert_eq!(
            f.ok(1, "{{source}} then {{ open"),
            json!("event then {{ open")
        );
        for v in [2, 3] {
            assert_eq!(f.code(v, "a {{ event.payload.n"), "invalid_template");
            assert_eq!(f.code(v, "{{source}} then {{ open"), "invalid_template");
            assert_eq!(f.code(v, "{{ a..b }}"), "invalid_template");
            assert_eq!(f.code(v, "{{ a[x] }}"), "invalid_template");
        }
        assert_eq!(f.ok(1, "{{ a..b }}"), json!(""));
    }

    #[test]
    fn payload_aliases_only_in_v1_v2() {
        let f = fx();
        for v in [1, 2] {
            assert_eq!(f.ok(v, "{{payload.name}}"), json!("Bob"));
            assert_eq!(f.ok(v, "{{trigger.payload.name}}"), json!("Bob"));
            // trigger.payload is the event's payload, not whatever the engine put in trigger.
            assert_eq!(f.ok(v, "{{trigger}}")["payload"]["name"], json!("Bob"));
        }
        assert_eq!(f.code(3, "{{payload.name}}"), "template_error");
        assert_eq!(f.code(3, "{{trigger.payload.name}}"), "template_error");
        assert_eq!(f.code(3, "{{trigger.payload}}"), "template_error");
        assert!(f.ok(3, "{{trigger}}").get("payload").is_none());
        assert_eq!(f.ok(3, "{{trigger.name}}"), json!("T"));
    }

    #[test]
    fn v1_addresses_steps_by_slug() {
        let f = fx();
        // The later record with the same slug wins (its body is null).
        assert_eq!(f.ok(1, "{{open-app}}"), json!(""));
        assert_eq!(f.ok(1, "{{open_app.pkg}}"), json!(""));
        // Root names win over slugs.
        assert_eq!(f.ok(1, "{{event.id}}"), json!("ev1"));
        let one = &f.steps[..1];
        let scope = TemplateScope {
            steps: one,
            ..f.scope(1, true, false)
        };
        assert_eq!(
            resolve(&json!("{{open-app.pkg}}"), &scope).unwrap(),
            json!("com.x")
        );
        assert_eq!(
            resolve(&json!("{{open-app.count}}"), &scope).unwrap(),
            json!(2)
        );
        assert_eq!(
            resolve(&json!("n={{open-app.count}}"), &scope).unwrap(),
            json!("n=2")
        );
    }

    #[test]
    fn v2_addresses_steps_by_key() {
        let f = fx();
        let one = &f.steps[..2];
        let scope = TemplateScope {
            steps: one,
            ..f.scope(2, true, false)
        };
        assert_eq!(
            resolve(&json!("{{open_app.pkg}}"), &scope).unwrap(),
            json!("com.x")
        );
        assert_eq!(
            resolve(&json!("{{event_2.shadow}}"), &scope).unwrap(),
            json!(true)
        );
        assert_eq!(
            resolve(&json!("{{open-app.pkg}}"), &scope)
                .unwrap_err()
                .code(),
            "template_error"
        );
        // Later record wins: body null → whole token null; a field of it is missing.
        assert_eq!(f.ok(2, "{{open_app}}"), Value::Null);
        assert_eq!(f.code(2, "{{open_app.pkg}}"), "template_error");
        // Keys are not a v3 addressing scheme.
        assert_eq!(f.code(3, "{{open_app.pkg}}"), "template_error");
    }

    #[test]
    fn v3_addresses_step_records() {
        let f = fx();
        assert_eq!(f.ok(3, "{{steps.open_app.status}}"), json!("failed"));
        assert_eq!(f.ok(3, "{{steps.open_app.error}}"), json!("logic: nope"));
        assert_eq!(f.ok(3, "{{steps.open_app.body}}"), Value::Null);
        assert_eq!(f.ok(3, "{{steps.event_2.body.shadow}}"), json!(true));
        assert_eq!(f.ok(3, "{{steps.event_2.finishedAt}}"), Value::Null);
        assert_eq!(f.code(3, "{{steps.nope.body}}"), "template_error");
        assert_eq!(f.ok(3, "{{steps}}")["open_app"]["status"], json!("failed"));
        // `steps` is not a root in v1–2.
        assert_eq!(f.code(2, "{{steps.open_app.status}}"), "template_error");
    }

    #[test]
    fn prev_and_results_per_version() {
        let f = fx();
        for v in [1, 2] {
            assert_eq!(f.ok(v, "{{prev.pkg}}"), json!("com.x"));
            assert_eq!(f.ok(v, "{{results.0.count}}"), json!(2));
            assert_eq!(f.ok(v, "{{results[1].shadow}}"), json!(true));
            assert_eq!(f.ok(v, "{{results}}")[0]["pkg"], json!("com.x"));
        }
        assert_eq!(f.ok(1, "{{results.9.x}}"), json!(""));
        assert_eq!(f.code(2, "{{results.9.x}}"), "template_error");
        assert_eq!(f.code(2, "{{prev.status}}"), "template_error");
        assert_eq!(f.ok(3, "{{prev.status}}"), json!("success"));
        assert_eq!(f.ok(3, "{{prev.body.pkg}}"), json!("com.x"));
        assert_eq!(f.ok(3, "{{results.2.status}}"), json!("failed"));
        assert_eq!(f.ok(3, "{{results[0].body.count}}"), json!(2));
        assert_eq!(f.code(3, "{{results.0.count}}"), "template_error");
        let scope = TemplateScope {
            prev: None,
            ..f.scope(3, true, false)
        };
        assert_eq!(
            resolve(&json!("{{prev}}"), &scope).unwrap_err().code(),
            "template_error"
        );
    }

    #[test]
    fn loop_variables_and_item_alias() {
        let f = fx();
        for v in [1, 2, 3] {
            assert_eq!(f.ok(v, "{{loop.item.name}}"), json!("it"));
            assert_eq!(f.ok(v, "{{loop.index}}"), json!(1));
            assert_eq!(f.ok(v, "{{loop.first}}"), json!(false));
            assert_eq!(f.ok(v, "{{loop.last}}"), json!(true));
            assert_eq!(f.ok(v, "{{row.name}}"), json!("it"));
            assert_eq!(f.ok(v, "{{row}}"), json!({"name": "it"}));
            assert_eq!(
                f.ok(v, "#{{loop.index}} {{row}}"),
                json!(r#"#1 {"name":"it"}"#)
            );
            assert_eq!(
                f.ok(v, "{{loop}}"),
                json!({"item": {"name": "it"}, "index": 1, "first": false, "last": true})
            );
        }
        // Outside a loop they do not exist.
        let scope = f.scope(3, true, false);
        for s in ["{{loop.item}}", "{{row}}", "{{loop}}"] {
            assert_eq!(
                resolve(&json!(s), &scope).unwrap_err().code(),
                "template_error"
            );
        }
        let scope = f.scope(1, true, false);
        assert_eq!(
            resolve(&json!("{{loop.index}}"), &scope).unwrap(),
            json!("")
        );
        assert_eq!(f.code(3, "{{loop.nope}}"), "template_error");
    }

    #[test]
    fn pre_resolution_leaves_late_tokens_literal() {
        let f = fx();
        let params = json!({
            "early": "{{event.payload.n}}",
            "mixed": "Hi {{ event.payload.name }}, {{ steps.open_app.body.pkg }} #{{loop.index}}",
            "late": "{{prev.body}}",
            "item": "{{row.name}}",
            "list": ["{{results.0.body}}", "{{flow.name}}"],
        });
        let out = resolve(&params, &f.scope(3, false, true)).unwrap();
        assert_eq!(
            out,
            json!({
                "early": 5,
                "mixed": "Hi Bob, {{ steps.open_app.body.pkg }} #{{loop.index}}",
                "late": "{{prev.body}}",
                "item": "{{row.name}}",
                "list": ["{{results.0.body}}", "F"],
            })
        );
        // Early tokens still fail in pre-resolution.
        let bad = json!({"a": "{{event.payload.nope}} {{prev.x}}"});
        let e = resolve(&bad, &f.scope(3, false, false)).unwrap_err();
        assert_eq!((e.code(), e.field()), ("template_error", "a"));
        // v1/v2: a non-root first segment (a step slug/key) is late; payload aliases are early.
        let p = json!("{{open_app.pkg}} {{payload.n}} {{trigger.payload.n}}");
        for v in [1, 2] {
            assert_eq!(
                resolve(&p, &f.scope(v, false, false)).unwrap(),
                json!("{{open_app.pkg}} 5 5")
            );
        }
        assert!(has_late_refs(&params, 3));
        assert!(!has_late_refs(&json!({"a": ["{{event.id}} {{now}}"]}), 3));
        assert!(!has_late_refs(&json!("{{payload.x}}"), 2));
        assert!(has_late_refs(&json!("{{payload.x}}"), 3));
        assert!(has_late_refs(&json!(["x", {"k": "{{open_app.pkg}}"}]), 2));
        assert!(has_late_refs(&json!("{{loop.index}}"), 1));
        assert!(!has_late_refs(&json!("{{ unclosed"), 3));
        assert!(!has_late_refs(&json!({"{{prev}}": 1}), 3));
        // Fixed for the run: early tokens other than `now`.
        assert!(is_fixed_for_run(
            &json!({"a": ["{{event.id}} x", 1, null]}),
            3
        ));
        assert!(is_fixed_for_run(&json!("plain"), 3));
        assert!(!is_fixed_for_run(
            &json!({"a": ["{{event.id}} {{now}}"]}),
            3
        ));
        assert!(!is_fixed_for_run(&json!("{{ now }}"), 3));
        assert!(!is_fixed_for_run(&params, 3));
        assert!(!is_fixed_for_run(&json!("{{loop.index}}"), 1));
        assert!(is_fixed_for_run(&json!("{{payload.x}}"), 2));
        assert!(!is_fixed_for_run(&json!("{{payload.x}}"), 3));
        // One scan gives both answers; a later string can still add to an earlier one's.
        let dep = |v: Value| dependence(&v, 3);
        assert_eq!(dep(json!(["plain", 1])), Dependence::default());
        assert_eq!(
            dep(json!({"a": "{{now}}", "b": "{{event.id}}"})),
            Dependence {
                late: false,
                moving: true
            }
        );
        assert_eq!(
            dep(json!({"a": "{{now}}", "b": ["{{prev.body}}"]})),
            Dependence {
                late: true,
                moving: true
            }
        );
    }

    #[test]
    fn nested_values_resolve_and_keys_do_not() {
        let f = fx();
        let params = json!({
            "{{event.id}}": {"deep": ["{{event.payload.n}}", {"x": "id={{event.id}}"}]},
            "n": 7, "b": false, "z": null,
        });
        assert_eq!(
            resolve(&params, &f.scope(3, true, false)).unwrap(),
            json!({
                "{{event.id}}": {"deep": [5, {"x": "id=ev1"}]},
                "n": 7, "b": false, "z": null,
            })
        );
        let bad = json!({"h": {"list": ["ok", "{{nope}}"]}});
        let e = resolve(&bad, &f.scope(2, true, false)).unwrap_err();
        assert_eq!(e.field(), "h.list[1]");
        let e = resolve(&json!({"u": "{{ open"}), &f.scope(3, true, false)).unwrap_err();
        assert_eq!((e.code(), e.field()), ("invalid_template", "u"));
    }

    #[test]
    fn now_defaults_to_the_current_time() {
        let f = fx();
        let mut roots = f.roots.clone();
        roots.remove("now");
        let scope = TemplateScope {
            roots: &roots,
            ..f.scope(3, true, false)
        };
        let now = resolve(&json!("{{now}}"), &scope).unwrap();
        assert!(crate::time::parse_rfc3339(now.as_str().unwrap()).is_some());
    }

    #[test]
    fn step_references_and_static_checks() {
        let v = json!({
            "a": "{{steps.login.body.x}} {{ steps.open_app.status }}",
            "b": ["{{steps.login}}", "{{steps}}", "{{event.id}}"],
        });
        assert_eq!(
            step_references(&v, 3).unwrap(),
            vec!["login", "open_app", "login"]
        );
        assert_eq!(step_references(&v, 2).unwrap(), Vec::<String>::new());
        let e = step_references(&json!({"x": ["{{steps.a", "y"]}), 3).unwrap_err();
        assert_eq!((e.code(), e.field()), ("invalid_template", "x[0]"));
        assert!(step_references(&json!("{{steps.a"), 1).unwrap().is_empty());
        let e = step_references(&json!({"x": "{{flow.secret}}"}), 3).unwrap_err();
        assert_eq!(e.code(), "forbidden_path");

        let errs = check(
            &json!({"a": "{{ open", "b": "{{owner.email}} {{a..b}}", "c": "{{trigger.payload.token}}"}),
            2,
        );
        let codes: Vec<_> = errs.iter().map(|e| (e.code(), e.field())).collect();
        assert_eq!(
            codes,
            vec![
                ("invalid_template", "a"),
                ("forbidden_path", "b"),
                ("invalid_template", "b")
            ]
        );
        assert_eq!(
            check(&json!("{{trigger.payload.token}}"), 3)[0].code(),
            "forbidden_path"
        );
        assert!(check(&json!("{{ open {{owner.x}}"), 1).is_empty());
    }

    #[test]
    fn template_context_shape() {
        for v in [1, 2, 3] {
            let c = template_context(v);
            assert_eq!(c["templateResolutionVersion"], json!(v));
            assert!(c["grammar"].as_str().unwrap().contains("{{ path }}"));
            let names: Vec<&str> = c["roots"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    assert!(r["description"].is_string());
                    assert!(r.get("shape").is_some());
                    r["name"].as_str().unwrap()
                })
                .collect();
            let mut expected = vec!["event", "trigger", "flow", "execution"];
            if v == 3 {
                expected.push("steps");
            }
            expected.extend([
                "prev",
                "results",
                "loop",
                "schedule",
                "source",
                "now",
                "chainDepth",
                "owner",
                "user",
            ]);
            assert_eq!(names, expected);
            assert_eq!(
                c["loop"],
                json!({"name": "loop", "itemVariableDefault": "item",
                       "context": ["item", "index", "first", "last"]})
            );
            let sr = &c["stepReference"];
            assert!(sr["note"].is_string());
            assert_eq!(sr["keyRule"].is_null(), v == 1);
            assert_eq!(sr["slugRule"].is_null(), v != 1);
            let keys: Vec<_> = c.as_object().unwrap().keys().cloned().collect();
            assert_eq!(keys.len(), 6);
        }
        assert_eq!(
            template_context(1)["stepReference"]["pattern"],
            json!("{{<slug>.<field>}}")
        );
        assert_eq!(
            template_context(2)["stepReference"]["pattern"],
            json!("{{<key>.<field>}}")
        );
        assert_eq!(
            template_context(3)["stepReference"]["pattern"],
            json!("{{steps.<key>.body.<field>}}")
        );
        assert_eq!(
            template_context(2)["payloadAliases"],
            json!(["payload", "trigger.payload"])
        );
        assert_eq!(template_context(3)["payloadAliases"], json!([]));
        assert_eq!(template_context(7), template_context(3));
        assert!(
            template_context(3)["stepReference"]["keyRule"]
                .as_str()
                .unwrap()
                .contains(KEY_PATTERN)
        );
        assert!(
            template_context(1)["roots"][1]["shape"]["properties"]
                .get("payload")
                .is_some()
        );
    }
}
