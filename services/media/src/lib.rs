//! Media relay.
