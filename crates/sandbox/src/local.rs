//! bubblewrap backend (being written).
