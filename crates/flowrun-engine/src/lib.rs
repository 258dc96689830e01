//! flowrun-engine
