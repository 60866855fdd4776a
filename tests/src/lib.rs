//! Redis test harness.
