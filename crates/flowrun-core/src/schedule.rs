//! Schedule rules (§5.3): validation of a `scheduleRule` body and the computation of its
//! occurrences — `once`, `cron` and RFC 5545 `recurring` rules in an IANA zone, the DST
//! policy, and the deterministic per-occurrence jitter.
//!
//! Occurrences are generated as wall-clock (naive local) times and only then mapped to
//! instants. Doing the DST mapping here rather than inside croner / rrule keeps one policy
//! for every rule type: a local time inside a spring-forward gap fires at the first valid
//! instant after it, a fall-back local time fires once at its earlier instant, and
//! occurrences that land on the same instant fire once.

use chrono::{
    DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use croner::Cron;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::{Jitter, ScheduleRule};
use crate::timezones;
use crate::validate::{Field, FieldErrors, Obj, Req};

pub const TYPES: [&str; 3] = ["once", "cron", "recurring"];
pub const MAX_JITTER_MINUTES: i64 = 1440;
/// A cron expression must have an occurrence within this horizon to be accepted.
const CRON_HORIZON_DAYS: i64 = 5 * 366;
/// Upper bound on occurrences skipped while looking for the next one; only reachable by
/// rules with a very high frequency anchored long ago.
const MAX_SCAN: usize = 2_000_000;
const MAX_TEXT: usize = 4096;

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// Reads and validates a `scheduleRule` object at `prefix`.
///
/// `timezone` is the trigger's effective zone after any merge: `None` when absent. A zone
/// that is not supported is the caller's to report (`unsupported_zone`); the checks that
/// need a zone are then skipped here. A missing zone where the rule needs one is reported
/// on the top-level `timezone` field. `now` anchors the "next 5 years" check of cron rules.
pub fn validate(
    v: &Value,
    prefix: &str,
    timezone: Option<&str>,
    now: DateTime<Utc>,
    errs: &mut FieldErrors,
) -> Option<ScheduleRule> {
    let Some(m) = v.as_object() else {
        errs.push(
            prefix,
            "invalid_type",
            format!("{prefix} must be an object"),
        );
        return None;
    };
    let before = errs.len();
    let o = Obj::new(m, prefix);
    let kind = o.enumeration("type", Req::Required, &TYPES, errs);
    let date_time = o.string("dateTime", Req::Nullable, 0, MAX_TEXT, errs);
    let expression = o.string("expression", Req::Nullable, 0, MAX_TEXT, errs);
    let rrule = o.string("rrule", Req::Nullable, 0, MAX_TEXT, errs);
    let jitter = read_jitter(&o, errs);
    let Field::Value(kind) = kind else {
        return None;
    };
    let own = match kind.as_str() {
        "once" => "dateTime",
        "cron" => "expression",
        _ => "rrule",
    };
    for (name, f) in [
        ("dateTime", &date_time),
        ("expression", &expression),
        ("rrule", &rrule),
    ] {
        if name == own {
            if matches!(f, Field::Absent | Field::Null) {
                errs.push(
                    o.path(name),
                    "required",
                    format!("{name} is required for a {kind} schedule"),
                );
            }
        } else if matches!(f, Field::Value(_)) {
            errs.push(
                o.path(name),
                "not_allowed",
                format!("{name} is not allowed for a {kind} schedule"),
            );
        }
    }
    let zone = timezone.map(timezones::zone);
    let needs_zone = |errs: &mut FieldErrors, why: &str| {
        if timezone.is_none() {
            errs.push(
                "timezone",
                "required",
                format!("timezone is required {why}"),
            );
        }
    };
    match kind.as_str() {
        "once" => {
            if let Field::Value(s) = &date_time {
                match parse_date_time(s) {
                    Some(OnceAt::Instant(_)) => {}
                    Some(OnceAt::Local(_)) => {
                        needs_zone(errs, "when scheduleRule.dateTime has no offset")
                    }
                    None => errs.push(
                        o.path("dateTime"),
                        "invalid_value",
                        "dateTime must be an RFC 3339 date-time, with or without an offset \
                         (2026-05-01T09:00:00 or 2026-05-01T09:00:00+02:00)",
                    ),
                }
            }
        }
        "cron" => {
            needs_zone(errs, "for cron schedules");
            if let Field::Value(s) = &expression {
                match parse_cron(s) {
                    Err(e) => errs.push(o.path("expression"), "invalid_cron", e),
                    Ok(cron) => {
                        // Without a usable zone the horizon check still runs, in UTC: an
                        // impossible date is impossible in every zone.
                        let tz = zone.flatten().unwrap_or(Tz::UTC);
                        let limit = now + Duration::days(CRON_HORIZON_DAYS);
                        let next = next_cron(&cron, tz, now, now);
                        if next.is_none_or(|n| n > limit) {
                            errs.push(
                                o.path("expression"),
                                "invalid_cron",
                                "the expression has no occurrence in the next 5 years",
                            );
                        }
                    }
                }
            }
        }
        _ => {
            needs_zone(errs, "for recurring schedules");
            if let Field::Value(s) = &rrule
                && let Err(e) = parse_rrule(s)
            {
                errs.push(o.path("rrule"), "invalid_rrule", e);
            }
        }
    }
    if errs.len() > before {
        return None;
    }
    Some(ScheduleRule {
        kind,
        date_time: date_time.value(),
        expression: expression.value(),
        rrule: rrule.value(),
        jitter,
    })
}

fn read_jitter(o: &Obj, errs: &mut FieldErrors) -> Option<Jitter> {
    let Field::Value(j) = o.nested("jitter", Req::Nullable, errs) else {
        return None;
    };
    let before = j.integer("beforeMinutes", Req::Nullable, 0, MAX_JITTER_MINUTES, errs);
    let after = j.integer("afterMinutes", Req::Nullable, 0, MAX_JITTER_MINUTES, errs);
    Some(Jitter {
        before_minutes: before.value(),
        after_minutes: after.value(),
    })
}

// ---------------------------------------------------------------------------------------
// Compiled schedules
// ---------------------------------------------------------------------------------------

/// A rule ready to produce occurrences.
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: Kind,
    created_at: DateTime<Utc>,
    before_secs: i64,
    after_secs: i64,
}

#[derive(Clone, Debug)]
enum Kind {
    Once(DateTime<Utc>),
    Cron(Cron, Tz),
    Recurring(Recurrence),
}

#[derive(Clone, Debug)]
struct Recurrence {
    /// Generates wall-clock times: the rule runs in UTC so that rrule applies no DST logic
    /// of its own; `zone` maps the results.
    set: rrule::RRuleSet,
    /// The rule without UNTIL, and its start, to rebuild the set closer to a query time.
    body: String,
    start: NaiveDateTime,
    /// Wall-clock length of one period (`INTERVAL` × unit) when the sequence can be
    /// restarted a whole number of periods later without changing it.
    period: Option<Duration>,
    zone: Tz,
    until: Option<Until>,
}

#[derive(Clone, Copy, Debug)]
enum Until {
    Instant(DateTime<Utc>),
    Local(NaiveDateTime),
}

impl Schedule {
    /// Compiles a stored rule. `timezone` is the trigger's zone, `created_at` its creation
    /// time (anchor of RRULEs without DTSTART; nothing earlier ever fires).
    pub fn compile(
        rule: &ScheduleRule,
        timezone: Option<&str>,
        created_at: DateTime<Utc>,
    ) -> Result<Schedule, String> {
        let zone = match timezone {
            Some(name) => {
                Some(timezones::zone(name).ok_or_else(|| format!("unsupported zone {name}"))?)
            }
            None => None,
        };
        let need_zone = || zone.ok_or_else(|| "timezone is required".to_string());
        let kind = match rule.kind.as_str() {
            "once" => {
                let s = rule.date_time.as_deref().ok_or("dateTime is missing")?;
                match parse_date_time(s).ok_or("invalid dateTime")? {
                    OnceAt::Instant(t) => Kind::Once(t),
                    OnceAt::Local(l) => {
                        Kind::Once(local_to_utc(&need_zone()?, l).ok_or("unmappable dateTime")?)
                    }
                }
            }
            "cron" => {
                let s = rule.expression.as_deref().ok_or("expression is missing")?;
                Kind::Cron(parse_cron(s)?, need_zone()?)
            }
            "recurring" => {
                let s = rule.rrule.as_deref().ok_or("rrule is missing")?;
                Kind::Recurring(build_recurrence(
                    &parse_rrule(s)?,
                    need_zone()?,
                    created_at,
                )?)
            }
            other => return Err(format!("unknown schedule type {other}")),
        };
        let jitter = rule.jitter.clone().unwrap_or_default();
        Ok(Schedule {
            kind,
            created_at,
            before_secs: jitter
                .before_minutes
                .unwrap_or(0)
                .clamp(0, MAX_JITTER_MINUTES)
                * 60,
            after_secs: jitter
                .after_minutes
                .unwrap_or(0)
                .clamp(0, MAX_JITTER_MINUTES)
                * 60,
        })
    }

    /// The first nominal occurrence strictly after `after` and not before the trigger's
    /// creation, or `None` when the rule has no more.
    pub fn next_nominal(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let ok = |t: DateTime<Utc>| t > after && t >= self.created_at;
        let from = after.max(self.created_at);
        match &self.kind {
            Kind::Once(t) => Some(*t).filter(|t| ok(*t)),
            Kind::Cron(cron, tz) => next_cron(cron, *tz, from, after).filter(|t| ok(*t)),
            Kind::Recurring(r) => r.next(from, ok),
        }
    }

    /// The jittered fire instant of a nominal occurrence.
    pub fn fire_instant(&self, trigger_id: Uuid, nominal: DateTime<Utc>) -> DateTime<Utc> {
        nominal
            + Duration::seconds(jitter_offset(
                trigger_id,
                nominal,
                self.before_secs,
                self.after_secs,
            ))
    }

    /// Nominal occurrences after `after`, in order (each then fires at
    /// [`fire_instant`](Self::fire_instant)).
    pub fn occurrences_after(
        &self,
        after: DateTime<Utc>,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let mut cur = after;
        std::iter::from_fn(move || {
            let n = self.next_nominal(cur)?;
            cur = n;
            Some(n)
        })
    }
}

/// `(nominal, fire instant)` of the first occurrence whose nominal time is after `after`
/// (and not before `created_at`); `None` when the rule is exhausted, a `once` is past, or
/// the rule does not compile.
pub fn next_fire_time(
    trigger_id: Uuid,
    rule: &ScheduleRule,
    timezone: Option<&str>,
    created_at: DateTime<Utc>,
    after: DateTime<Utc>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let s = Schedule::compile(rule, timezone, created_at).ok()?;
    let nominal = s.next_nominal(after)?;
    Some((nominal, s.fire_instant(trigger_id, nominal)))
}

/// The jitter offset in seconds (§5.3): `h` = first 8 bytes (big-endian) of
/// SHA-256(trigger id bytes ‖ nominal Unix seconds as i64 big-endian), offset =
/// `h mod (W + 1) − before` with `W = before + after`, all in seconds.
pub fn jitter_offset(
    trigger_id: Uuid,
    nominal: DateTime<Utc>,
    before_secs: i64,
    after_secs: i64,
) -> i64 {
    let window = (before_secs + after_secs) as u64;
    if window == 0 {
        return 0;
    }
    let mut hasher = Sha256::new();
    hasher.update(trigger_id.as_bytes());
    hasher.update(nominal.timestamp().to_be_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let h = u64::from_be_bytes(first);
    (h % (window + 1)) as i64 - before_secs
}

// ---------------------------------------------------------------------------------------
// Local time → instant
// ---------------------------------------------------------------------------------------

/// Maps a wall-clock time to an instant by the DST policy: a gap moves to the first valid
/// instant after it, an overlap takes the earlier instant.
pub fn local_to_utc(tz: &Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(d) => Some(d.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => {
            let valid = |t: NaiveDateTime| !matches!(tz.from_local_datetime(&t), LocalResult::None);
            // Transitions fall on whole seconds and gaps last at most a day (Samoa, 2011):
            // find the first valid minute, then walk back to the first valid second.
            let base = local.with_second(0)?.with_nanosecond(0)?;
            let mut first = (1..=26 * 60)
                .map(|k| base + Duration::minutes(k))
                .find(|t| valid(*t))?;
            while first - Duration::seconds(1) > local && valid(first - Duration::seconds(1)) {
                first -= Duration::seconds(1);
            }
            match tz.from_local_datetime(&first) {
                LocalResult::Single(d) => Some(d.with_timezone(&Utc)),
                LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
                LocalResult::None => None,
            }
        }
    }
}

/// The earliest wall-clock time that can map to an instant at or after `t`: `t` plus the
/// smallest UTC offset in effect around it.
fn local_floor(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
    let min_off = [t - Duration::days(1), t, t + Duration::days(1)]
        .iter()
        .map(|x| {
            tz.offset_from_utc_datetime(&x.naive_utc())
                .fix()
                .local_minus_utc()
        })
        .min()
        .unwrap_or(0);
    let local = t.naive_utc() + Duration::seconds(i64::from(min_off));
    local.with_nanosecond(0).unwrap_or(local)
}

// ---------------------------------------------------------------------------------------
// once
// ---------------------------------------------------------------------------------------

enum OnceAt {
    Instant(DateTime<Utc>),
    Local(NaiveDateTime),
}

fn parse_date_time(s: &str) -> Option<OnceAt> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(OnceAt::Instant(d.with_timezone(&Utc)));
    }
    let upper = s.to_ascii_uppercase();
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(&upper, f).ok())
        .map(OnceAt::Local)
}

// ---------------------------------------------------------------------------------------
// cron
// ---------------------------------------------------------------------------------------

/// Parses a 5- or 6-field expression or a macro. Names and macros are expanded here and the
/// result handed to croner as plain numbers, because croner also accepts extensions the
/// contract rejects (`L`, `W`, `#`, `?`) and replaces names across every field.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let normalized = normalize_cron(expr)?;
    Cron::new(&normalized)
        .with_seconds_optional()
        .parse()
        .map_err(|e| format!("invalid cron expression: {e}"))
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn normalize_cron(expr: &str) -> Result<String, String> {
    let e = expr.trim();
    if e.starts_with('@') {
        return match e.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => Ok("0 0 1 1 *".into()),
            "@monthly" => Ok("0 0 1 * *".into()),
            "@weekly" => Ok("0 0 * * 0".into()),
            "@daily" | "@midnight" => Ok("0 0 * * *".into()),
            "@hourly" => Ok("0 * * * *".into()),
            _ => Err(format!(
                "unknown macro '{e}'; supported: @yearly, @annually, @monthly, @weekly, \
                 @daily, @midnight, @hourly"
            )),
        };
    }
    let fields: Vec<&str> = e.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return Err(format!(
            "a cron expression has 5 fields (minute hour day-of-month month day-of-week) or 6 \
             with a leading seconds field; got {}",
            fields.len()
        ));
    }
    let first = fields.len() - 5;
    let mut out = Vec::with_capacity(fields.len());
    for (i, f) in fields.iter().enumerate() {
        let names: &[&str] = match i.checked_sub(first) {
            Some(3) => &MONTHS,
            Some(4) => &DAYS,
            _ => &[],
        };
        let month_base = usize::from(names.len() == 12);
        out.push(normalize_field(f, names, month_base).map_err(|why| {
            let label = ["minute", "hour", "day-of-month", "month", "day-of-week"];
            let name = i.checked_sub(first).map_or("seconds", |k| label[k]);
            format!("{name} field '{f}': {why}")
        })?);
    }
    Ok(out.join(" "))
}

fn normalize_field(field: &str, names: &[&str], base: usize) -> Result<String, String> {
    if field.contains(['?', '#']) || field.to_ascii_uppercase().contains(['L', 'W']) {
        // Letters that are part of a name (JUL, WED) are fine; the check below decides.
        let stripped = names
            .iter()
            .fold(field.to_ascii_uppercase(), |acc, n| acc.replace(n, ""));
        if stripped.contains(['?', '#', 'L', 'W']) {
            return Err("L, W, # and ? are not supported".into());
        }
    }
    let mut items = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("invalid step '{s}'"));
                }
                (r, Some(s))
            }
            None => (item, None),
        };
        let range = if range == "*" {
            "*".to_string()
        } else if let Some((a, b)) = range.split_once('-') {
            let a = atom(a, names, base, false)?;
            let b = atom(b, names, base, true)?;
            format!("{a}-{b}")
        } else {
            atom(range, names, base, false)?
        };
        items.push(match step {
            Some(s) => format!("{range}/{s}"),
            None => range,
        });
    }
    Ok(items.join(","))
}

/// A number or a name. `SUN` as the end of a range is 7 so that `FRI-SUN` is a valid range.
fn atom(s: &str, names: &[&str], base: usize, range_end: bool) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(s.to_string());
    }
    let upper = s.to_ascii_uppercase();
    match names.iter().position(|n| *n == upper) {
        Some(0) if range_end && names.len() == 7 => Ok("7".into()),
        Some(i) => Ok((i + base).to_string()),
        None => Err(format!("'{s}' is not a number or a valid name")),
    }
}

/// The first cron occurrence whose instant is after `after`, searching wall-clock times from
/// `from`'s local floor on.
fn next_cron(
    cron: &Cron,
    tz: Tz,
    from: DateTime<Utc>,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let from = from.max(after);
    // croner runs on a UTC clock here: its own gap handling would differ from the policy.
    let mut cursor = local_floor(tz, from).and_utc();
    for _ in 0..MAX_SCAN {
        let local = cron.find_next_occurrence(&cursor, true).ok()?;
        let instant = local_to_utc(&tz, local.naive_utc())?;
        if instant > after && instant >= from {
            return Some(instant);
        }
        cursor = local + Duration::seconds(1);
    }
    None
}

// ---------------------------------------------------------------------------------------
// recurring (RRULE)
// ---------------------------------------------------------------------------------------

/// A syntactically valid RRULE text, split into its parts.
#[derive(Clone, Debug)]
struct RuleText {
    start: Option<DtStart>,
    /// The RRULE value without UNTIL (applied separately, see [`Until`]).
    body: String,
    until: Option<UntilText>,
    period: Option<Duration>,
}

#[derive(Clone, Debug)]
enum DtStart {
    Utc(NaiveDateTime),
    Zoned(NaiveDateTime, Tz),
    Floating(NaiveDateTime),
}

#[derive(Clone, Copy, Debug)]
enum UntilText {
    Utc(NaiveDateTime),
    Local(NaiveDateTime),
}

fn parse_rrule(text: &str) -> Result<RuleText, String> {
    let mut start = None;
    let mut rule: Option<&str> = None;
    for line in text.split('\n').map(|l| l.trim_end_matches('\r').trim()) {
        if line.is_empty() {
            continue;
        }
        let upper = line.to_ascii_uppercase();
        if rule.is_some() {
            return Err("only one DTSTART line followed by one RRULE line is allowed".into());
        }
        if upper.starts_with("DTSTART") {
            if start.is_some() {
                return Err("only one DTSTART line is allowed".into());
            }
            start = Some(parse_dtstart(line)?);
        } else if upper.starts_with("EXDATE") || upper.starts_with("RDATE") {
            return Err("EXDATE and RDATE are not supported".into());
        } else if upper.starts_with("EXRULE") {
            return Err("EXRULE is not supported".into());
        } else if let Some(body) = upper.strip_prefix("RRULE:") {
            rule = Some(&line[line.len() - body.len()..]);
        } else if upper.contains(':') {
            return Err(format!("unsupported line '{line}'"));
        } else {
            rule = Some(line);
        }
    }
    let rule = rule.ok_or("an RRULE is required (e.g. FREQ=DAILY)")?;
    let mut parts = Vec::new();
    let mut until = None;
    let mut seen: Vec<String> = Vec::new();
    let mut has_count = false;
    let mut freq = String::new();
    let mut interval: i64 = 1;
    for part in rule.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not NAME=VALUE"))?;
        let key = k.trim().to_ascii_uppercase();
        if seen.contains(&key) {
            return Err(format!("{key} is given twice"));
        }
        seen.push(key.clone());
        match key.as_str() {
            "FREQ" if v.eq_ignore_ascii_case("SECONDLY") => {
                return Err("FREQ=SECONDLY is not supported".into());
            }
            "UNTIL" => {
                until = Some(parse_until(v)?);
                continue;
            }
            "COUNT" => has_count = true,
            "FREQ" => freq = v.trim().to_ascii_uppercase(),
            "INTERVAL" => interval = v.trim().parse().unwrap_or(1),
            _ => {}
        }
        parts.push(part.to_string());
    }
    if !seen.iter().any(|k| k == "FREQ") {
        return Err("FREQ is required".into());
    }
    if has_count && until.is_some() {
        return Err("COUNT and UNTIL must not both be set".into());
    }
    // Rules of a fixed wall-clock period repeat exactly when restarted a whole number of
    // periods later; COUNT counts from the original start, and months and years vary in
    // length, so those always iterate from DTSTART (cheap: few occurrences per year).
    let unit = match freq.as_str() {
        "MINUTELY" => Some(60),
        "HOURLY" => Some(3600),
        "DAILY" => Some(86_400),
        "WEEKLY" => Some(7 * 86_400),
        _ => None,
    };
    let period = unit
        .filter(|_| !has_count && interval >= 1)
        .map(|u| Duration::seconds(u * interval));
    let parsed = RuleText {
        start,
        body: parts.join(";"),
        until,
        period,
    };
    // Let rrule judge the rest (values, BYxxx ranges) against a neutral start.
    let probe = NaiveDate::from_ymd_opt(2026, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .ok_or("internal date error")?;
    rule_set(&parsed.body, probe)?;
    Ok(parsed)
}

fn rule_set(body: &str, start: NaiveDateTime) -> Result<rrule::RRuleSet, String> {
    let rule: rrule::RRule<rrule::Unvalidated> = body
        .parse()
        .map_err(|e: rrule::RRuleError| clean_rrule_error(&e.to_string()))?;
    let dt = rrule::Tz::UTC.from_utc_datetime(&start);
    rule.build(dt)
        .map(|s| s.limit())
        .map_err(|e| clean_rrule_error(&e.to_string()))
}

fn clean_rrule_error(s: &str) -> String {
    let s = s
        .trim_start_matches("RRule parsing error: ")
        .trim_start_matches("RRule validation error: ");
    format!("invalid RRULE: {s}")
}

fn parse_dtstart(line: &str) -> Result<DtStart, String> {
    let (head, value) = line
        .split_once(':')
        .ok_or("DTSTART must look like DTSTART:20260101T090000Z")?;
    let mut tzid = None;
    for param in head.split(';').skip(1) {
        let (k, v) = param
            .split_once('=')
            .ok_or_else(|| format!("invalid DTSTART parameter '{param}'"))?;
        match k.to_ascii_uppercase().as_str() {
            "TZID" => tzid = Some(v),
            "VALUE" if v.eq_ignore_ascii_case("DATE-TIME") || v.eq_ignore_ascii_case("DATE") => {}
            _ => return Err(format!("unsupported DTSTART parameter '{param}'")),
        }
    }
    let (naive, utc) = parse_ical_datetime(value).ok_or_else(|| {
        format!("invalid DTSTART value '{value}' (expected YYYYMMDDTHHMMSS with optional Z)")
    })?;
    match (tzid, utc) {
        (Some(_), true) => Err("DTSTART cannot have both TZID and a Z suffix".into()),
        (Some(name), false) => timezones::zone(name)
            .map(|tz| DtStart::Zoned(naive, tz))
            .ok_or_else(|| format!("unsupported DTSTART TZID '{name}'")),
        (None, true) => Ok(DtStart::Utc(naive)),
        (None, false) => Ok(DtStart::Floating(naive)),
    }
}

fn parse_until(v: &str) -> Result<UntilText, String> {
    match parse_ical_datetime(v) {
        Some((t, true)) => Ok(UntilText::Utc(t)),
        // A date-only UNTIL includes that whole day.
        Some((t, false)) if v.len() == 8 => Ok(UntilText::Local(
            t + Duration::days(1) - Duration::seconds(1),
        )),
        Some((t, false)) => Ok(UntilText::Local(t)),
        None => Err(format!("invalid UNTIL '{v}'")),
    }
}

/// `YYYYMMDD`, `YYYYMMDDTHHMMSS` or `YYYYMMDDTHHMMSSZ` → (wall-clock time, is UTC).
fn parse_ical_datetime(v: &str) -> Option<(NaiveDateTime, bool)> {
    let v = v.trim();
    if v.len() == 8 {
        let d = NaiveDate::parse_from_str(v, "%Y%m%d").ok()?;
        return Some((d.and_hms_opt(0, 0, 0)?, false));
    }
    let (body, utc) = match v.strip_suffix(['Z', 'z']) {
        Some(b) => (b, true),
        None => (v, false),
    };
    if body.len() != 15 {
        return None;
    }
    let t = NaiveDateTime::parse_from_str(&body.to_ascii_uppercase(), "%Y%m%dT%H%M%S").ok()?;
    Some((t, utc))
}

fn build_recurrence(
    text: &RuleText,
    trigger_zone: Tz,
    created_at: DateTime<Utc>,
) -> Result<Recurrence, String> {
    let (start, zone) = match &text.start {
        Some(DtStart::Utc(t)) => (*t, Tz::UTC),
        Some(DtStart::Zoned(t, tz)) => (*t, *tz),
        Some(DtStart::Floating(t)) => (*t, trigger_zone),
        None => {
            let local = created_at.with_timezone(&trigger_zone).naive_local();
            (local.with_nanosecond(0).unwrap_or(local), trigger_zone)
        }
    };
    let until = text.until.map(|u| match u {
        UntilText::Utc(t) => Until::Instant(t.and_utc()),
        UntilText::Local(t) => Until::Local(t),
    });
    Ok(Recurrence {
        set: rule_set(&text.body, start)?,
        body: text.body.clone(),
        start,
        period: text.period,
        zone,
        until,
    })
}

impl Recurrence {
    fn next(
        &self,
        from: DateTime<Utc>,
        ok: impl Fn(DateTime<Utc>) -> bool,
    ) -> Option<DateTime<Utc>> {
        let floor = local_floor(self.zone, from);
        // Restart at least one period before the floor so that nothing at or after it is lost.
        let restarted = self.period.and_then(|p| {
            let periods = (floor - self.start).num_seconds() / p.num_seconds() - 1;
            if periods < 1 {
                return None;
            }
            let start = self.start + Duration::seconds(p.num_seconds() * periods);
            rule_set(&self.body, start).ok()
        });
        let set = restarted.as_ref().unwrap_or(&self.set);
        for local in set.into_iter().take(MAX_SCAN) {
            let local = local.naive_utc();
            if let Some(Until::Local(u)) = self.until
                && local > u
            {
                return None;
            }
            if local < floor {
                continue;
            }
            let instant = local_to_utc(&self.zone, local)?;
            if let Some(Until::Instant(u)) = self.until
                && instant > u
            {
                return None;
            }
            if ok(instant) {
                return Some(instant);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn rule(kind: &str, text: &str) -> ScheduleRule {
        ScheduleRule {
            kind: kind.into(),
            date_time: (kind == "once").then(|| text.to_string()),
            expression: (kind == "cron").then(|| text.to_string()),
            rrule: (kind == "recurring").then(|| text.to_string()),
            jitter: None,
        }
    }

    fn sched(kind: &str, text: &str, tz: &str, created: &str) -> Schedule {
        Schedule::compile(&rule(kind, text), Some(tz), utc(created)).unwrap()
    }

    fn next_n(s: &Schedule, after: &str, n: usize) -> Vec<String> {
        s.occurrences_after(utc(after))
            .take(n)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect()
    }

    fn check(v: Value, tz: Option<&str>) -> Vec<(String, String)> {
        let mut errs = FieldErrors::new();
        let r = validate(
            &v,
            "scheduleRule",
            tz,
            utc("2026-01-15T12:00:00Z"),
            &mut errs,
        );
        assert_eq!(r.is_some(), errs.is_empty());
        errs.0
            .into_iter()
            .map(|e| (e.field, e.code.unwrap_or_default()))
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    // --- validation ---------------------------------------------------------------------

    #[test]
    fn validates_shape() {
        assert!(
            check(
                json!({"type": "once", "dateTime": "2026-05-01T09:00:00Z"}),
                None
            )
            .is_empty()
        );
        assert_eq!(
            check(json!({}), None),
            pairs(&[("scheduleRule.type", "required")])
        );
        assert_eq!(
            check(json!({"type": "weekly"}), None),
            pairs(&[("scheduleRule.type", "invalid_value")])
        );
        assert_eq!(
            check(json!({"type": "cron"}), Some("UTC")),
            pairs(&[("scheduleRule.expression", "required")])
        );
        assert_eq!(
            check(
                json!({"type": "once", "dateTime": "2026-05-01T09:00:00Z", "expression": "* * * * *", "rrule": null}),
                None
            ),
            pairs(&[("scheduleRule.expression", "not_allowed")])
        );
        assert_eq!(
            check(json!({"type": "cron", "expression": 5}), Some("UTC")),
            pairs(&[("scheduleRule.expression", "invalid_type")])
        );
        assert_eq!(
            check(json!([]), None),
            pairs(&[("scheduleRule", "invalid_type")])
        );
    }

    #[test]
    fn validates_jitter() {
        let ok = json!({"type": "once", "dateTime": "2026-05-01T09:00:00Z",
                        "jitter": {"beforeMinutes": 0, "afterMinutes": 1440}});
        assert!(check(ok, None).is_empty());
        let nulls = json!({"type": "once", "dateTime": "2026-05-01T09:00:00Z",
                           "jitter": {"beforeMinutes": null}});
        assert!(check(nulls, None).is_empty());
        let bad = json!({"type": "once", "dateTime": "2026-05-01T09:00:00Z",
                         "jitter": {"beforeMinutes": -1, "afterMinutes": 1441}});
        assert_eq!(
            check(bad, None),
            pairs(&[
                ("scheduleRule.jitter.beforeMinutes", "invalid_value"),
                ("scheduleRule.jitter.afterMinutes", "invalid_value")
            ])
        );
        let frac = json!({"type": "once", "dateTime": "2026-05-01T09:00:00Z",
                          "jitter": {"afterMinutes": 1.5}});
        assert_eq!(
            check(frac, None),
            pairs(&[("scheduleRule.jitter.afterMinutes", "invalid_type")])
        );
        let not_obj = json!({"type": "once", "dateTime": "2026-05-01T09:00:00Z", "jitter": 5});
        assert_eq!(
            check(not_obj, None),
            pairs(&[("scheduleRule.jitter", "invalid_type")])
        );
    }

    #[test]
    fn once_offset_and_zone() {
        assert!(
            check(
                json!({"type": "once", "dateTime": "2026-05-01T09:00:00+02:00"}),
                None
            )
            .is_empty()
        );
        assert!(
            check(
                json!({"type": "once", "dateTime": "2026-05-01T09:00:00"}),
                Some("Europe/Berlin")
            )
            .is_empty()
        );
        assert!(
            check(
                json!({"type": "once", "dateTime": "2026-05-01T09:00"}),
                Some("Europe/Berlin")
            )
            .is_empty()
        );
        assert_eq!(
            check(
                json!({"type": "once", "dateTime": "2026-05-01T09:00:00"}),
                None
            ),
            pairs(&[("timezone", "required")])
        );
        assert_eq!(
            check(json!({"type": "once", "dateTime": "tomorrow"}), Some("UTC")),
            pairs(&[("scheduleRule.dateTime", "invalid_value")])
        );
        assert_eq!(
            check(
                json!({"type": "once", "dateTime": "2026-02-30T09:00:00"}),
                Some("UTC")
            ),
            pairs(&[("scheduleRule.dateTime", "invalid_value")])
        );
    }

    #[test]
    fn cron_syntax() {
        let ok = [
            "* * * * *",
            "*/5 * * * *",
            "0 9 * * MON-FRI",
            "0 9 * * mon,wed,fri",
            "0 0 1 jan,Jul *",
            "0 9 * * FRI-SUN",
            "0 9 * * 7",
            "0 9 * * 0",
            "5-55/10 * * * *",
            "5/15 * * * *",
            "30 0 9 * * *",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@HOURLY",
            "0 0 29 2 *",
        ];
        for e in ok {
            assert!(
                check(json!({"type": "cron", "expression": e}), Some("UTC")).is_empty(),
                "{e}"
            );
        }
        let bad = [
            "",
            "* * * *",
            "* * * * * * *",
            "0 0 L * *",
            "0 0 15W * *",
            "0 0 * * 5L",
            "0 0 * * 1#2",
            "0 0 ? * *",
            "0 0 * * ?",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "a * * * *",
            "@every_minute",
            "0 0 * FOO *",
            "0 0 * * JAN",
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
        ];
        for e in bad {
            assert_eq!(
                check(json!({"type": "cron", "expression": e}), Some("UTC")),
                pairs(&[("scheduleRule.expression", "invalid_cron")]),
                "{e}"
            );
        }
    }

    #[test]
    fn cron_and_recurring_need_a_zone() {
        assert_eq!(
            check(json!({"type": "cron", "expression": "* * * * *"}), None),
            pairs(&[("timezone", "required")])
        );
        assert_eq!(
            check(json!({"type": "recurring", "rrule": "FREQ=DAILY"}), None),
            pairs(&[("timezone", "required")])
        );
        // An unsupported zone is the caller's to report.
        assert!(
            check(
                json!({"type": "cron", "expression": "* * * * *"}),
                Some("Mars/Base")
            )
            .is_empty()
        );
    }

    #[test]
    fn rrule_syntax() {
        let ok = [
            "FREQ=DAILY",
            "RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=9;BYMINUTE=0",
            "rrule:FREQ=MONTHLY;BYMONTHDAY=-1",
            "DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY",
            "DTSTART;TZID=Europe/Paris:20260101T090000\r\nRRULE:FREQ=DAILY;COUNT=3",
            "DTSTART:20260101T090000\nFREQ=HOURLY;INTERVAL=2",
            "FREQ=DAILY;UNTIL=20260201T000000Z",
            "FREQ=YEARLY;UNTIL=20300101",
            "FREQ=MINUTELY;INTERVAL=15\n",
        ];
        for r in ok {
            assert!(
                check(json!({"type": "recurring", "rrule": r}), Some("UTC")).is_empty(),
                "{r}"
            );
        }
        let bad = [
            "",
            "FREQ=SECONDLY",
            "FREQ=secondly",
            "FREQ=FORTNIGHTLY",
            "INTERVAL=2",
            "FREQ=DAILY;BYHOUR=25",
            "FREQ=DAILY;COUNT=x",
            "FREQ=DAILY;COUNT=2;UNTIL=20260201T000000Z",
            "FREQ=DAILY;FREQ=WEEKLY",
            "DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY\nEXDATE:20260102T090000Z",
            "DTSTART:20260101T090000Z\nRDATE:20260102T090000Z\nRRULE:FREQ=DAILY",
            "RRULE:FREQ=DAILY\nRRULE:FREQ=WEEKLY",
            "DTSTART:2026-01-01\nRRULE:FREQ=DAILY",
            "DTSTART;TZID=Mars/Base:20260101T090000\nRRULE:FREQ=DAILY",
            "DTSTART;TZID=Europe/Paris:20260101T090000Z\nRRULE:FREQ=DAILY",
            "FREQ=DAILY;UNTIL=soon",
            "FREQ=DAILY\nDTSTART:20260101T090000Z",
            "X-FOO:bar",
        ];
        for r in bad {
            assert_eq!(
                check(json!({"type": "recurring", "rrule": r}), Some("UTC")),
                pairs(&[("scheduleRule.rrule", "invalid_rrule")]),
                "{r}"
            );
        }
    }

    // --- once ---------------------------------------------------------------------------

    #[test]
    fn once_fires_once_and_never_in_the_past() {
        let s = sched(
            "once",
            "2026-05-01T09:00:00+02:00",
            "UTC",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 3),
            ["2026-05-01T07:00:00Z"]
        );
        assert!(s.next_nominal(utc("2026-05-01T07:00:00Z")).is_none());
        // Already past at creation.
        let s = sched(
            "once",
            "2025-05-01T09:00:00Z",
            "UTC",
            "2026-01-01T00:00:00Z",
        );
        assert!(s.next_nominal(utc("2020-01-01T00:00:00Z")).is_none());
        // Offset-less: local to the trigger's zone.
        let s = sched(
            "once",
            "2026-07-01T09:00:00",
            "Europe/Berlin",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 1),
            ["2026-07-01T07:00:00Z"]
        );
    }

    #[test]
    fn once_in_a_gap_and_an_overlap() {
        // Berlin springs forward 2026-03-29 02:00 → 03:00 (CET → CEST).
        let s = sched(
            "once",
            "2026-03-29T02:30:00",
            "Europe/Berlin",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 1),
            ["2026-03-29T01:00:00Z"]
        );
        // Falls back 2026-10-25 03:00 → 02:00: 02:30 happens twice, the first is CEST.
        let s = sched(
            "once",
            "2026-10-25T02:30:00",
            "Europe/Berlin",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 1),
            ["2026-10-25T00:30:00Z"]
        );
    }

    // --- cron ---------------------------------------------------------------------------

    #[test]
    fn cron_basic_sequence() {
        let s = sched("cron", "*/15 9 * * MON-FRI", "UTC", "2026-01-01T00:00:00Z");
        // 2026-01-02 is a Friday, 01-03/04 the weekend.
        assert_eq!(
            next_n(&s, "2026-01-02T09:40:00Z", 4),
            [
                "2026-01-02T09:45:00Z",
                "2026-01-05T09:00:00Z",
                "2026-01-05T09:15:00Z",
                "2026-01-05T09:30:00Z"
            ]
        );
        let s = sched("cron", "30 0 9 * * *", "UTC", "2026-01-01T00:00:00Z");
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 1),
            ["2026-01-01T09:00:30Z"]
        );
    }

    #[test]
    fn cron_strictly_after_and_never_before_creation() {
        let s = sched("cron", "0 * * * *", "UTC", "2026-01-01T10:30:00Z");
        assert_eq!(
            next_n(&s, "2026-01-01T11:00:00Z", 1),
            ["2026-01-01T12:00:00Z"]
        );
        assert_eq!(
            next_n(&s, "2025-01-01T00:00:00Z", 1),
            ["2026-01-01T11:00:00Z"]
        );
        // An occurrence exactly at createdAt may fire.
        let s = sched("cron", "0 * * * *", "UTC", "2026-01-01T11:00:00Z");
        assert_eq!(
            next_n(&s, "2025-01-01T00:00:00Z", 1),
            ["2026-01-01T11:00:00Z"]
        );
    }

    #[test]
    fn cron_day_fields_are_ored() {
        // Day 13 of the month OR any Friday.
        let s = sched("cron", "0 0 13 * FRI", "UTC", "2026-01-01T00:00:00Z");
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 4),
            [
                "2026-01-02T00:00:00Z",
                "2026-01-09T00:00:00Z",
                "2026-01-13T00:00:00Z",
                "2026-01-16T00:00:00Z"
            ]
        );
        // Only day-of-week restricted: just Fridays.
        let s = sched("cron", "0 0 * * 5", "UTC", "2026-01-01T00:00:00Z");
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 2),
            ["2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z"]
        );
    }

    #[test]
    fn cron_sunday_is_0_and_7() {
        let a = sched("cron", "0 12 * * 0", "UTC", "2026-01-01T00:00:00Z");
        let b = sched("cron", "0 12 * * 7", "UTC", "2026-01-01T00:00:00Z");
        let c = sched("cron", "0 12 * * sun", "UTC", "2026-01-01T00:00:00Z");
        let want = ["2026-01-04T12:00:00Z", "2026-01-11T12:00:00Z"];
        for s in [a, b, c] {
            assert_eq!(next_n(&s, "2026-01-01T00:00:00Z", 2), want);
        }
    }

    #[test]
    fn cron_spring_forward_gap_fires_at_first_valid_instant() {
        // New York 2026-03-08: 02:00 EST → 03:00 EDT.
        let s = sched(
            "cron",
            "30 2 * * *",
            "America/New_York",
            "2026-03-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T07:30:00Z", // 02:30 EST
                "2026-03-08T07:00:00Z", // gap → 03:00 EDT
                "2026-03-09T06:30:00Z", // 02:30 EDT
            ]
        );
        // Every 30 minutes through the gap: 02:00 and 02:30 both map to 03:00 and fire once.
        let s = sched(
            "cron",
            "*/30 * * * *",
            "America/New_York",
            "2026-03-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-03-08T06:00:00Z", 4),
            [
                "2026-03-08T06:30:00Z", // 01:30 EST
                "2026-03-08T07:00:00Z", // 02:00/02:30 (gap) → 03:00 EDT
                "2026-03-08T07:30:00Z", // 03:30 EDT
                "2026-03-08T08:00:00Z",
            ]
        );
    }

    #[test]
    fn cron_fall_back_overlap_fires_once_at_the_earlier_instant() {
        // New York 2026-11-01: 02:00 EDT → 01:00 EST; 01:30 happens twice.
        let s = sched(
            "cron",
            "30 1 * * *",
            "America/New_York",
            "2026-10-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-10-31T00:00:00Z", 3),
            [
                "2026-10-31T05:30:00Z", // 01:30 EDT
                "2026-11-01T05:30:00Z", // first 01:30 (EDT) only
                "2026-11-02T06:30:00Z", // 01:30 EST
            ]
        );
        // Asking from inside the repeated hour does not go back to the earlier instant.
        assert_eq!(
            next_n(&s, "2026-11-01T06:10:00Z", 1),
            ["2026-11-02T06:30:00Z"]
        );
        // Hourly across the overlap: each wall-clock hour once.
        let s = sched(
            "cron",
            "0 * * * *",
            "America/New_York",
            "2026-10-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-11-01T04:30:00Z", 3),
            [
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T07:00:00Z", // 02:00 EST (01:00 EST is the repeat)
                "2026-11-01T08:00:00Z",
            ]
        );
    }

    #[test]
    fn cron_europe_berlin_transitions() {
        let s = sched("cron", "0 9 * * *", "Europe/Berlin", "2026-01-01T00:00:00Z");
        assert_eq!(
            next_n(&s, "2026-03-28T00:00:00Z", 2),
            ["2026-03-28T08:00:00Z", "2026-03-29T07:00:00Z"]
        );
        assert_eq!(
            next_n(&s, "2026-10-24T00:00:00Z", 2),
            ["2026-10-24T07:00:00Z", "2026-10-25T08:00:00Z"]
        );
        let s = sched(
            "cron",
            "15 2 * * *",
            "Europe/Berlin",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:15:00Z"]
        );
    }

    #[test]
    fn lord_howe_half_hour_shift() {
        // Lord Howe: +10:30 standard, +11 summer. 2026-04-05 02:00 → 01:30 (overlap of 30
        // minutes); 2026-10-04 02:00 → 02:30 (gap of 30 minutes).
        let s = sched(
            "cron",
            "45 1 * * *",
            "Australia/Lord_Howe",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-04-03T12:00:00Z", 3),
            [
                "2026-04-03T14:45:00Z", // 01:45 +11
                "2026-04-04T14:45:00Z", // 01:45 +11 (earlier of the two)
                "2026-04-05T15:15:00Z", // 01:45 +10:30
            ]
        );
        let s = sched(
            "cron",
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-10-02T12:00:00Z", 3),
            [
                "2026-10-02T15:45:00Z", // 02:15 +10:30
                "2026-10-03T15:30:00Z", // gap → 02:30 +11
                "2026-10-04T15:15:00Z", // 02:15 +11
            ]
        );
    }

    // --- recurring ----------------------------------------------------------------------

    #[test]
    fn rrule_without_dtstart_anchors_at_creation() {
        let s = sched(
            "recurring",
            "FREQ=DAILY",
            "Europe/Berlin",
            "2026-01-10T08:15:30.750Z",
        );
        assert_eq!(
            next_n(&s, "2026-01-10T08:15:30.750Z", 2),
            ["2026-01-11T08:15:30Z", "2026-01-12T08:15:30Z"]
        );
        // Wall-clock time is kept across DST (09:15:30 Berlin).
        assert_eq!(
            next_n(&s, "2026-04-01T00:00:00Z", 1),
            ["2026-04-01T07:15:30Z"]
        );
    }

    #[test]
    fn rrule_with_dtstart_variants() {
        let s = sched(
            "recurring",
            "DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY",
            "Europe/Berlin",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-06-01T00:00:00Z", 1),
            ["2026-06-01T09:00:00Z"]
        );
        let s = sched(
            "recurring",
            "DTSTART;TZID=Europe/Paris:20260101T090000\r\nRRULE:FREQ=DAILY",
            "UTC",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 1),
            ["2026-01-01T08:00:00Z"]
        );
        assert_eq!(
            next_n(&s, "2026-06-01T00:00:00Z", 1),
            ["2026-06-01T07:00:00Z"]
        );
        let s = sched(
            "recurring",
            "DTSTART:20260101T090000\nFREQ=WEEKLY;BYDAY=MO,TH",
            "America/New_York",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-01T14:00:00Z",
                "2026-01-05T14:00:00Z",
                "2026-01-08T14:00:00Z"
            ]
        );
    }

    #[test]
    fn rrule_count_and_until() {
        let s = sched(
            "recurring",
            "DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY;COUNT=3",
            "UTC",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 10),
            [
                "2026-01-01T09:00:00Z",
                "2026-01-02T09:00:00Z",
                "2026-01-03T09:00:00Z"
            ]
        );
        // COUNT counts from DTSTART, also occurrences before the trigger existed.
        let s = sched(
            "recurring",
            "DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY;COUNT=3",
            "UTC",
            "2026-01-02T12:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 10),
            ["2026-01-03T09:00:00Z"]
        );
        let s = sched(
            "recurring",
            "DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY;UNTIL=20260103T090000Z",
            "UTC",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(next_n(&s, "2026-01-01T12:00:00Z", 10).len(), 2);
        let s = sched(
            "recurring",
            "DTSTART;TZID=Europe/Berlin:20260101T090000\nRRULE:FREQ=DAILY;UNTIL=20260102",
            "UTC",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:00Z", 10),
            ["2026-01-01T08:00:00Z", "2026-01-02T08:00:00Z"]
        );
        assert!(s.next_nominal(utc("2026-01-02T08:00:00Z")).is_none());
    }

    #[test]
    fn restarting_late_keeps_the_sequence() {
        let rules = [
            "DTSTART:20200101T000700Z\nRRULE:FREQ=HOURLY;INTERVAL=5;BYMINUTE=7,37",
            "DTSTART;TZID=America/New_York:20200103T093000\nRRULE:FREQ=WEEKLY;INTERVAL=3;BYDAY=MO,FR",
            "DTSTART:20251201T000000\nRRULE:FREQ=MINUTELY;INTERVAL=7",
            "DTSTART:20200101T000000Z\nRRULE:FREQ=DAILY;INTERVAL=4;BYHOUR=1,13;BYSETPOS=-1",
            "DTSTART:20200101T013000\nRRULE:FREQ=DAILY;INTERVAL=3",
        ];
        for r in rules {
            let fast = sched("recurring", r, "America/New_York", "2020-01-01T00:00:00Z");
            let mut slow = fast.clone();
            if let Kind::Recurring(rec) = &mut slow.kind {
                assert!(rec.period.is_some(), "{r}");
                rec.period = None;
            }
            for after in ["2026-03-07T00:00:00Z", "2026-10-31T20:00:00Z"] {
                assert_eq!(next_n(&fast, after, 12), next_n(&slow, after, 12), "{r}");
            }
        }
        // Anchored long ago, still immediate.
        let s = sched(
            "recurring",
            "DTSTART:19000101T000000Z\nRRULE:FREQ=MINUTELY",
            "UTC",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:30Z", 2),
            ["2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"]
        );
    }

    #[test]
    fn rrule_dst_gap_and_overlap() {
        let s = sched(
            "recurring",
            "DTSTART:20260301T023000\nRRULE:FREQ=DAILY",
            "America/New_York",
            "2026-03-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z"
            ]
        );
        let s = sched(
            "recurring",
            "DTSTART:20261030T013000\nRRULE:FREQ=DAILY",
            "America/New_York",
            "2026-10-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
        // Several wall-clock occurrences on one instant fire once: 02:00 and 02:30 in the gap.
        let s = sched(
            "recurring",
            "DTSTART:20260308T000000\nRRULE:FREQ=MINUTELY;INTERVAL=30",
            "America/New_York",
            "2026-03-01T00:00:00Z",
        );
        assert_eq!(
            next_n(&s, "2026-03-08T06:15:00Z", 3),
            [
                "2026-03-08T06:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T07:30:00Z"
            ]
        );
    }

    // --- jitter -------------------------------------------------------------------------

    #[test]
    fn jitter_matches_the_formula() {
        let id = Uuid::parse_str("0193a8c2-7d1e-7c4e-9a0b-3f2d1c0b9a87").unwrap();
        let nominal = utc("2026-05-01T09:00:00Z");
        let mut h = Sha256::new();
        h.update(id.as_bytes());
        h.update(nominal.timestamp().to_be_bytes());
        let d = h.finalize();
        let hv = u64::from_be_bytes(d[..8].try_into().unwrap());
        let (before, after) = (5 * 60, 10 * 60);
        let want = (hv % (before + after + 1) as u64) as i64 - before;
        assert_eq!(jitter_offset(id, nominal, before, after), want);
        assert!((-before..=after).contains(&want));
        assert_eq!(jitter_offset(id, nominal, 0, 0), 0);
    }

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        let id = Uuid::now_v7();
        let mut r = rule("cron", "0 * * * *");
        r.jitter = Some(Jitter {
            before_minutes: Some(10),
            after_minutes: Some(20),
        });
        let created = utc("2026-01-01T00:00:00Z");
        let a = next_fire_time(id, &r, Some("UTC"), created, created).unwrap();
        let b = next_fire_time(id, &r, Some("UTC"), created, created).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.0, utc("2026-01-01T01:00:00Z"));
        let s = Schedule::compile(&r, Some("UTC"), created).unwrap();
        let mut distinct = std::collections::HashSet::new();
        for n in s.occurrences_after(created).take(200) {
            let off = (s.fire_instant(id, n) - n).num_seconds();
            assert!((-600..=1200).contains(&off));
            distinct.insert(off);
        }
        assert!(distinct.len() > 100, "offsets vary per occurrence");
        // Only "before": never later than nominal.
        r.jitter = Some(Jitter {
            before_minutes: Some(1),
            after_minutes: None,
        });
        let (n, f) = next_fire_time(id, &r, Some("UTC"), created, created).unwrap();
        assert!(f <= n && n - f <= Duration::seconds(60));
    }

    #[test]
    fn compile_rejects_what_validation_rejects() {
        let created = utc("2026-01-01T00:00:00Z");
        assert!(Schedule::compile(&rule("cron", "* * * * *"), None, created).is_err());
        assert!(Schedule::compile(&rule("cron", "0 0 L * *"), Some("UTC"), created).is_err());
        assert!(
            Schedule::compile(&rule("recurring", "FREQ=SECONDLY"), Some("UTC"), created).is_err()
        );
        assert!(Schedule::compile(&rule("once", "2026-01-01T00:00:00"), None, created).is_err());
        assert!(Schedule::compile(&rule("cron", "* * * * *"), Some("Nope/Nope"), created).is_err());
    }

    // --- properties ---------------------------------------------------------------------
    //
    // Random cron and RRULE rules in zones with DST (one with a 30-minute shift, one at
    // +12:45), over windows that often start just before a transition: the occurrences are
    // strictly increasing, every one falls on its own wall-clock time or on the end of a
    // spring-forward gap (never inside a gap), no wall-clock time fires twice across a
    // fall-back overlap, and the sequence equals an independent computation — the rule's
    // wall-clock times enumerated directly from its fields, each mapped to an instant using
    // only UTC → local conversions.

    use chrono::{Datelike, Weekday};

    const PROP_ZONES: [&str; 8] = [
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
        "America/St_Johns",
        "Europe/London",
        "Asia/Kolkata",
        "UTC",
    ];
    /// Occurrences compared per rule (a year, or fewer for frequent rules).
    const PROP_CAP: usize = 1500;

    /// Rules per property test; `FLOWRUN_PROP_CASES` runs more, `FLOWRUN_PROP_SEED` others.
    fn prop_cases() -> (u64, usize) {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        (
            var("FLOWRUN_PROP_SEED").unwrap_or(0),
            var("FLOWRUN_PROP_CASES").map_or(60, |n| n as usize),
        )
    }

    /// SplitMix64: a small deterministic generator, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u32) -> u32 {
            (self.next() % u64::from(n)) as u32
        }

        fn range(&mut self, lo: u32, hi: u32) -> u32 {
            lo + self.below(hi - lo + 1)
        }

        fn chance(&mut self, percent: u32) -> bool {
            self.below(100) < percent
        }

        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.below(xs.len() as u32) as usize]
        }

        /// `k` distinct sorted values in `lo..=hi`.
        fn distinct(&mut self, k: usize, lo: u32, hi: u32) -> Vec<u32> {
            let mut v: Vec<u32> = Vec::new();
            while v.len() < k {
                let x = self.range(lo, hi);
                if !v.contains(&x) {
                    v.push(x);
                }
            }
            v.sort_unstable();
            v
        }
    }

    fn tz_of(name: &str) -> Tz {
        timezones::zone(name).unwrap()
    }

    fn local_of(tz: Tz, u: DateTime<Utc>) -> NaiveDateTime {
        u.with_timezone(&tz).naive_local()
    }

    fn offset_secs(tz: Tz, u: DateTime<Utc>) -> i64 {
        i64::from(
            tz.offset_from_utc_datetime(&u.naive_utc())
                .fix()
                .local_minus_utc(),
        )
    }

    /// The instant a wall-clock time fires at, computed only from UTC → local conversions:
    /// the earliest instant showing exactly `l`, else (a gap) the first instant whose local
    /// time is later than `l`, found by bisection across the transition.
    fn independent_instant(tz: Tz, l: NaiveDateTime) -> DateTime<Utc> {
        let as_utc = l.and_utc();
        let mut offsets: Vec<i64> = [-2, -1, 0, 1, 2]
            .iter()
            .map(|d| offset_secs(tz, as_utc + Duration::days(*d)))
            .collect();
        offsets.sort_unstable();
        offsets.dedup();
        let exact = offsets
            .iter()
            .map(|off| as_utc - Duration::seconds(*off))
            .filter(|u| local_of(tz, *u) == l)
            .min();
        if let Some(u) = exact {
            return u;
        }
        let (lo, hi) = (
            as_utc - Duration::seconds(offsets[offsets.len() - 1]),
            as_utc - Duration::seconds(offsets[0]),
        );
        assert!(local_of(tz, lo) < l && local_of(tz, hi) > l, "{l} in a gap");
        // Whole seconds: transitions fall on them.
        let (mut lo, mut hi) = (lo.timestamp(), hi.timestamp());
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if local_of(tz, at(mid)) > l {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        at(hi)
    }

    /// Instants where the zone's offset changes during 2026.
    fn transitions(tz: Tz) -> Vec<DateTime<Utc>> {
        let start = utc("2026-01-01T00:00:00Z");
        let mut out = Vec::new();
        let mut prev = offset_secs(tz, start);
        for h in 1..=366 * 24 {
            let u = start + Duration::hours(h);
            let off = offset_secs(tz, u);
            if off != prev {
                out.push(u);
                prev = off;
            }
        }
        out
    }

    /// A window start: anywhere in 2026, or a day before one of the zone's transitions.
    fn window_start(rng: &mut Rng, tz: Tz) -> DateTime<Utc> {
        let tr = transitions(tz);
        if !tr.is_empty() && rng.chance(60) {
            *rng.pick(&tr) - Duration::hours(i64::from(rng.range(1, 36)))
        } else {
            utc("2026-01-01T00:00:00Z") + Duration::seconds(i64::from(rng.below(365 * 86_400)))
        }
    }

    /// The expected fire instants: wall-clock times mapped, deduplicated, within
    /// `(start, start + 1 year]`, at most [`PROP_CAP`].
    fn expected_instants(
        tz: Tz,
        locals: impl IntoIterator<Item = NaiveDateTime>,
        start: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let end = start + Duration::days(365);
        // Offsets stay within a day of UTC: cheap bounds before mapping.
        let (lo, hi) = (
            start.naive_utc() - Duration::days(2),
            end.naive_utc() + Duration::days(2),
        );
        let mut out: Vec<DateTime<Utc>> = locals
            .into_iter()
            .filter(|l| *l >= lo && *l <= hi)
            .map(|l| independent_instant(tz, l))
            .filter(|u| *u > start && *u <= end)
            .collect();
        out.sort_unstable();
        out.dedup();
        out.truncate(PROP_CAP);
        out
    }

    /// The schedule's occurrences over the same window as [`expected_instants`].
    fn actual_instants(s: &Schedule, start: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let end = start + Duration::days(365);
        s.occurrences_after(start)
            .take_while(|u| *u <= end)
            .take(PROP_CAP)
            .collect()
    }

    /// Checks the properties; `is_own_time` says whether a wall-clock time is one of the
    /// rule's.
    fn check_properties(
        label: &str,
        tz: Tz,
        actual: &[DateTime<Utc>],
        expected: &[DateTime<Utc>],
        is_own_time: impl Fn(NaiveDateTime) -> bool,
    ) {
        for w in actual.windows(2) {
            assert!(w[0] < w[1], "{label}: not strictly increasing at {w:?}");
            if w[1] - w[0] <= Duration::hours(3) {
                assert_ne!(
                    local_of(tz, w[0]),
                    local_of(tz, w[1]),
                    "{label}: one wall-clock time fired twice ({w:?})"
                );
            }
        }
        for u in actual {
            let gap_end = offset_secs(tz, *u) > offset_secs(tz, *u - Duration::seconds(1));
            assert!(
                is_own_time(local_of(tz, *u)) || gap_end,
                "{label}: {u} (local {}) is neither a time of the rule nor a gap's end",
                local_of(tz, *u)
            );
        }
        if actual != expected {
            let first = actual
                .iter()
                .zip(expected)
                .position(|(a, e)| a != e)
                .unwrap_or(actual.len().min(expected.len()));
            panic!(
                "{label}: {} occurrences, expected {}; first difference at #{first}: \
                 got {:?}, want {:?}",
                actual.len(),
                expected.len(),
                actual.get(first),
                expected.get(first)
            );
        }
    }

    /// One generated cron field: its text and the values it allows.
    struct CronField {
        text: String,
        values: Vec<u32>,
    }

    const MONTH_NAMES: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

    /// A field over `lo..=hi`. `forms` lists the allowed shapes: `*`, one value, a list, a
    /// range, `*/k`, `a-b/k`, `a/k`; `min_step` bounds steps from below (density).
    fn gen_field(rng: &mut Rng, lo: u32, hi: u32, forms: &[u8], min_step: u32) -> CronField {
        let all: Vec<u32> = (lo..=hi).collect();
        match *rng.pick(forms) {
            b'*' => CronField {
                text: "*".into(),
                values: all,
            },
            b'1' => {
                let v = rng.range(lo, hi);
                CronField {
                    text: v.to_string(),
                    values: vec![v],
                }
            }
            b'l' => {
                let k = rng.range(2, 3) as usize;
                let v = rng.distinct(k, lo, hi);
                // Lists are written in any order.
                let mut shown = v.clone();
                if rng.chance(50) {
                    shown.reverse();
                }
                CronField {
                    text: shown
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    values: v,
                }
            }
            b'r' => {
                let a = rng.range(lo, hi - 1);
                let b = rng.range(a + 1, (a + 3).min(hi));
                CronField {
                    text: format!("{a}-{b}"),
                    values: (a..=b).collect(),
                }
            }
            b's' => {
                let k = rng.range(min_step.max(2), (hi - lo).max(min_step.max(2)));
                CronField {
                    text: format!("*/{k}"),
                    values: (lo..=hi).step_by(k as usize).collect(),
                }
            }
            b'R' => {
                let a = rng.range(lo, hi - 1);
                let b = rng.range(a + 1, hi);
                let k = rng.range(min_step.max(2), (b - a).max(min_step.max(2)));
                CronField {
                    text: format!("{a}-{b}/{k}"),
                    values: (a..=b).step_by(k as usize).collect(),
                }
            }
            _ => {
                let a = rng.range(lo, hi);
                let k = rng.range(min_step.max(2), (hi - lo).max(min_step.max(2)));
                CronField {
                    text: format!("{a}/{k}"),
                    values: (a..=hi).step_by(k as usize).collect(),
                }
            }
        }
    }

    /// Writes single values, lists and ranges of a month or weekday field with names.
    fn with_names(f: CronField, names: &[&str], base: u32) -> CronField {
        if f.text.contains('*') || f.text.contains('/') {
            return f;
        }
        let text = f
            .text
            .split(',')
            .map(|item| {
                item.split('-')
                    .map(|n| {
                        let v: u32 = n.parse().unwrap();
                        names[((v - base) as usize) % names.len()].to_string()
                    })
                    .collect::<Vec<_>>()
                    .join("-")
            })
            .collect::<Vec<_>>()
            .join(",");
        CronField { text, ..f }
    }

    #[test]
    fn property_cron_rules_in_dst_zones() {
        let (seed, cases) = prop_cases();
        let mut rng = Rng(0x5eed_c0de ^ seed);
        for case in 0..cases {
            let zone = *rng.pick(&PROP_ZONES);
            let tz = tz_of(zone);
            let seconds = rng
                .chance(30)
                .then(|| gen_field(&mut rng, 0, 59, b"1lrsR", 15));
            // Dense minutes only with few hours, so a year stays a few thousand runs.
            let minutes = gen_field(&mut rng, 0, 59, b"1lrsRa", 10);
            let hours = gen_field(&mut rng, 0, 23, b"**1lrsRa", 2);
            let dom = gen_field(&mut rng, 1, 28, b"***1lr", 2);
            let mut month = gen_field(&mut rng, 1, 12, b"****lr", 2);
            let mut dow = gen_field(&mut rng, 0, 6, b"***1lr", 2);
            if rng.chance(40) {
                month = with_names(month, &MONTH_NAMES, 1);
            }
            if rng.chance(40) {
                dow = with_names(dow, &DAY_NAMES, 0);
            } else if dow.values == [0] && rng.chance(50) {
                dow.text = "7".into(); // Sunday, spelled 7
            }
            let expr = format!(
                "{}{} {} {} {} {}",
                seconds
                    .as_ref()
                    .map(|s| format!("{} ", s.text))
                    .unwrap_or_default(),
                minutes.text,
                hours.text,
                dom.text,
                month.text,
                dow.text
            );
            let label = format!("case {case}: cron '{expr}' in {zone}");
            let created = utc("2025-06-01T00:00:00Z");
            let s = Schedule::compile(&rule("cron", &expr), Some(zone), created)
                .unwrap_or_else(|e| panic!("{label}: {e}"));

            let secs = seconds.as_ref().map_or(vec![0], |s| s.values.clone());
            let both_days = dom.text != "*" && dow.text != "*";
            let day_ok = |d: NaiveDate| {
                // `*` is every day (the generated values stop at 28).
                let in_dom = dom.text == "*" || dom.values.contains(&d.day());
                let in_dow = dow.values.contains(&d.weekday().num_days_from_sunday());
                month.values.contains(&d.month())
                    && if both_days {
                        in_dom || in_dow
                    } else {
                        in_dom && in_dow
                    }
            };
            let is_own_time = |l: NaiveDateTime| {
                day_ok(l.date())
                    && hours.values.contains(&l.hour())
                    && minutes.values.contains(&l.minute())
                    && secs.contains(&l.second())
            };
            let start = window_start(&mut rng, tz);
            let first_day = local_of(tz, start).date() - Duration::days(1);
            let mut locals = Vec::new();
            for d in first_day.iter_days().take(368) {
                if !day_ok(d) {
                    continue;
                }
                for h in &hours.values {
                    for m in &minutes.values {
                        for sec in &secs {
                            locals.push(d.and_hms_opt(*h, *m, *sec).unwrap());
                        }
                    }
                }
                // Enough for the cap even with two dense days before the window.
                if locals.len() > PROP_CAP + 2_000 {
                    break;
                }
            }
            let expected = expected_instants(tz, locals, start);
            let actual = actual_instants(&s, start);
            assert!(
                !expected.is_empty() || dom.values.is_empty(),
                "{label}: no occurrence"
            );
            check_properties(&label, tz, &actual, &expected, is_own_time);
        }
    }

    /// A generated RRULE: its text, the zone its wall-clock times are in, and those times.
    struct GenRule {
        text: String,
        zone: Tz,
        locals: Vec<NaiveDateTime>,
    }

    const BYDAY: [(&str, Weekday); 7] = [
        ("MO", Weekday::Mon),
        ("TU", Weekday::Tue),
        ("WE", Weekday::Wed),
        ("TH", Weekday::Thu),
        ("FR", Weekday::Fri),
        ("SA", Weekday::Sat),
        ("SU", Weekday::Sun),
    ];

    /// Generates an RRULE and enumerates its wall-clock occurrences from DTSTART up to
    /// `until` (independently of the rrule crate: periods stepped by hand, BYxxx expanded).
    fn gen_rrule(rng: &mut Rng, zone_name: &str, until: NaiveDateTime) -> GenRule {
        let dtstart = NaiveDate::from_ymd_opt(2025, 6, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            + Duration::seconds(i64::from(rng.below(365 * 86_400)));
        let dtstart = if rng.chance(70) {
            dtstart.with_second(0).unwrap()
        } else {
            dtstart
        };
        let stamp = dtstart.format("%Y%m%dT%H%M%S");
        let (dt_line, zone) = match rng.below(10) {
            0 => (format!("DTSTART:{stamp}Z"), Tz::UTC),
            1..=3 => (
                format!("DTSTART;TZID={zone_name}:{stamp}"),
                tz_of(zone_name),
            ),
            _ => (format!("DTSTART:{stamp}"), tz_of(zone_name)),
        };
        let freq = *rng.pick(&["DAILY", "WEEKLY", "HOURLY", "MINUTELY"]);
        let interval = match freq {
            "MINUTELY" => *rng.pick(&[5u32, 7, 13, 30, 45, 90]),
            "HOURLY" => rng.range(1, 5),
            _ => rng.range(1, 3),
        };
        let mut parts = vec![format!("FREQ={freq}")];
        if interval > 1 || rng.chance(30) {
            parts.push(format!("INTERVAL={interval}"));
        }
        let (kh, km, kd) = (
            rng.range(1, 3) as usize,
            rng.range(1, 2) as usize,
            rng.range(1, 3) as usize,
        );
        let by_hour =
            (matches!(freq, "DAILY" | "WEEKLY") && rng.chance(50)).then(|| rng.distinct(kh, 0, 23));
        let by_minute =
            (matches!(freq, "DAILY" | "HOURLY") && rng.chance(50)).then(|| rng.distinct(km, 0, 59));
        let by_day = (freq == "WEEKLY" && rng.chance(60)).then(|| rng.distinct(kd, 0, 6));
        if let Some(h) = &by_hour {
            parts.push(format!(
                "BYHOUR={}",
                h.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ));
        }
        if let Some(m) = &by_minute {
            parts.push(format!(
                "BYMINUTE={}",
                m.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ));
        }
        if let Some(d) = &by_day {
            parts.push(format!(
                "BYDAY={}",
                d.iter()
                    .map(|i| BYDAY[*i as usize].0)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        let count = rng.chance(20).then(|| rng.range(1, 400) as usize);
        if let Some(c) = count {
            parts.push(format!("COUNT={c}"));
        }
        let rrule_line = if rng.chance(50) {
            format!("RRULE:{}", parts.join(";"))
        } else {
            parts.join(";")
        };
        let sep = if rng.chance(50) { "\n" } else { "\r\n" };
        let text = format!("{dt_line}{sep}{rrule_line}");

        // Enumerate period by period.
        let hours = by_hour.clone().unwrap_or_else(|| vec![dtstart.hour()]);
        let minutes = by_minute.clone().unwrap_or_else(|| vec![dtstart.minute()]);
        let sec = dtstart.second();
        let mut locals = Vec::new();
        let limit = count.unwrap_or(usize::MAX);
        let mut k: i64 = 0;
        'periods: loop {
            let mut period: Vec<NaiveDateTime> = Vec::new();
            let anchor = match freq {
                "DAILY" => dtstart + Duration::days(k * i64::from(interval)),
                "WEEKLY" => {
                    let monday = dtstart.date()
                        - Duration::days(i64::from(dtstart.weekday().num_days_from_monday()));
                    monday.and_time(dtstart.time()) + Duration::weeks(k * i64::from(interval))
                }
                "HOURLY" => dtstart + Duration::hours(k * i64::from(interval)),
                _ => dtstart + Duration::minutes(k * i64::from(interval)),
            };
            if anchor > until + Duration::days(8) {
                break;
            }
            match freq {
                "DAILY" => {
                    for h in &hours {
                        for m in &minutes {
                            period.push(anchor.date().and_hms_opt(*h, *m, sec).unwrap());
                        }
                    }
                }
                "WEEKLY" => {
                    let days: Vec<u32> = by_day
                        .clone()
                        .unwrap_or_else(|| vec![dtstart.weekday().num_days_from_monday()]);
                    for d in days {
                        let date = anchor.date() + Duration::days(i64::from(d));
                        for h in &hours {
                            period.push(date.and_hms_opt(*h, dtstart.minute(), sec).unwrap());
                        }
                    }
                }
                "HOURLY" => {
                    for m in &minutes {
                        period.push(anchor.date().and_hms_opt(anchor.hour(), *m, sec).unwrap());
                    }
                }
                _ => period.push(anchor),
            }
            period.sort_unstable();
            for l in period {
                if l < dtstart {
                    continue;
                }
                if locals.len() >= limit {
                    break 'periods;
                }
                locals.push(l);
            }
            k += 1;
        }
        GenRule { text, zone, locals }
    }

    #[test]
    fn property_rrules_in_dst_zones() {
        let (seed, cases) = prop_cases();
        let mut rng = Rng(0x0dd_ba11 ^ seed);
        for case in 0..cases {
            let zone_name = *rng.pick(&PROP_ZONES);
            let tz = tz_of(zone_name);
            let mut start = window_start(&mut rng, tz);
            let until = NaiveDate::from_ymd_opt(2028, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap();
            let g = gen_rrule(&mut rng, zone_name, until);
            if g.text.contains("COUNT") && rng.chance(70) {
                // Make the counted occurrences fall in the window.
                start = independent_instant(g.zone, g.locals[0]) - Duration::hours(1);
            }
            let label = format!("case {case}: rrule {:?} in {zone_name}", g.text);
            let created = utc("2025-01-01T00:00:00Z");
            let s = Schedule::compile(&rule("recurring", &g.text), Some(zone_name), created)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let own: std::collections::HashSet<NaiveDateTime> = g.locals.iter().copied().collect();
            let expected = expected_instants(g.zone, g.locals.iter().copied(), start);
            let actual = actual_instants(&s, start);
            check_properties(&label, g.zone, &actual, &expected, |l| own.contains(&l));
        }
    }

    #[test]
    fn independent_mapping_agrees_on_known_transitions() {
        // The reference mapping itself, on the cases the policy names.
        let ny = tz_of("America/New_York");
        let l = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap();
        assert_eq!(
            independent_instant(ny, l("2026-03-08T02:30:00")),
            utc("2026-03-08T07:00:00Z")
        );
        assert_eq!(
            independent_instant(ny, l("2026-11-01T01:30:00")),
            utc("2026-11-01T05:30:00Z")
        );
        let lh = tz_of("Australia/Lord_Howe");
        assert_eq!(
            independent_instant(lh, l("2026-10-04T02:15:00")),
            utc("2026-10-03T15:30:00Z")
        );
        assert_eq!(transitions(ny).len(), 2);
        assert!(transitions(tz_of("Asia/Kolkata")).is_empty());
    }
}
