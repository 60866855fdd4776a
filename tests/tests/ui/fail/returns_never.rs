use cache_runtime::cached;

#[cached(ttl = 60)]
pub fn f(id: u64) -> ! {
    panic!("no {id}")
}

fn main() {}
