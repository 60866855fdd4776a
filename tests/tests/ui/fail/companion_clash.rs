use cache_runtime::cached;

// `get` generates `invalidate_get`, which this module already has.
#[cached(ttl = 60, key = "user:<id>")]
fn get(id: u64) -> String {
    id.to_string()
}

fn invalidate_get(id: u64) {
    let _ = id;
}

// Two cached functions: `load` generates `load_entry`, the name of the second.
#[cached(ttl = 60)]
fn load(id: u64) -> u64 {
    id
}

#[cached(ttl = 60)]
fn load_entry(id: u64) -> u64 {
    id
}

fn main() {
    invalidate_get(1);
}
