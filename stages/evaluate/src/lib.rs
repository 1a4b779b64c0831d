//! The SWE-bench-grade evaluation harness.
