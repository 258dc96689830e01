//! Timestamps as the wire wants them: RFC 3339 UTC with milliseconds and `Z` on output,
//! RFC 3339 with an explicit offset on input.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
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
        let mut buf = [0u8; 24];
        match self.write_rfc3339(&mut buf) {
            Some(text) => text.to_string(),
            None => self.0.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` into `buf`, straight from the millisecond count (what
    /// chrono writes, without its calendar accessors and formatting machinery: every stored
    /// state and envelope carries a dozen of these); `None` for years outside 0‥9999 and for
    /// leap seconds, which chrono writes itself.
    fn write_rfc3339<'b>(&self, buf: &'b mut [u8; 24]) -> Option<&'b str> {
        if self.0.nanosecond() >= 1_000_000_000 {
            return None;
        }
        let ms = self.millis();
        let (year, month, day) = civil_from_days(ms.div_euclid(86_400_000));
        let year = u32::try_from(year).ok().filter(|y| *y <= 9999)?;
        let in_day = ms.rem_euclid(86_400_000) as u32;
        let mut put = |at: usize, value: u32, digits: usize| {
            let mut v = value;
            for i in (0..digits).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, year, 4);
        put(5, month, 2);
        put(8, day, 2);
        put(11, in_day / 3_600_000, 2);
        put(14, in_day / 60_000 % 60, 2);
        put(17, in_day / 1_000 % 60, 2);
        put(20, in_day % 1_000, 3);
        for (at, c) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
        ] {
            buf[at] = c;
        }
        buf[23] = b'Z';
        std::str::from_utf8(buf).ok()
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

impl std::fmt::Display for Ts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0u8; 24];
        match self.write_rfc3339(&mut buf) {
            Some(text) => f.write_str(text),
            None => f.write_str(&self.to_rfc3339()),
        }
    }
}

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 24];
        match self.write_rfc3339(&mut buf) {
            Some(text) => s.serialize_str(text),
            None => s.serialize_str(&self.to_rfc3339()),
        }
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
    fn output_is_what_chrono_writes() {
        let chrono_text = |t: &Ts| t.0.to_rfc3339_opts(SecondsFormat::Millis, true);
        // Every millisecond-ish spread over years 0‥9999, plus the edges.
        let mut ms: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
        let last: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
        let mut samples = vec![0, 1, 999, 1_000, last];
        while ms < last {
            samples.push(ms);
            ms += 7_777_777_777_777 / 1_000 + 123;
        }
        for m in samples {
            let t = Ts::from_millis(m).unwrap();
            assert_eq!(t.to_rfc3339(), chrono_text(&t), "{m} ms");
            assert_eq!(t.to_string(), chrono_text(&t));
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", chrono_text(&t))
            );
        }
        // Outside 0‥9999 chrono's own form is used.
        for m in [-62_167_219_200_001, 253_402_300_800_000] {
            let t = Ts::from_millis(m).unwrap();
            assert_eq!(t.to_rfc3339(), chrono_text(&t));
        }
        // A leap second.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_milli_opt(23, 59, 59, 1_250)
            .unwrap()
            .and_utc();
        assert_eq!(Ts(leap).to_rfc3339(), chrono_text(&Ts(leap)));
    }

    #[test]
    fn input_requires_offset() {
        assert!(parse_rfc3339("2026-11-25T19:04:05").is_none());
        assert!(parse_rfc3339("2026-11-25T19:04:05.5Z").is_some());
    }
}
