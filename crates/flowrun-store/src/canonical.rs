//! Canonical JSON (§1.9): object keys sorted, no insignificant whitespace, numbers in their
//! shortest round-trip form. Used for idempotency fingerprints and flow graph hashes.

use serde_json::Value;

pub fn canonical_json(v: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    // Only serde_json's output and ASCII punctuation were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends the canonical form of `v` to `out`: strings and scalars are written by serde_json
/// straight into the buffer, without a string of their own.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                scalar(k, out);
                out.push(b':');
                write_canonical(x, out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => scalar(other, out),
    }
}

fn scalar<T: serde::Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing a string, number, bool or null into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_recursively() {
        let v = json!({"b": 1, "a": {"d": [1.5, true], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[1.5,true]},"b":1}"#
        );
    }

    #[test]
    fn escapes_keys_and_strings_as_serde_json_does() {
        let v = json!({"z\"q": "line\nbreak \u{1}", "é": [-0.5, 1e300, u64::MAX, "\\"]});
        assert_eq!(
            canonical_json(&v),
            r#"{"z\"q":"line\nbreak \u0001","é":[-0.5,1e+300,18446744073709551615,"\\"]}"#
        );
    }
}
