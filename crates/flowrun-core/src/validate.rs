//! Field-level validation of JSON request bodies.
//!
//! The API must report *every* problem of a body at once (`details.errors`), with a path from
//! the body root (`actions[0].children[1].key`). serde stops at the first error and cannot say
//! "required" vs "wrong type" in our vocabulary, so bodies are read from a `serde_json::Value`
//! through [`Obj`], which records problems into a [`FieldErrors`] list and keeps going.

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::time::{Ts, parse_rfc3339};

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// Every problem found in one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn push(&mut self, field: impl Into<String>, code: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
            code: Some(code.to_string()),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn extend(&mut self, other: FieldErrors) {
        self.0.extend(other.0);
    }

    /// `Ok(())` when nothing was recorded.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// A field as sent in a body: absent, explicitly `null`, or a value.
/// `Invalid` means a problem was already recorded for it.
#[derive(Clone, Debug, PartialEq)]
pub enum Field<T> {
    Absent,
    Null,
    Value(T),
    Invalid,
}

impl<T> Field<T> {
    pub fn value(self) -> Option<T> {
        match self {
            Field::Value(v) => Some(v),
            _ => None,
        }
    }

    pub fn is_sent(&self) -> bool {
        !matches!(self, Field::Absent)
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }

    pub fn as_ref(&self) -> Field<&T> {
        match self {
            Field::Absent => Field::Absent,
            Field::Null => Field::Null,
            Field::Value(v) => Field::Value(v),
            Field::Invalid => Field::Invalid,
        }
    }

    /// For a nullable optional field: `Some(None)` for null, `Some(Some(v))` for a value,
    /// `None` when absent or invalid (leave unchanged).
    pub fn patch(self) -> Option<Option<T>> {
        match self {
            Field::Absent | Field::Invalid => None,
            Field::Null => Some(None),
            Field::Value(v) => Some(Some(v)),
        }
    }
}

/// Joins a field path: `join("actions[0]", "key")` → `actions[0].key`.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The JSON type name used in messages.
pub fn type_name(v: &Value) -> &'static str {
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

/// Reads fields of one JSON object, recording problems with their full path.
pub struct Obj<'a> {
    pub map: &'a Map<String, Value>,
    pub prefix: String,
}

/// Whether a field must be present.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Req {
    Required,
    Optional,
    /// Optional and may be `null`.
    Nullable,
}

impl<'a> Obj<'a> {
    pub fn new(map: &'a Map<String, Value>, prefix: impl Into<String>) -> Self {
        Self {
            map,
            prefix: prefix.into(),
        }
    }

    /// Interprets a whole body; a non-object body is one error on the root.
    pub fn root(v: &'a Value, errs: &mut FieldErrors) -> Option<Self> {
        match v {
            Value::Object(m) => Some(Self::new(m, "")),
            other => {
                errs.push(
                    "body",
                    "invalid_type",
                    format!("body must be a JSON object, got {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn path(&self, name: &str) -> String {
        join(&self.prefix, name)
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Presence and null handling shared by every getter. Returns the non-null value to check.
    fn raw(&self, name: &str, req: Req, errs: &mut FieldErrors) -> Result<&'a Value, Field<()>> {
        match self.map.get(name) {
            None => {
                if req == Req::Required {
                    errs.push(self.path(name), "required", format!("{name} is required"));
                    Err(Field::Invalid)
                } else {
                    Err(Field::Absent)
                }
            }
            Some(Value::Null) => match req {
                Req::Nullable => Err(Field::Null),
                Req::Required => {
                    errs.push(self.path(name), "required", format!("{name} is required"));
                    Err(Field::Invalid)
                }
                Req::Optional => {
                    errs.push(
                        self.path(name),
                        "invalid_type",
                        format!("{name} must not be null"),
                    );
                    Err(Field::Invalid)
                }
            },
            Some(v) => Ok(v),
        }
    }

    fn bad_type(&self, name: &str, want: &str, got: &Value, errs: &mut FieldErrors) {
        errs.push(
            self.path(name),
            "invalid_type",
            format!("{name} must be {want}, got {}", type_name(got)),
        );
    }

    /// A string whose length in characters is within `min..=max`.
    pub fn string(
        &self,
        name: &str,
        req: Req,
        min: usize,
        max: usize,
        errs: &mut FieldErrors,
    ) -> Field<String> {
        let v = match self.raw(name, req, errs) {
            Ok(v) => v,
            Err(f) => return cast(f),
        };
        let Some(s) = v.as_str() else {
            self.bad_type(name, "a string", v, errs);
            return Field::Invalid;
        };
        let n = s.chars().count();
        if n < min {
            let msg = if min == 1 {
                format!("{name} must not be empty")
            } else {
                format!("{name} must have at least {min} characters")
            };
            errs.push(self.path(name), "invalid_value", msg);
            return Field::Invalid;
        }
        if n > max {
            errs.push(
                self.path(name),
                "too_long",
                format!("{name} must have at most {max} characters"),
            );
            return Field::Invalid;
        }
        Field::Value(s.to_string())
    }

    pub fn boolean(&self, name: &str, req: Req, errs: &mut FieldErrors) -> Field<bool> {
        let v = match self.raw(name, req, errs) {
            Ok(v) => v,
            Err(f) => return cast(f),
        };
        match v.as_bool() {
            Some(b) => Field::Value(b),
            None => {
                self.bad_type(name, "a boolean", v, errs);
                Field::Invalid
            }
        }
    }

    /// An integer (fractions rejected, `3.0` accepted) within `min..=max`.
    pub fn integer(
        &self,
        name: &str,
        req: Req,
        min: i64,
        max: i64,
        errs: &mut FieldErrors,
    ) -> Field<i64> {
        let v = match self.raw(name, req, errs) {
            Ok(v) => v,
            Err(f) => return cast(f),
        };
        let Some(i) = as_integer(v) else {
            self.bad_type(name, "an integer", v, errs);
            return Field::Invalid;
        };
        if i < min || i > max {
            errs.push(
                self.path(name),
                "invalid_value",
                format!("{name} must be between {min} and {max}"),
            );
            return Field::Invalid;
        }
        Field::Value(i)
    }

    /// One of a fixed set of strings (case-sensitive).
    pub fn enumeration(
        &self,
        name: &str,
        req: Req,
        allowed: &[&str],
        errs: &mut FieldErrors,
    ) -> Field<String> {
        let v = match self.raw(name, req, errs) {
            Ok(v) => v,
            Err(f) => return cast(f),
        };
        let Some(s) = v.as_str() else {
            self.bad_type(name, "a string", v, errs);
            return Field::Invalid;
        };
        if !allowed.contains(&s) {
            errs.push(
                self.path(name),
                "invalid_value",
                format!("{name} must be one of: {}", allowed.join(", ")),
            );
            return Field::Invalid;
        }
        Field::Value(s.to_string())
    }

    pub fn uuid(&self, name: &str, req: Req, errs: &mut FieldErrors) -> Field<Uuid> {
        let v = match self.raw(name, req, errs) {
            Ok(v) => v,
            Err(f) => return cast(f),
        };
        let Some(s) = v.as_str() else {
            self.bad_type(name, "a UUID string", v, errs);
            return Field::Invalid;
        };
        match parse_uuid(s) {
            Some(u) => Field::Value(u),
            None => {
                errs.push(
                    self.path(name),
                    "invalid_value",
                    format!("{name} must be a UUID"),
                );
                Field::Invalid
            }
        }
    }

    /// An array of unique UUIDs.
    pub fn uuid_list(&self, name: &str, req: Req, errs: &mut FieldErrors) -> Field<Vec<Uuid>> {
        let v = match self.raw(name, req, errs) {
            Ok(v) => v,
            Err(f) => return cast(f),
        };
        let Some(items) = v.as_array() else {
            self.bad_type(name, "an array", v, errs);
            return Field::Invalid;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.path(name));
            match item.as_str().and_then(parse_uuid) {
                Some(u) if out.contains(&u) => {
                    errs.push(path, "duplicate", format!("{u} is listed twice"));
                    ok = false;
                }
                Some(u) => out.push(u),
                None => {
                    errs.push(path, "invalid_value", "must be a UUID");
                    ok = false;
                }
            }
        }
        if ok {
            Field::Value(out)
        } else {
            Field::Invalid
        }
    }

    pub fn object(
        &self,
        name: &str,
        req: Req,
        errs: &mut FieldErrors,
    ) -> Field<&'a Map<String, Value>> {
        let v = match self.raw(name, req, errs) {
            Ok(v) => v,
            Err(f) => return cast(f),
        };
        match v.as_object() {
            Some(m) => Field::Value(m),
            None => {
                self.bad_type(name, "an object", v, errs);
                Field::Invalid
            }
        }
    }

    pub fn array(&self, name: &str, req: Req, errs: &mut FieldErrors) -> Field<&'a Vec<Value>> {
        let v = match self.raw(name, req, errs) {
            Ok(v) => v,
            Err(f) => return cast(f),
        };
        match v.as_array() {
            Some(a) => Field::Value(a),
            None => {
                self.bad_type(name, "an array", v, errs);
                Field::Invalid
            }
        }
    }

    /// An RFC 3339 date-time with an offset.
    pub fn datetime(&self, name: &str, req: Req, errs: &mut FieldErrors) -> Field<Ts> {
        let v = match self.raw(name, req, errs) {
            Ok(v) => v,
            Err(f) => return cast(f),
        };
        match v.as_str().and_then(parse_rfc3339) {
            Some(t) => Field::Value(t),
            None => {
                errs.push(
                    self.path(name),
                    "invalid_value",
                    format!("{name} must be an RFC 3339 date-time with an offset"),
                );
                Field::Invalid
            }
        }
    }

    /// Any JSON value (presence/null rules only).
    pub fn any(&self, name: &str, req: Req, errs: &mut FieldErrors) -> Field<&'a Value> {
        match self.raw(name, req, errs) {
            Ok(v) => Field::Value(v),
            Err(f) => cast(f),
        }
    }

    /// A nested object reader for `name`.
    pub fn nested(&self, name: &str, req: Req, errs: &mut FieldErrors) -> Field<Obj<'a>> {
        match self.object(name, req, errs) {
            Field::Value(m) => Field::Value(Obj::new(m, self.path(name))),
            Field::Absent => Field::Absent,
            Field::Null => Field::Null,
            Field::Invalid => Field::Invalid,
        }
    }
}

fn cast<T>(f: Field<()>) -> Field<T> {
    match f {
        Field::Absent => Field::Absent,
        Field::Null => Field::Null,
        Field::Invalid => Field::Invalid,
        Field::Value(()) => Field::Invalid,
    }
}

/// An integer value: JSON integers, or numbers with no fractional part (`3.0`).
pub fn as_integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i)
            } else if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    Some(f as i64)
                } else {
                    None
                }
            } else {
                None
            }
        }
        _ => None,
    }
}

/// A hyphenated UUID in any letter case.
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    crate::ids::parse_path_id(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn collects_every_problem() {
        let body = json!({"name": "", "enabled": "yes", "count": 1.5});
        let mut errs = FieldErrors::new();
        let o = Obj::root(&body, &mut errs).unwrap();
        assert_eq!(
            o.string("name", Req::Required, 1, 10, &mut errs),
            Field::Invalid
        );
        assert_eq!(
            o.boolean("enabled", Req::Optional, &mut errs),
            Field::Invalid
        );
        assert_eq!(
            o.integer("count", Req::Optional, 0, 5, &mut errs),
            Field::Invalid
        );
        assert_eq!(o.uuid("id", Req::Required, &mut errs), Field::Invalid);
        let fields: Vec<_> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "enabled", "count", "id"]);
    }

    #[test]
    fn nullable_and_absent_are_distinct() {
        let body = json!({"description": null});
        let mut errs = FieldErrors::new();
        let o = Obj::root(&body, &mut errs).unwrap();
        assert_eq!(
            o.string("description", Req::Nullable, 0, 10, &mut errs),
            Field::Null
        );
        assert_eq!(
            o.string("other", Req::Nullable, 0, 10, &mut errs),
            Field::Absent
        );
        assert!(errs.is_empty());
    }

    #[test]
    fn integers_accept_whole_floats() {
        assert_eq!(as_integer(&json!(3.0)), Some(3));
        assert_eq!(as_integer(&json!(3.5)), None);
        assert_eq!(as_integer(&json!("3")), None);
    }
}
