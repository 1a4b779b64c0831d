//! docker backend (being written).
