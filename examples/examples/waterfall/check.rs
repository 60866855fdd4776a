//! The staleness check: a read that started after a write's response was complete must not
//! return an older version than that write created.

use std::collections::{BTreeMap, HashMap};

use crate::load::{Layer, Seen, Written};

/// What the check found in one run.
#[derive(Debug, Clone, Default)]
pub struct Staleness {
    /// Values checked (a list counts each of its products).
    pub values_checked: u64,
    /// Values older than a write completed before the read started.
    pub stale: u64,
    /// Of those, how many were read more than the allowed window after the write completed.
    pub beyond_window: u64,
    /// The longest time between a write's completion and a read that still saw the older
    /// version (µs).
    pub max_lag_us: u64,
    /// Stale values by the layer that served them.
    pub by_layer: BTreeMap<Layer, u64>,
}

/// Checks every value seen against every completed write of the same entity.
pub fn check(seen: &[Seen], writes: &[Written], window_us: u64) -> Staleness {
    // Per entity: writes in completion order, with the running maximum version.
    let mut per: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for w in writes {
        per.entry(w.entity)
            .or_default()
            .push((w.done_us, w.version));
    }
    let per: HashMap<u64, (Vec<u64>, Vec<u64>)> = per
        .into_iter()
        .map(|(e, mut ws)| {
            ws.sort_unstable();
            let done: Vec<u64> = ws.iter().map(|w| w.0).collect();
            let mut max = 0;
            let running: Vec<u64> = ws
                .iter()
                .map(|w| {
                    max = max.max(w.1);
                    max
                })
                .collect();
            (e, (done, running))
        })
        .collect();
    let mut out = Staleness::default();
    for s in seen {
        out.values_checked += 1;
        let Some((done, running)) = per.get(&s.entity) else {
            continue;
        };
        // The first write (in completion order) that created a newer version than seen.
        let i = running.partition_point(|&v| v <= s.version);
        if i < done.len() && done[i] < s.start_us {
            let lag = s.start_us - done[i];
            out.stale += 1;
            out.max_lag_us = out.max_lag_us.max(lag);
            if lag > window_us {
                out.beyond_window += 1;
            }
            *out.by_layer.entry(s.layer).or_default() += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(entity: u64, version: u64, start_us: u64) -> Seen {
        Seen {
            entity,
            version,
            start_us,
            layer: Layer::Local,
        }
    }

    #[test]
    fn flags_only_reads_after_a_newer_write_completed() {
        let writes = [
            Written {
                entity: 1,
                version: 2,
                done_us: 100,
            },
            Written {
                entity: 1,
                version: 3,
                done_us: 200,
            },
        ];
        let s = check(
            &[
                seen(1, 1, 50),   // before any write: fine
                seen(1, 1, 150),  // v2 completed at 100: stale by 50
                seen(1, 2, 150),  // fine
                seen(1, 2, 250),  // v3 completed at 200: stale by 50
                seen(1, 3, 260),  // fine
                seen(2, 1, 999),  // never written
                seen(1, 1, 2000), // stale by 1900, beyond a 1000 window
            ],
            &writes,
            1000,
        );
        assert_eq!(s.values_checked, 7);
        assert_eq!(s.stale, 3);
        assert_eq!(s.beyond_window, 1);
        assert_eq!(s.max_lag_us, 1900);
    }
}
