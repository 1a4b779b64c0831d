//! The `swegym` command line.
fn main() {}
