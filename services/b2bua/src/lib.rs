//! B2BUA.
