//! Case folding for `search` (§1.8): a case-insensitive substring match, the same in memory
//! (definitions) and in the store (executions keep a folded copy of their searchable text).

/// Folds text for a case-insensitive comparison.
pub fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// The folded searchable text of an execution: `flowName`, `triggerName` and `error` joined
/// by `\n` (a needle never matches across two fields unless it contains a newline).
pub fn execution_search_text(
    flow_name: Option<&str>,
    trigger_name: Option<&str>,
    error: Option<&str>,
) -> String {
    fold(&format!(
        "{}\n{}\n{}",
        flow_name.unwrap_or(""),
        trigger_name.unwrap_or(""),
        error.unwrap_or("")
    ))
}
