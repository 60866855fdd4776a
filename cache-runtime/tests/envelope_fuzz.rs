//! Mutation fuzzing of the value envelope decoder (no nightly toolchain needed): valid
//! envelopes are truncated, extended, bit-flipped, byte-overwritten, have their length,
//! stamp-count and payload fields rewritten, or are replaced by random bytes. The decoder
//! must never panic, and must accept only the value that was written.
//!
//! `FUZZ_ITERATIONS=1000000 cargo test --release -p cache-runtime --test envelope_fuzz`
//! (the default run does 200 000).

use std::time::Duration;

use cache_runtime::codec::{decode, encode, fingerprint};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    tags: Vec<String>,
    scores: Vec<u32>,
    parent: Option<Box<Profile>>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, so a failure reproduces.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn samples() -> Vec<Profile> {
    let leaf = Profile {
        id: 7,
        name: "leaf".into(),
        tags: vec![],
        scores: vec![1, 2, 3],
        parent: None,
    };
    vec![
        leaf.clone(),
        Profile {
            id: u64::MAX,
            name: "Ada Lovelace ✓".into(),
            tags: vec!["a".into(), "".into(), "ccc".into()],
            scores: (0..50).collect(),
            parent: Some(Box::new(leaf)),
        },
    ]
}

#[test]
fn the_decoder_never_panics_and_accepts_only_what_was_written() {
    let iterations: u64 = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let fp = fingerprint("Profile", 1);
    let originals: Vec<(Profile, Vec<u8>)> = samples()
        .into_iter()
        .map(|p| {
            let bytes = encode(&p, fp, Duration::from_secs(3600), &[3, 0, 1]).unwrap();
            (p, bytes)
        })
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0u64;
    for i in 0..iterations {
        let (original, valid) = &originals[rng.below(originals.len())];
        let mut b = valid.clone();
        match rng.below(9) {
            0 => b.truncate(rng.below(b.len())),
            1 => {
                for _ in 0..=rng.below(4) {
                    let at = rng.below(b.len());
                    b[at] ^= 1 << rng.below(8);
                }
            }
            2 => {
                let at = rng.below(b.len());
                b[at] = rng.next() as u8;
            }
            3 => b.extend((0..=rng.below(16)).map(|_| rng.next() as u8)),
            // The payload length field.
            4 => b[28..32].copy_from_slice(&(rng.next() as u32).to_le_bytes()),
            // The stamp count.
            5 => b[36] = rng.next() as u8,
            // Payload bytes only (the checksum must catch them).
            6 => {
                let start = 37 + 8 * 3;
                let at = start + rng.below(b.len() - start);
                b[at] = b[at].wrapping_add(1 + rng.below(255) as u8);
            }
            7 => b = (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
            // A huge claimed length inside a well-formed header.
            _ => {
                let start = 37 + 8 * 3;
                b.truncate(start);
                b.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
                b[28..32].copy_from_slice(&9u32.to_le_bytes());
                // Forge a valid checksum, so the decoder's allocation bound is what is tested.
                let mut covered = b[..32].to_vec();
                covered.extend_from_slice(&b[36..]);
                let crc = crc32(&covered);
                b[32..36].copy_from_slice(&crc.to_le_bytes());
            }
        }
        if let Ok(d) = decode::<Profile>(&b, fp, 1 << 20) {
            assert_eq!(
                &d.value, original,
                "iteration {i}: accepted a value it never wrote"
            );
            accepted += 1;
        }
    }
    // The checksum covers every byte: only a mutation that changed nothing may decode.
    assert!(
        accepted < iterations / 100,
        "{accepted} of {iterations} mutants accepted"
    );
    eprintln!("{iterations} mutated envelopes decoded: {accepted} accepted (all equal to the written value), none panicked");
}

/// CRC-32 (IEEE), to forge checksums of hostile payloads.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
