//! Identifiers: UUIDv7 for stored objects (so ids sort in creation order, which list
//! ordering uses to break ties) and UUIDv5 for the built-in catalog, whose ids must be
//! identical on every installation.

use uuid::Uuid;

/// A fresh time-ordered id for a stored object.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// The stable id of a built-in catalog entry: UUIDv5 (URL namespace) of
/// `flowrun:action-catalog:<method>`.
pub fn catalog_entry_id(method: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("flowrun:action-catalog:{method}").as_bytes(),
    )
}

/// Parses a path id: any letter case is accepted, anything that is not a UUID is `None`.
pub fn parse_path_id(raw: &str) -> Option<Uuid> {
    // `Uuid::parse_str` also accepts braced/urn/simple forms; the API only speaks the
    // hyphenated form, so insist on its length.
    if raw.len() != 36 {
        return None;
    }
    Uuid::parse_str(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_ids_are_stable() {
        assert_eq!(catalog_entry_id("flow.wait"), catalog_entry_id("flow.wait"));
        assert_ne!(catalog_entry_id("flow.wait"), catalog_entry_id("flow.if"));
        assert_eq!(catalog_entry_id("flow.wait").get_version_num(), 5);
    }

    #[test]
    fn path_ids_accept_upper_case_only_hyphenated() {
        let id = new_id();
        assert_eq!(parse_path_id(&id.to_string().to_uppercase()), Some(id));
        assert_eq!(parse_path_id(&id.simple().to_string()), None);
        assert_eq!(parse_path_id("abc"), None);
    }
}
