//! Calls.

pub mod metrics;
