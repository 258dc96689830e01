//! Query strings (§1.5–1.8): repeated and comma-joined arrays, strict booleans and enums,
//! pagination that rejects instead of clamping, ordering and search — every problem
//! collected and reported as one 422 with the parameter name as `field`.

use std::cmp::Ordering;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use flowrun_core::time::{Ts, parse_rfc3339};
use flowrun_core::validate::parse_uuid;
use flowrun_core::{FieldError, FieldErrors};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::ApiError;

/// Parsed query parameters plus the problems found while reading them.
pub struct Query {
    pairs: Vec<(String, String)>,
    errs: FieldErrors,
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Query::parse(parts.uri.query().unwrap_or("")))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub page: u64,
    pub page_size: u64,
}

impl Query {
    pub fn parse(raw: &str) -> Self {
        Self {
            pairs: form_urlencoded::parse(raw.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            errs: FieldErrors::new(),
        }
    }

    fn bad(&mut self, name: &str, code: &str, msg: impl Into<String>) {
        self.errs.0.push(FieldError {
            field: name.to_string(),
            message: msg.into(),
            code: Some(code.to_string()),
        });
    }

    /// The last non-empty value of a scalar parameter (an empty value equals absence).
    pub fn str(&self, name: &str) -> Option<String> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    }

    pub fn has(&self, name: &str) -> bool {
        self.str(name).is_some()
    }

    /// Every value of an array parameter, repeated and/or comma-joined, empty ones ignored.
    pub fn list(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (k, v) in &self.pairs {
            if k == name {
                for part in v.split(',') {
                    let p = part.trim();
                    if !p.is_empty() && !out.iter().any(|o| o == p) {
                        out.push(p.to_string());
                    }
                }
            }
        }
        out
    }

    pub fn enum_one(&mut self, name: &str, allowed: &[&str]) -> Option<String> {
        let v = self.str(name)?;
        if allowed.contains(&v.as_str()) {
            Some(v)
        } else {
            self.bad(
                name,
                "invalid_value",
                format!("{name} must be one of: {}", allowed.join(", ")),
            );
            None
        }
    }

    /// An array of enum values; `None` when the parameter is absent.
    pub fn enum_many(&mut self, name: &str, allowed: &[&str]) -> Option<Vec<String>> {
        let vals = self.list(name);
        if vals.is_empty() {
            return None;
        }
        if let Some(bad) = vals.iter().find(|v| !allowed.contains(&v.as_str())) {
            let msg = format!("{name}: '{bad}' is not one of: {}", allowed.join(", "));
            self.bad(name, "invalid_value", msg);
            return None;
        }
        Some(vals)
    }

    pub fn bool(&mut self, name: &str) -> Option<bool> {
        match self.str(name)?.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                self.bad(
                    name,
                    "invalid_value",
                    format!("{name} must be \"true\" or \"false\""),
                );
                None
            }
        }
    }

    pub fn uuid(&mut self, name: &str) -> Option<Uuid> {
        let v = self.str(name)?;
        match parse_uuid(&v) {
            Some(u) => Some(u),
            None => {
                self.bad(name, "invalid_value", format!("{name} must be a UUID"));
                None
            }
        }
    }

    pub fn datetime(&mut self, name: &str) -> Option<Ts> {
        let v = self.str(name)?;
        match parse_rfc3339(&v) {
            Some(t) => Some(t),
            None => {
                self.bad(
                    name,
                    "invalid_value",
                    format!("{name} must be an RFC 3339 date-time with an offset"),
                );
                None
            }
        }
    }

    pub fn int(&mut self, name: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.str(name)?;
        match v.parse::<i64>() {
            Ok(i) if i >= min && i <= max => Some(i),
            _ => {
                self.bad(
                    name,
                    "invalid_value",
                    format!("{name} must be an integer between {min} and {max}"),
                );
                None
            }
        }
    }

    /// `page` (≥ 1, default 1) and `pageSize` (1..100, default 20); never clamped.
    pub fn page(&mut self) -> Page {
        let page = self.int("page", 1, i64::MAX).unwrap_or(1) as u64;
        let page_size = self.int("pageSize", 1, 100).unwrap_or(20) as u64;
        Page { page, page_size }
    }

    /// `orderBy` among `allowed` (default `default`) and `orderByDirection` (default desc).
    /// Returns (field, descending).
    pub fn order(&mut self, allowed: &[&str], default: &str) -> (String, bool) {
        let field = self
            .enum_one("orderBy", allowed)
            .unwrap_or_else(|| default.to_string());
        let desc = self
            .enum_one("orderByDirection", &["asc", "desc"])
            .map(|d| d == "desc")
            .unwrap_or(true);
        (field, desc)
    }

    /// The lower-cased search needle, if any.
    pub fn search(&self) -> Option<String> {
        self.str("search").map(|s| fold(&s))
    }

    /// Ends reading: 422 with every problem, if there were any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.errs))
        }
    }

    /// Records a problem found by the caller (e.g. two parameters that exclude each other).
    pub fn reject(&mut self, name: &str, msg: impl Into<String>) {
        self.bad(name, "invalid_value", msg);
    }
}

/// Case folding for search (§1.8): a case-insensitive substring match.
pub use flowrun_core::search::fold;

/// Whether any of the fields contains the (already folded) needle.
pub fn matches_search(needle: &str, fields: &[Option<&str>]) -> bool {
    fields.iter().flatten().any(|f| fold(f).contains(needle))
}

/// Applies direction to an ordering and breaks ties on id (UUIDv7 = creation order).
pub fn ordered(primary: Ordering, a_id: &Uuid, b_id: &Uuid, desc: bool) -> Ordering {
    let o = primary.then_with(|| a_id.cmp(b_id));
    if desc { o.reverse() } else { o }
}

/// `{items, pagination}` for an already filtered and ordered list.
pub fn paginate<T: Serialize>(all: &[T], page: Page) -> Value {
    let total = all.len() as u64;
    let start = ((page.page - 1).saturating_mul(page.page_size)).min(total) as usize;
    let end = (start as u64 + page.page_size).min(total) as usize;
    json!({
        "items": &all[start..end],
        "pagination": pagination(page, total),
    })
}

pub fn pagination(page: Page, total: u64) -> Value {
    let pages = total.div_ceil(page.page_size);
    json!({
        "page": page.page,
        "pageSize": page.page_size,
        "total": total,
        "pages": pages,
        "hasNext": page.page < pages,
        "hasPrev": page.page > 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_union_repeated_and_comma_joined() {
        let q = Query::parse("status=healthy,failing&status=blocked&status=&status=healthy");
        assert_eq!(q.list("status"), ["healthy", "failing", "blocked"]);
    }

    #[test]
    fn pagination_is_strict() {
        let mut q = Query::parse("page=0&pageSize=101");
        q.page();
        assert_eq!(q.errs.len(), 2);
        let mut q = Query::parse("page=1.5");
        q.page();
        assert_eq!(q.errs.len(), 1);
    }

    #[test]
    fn pages_past_the_end_are_empty_with_real_totals() {
        let v = paginate(
            &[1, 2, 3],
            Page {
                page: 5,
                page_size: 2,
            },
        );
        assert_eq!(v["items"], json!([]));
        assert_eq!(v["pagination"]["pages"], 2);
        assert_eq!(v["pagination"]["hasNext"], false);
        assert_eq!(v["pagination"]["hasPrev"], true);
        let v = paginate::<i32>(
            &[],
            Page {
                page: 1,
                page_size: 20,
            },
        );
        assert_eq!(v["pagination"]["pages"], 0);
    }

    #[test]
    fn booleans_are_exact() {
        let mut q = Query::parse("enabled=True");
        assert_eq!(q.bool("enabled"), None);
        assert_eq!(q.errs.len(), 1);
    }
}
