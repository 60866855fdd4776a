use cache_runtime::cached;

// An alias hides the `Result` from the attribute; cached whole, its errors would be cached.
type AppResult<T> = Result<T, String>;

#[cached(ttl = 60)]
fn load(id: u8) -> AppResult<u8> {
    Ok(id)
}

fn main() {}
