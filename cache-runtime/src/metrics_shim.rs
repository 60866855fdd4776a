//! The `metrics` facade the runtime emits through: the `metrics` crate with the `metrics`
//! feature, else handles and macros of the same shape that do nothing and compile away. A
//! module emits with `use crate::metrics_shim as metrics;` and then `metrics::counter!(..)`,
//! `metrics::Label::new(..)`, ... exactly as with the crate, without a `cfg` of its own.

#[cfg(feature = "metrics")]
pub(crate) use ::metrics::{counter, gauge, histogram, Counter, Histogram, Label};

#[cfg(not(feature = "metrics"))]
pub(crate) use off::*;

#[cfg(not(feature = "metrics"))]
#[allow(dead_code)]
mod off {
    /// A counter handle that counts nothing.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Counter;

    impl Counter {
        pub(crate) fn increment(&self, _: u64) {}
    }

    /// A gauge handle that records nothing.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Gauge;

    impl Gauge {
        pub(crate) fn set<T>(&self, _: T) {}
    }

    /// A histogram handle that records nothing.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Histogram;

    impl Histogram {
        pub(crate) fn record<T>(&self, _: T) {}
    }

    /// A label that is never sent anywhere.
    #[derive(Debug, Clone)]
    pub(crate) struct Label;

    impl Label {
        pub(crate) fn new<K, V>(_: K, _: V) -> Self {
            Label
        }
    }

    /// `metrics::counter!(name)`, `(name, labels)` or `(name, "k" => v, ...)`: the arguments
    /// are evaluated (so that nothing becomes unused) and a no-op handle returned.
    macro_rules! counter {
        ($($arg:tt)*) => {
            $crate::metrics_shim::__handle!($crate::metrics_shim::Counter; $($arg)*)
        };
    }

    macro_rules! gauge {
        ($($arg:tt)*) => {
            $crate::metrics_shim::__handle!($crate::metrics_shim::Gauge; $($arg)*)
        };
    }

    macro_rules! histogram {
        ($($arg:tt)*) => {
            $crate::metrics_shim::__handle!($crate::metrics_shim::Histogram; $($arg)*)
        };
    }

    macro_rules! __handle {
        ($handle:path; $name:expr $(,)?) => {{
            let _ = &$name;
            $handle
        }};
        ($handle:path; $name:expr, $($key:expr => $value:expr),+ $(,)?) => {{
            let _ = (&$name, $((&$key, &$value)),+);
            $handle
        }};
        ($handle:path; $name:expr, $labels:expr $(,)?) => {{
            let _ = (&$name, &$labels);
            $handle
        }};
    }

    pub(crate) use {__handle, counter, gauge, histogram};
}

#[cfg(test)]
mod tests {
    use crate::metrics_shim as metrics;

    /// Every call shape the runtime uses compiles (with and without the feature) and
    /// emits without a recorder.
    #[test]
    fn call_shapes() {
        let kind = String::from("path");
        metrics::counter!("a_total").increment(1);
        metrics::counter!("a_total", "kind" => kind.clone()).increment(1);
        metrics::counter!("a_total", vec![metrics::Label::new("cache", "c")]).increment(1);
        metrics::gauge!("g").set(1.0);
        metrics::gauge!("g", "kind" => "x").set(0.0);
        metrics::histogram!("h_seconds", vec![metrics::Label::new("cache", kind)]).record(0.5);
        let _: Option<metrics::Counter> = None;
        let _: Option<metrics::Histogram> = None;
    }
}
