//! Timestamps as the wire wants them: RFC 3339 UTC with milliseconds and `Z` on output,
//! RFC 3339 with an explicit offset on input.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant that serialises as `2026-11-25T18:04:05.123Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub DateTime<Utc>);

impl Ts {
    pub fn now() -> Self {
        Ts(Utc::now())
    }

    pub fn from_millis(ms: i64) -> Option<Self> {
        DateTime::from_timestamp_millis(ms).map(Ts)
    }

    pub fn millis(&self) -> i64 {
        self.0.timestamp_millis()
    }

    pub fn to_rfc3339(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

impl std::fmt::Display for Ts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_rfc3339(&s).ok_or_else(|| serde::de::Error::custom("invalid RFC 3339 date-time"))
    }
}

/// Parses an input date-time. An offset (`Z` or `±hh:mm`) is required.
pub fn parse_rfc3339(s: &str) -> Option<Ts> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| Ts(d.with_timezone(&Utc)))
}

impl utoipa::PartialSchema for Ts {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Ts {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_has_millis_and_z() {
        let t = parse_rfc3339("2026-11-25T19:04:05+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-25T18:04:05.000Z");
    }

    #[test]
    fn input_requires_offset() {
        assert!(parse_rfc3339("2026-11-25T19:04:05").is_none());
        assert!(parse_rfc3339("2026-11-25T19:04:05.5Z").is_some());
    }
}
