//! The IANA zone names flowrun accepts (§3.9): every zone and link of the bundled tz
//! database, `UTC` included. `GET /timezones` lists exactly this set and every `timezone`
//! field is checked against it, so both come from one place.

use std::sync::LazyLock;

use chrono_tz::{TZ_VARIANTS, Tz};

static NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut v: Vec<&'static str> = TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
    v.sort_unstable();
    v.dedup();
    v
});

/// Every supported name, sorted by code point.
pub fn all() -> &'static [&'static str] {
    &NAMES
}

/// Whether `name` is a supported zone. Case-sensitive: `europe/berlin` is not accepted,
/// because the name is echoed back and used as the zone's identity.
pub fn is_supported(name: &str) -> bool {
    NAMES.binary_search(&name).is_ok()
}

/// The zone for a supported name.
pub fn zone(name: &str) -> Option<Tz> {
    if is_supported(name) {
        name.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_and_complete() {
        let names = all();
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(names.len(), TZ_VARIANTS.len());
        for n in [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
        ] {
            assert!(is_supported(n), "{n}");
        }
        // Links are members too.
        assert!(is_supported("US/Eastern"));
        assert!(is_supported("Etc/UTC"));
    }

    #[test]
    fn case_sensitive_and_exact() {
        assert!(!is_supported("utc"));
        assert!(!is_supported("europe/berlin"));
        assert!(!is_supported("Europe/Berlin "));
        assert!(!is_supported(""));
        assert!(!is_supported("Mars/Olympus_Mons"));
        assert_eq!(zone("Europe/Berlin"), Some(Tz::Europe__Berlin));
        assert_eq!(zone("europe/berlin"), None);
    }
}
