//! Step keys: the names templates use to address step outputs (§5.9).
//!
//! A key matches `^[a-z_][a-z0-9_-]{0,63}$`, is not a reserved word and is unique across
//! the flow. When a node is sent without a key, one is derived from its display name.

use std::sync::LazyLock;

use regex::Regex;

pub const KEY_PATTERN: &str = "^[a-z_][a-z0-9_-]{0,63}$";

static KEY_RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(KEY_PATTERN).expect("key regex"));

pub const RESERVED: &[&str] = &[
    "trigger",
    "flow",
    "event",
    "user",
    "now",
    "chaindepth",
    "steps",
    "prev",
    "source",
    "schedule",
    "loop",
    "results",
    "execution",
    "owner",
    "__proto__",
    "constructor",
    "prototype",
];

pub fn is_valid_key(key: &str) -> bool {
    KEY_RE.is_match(key)
}

pub fn is_reserved(key: &str) -> bool {
    key.starts_with("__") || RESERVED.contains(&key)
}

/// The slug of a display name, before collision handling: lowercase; each run of characters
/// outside `[a-z0-9]` becomes `-`; leading/trailing `-` trimmed; a leading digit gets a `_`
/// prefix; empty becomes `step`; at most 64 characters.
pub fn slug(name: &str) -> String {
    let lower = name.to_lowercase();
    let mut out = String::with_capacity(lower.len());
    let mut in_run = false;
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    let trimmed = out.trim_matches('-');
    let mut s = if trimmed.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{trimmed}")
    } else {
        trimmed.to_string()
    };
    if s.is_empty() {
        s = "step".to_string();
    }
    truncate(&s, 64)
}

fn truncate(s: &str, max: usize) -> String {
    // The slug is ASCII, so byte and char counts agree.
    s[..s.len().min(max)].to_string()
}

/// Derives a unique key from a display name, avoiding `taken` and reserved words by
/// appending `_2`, `_3`, … (the base is truncated so the result stays ≤ 64 characters).
pub fn derive_key(name: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let base = slug(name);
    if !is_reserved(&base) && !taken(&base) {
        return base;
    }
    for n in 2.. {
        let suffix = format!("_{n}");
        let b = &base[..base.len().min(64 - suffix.len())];
        let candidate = format!("{b}{suffix}");
        if !is_reserved(&candidate) && !taken(&candidate) {
            return candidate;
        }
    }
    unreachable!("an unbounded counter always finds a free key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slug("Send Webhook!"), "send-webhook");
        assert_eq!(slug("  3 taps "), "_3-taps");
        assert_eq!(slug("!!!"), "step");
        assert_eq!(slug("Ünïcode name"), "n-code-name");
        assert_eq!(slug(&"a".repeat(100)).len(), 64);
    }

    #[test]
    fn derivation_avoids_collisions_and_reserved_words() {
        let taken = |k: &str| k == "wait" || k == "wait_2";
        assert_eq!(derive_key("Wait", &taken), "wait_3");
        assert_eq!(derive_key("Event", &|_| false), "event_2");
        let long = "b".repeat(70);
        let base = "b".repeat(64);
        let k = derive_key(&long, &|k: &str| k == base);
        assert_eq!(k.len(), 64);
        assert!(k.ends_with("_2"));
    }

    #[test]
    fn key_rule() {
        assert!(is_valid_key("open_app-2"));
        assert!(is_valid_key("_x"));
        assert!(!is_valid_key("Open"));
        assert!(!is_valid_key("1abc"));
        assert!(!is_valid_key(&"a".repeat(65)));
        assert!(is_reserved("steps"));
        assert!(is_reserved("__anything"));
        assert!(!is_reserved("step"));
    }
}
