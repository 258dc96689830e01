//! flowrun-core: the domain of flowrun without any I/O.
//!
//! Types that go over the wire (triggers, actions, flows, devices), the rules that decide
//! whether input is acceptable (field validation, step keys, conditions, schedules) and the
//! pure computations the engine relies on. Everything here is a function of its inputs so it
//! can be tested with plain values.

pub mod appevents;
pub mod catalog;
pub mod conditions;
pub mod execution;
pub mod flowtree;
pub mod ids;
pub mod keys;
pub mod model;
pub mod params;
pub mod schedule;
pub mod search;
pub mod templates;
pub mod time;
pub mod timezones;
pub mod validate;

pub use ids::new_id;
pub use time::Ts;
pub use validate::{FieldError, FieldErrors};
