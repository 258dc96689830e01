//! flowrun-actions
