use cache_runtime::cached;

// A skipped `impl Fn` is an anonymous type parameter: each closure would get a cache of its
// own, which `invalidate_import(batch)` could not reach.
#[cached(ttl = 60, skip(on_progress))]
fn import(batch: u32, on_progress: impl Fn(u8) + Send) -> u32 {
    on_progress(100);
    batch * 2
}

fn main() {}
