//! `collab-bench transform`: how many transforms per second the engine does
//! for a late one-character op.
//!
//! The server handles an op submitted against an old revision by folding
//! `transform(op, w, Side::Left)` over every op `w` committed since. Here each
//! late op is a random one-character insert or delete on a ~10k character
//! document, and the window is `--window` one-character ops applied one after
//! another to that same document (so each is relative to the previous one's
//! result, as committed ops are). Seeded, so every run sees the same ops.

use std::hint::black_box;
use std::time::Instant;

use anyhow::ensure;
use collab_ot::{transform, Operation, Side};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::stats::{median, thousands};

/// Length of the document the ops edit.
const DOC_CHARS: usize = 10_000;
/// Distinct windows the late ops cycle through.
const WINDOWS: usize = 16;

#[derive(clap::Args)]
pub struct TransformArgs {
    /// Concurrent ops each late op is transformed against.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,
    /// Late ops per run (each costs `--window` transforms).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 11, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also print the results as JSON, on the last line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct TransformReport {
    window: u32,
    iters: u32,
    runs: u32,
    doc_chars: usize,
    median_transforms_per_s: f64,
    min_transforms_per_s: f64,
    max_transforms_per_s: f64,
    median_ns_per_transform: f64,
}

/// A random one-character edit of a document of `len` characters, and the
/// length afterwards. Half inserts, half deletes (inserts only on an empty doc).
fn random_op(rng: &mut StdRng, len: usize) -> (Operation, usize) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz .,\n";
    if len == 0 || rng.gen_bool(0.5) {
        let ch = ALPHABET[rng.gen_range(0..ALPHABET.len())] as char;
        let mut buf = [0; 4];
        (
            Operation::insert(rng.gen_range(0..=len), ch.encode_utf8(&mut buf)),
            len + 1,
        )
    } else {
        (Operation::delete(rng.gen_range(0..len), 1), len - 1)
    }
}

/// `window` ops applied in sequence to a `DOC_CHARS` document.
fn random_window(rng: &mut StdRng, window: usize) -> Vec<Operation> {
    let mut len = DOC_CHARS;
    (0..window)
        .map(|_| {
            let (op, next) = random_op(rng, len);
            len = next;
            op
        })
        .collect()
}

/// Transforms `op` past every op of `window` (not empty), as the server does.
fn transform_past(op: &Operation, window: &[Operation]) -> Operation {
    let (first, rest) = window.split_first().expect("a window has ops");
    rest.iter()
        .fold(transform(op, first, Side::Left), |acc, w| {
            transform(&acc, w, Side::Left)
        })
}

/// Runs the `transform` subcommand.
pub fn run(args: &TransformArgs) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let windows: Vec<Vec<Operation>> = (0..WINDOWS)
        .map(|_| random_window(&mut rng, args.window as usize))
        .collect();
    let late: Vec<Operation> = (0..args.iters)
        .map(|_| random_op(&mut rng, DOC_CHARS).0)
        .collect();

    // Sanity check (untimed): a transformed op still applies after the window.
    let doc = collab_ot::Rope::from_str(&"x".repeat(DOC_CHARS));
    for (i, op) in late.iter().take(WINDOWS).enumerate() {
        let window = &windows[i % WINDOWS];
        let mut d = doc.clone();
        for w in window {
            w.apply(&mut d)?;
        }
        let moved = transform_past(op, window);
        ensure!(
            moved.apply(&mut d).is_ok(),
            "transformed op {i} does not apply"
        );
    }

    let transforms = f64::from(args.iters) * f64::from(args.window);
    let mut rates = Vec::with_capacity(args.runs as usize);
    // One untimed warm-up run, then the timed ones.
    for run in 0..=args.runs {
        let start = Instant::now();
        for (i, op) in late.iter().enumerate() {
            black_box(transform_past(black_box(op), &windows[i % WINDOWS]));
        }
        let secs = start.elapsed().as_secs_f64();
        if run > 0 {
            rates.push(transforms / secs);
        }
    }
    let med = median(&rates);
    let report = TransformReport {
        window: args.window,
        iters: args.iters,
        runs: args.runs,
        doc_chars: DOC_CHARS,
        median_transforms_per_s: med,
        min_transforms_per_s: rates.iter().copied().fold(f64::INFINITY, f64::min),
        max_transforms_per_s: rates.iter().copied().fold(0.0, f64::max),
        median_ns_per_transform: 1e9 / med,
    };
    println!(
        "transform: one-char ops on a {}-char doc, each past a window of {} one-char ops, \
         {} late ops per run, median of {} runs",
        thousands(DOC_CHARS as f64),
        args.window,
        thousands(f64::from(args.iters)),
        args.runs
    );
    println!(
        "  median {} transforms/s ({:.0} ns each; min {}, max {}); {} late ops/s at this window",
        thousands(report.median_transforms_per_s),
        report.median_ns_per_transform,
        thousands(report.min_transforms_per_s),
        thousands(report.max_transforms_per_s),
        thousands(med / f64::from(args.window)),
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_sequential_and_transformed_ops_apply() {
        let mut rng = StdRng::seed_from_u64(7);
        let window = random_window(&mut rng, 50);
        let mut doc = collab_ot::Rope::from_str(&"y".repeat(DOC_CHARS));
        for w in &window {
            w.apply(&mut doc).unwrap();
        }
        for _ in 0..200 {
            let (op, _) = random_op(&mut rng, DOC_CHARS);
            transform_past(&op, &window)
                .apply(&mut doc.clone())
                .unwrap();
        }
    }
}
