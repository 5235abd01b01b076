//! Export (pending).
