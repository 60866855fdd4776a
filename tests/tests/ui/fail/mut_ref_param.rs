use cache_runtime::cached;

#[cached(ttl = 60)]
fn f(buf: &mut Vec<u8>) -> usize {
    buf.push(1);
    buf.len()
}

fn main() {}
