//! Turns a finished `cargo bench -p cache-benches` run into Markdown tables (medians, 95%
//! confidence intervals, ratios against the hand-written contender), the budget check, the
//! facts recorded beside the timings, and an SVG chart.
//!
//! ```sh
//! cargo run -p cache-benches --release --bin bench-report -- [--svg benches/chart.svg]
//! ```
//!
//! It reads `<criterion dir>/<group>/<contender>/new/estimates.json` (and `benchmark.json`
//! for the throughput setting), where the criterion dir is found as criterion finds it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cache_benches::criterion_dir;
use plotters::prelude::*;
use serde_json::Value;

/// The suite's groups, in report order: (criterion group, title, per-element throughput?).
const GROUPS: &[(&str, &str)] = &[
    ("local_hit", "1. Local hit, one thread"),
    (
        "local_hit_future",
        "1. Local hit, one thread, `async fn` (its future polled once)",
    ),
    (
        "local_hit_2_threads",
        "1. Local hit, two threads (throughput)",
    ),
    ("redis_hit", "2. Redis hit, sequential (no local tier)"),
    (
        "redis_hit_64_tasks",
        "2. Redis hit, 64 concurrent tasks (throughput)",
    ),
    (
        "redis_hit_diagnostics",
        "2. Redis hit: where ours' extra time goes",
    ),
    (
        "promotion",
        "3. local+redis: promotion (local miss, Redis hit)",
    ),
    ("miss_populate", "3. local+redis: miss + populate"),
    (
        "stampede_1000",
        "4. Stampede: 1 000 callers on one missing key",
    ),
    ("invalidate", "5. Invalidate (Redis tier)"),
    ("invalidate_tag", "5. Tag invalidation"),
    ("codec_roundtrip", "6. Codec: encode + decode"),
];

/// Groups whose contenders are compared by throughput (elements per second).
const THROUGHPUT_GROUPS: &[&str] = &["local_hit_2_threads", "redis_hit_64_tasks"];

#[derive(Debug, Clone)]
struct Estimate {
    /// Median time per iteration, ns.
    median: f64,
    lo: f64,
    hi: f64,
    /// Elements per iteration, when a throughput was set.
    elements: Option<f64>,
}

impl Estimate {
    fn per_element(&self) -> f64 {
        self.median / self.elements.unwrap_or(1.0)
    }

    /// The median and the 95 % confidence interval's bounds, per element (ns).
    fn span(&self) -> Span {
        let n = self.elements.unwrap_or(1.0);
        Span {
            median: self.median / n,
            lo: self.lo / n,
            hi: self.hi / n,
        }
    }
}

/// A time per call with its 95 % confidence interval (ns).
#[derive(Clone, Copy)]
struct Span {
    median: f64,
    lo: f64,
    hi: f64,
}

/// Whether `ours ≤ scale × theirs + slack` (ns), by the medians, and whether the confidence
/// intervals settle it (every pair of values within them agrees with the medians).
fn within(ours: Span, theirs: Span, scale: f64, slack: f64) -> Verdict {
    let met = ours.median <= scale * theirs.median + slack;
    let settled = if met {
        ours.hi <= scale * theirs.lo + slack
    } else {
        ours.lo > scale * theirs.hi + slack
    };
    Verdict { met, settled }
}

/// A budget's verdict: by the medians, and whether the run's noise could reverse it.
#[derive(Clone, Copy)]
struct Verdict {
    met: bool,
    settled: bool,
}

impl Verdict {
    fn exact(met: bool) -> Self {
        Self { met, settled: true }
    }

    fn and(self, also: bool) -> Self {
        Self {
            met: self.met && also,
            settled: self.settled || !also,
        }
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn estimate(dir: &Path) -> Option<Estimate> {
    let e = read_json(&dir.join("new/estimates.json"))?;
    let m = e.get("median")?;
    let ci = m.get("confidence_interval")?;
    let elements = read_json(&dir.join("new/benchmark.json"))
        .and_then(|b| b.get("throughput")?.get("Elements")?.as_f64());
    Some(Estimate {
        median: m.get("point_estimate")?.as_f64()?,
        lo: ci.get("lower_bound")?.as_f64()?,
        hi: ci.get("upper_bound")?.as_f64()?,
        elements,
    })
}

fn group(root: &Path, name: &str) -> BTreeMap<String, Estimate> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root.join(name)) else {
        return out;
    };
    for e in entries.flatten() {
        let contender = e.file_name().to_string_lossy().to_string();
        if contender == "report" {
            continue;
        }
        if let Some(est) = estimate(&e.path()) {
            out.insert(contender, est);
        }
    }
    out
}

fn fmt_time(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn fmt_rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M/s", per_sec / 1e6)
    } else {
        format!("{:.1} K/s", per_sec / 1e3)
    }
}

/// Contenders in a fixed order: ours first, the hand-written reference, the rival, the rest.
fn ordered(g: &BTreeMap<String, Estimate>) -> Vec<(&String, &Estimate)> {
    let rank = |n: &str| match n {
        "ours" => 0,
        "hand_written" => 2,
        "cached_crate" => 3,
        n if n.starts_with("ours") => 1,
        _ => 4,
    };
    let mut v: Vec<_> = g.iter().collect();
    v.sort_by_key(|(n, _)| (rank(n), n.to_string()));
    v
}

/// `fallback`: the hand-written median to compare with when the group has none (the
/// diagnostics group compares with `redis_hit/hand_written`).
fn table(name: &str, g: &BTreeMap<String, Estimate>, fallback: Option<f64>) -> String {
    let tput = THROUGHPUT_GROUPS.contains(&name);
    let reference = g
        .get("hand_written")
        .or_else(|| g.get("bincode2_serde"))
        .map(Estimate::per_element)
        .or(fallback);
    let ref_name = if g.contains_key("bincode2_serde") {
        "bincode 2"
    } else {
        "hand-written"
    };
    let mut s = String::new();
    if tput {
        s += &format!(
            "| contender | median time per call | 95% CI | throughput | throughput ÷ {ref_name} |\n|---|---|---|---|---|\n"
        );
    } else {
        s += &format!("| contender | median | 95% CI | time ÷ {ref_name} |\n|---|---|---|---|\n");
    }
    for (n, e) in ordered(g) {
        let per = e.per_element();
        let k = e.elements.unwrap_or(1.0);
        let ci = format!("{} – {}", fmt_time(e.lo / k), fmt_time(e.hi / k));
        if tput {
            let ratio = reference.map_or("—".into(), |r| format!("{:.2}", r / per));
            s += &format!(
                "| {n} | {} | {ci} | {} | {ratio} |\n",
                fmt_time(per),
                fmt_rate(1e9 / per)
            );
        } else {
            let ratio = reference.map_or("—".into(), |r| format!("{:.2}", per / r));
            s += &format!("| {n} | {} | {ci} | {ratio} |\n", fmt_time(per));
        }
    }
    s
}

fn facts(root: &Path) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root.join("cache-benches-facts")) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e
            .path()
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if let Some(Value::Object(m)) = read_json(&e.path()) {
            out.insert(name, m.into_iter().collect());
        }
    }
    out
}

fn client_commands(
    facts: &BTreeMap<String, BTreeMap<String, Value>>,
    bench: &str,
    key: &str,
) -> Option<f64> {
    facts
        .get(bench)?
        .get(key)?
        .get("client_commands_per_call")?
        .as_f64()
}

fn fact_line(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) if m.contains_key("processed_per_call") => {
            let list = |k: &str| {
                m.get(k)
                    .and_then(Value::as_object)
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| format!("{k} {:.2}", v.as_f64().unwrap_or(0.0)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            format!(
                "{} client commands/call ({}); {:.2} commands executed/call ({}); {} µs server \
                 time/call; over {} calls",
                m.get("client_commands_per_call")
                    .and_then(Value::as_f64)
                    .map_or("n/a".into(), |c| format!("{c:.2}")),
                list("client_by_command"),
                m.get("processed_per_call")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
                list("commandstats_per_call"),
                m.get("server_us_per_call")
                    .and_then(Value::as_f64)
                    .filter(|_| m.get("server_time_without_monitor") == Some(&Value::Bool(true)))
                    .map_or("n/a".into(), |c| format!("{c:.2}")),
                m.get("calls").and_then(Value::as_u64).unwrap_or(0),
            )
        }
        Value::Object(m) if m.contains_key("cpu_us") => {
            let f = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            format!(
                "{:.3} µs wall, {:.3} µs CPU of the bench process, {:.2} voluntary + {:.2} \
                 involuntary context switches, {:.1} heap allocations per call; over {} calls",
                f("wall_us"),
                f("cpu_us"),
                f("voluntary_switches"),
                f("involuntary_switches"),
                f("allocs"),
                m.get("calls").and_then(Value::as_u64).unwrap_or(0),
            )
        }
        v => v.to_string(),
    }
}

struct Budget {
    what: &'static str,
    rule: String,
    measured: String,
    met: Verdict,
}

/// "ours vs theirs = ratio ×", by the medians.
fn ratio(o: Span, h: Span) -> String {
    format!(
        "{} vs {} = {:.2} ×",
        fmt_time(o.median),
        fmt_time(h.median),
        o.median / h.median
    )
}

/// Heap allocations per call recorded by a cost pass (`cost/<contender>` facts).
fn allocs_per_call(
    facts: &BTreeMap<String, BTreeMap<String, Value>>,
    bench: &str,
    key: &str,
) -> Option<f64> {
    facts.get(bench)?.get(key)?.get("allocs")?.as_f64()
}

/// A goal of "ours ≤ hand-written + 3 µs" (`o`, `h`: ns per call), with the client commands
/// ours sent per call; `also`: the rest of the goal (e.g. one command) holds.
fn within_3_us(
    what: &'static str,
    rule: &str,
    (o, h): (Span, Span),
    commands: Option<f64>,
    also: bool,
) -> Budget {
    Budget {
        what,
        rule: rule.into(),
        measured: format!(
            "{} vs {} = {:+.1} µs; {} client command(s) per call",
            fmt_time(o.median),
            fmt_time(h.median),
            (o.median - h.median) / 1e3,
            commands.map_or("n/a".into(), |r| format!("{r:.2}"))
        ),
        met: within(o, h, 1.0, 3_000.0).and(also),
    }
}

/// The goals of the performance issue (docs/BENCHMARKS.md, "Budgets"), checked against
/// this run's medians and facts.
fn budgets(
    groups: &BTreeMap<&str, BTreeMap<String, Estimate>>,
    facts: &BTreeMap<String, BTreeMap<String, Value>>,
) -> Vec<Budget> {
    let get = |g: &str, c: &str| groups.get(g).and_then(|m| m.get(c)).map(Estimate::span);
    let mut out = Vec::new();

    if let (Some(o), Some(h)) = (get("local_hit", "ours"), get("local_hit", "hand_written")) {
        out.push(Budget {
            what: "Local hit",
            rule: "≤ 1.05 × hand-written moka".into(),
            measured: ratio(o, h),
            met: within(o, h, 1.05, 0.0),
        });
    }
    if let (Some(o), Some(h)) = (
        get("local_hit_future", "ours"),
        get("local_hit_future", "hand_written"),
    ) {
        out.push(Budget {
            what: "Local hit, `async fn`",
            rule: "≤ 1.05 × hand-written moka (`future::Cache`)".into(),
            measured: ratio(o, h),
            met: within(o, h, 1.05, 0.0),
        });
    }
    if let (Some(o), Some(h)) = (get("redis_hit", "ours"), get("redis_hit", "hand_written")) {
        let rt = client_commands(facts, "redis_hit", "commands/ours");
        out.push(within_3_us(
            "Redis hit",
            "≤ hand-written `GET` + decode + 3 µs, one command",
            (o, h),
            rt,
            rt.is_none_or(|r| (r - 1.0).abs() < 0.01),
        ));
    }
    if let Some(a) = allocs_per_call(facts, "redis_hit", "cost/ours") {
        let h = allocs_per_call(facts, "redis_hit", "cost/hand_written");
        out.push(Budget {
            what: "Redis hit, allocations",
            rule: "≤ 20 per hit (value clone included)".into(),
            measured: format!(
                "{a:.1}{}",
                h.map_or(String::new(), |h| format!(" (hand-written: {h:.1})"))
            ),
            met: Verdict::exact(a <= 20.0),
        });
    }
    if let (Some(o), Some(h)) = (
        get("redis_hit_64_tasks", "ours"),
        get("redis_hit_64_tasks", "hand_written"),
    ) {
        out.push(Budget {
            what: "Redis hit, 64 tasks",
            rule: "throughput ≥ 0.9 × hand-written".into(),
            measured: format!(
                "{} vs {} = {:.2} ×",
                fmt_rate(1e9 / o.median),
                fmt_rate(1e9 / h.median),
                h.median / o.median
            ),
            // Throughput ≥ 0.9 × theirs: time per call ≤ theirs / 0.9.
            met: within(o, h, 1.0 / 0.9, 0.0),
        });
    }
    if let (Some(o), Some(h)) = (
        get("miss_populate", "ours"),
        get("miss_populate", "hand_written"),
    ) {
        let rt = client_commands(facts, "two_tier", "commands/miss_populate/ours");
        out.push(within_3_us(
            "Miss + populate (local+redis)",
            "≤ hand-written `GET` + body + `SET PX` + 3 µs",
            (o, h),
            rt,
            true,
        ));
    }
    if let (Some(o), Some(h)) = (get("invalidate", "ours"), get("invalidate", "hand_written")) {
        out.push(Budget {
            what: "Invalidate (redis tier)",
            rule: "≤ hand-written `DEL` + 3 µs".into(),
            measured: format!(
                "{} vs {} = {:+.1} µs{}{}",
                fmt_time(o.median),
                fmt_time(h.median),
                (o.median - h.median) / 1e3,
                // The same guarantee by hand (`DEL` + `PUBLISH`, a subscriber in the
                // process): what the bus message itself costs, apart from ours' code.
                get("invalidate", "hand_del_publish").map_or(String::new(), |p| format!(
                    "; hand-written `DEL` + `PUBLISH` (subscribed) {}: ours {:+.1} µs",
                    fmt_time(p.median),
                    (o.median - p.median) / 1e3
                )),
                // Ours' own commands by hand (`DEL v t`, `PUBLISH`, `SET t PX`): the protocol's
                // cost apart from ours' code.
                get("invalidate", "hand_protocol").map_or(String::new(), |p| format!(
                    "; its commands by hand {}: ours {:+.1} µs",
                    fmt_time(p.median),
                    (o.median - p.median) / 1e3
                ))
            ),
            met: within(o, h, 1.0, 3_000.0),
        });
    }
    // Faster than the `cached` crate wherever both ran (throughput groups: time per call).
    let mut slower = Vec::new();
    // "Faster everywhere" is settled if every comparison is; "not faster", if one slower
    // path is.
    let (mut compared, mut all_settled, mut slower_settled) = (0, true, false);
    for (name, _) in GROUPS {
        if let (Some(o), Some(r)) = (get(name, "ours"), get(name, "cached_crate")) {
            compared += 1;
            let faster = within(o, r, 1.0, 0.0);
            all_settled &= faster.settled;
            if !faster.met {
                slower_settled |= faster.settled;
                let noise = if faster.settled { "" } else { " (CIs overlap)" };
                slower.push(format!("{name} {:.2} ×{noise}", o.median / r.median));
            }
        }
    }
    if compared > 0 {
        out.push(Budget {
            what: "Against the `cached` crate",
            rule: "faster on every comparable path".into(),
            measured: if slower.is_empty() {
                format!("faster on all {compared}")
            } else {
                format!(
                    "slower on {} of {compared}: {}",
                    slower.len(),
                    slower.join(", ")
                )
            },
            met: Verdict {
                met: slower.is_empty(),
                settled: if slower.is_empty() {
                    all_settled
                } else {
                    slower_settled
                },
            },
        });
    }
    out
}

/// Whether `x` is 1, 2 or 5 times a power of ten (the log axis' labelled ticks).
fn nice(x: f64) -> bool {
    let m = x / 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-6)
}

/// Bars of time per call relative to the hand-written contender (log scale), one row per
/// benchmark and contender.
fn chart(path: &Path, groups: &BTreeMap<&str, BTreeMap<String, Estimate>>) -> Result<(), String> {
    let mut rows: Vec<(String, f64, RGBColor)> = Vec::new();
    for (name, _) in GROUPS {
        let Some(g) = groups.get(name) else { continue };
        let Some(h) = g.get("hand_written").map(Estimate::per_element) else {
            continue;
        };
        for (c, e) in ordered(g) {
            let color = match c.as_str() {
                "ours" | "ours_local_redis" => RGBColor(31, 119, 180),
                "hand_written" => RGBColor(150, 150, 150),
                "cached_crate" => RGBColor(255, 127, 14),
                _ => continue,
            };
            rows.push((format!("{name} / {c}"), e.per_element() / h, color));
        }
    }
    if rows.is_empty() {
        return Err("no benchmark results found".into());
    }
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let n = rows.len();
    let height = 110 + 20 * n as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let lo = rows.iter().map(|r| r.1).fold(1.0f64, f64::min);
    let hi = rows.iter().map(|r| r.1).fold(1.0f64, f64::max);
    let (min, max) = (
        10f64
            .powf((lo.log10() - 0.05).floor() * 1.0)
            .min(0.5 * lo.max(1e-3)),
        hi * 2.5,
    );
    let mut ch = ChartBuilder::on(&root)
        .caption(
            "Time per call relative to hand-written (log scale; lower is better)",
            ("sans-serif", 18),
        )
        .margin(12)
        .margin_top(8)
        .x_label_area_size(32)
        .y_label_area_size(250)
        .build_cartesian_2d((min..max).log_scale(), 0f64..n as f64)
        .map_err(e)?;
    ch.configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_labels(30)
        .x_label_formatter(&|x| {
            if nice(*x) {
                format!("{x}×")
            } else {
                String::new()
            }
        })
        .x_desc("blue: ours · grey: hand-written (= 1×) · orange: cached crate")
        .draw()
        .map_err(e)?;
    let top = |i: usize| (n - i) as f64;
    ch.draw_series(rows.iter().enumerate().map(|(i, (_, v, color))| {
        Rectangle::new(
            [(min, top(i) - 0.85), (*v, top(i) - 0.15)],
            color.mix(0.9).filled(),
        )
    }))
    .map_err(e)?;
    ch.draw_series(rows.iter().enumerate().map(|(i, (_, v, _))| {
        Text::new(
            format!("{v:.2}×"),
            (*v * 1.04, top(i) - 0.22),
            ("sans-serif", 11).into_font(),
        )
    }))
    .map_err(e)?;
    ch.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, 0.0), (1.0, n as f64)],
        BLACK.stroke_width(1),
    )))
    .map_err(e)?;
    for (i, (label, _, _)) in rows.iter().enumerate() {
        let (_, y) = ch.backend_coord(&(min, top(i) - 0.5));
        root.draw(&Text::new(
            label.clone(),
            (8, y - 6),
            ("sans-serif", 12).into_font(),
        ))
        .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let svg = args
        .iter()
        .position(|a| a == "--svg")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let root = criterion_dir();
    let mut groups = BTreeMap::new();
    for (name, _) in GROUPS {
        let g = group(&root, name);
        if !g.is_empty() {
            groups.insert(*name, g);
        }
    }
    if groups.is_empty() {
        eprintln!(
            "no results under {}: run `cargo bench -p cache-benches` first",
            root.display()
        );
        std::process::exit(1);
    }
    let facts = facts(&root);
    println!(
        "<!-- generated by `cargo run -p cache-benches --release --bin bench-report` from {} -->\n",
        root.display()
    );
    for (name, title) in GROUPS {
        if let Some(g) = groups.get(name) {
            let fallback = groups
                .get("redis_hit")
                .and_then(|r| r.get("hand_written"))
                .map(Estimate::per_element)
                .filter(|_| *name == "redis_hit_diagnostics");
            println!("### {title}\n\n`{name}`\n\n{}", table(name, g, fallback));
        }
    }
    println!("### Budgets\n\n| budget | rule | measured | met |\n|---|---|---|---|");
    for b in budgets(&groups, &facts) {
        // A verdict the confidence intervals do not settle is marked: on a noisy machine the
        // next run may reverse it.
        let met = match (b.met.met, b.met.settled) {
            (true, true) => "**yes**",
            (false, true) => "**no**",
            (true, false) => "yes, within the 95 % CIs",
            (false, false) => "no, within the 95 % CIs",
        };
        println!("| {} | {} | {} | {met} |", b.what, b.rule, b.measured);
    }
    println!("\n### Facts recorded beside the timings\n");
    for (bench, m) in &facts {
        for (k, v) in m {
            println!("- `{bench}` {k}: {}", fact_line(v));
        }
    }
    if let Some(path) = svg {
        match chart(&path, &groups) {
            Ok(()) => eprintln!("chart written to {}", path.display()),
            Err(e) => {
                eprintln!("chart: {e}");
                std::process::exit(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(median: f64, lo: f64, hi: f64) -> Span {
        Span { median, lo, hi }
    }

    #[test]
    fn a_verdict_is_settled_only_when_the_intervals_agree_with_the_medians() {
        // Apart: settled either way.
        let v = within(
            span(100.0, 95.0, 105.0),
            span(200.0, 190.0, 210.0),
            1.0,
            0.0,
        );
        assert!(v.met && v.settled);
        let v = within(
            span(200.0, 190.0, 210.0),
            span(100.0, 95.0, 105.0),
            1.0,
            0.0,
        );
        assert!(!v.met && v.settled);
        // Overlapping: the medians decide, unsettled.
        let v = within(span(100.0, 90.0, 120.0), span(110.0, 95.0, 125.0), 1.0, 0.0);
        assert!(v.met && !v.settled);
        let v = within(span(110.0, 95.0, 125.0), span(100.0, 90.0, 120.0), 1.0, 0.0);
        assert!(!v.met && !v.settled);
        // The slack and the scale apply to the bounds too: +3 µs over 100 µs ± 1 µs.
        let (ours, theirs) = (
            span(102_000.0, 101_500.0, 102_500.0),
            span(100_000.0, 99_800.0, 100_200.0),
        );
        assert!(within(ours, theirs, 1.0, 3_000.0).settled);
        let v = within(ours, theirs, 1.0, 1_000.0);
        assert!(!v.met && v.settled);
    }

    #[test]
    fn a_failed_side_condition_settles_a_miss() {
        let close = within(span(100.0, 90.0, 120.0), span(110.0, 95.0, 125.0), 1.0, 0.0);
        let v = close.and(false);
        assert!(
            !v.met && v.settled,
            "two commands instead of one is a miss, whatever the noise"
        );
        let v = close.and(true);
        assert!(v.met && !v.settled);
    }
}
