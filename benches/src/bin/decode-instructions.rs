//! Decodes one Redis envelope of `ITEMS` bench profiles (`cache_benches::profile`) `CALLS`
//! times, for callgrind: `(I(N2) - I(N1)) / (N2 - N1)` is the client-side cost of one decode
//! (envelope checks, checksum, payload), whatever else the process does once.
//!
//! ```text
//! cargo build --release -p cache-benches --bin decode-instructions
//! for n in 100 600; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/decode-instructions $n 1 2>&1 | grep Collected
//! done
//! ```

use std::hint::black_box;
use std::time::Duration;

use cache_benches::{profile, Profile};

fn main() {
    let usage = "usage: decode-instructions CALLS ITEMS";
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect(usage));
    let (calls, items) = (args.next().expect(usage), args.next().expect(usage));
    let value: Vec<Profile> = (0..items as u64).map(profile).collect();
    let fp = cache_runtime::codec::fingerprint("decode-instructions", 1);
    let bytes =
        cache_runtime::codec::encode(&value, fp, Duration::from_secs(60), &[]).expect("encode");
    let mut decoded = 0;
    for _ in 0..calls {
        let d = cache_runtime::codec::decode::<Vec<Profile>>(black_box(&bytes), fp, 1 << 24)
            .expect("decode");
        decoded += black_box(d.value).len();
    }
    assert_eq!(decoded, calls * items);
}
