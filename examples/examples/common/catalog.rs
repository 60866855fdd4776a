//! The catalogue shape shared by the `profile_api` service and the `waterfall` load driver
//! (included by both with `#[path]`), so the driver asks for categories the service has.

/// The 20 product categories (the `category` query parameter), in the order the service
/// seeds them: product `id` is in `CATEGORIES[(id - 1) % 20]`.
pub const CATEGORIES: [&str; 20] = [
    "books",
    "music",
    "movies",
    "games",
    "garden",
    "kitchen",
    "toys",
    "sports",
    "outdoor",
    "tools",
    "auto",
    "beauty",
    "health",
    "grocery",
    "pets",
    "baby",
    "office",
    "shoes",
    "jewelry",
    "computers",
];
