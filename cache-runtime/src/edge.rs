//! CDN / edge purge (layer 4). STUB: to be implemented (issue 5).

/// Enqueues purges of these URL paths at every configured edge. Never blocks, never fails.
pub fn enqueue_paths(paths: Vec<String>) {
    let _ = paths;
}

/// Enqueues purges of these surrogate keys (tags) at every configured edge.
pub fn enqueue_tags(tags: Vec<String>) {
    let _ = tags;
}
