//! `collab-bench trace`: replay sequential editing traces.
//!
//! A trace is parsed once, up front and untimed, into a flat list of
//! [`Patch`]es. Each [`Subject`] then replays the whole list from an empty
//! document, timed, and its final text is checked against the trace's
//! `endContent`. The first subject is the floor every other one is compared
//! with: a plain [`Rope`] doing nothing but the edits.
//!
//! The CRDT libraries (diamond-types, yrs, automerge) are in `crdts`, built
//! only with the `crdt-compare` feature (it needs rustc 1.90, above the
//! workspace's 1.85, and keeps three large crates out of `cargo test
//! --workspace`):
//!
//! ```sh
//! cargo run --release -p collab-bench --features crdt-compare -- trace
//! ```
//!
//! Adding a subject (another engine, a CRDT) means implementing [`Subject`]
//! (and [`Replayed`] for its final state) and listing it in [`subjects`]
//! (a CRDT: in `crdts::subjects`).

#[cfg(feature = "crdt-compare")]
mod crdts;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use collab_ot::{Component, Delete, OpError, Operation, Rope};
use serde::{Deserialize, Serialize};

use crate::stats::{median, ms, thousands};

/// Traces replayed when no `--trace` is given, relative to the shared trace
/// directory (`../shared/traces/` beside the workspace).
const DEFAULT_TRACES: [&str; 2] = [
    "sequential/automerge-paper.json.gz",
    "sequential/seph-blog1.json.gz",
];

/// Whether this build has the CRDT subjects (the `crdt-compare` feature).
pub const HAS_CRDTS: bool = cfg!(feature = "crdt-compare");

/// Said at the end of `trace --help`, and in the output of a build without the feature.
#[cfg(not(feature = "crdt-compare"))]
const CRDT_NOTE: &str = "CRDT comparison: not in this build. Replaying the traces through \
    diamond-types, yrs and automerge as well needs the crdt-compare feature (and rustc 1.90):\n  \
    cargo run --release -p collab-bench --features crdt-compare -- trace [OPTIONS]";
#[cfg(feature = "crdt-compare")]
const CRDT_NOTE: &str = "CRDT comparison: built in (the crdt-compare feature): every trace is \
    also replayed through diamond-types, yrs and automerge, unless --no-crdts.";

#[derive(clap::Args)]
#[command(after_help = CRDT_NOTE)]
pub struct TraceArgs {
    /// A sequential trace in the josephg/editing-traces format (`.json.gz` or
    /// `.json`); repeat for several. Default: automerge-paper and seph-blog1
    /// from ../shared/traces/sequential/.
    #[arg(long = "trace", value_name = "FILE")]
    pub traces: Vec<PathBuf>,
    /// Timed runs per subject; the median is reported.
    #[arg(long, default_value_t = 11, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Timed runs for the slow subjects (yrs and automerge, which take
    /// seconds per replay) instead of --runs. Only with --features crdt-compare.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub crdt_runs: u32,
    /// Leave out the CRDT libraries (diamond-types, yrs, automerge): only the
    /// rope floor and the engine (and --breakdown's subjects). Without
    /// --features crdt-compare they are never built in, and this changes nothing.
    #[arg(long)]
    pub no_crdts: bool,
    /// Also print the results as JSON, on the last line.
    #[arg(long)]
    pub json: bool,
    /// Also time two diagnostic subjects that split the engine's cost:
    /// building the ops alone, and applying prebuilt ops alone.
    #[arg(long)]
    pub breakdown: bool,
}

/// One edit, as `Array.splice(pos, del, ...ins)`; positions and lengths in
/// Unicode code points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub pos: usize,
    pub del: usize,
    pub ins: String,
}

/// A parsed sequential trace.
#[derive(Debug)]
pub struct Trace {
    pub name: String,
    pub start_content: String,
    pub end_content: String,
    pub patches: Vec<Patch>,
}

#[derive(Deserialize)]
struct RawTrace {
    #[serde(default)]
    kind: Option<String>,
    #[serde(rename = "startContent", default)]
    start_content: String,
    #[serde(rename = "endContent")]
    end_content: String,
    txns: Vec<RawTxn>,
}

#[derive(Deserialize)]
struct RawTxn {
    patches: Vec<(usize, usize, String)>,
}

impl Trace {
    /// Parses the JSON text of a sequential trace.
    pub fn from_json(name: &str, json: &str) -> anyhow::Result<Trace> {
        let raw: RawTrace = serde_json::from_str(json).context("not an editing trace")?;
        if let Some(kind) = raw.kind.filter(|k| k != "sequential") {
            bail!("{kind} traces are not supported; use a sequential (or *_flat) trace");
        }
        let patches = raw
            .txns
            .into_iter()
            .flat_map(|t| t.patches)
            .map(|(pos, del, ins)| Patch { pos, del, ins })
            .collect();
        Ok(Trace {
            name: name.to_owned(),
            start_content: raw.start_content,
            end_content: raw.end_content,
            patches,
        })
    }

    /// Reads a trace file, gunzipping `*.gz`.
    pub fn load(path: &Path) -> anyhow::Result<Trace> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut json = String::new();
        if path.extension().is_some_and(|e| e == "gz") {
            flate2::read::GzDecoder::new(file).read_to_string(&mut json)
        } else {
            std::io::BufReader::new(file).read_to_string(&mut json)
        }
        .with_context(|| format!("reading {}", path.display()))?;
        Trace::from_json(&trace_name(path), &json)
            .with_context(|| format!("parsing {}", path.display()))
    }
}

/// `dir/automerge-paper.json.gz` → `automerge-paper`.
fn trace_name(path: &Path) -> String {
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let file = file.strip_suffix(".gz").unwrap_or(&file);
    file.strip_suffix(".json").unwrap_or(file).to_owned()
}

/// Finds a default trace: under `../shared/traces/` from the current
/// directory (the workspace root), else beside this source checkout.
fn default_trace_path(rel: &str) -> anyhow::Result<PathBuf> {
    let candidates = [
        Path::new("../shared/traces").join(rel),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/traces")
            .join(rel),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "trace {rel} not found (looked at {} and {}).\n\
         The editing traces are CC BY 4.0 data from https://github.com/josephg/editing-traces \
         and are not part of this repository: put them in ../shared/traces/ next to the \
         workspace, or pass --trace FILE.",
        candidates[0].display(),
        candidates[1].display()
    )
}

/// The engine operation a server receives for a patch: `[pos, {"d": del}, "ins"]`,
/// without the empty components the wire format forbids.
pub fn patch_to_op(p: &Patch) -> Result<Operation, OpError> {
    if p.del == 0 {
        return Ok(Operation::insert(p.pos, &p.ins));
    }
    if p.ins.is_empty() {
        return Ok(Operation::delete(p.pos, p.del));
    }
    let mut components = Vec::with_capacity(3);
    if p.pos > 0 {
        components.push(Component::Skip(p.pos));
    }
    if p.del > 0 {
        components.push(Component::Delete(Delete::Count(p.del)));
    }
    if !p.ins.is_empty() {
        components.push(Component::Insert(p.ins.as_str().into()));
    }
    Operation::from_components(components)
}

/// Something that can replay a trace.
pub trait Subject {
    /// Its name in the report.
    fn name(&self) -> &'static str;
    /// Replays every patch of `trace` from its start content. This is the timed part.
    fn replay(&self, trace: &Trace) -> anyhow::Result<Box<dyn Replayed>>;
    /// Slow subjects are timed over `--crdt-runs` runs instead of `--runs`.
    fn is_slow(&self) -> bool {
        false
    }
}

/// A subject's state after a replay (checked and measured untimed).
pub trait Replayed {
    /// The document text.
    fn text(&self) -> String;
    /// Approximate bytes held by the state, or a stand-in for them (see
    /// [`Replayed::memory_kind`]).
    fn memory_bytes(&self) -> usize;
    /// What [`Replayed::memory_bytes`] measures, in a word or two for the
    /// report: `"text buffer"`, or `"encoded"` for a serialized size.
    fn memory_kind(&self) -> &'static str;
}

impl Replayed for Rope {
    fn text(&self) -> String {
        self.to_string()
    }

    /// Text buffer capacity of the rope's leaves (excludes the tree's
    /// internal nodes, which are a few percent more).
    fn memory_bytes(&self) -> usize {
        self.capacity()
    }

    fn memory_kind(&self) -> &'static str {
        "text buffer"
    }
}

/// The floor: a plain rope doing nothing but the edits.
struct RopeFloor;

impl Subject for RopeFloor {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn replay(&self, trace: &Trace) -> anyhow::Result<Box<dyn Replayed>> {
        let mut rope = Rope::from_str(&trace.start_content);
        for p in &trace.patches {
            if p.del > 0 {
                rope.remove(p.pos..p.pos + p.del);
            }
            if !p.ins.is_empty() {
                rope.insert(p.pos, &p.ins);
            }
        }
        Ok(Box::new(rope))
    }
}

/// The OT engine: build the operation a server would receive for each patch,
/// then `Operation::apply` it (which validates, then edits the rope).
struct EngineApply;

impl Subject for EngineApply {
    fn name(&self) -> &'static str {
        "collab-ot apply"
    }

    fn replay(&self, trace: &Trace) -> anyhow::Result<Box<dyn Replayed>> {
        let mut rope = Rope::from_str(&trace.start_content);
        for (i, p) in trace.patches.iter().enumerate() {
            let op = patch_to_op(p).with_context(|| format!("patch {i} {p:?}"))?;
            op.apply(&mut rope)
                .with_context(|| format!("applying patch {i} {p:?}"))?;
        }
        Ok(Box::new(rope))
    }
}

/// Diagnostic: the floor's rope edits, plus building (and dropping) each
/// patch's `Operation` — the cost of building ops alone.
struct RopeAndBuild;

impl Subject for RopeAndBuild {
    fn name(&self) -> &'static str {
        "rope + build op"
    }

    fn replay(&self, trace: &Trace) -> anyhow::Result<Box<dyn Replayed>> {
        let mut rope = Rope::from_str(&trace.start_content);
        for p in &trace.patches {
            std::hint::black_box(patch_to_op(p)?);
            if p.del > 0 {
                rope.remove(p.pos..p.pos + p.del);
            }
            if !p.ins.is_empty() {
                rope.insert(p.pos, &p.ins);
            }
        }
        Ok(Box::new(rope))
    }
}

/// Diagnostic: `Operation::apply` of ops built up front (untimed) — the cost
/// of validating and applying alone.
struct ApplyPrebuilt(Vec<Operation>);

impl Subject for ApplyPrebuilt {
    fn name(&self) -> &'static str {
        "apply prebuilt"
    }

    fn replay(&self, trace: &Trace) -> anyhow::Result<Box<dyn Replayed>> {
        let mut rope = Rope::from_str(&trace.start_content);
        for (i, op) in self.0.iter().enumerate() {
            op.apply(&mut rope)
                .with_context(|| format!("applying patch {i}"))?;
        }
        Ok(Box::new(rope))
    }
}

/// Every subject for `trace`, the floor first; with `breakdown`, also the
/// diagnostic ones that split the engine's cost into building and applying;
/// with `crdts`, then the CRDT libraries, if this build has them
/// ([`HAS_CRDTS`]; without the `crdt-compare` feature `crdts` changes nothing).
fn subjects(trace: &Trace, breakdown: bool, crdts: bool) -> anyhow::Result<Vec<Box<dyn Subject>>> {
    let mut out: Vec<Box<dyn Subject>> = vec![Box::new(RopeFloor), Box::new(EngineApply)];
    if breakdown {
        let ops = trace
            .patches
            .iter()
            .map(patch_to_op)
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Box::new(RopeAndBuild));
        out.push(Box::new(ApplyPrebuilt(ops)));
    }
    #[cfg(feature = "crdt-compare")]
    if crdts {
        out.extend(crdts::subjects(trace));
    }
    #[cfg(not(feature = "crdt-compare"))]
    let _ = crdts;
    Ok(out)
}

/// One subject's figures for one trace.
#[derive(Debug, Serialize)]
pub struct SubjectResult {
    pub name: String,
    pub median_ms: f64,
    pub ratio_to_floor: f64,
    pub ops_per_s: f64,
    pub memory_bytes: usize,
    /// What `memory_bytes` is: `"text buffer"` or `"encoded"` (serialized size).
    pub memory_kind: &'static str,
    /// Timed runs behind `median_ms`.
    pub runs: u32,
    pub ok: bool,
}

/// All subjects' figures for one trace.
#[derive(Debug, Serialize)]
pub struct TraceReport {
    pub trace: String,
    pub patches: usize,
    /// Timed runs per subject (`slow_runs` for the slow ones).
    pub runs: u32,
    pub slow_runs: u32,
    pub results: Vec<SubjectResult>,
}

/// Replays `trace` with every subject: one untimed warm-up each (which also
/// measures memory), then `runs` timed runs (`slow_runs` for slow subjects),
/// alternating subjects (and their order) so they share noise. Every run's
/// final text is checked.
pub fn bench_trace(
    trace: &Trace,
    subjects: &[Box<dyn Subject>],
    runs: u32,
    slow_runs: u32,
) -> anyhow::Result<TraceReport> {
    let n = subjects.len();
    let runs_of: Vec<u32> = subjects
        .iter()
        .map(|s| if s.is_slow() { slow_runs } else { runs })
        .collect();
    let mut samples: Vec<Vec<f64>> = runs_of
        .iter()
        .map(|&r| Vec::with_capacity(r as usize))
        .collect();
    let mut ok = vec![true; n];
    let mut memory = Vec::with_capacity(n);
    for (i, s) in subjects.iter().enumerate() {
        let state = s
            .replay(trace)
            .with_context(|| format!("{} replaying {}", s.name(), trace.name))?;
        ok[i] &= state.text() == trace.end_content;
        memory.push((state.memory_bytes(), state.memory_kind()));
    }
    for run in 0..runs.max(slow_runs) {
        for k in 0..n {
            let i = if run % 2 == 0 { k } else { n - 1 - k };
            if run >= runs_of[i] {
                continue;
            }
            let start = Instant::now();
            let state = subjects[i].replay(trace)?;
            samples[i].push(ms(start.elapsed()));
            ok[i] &= state.text() == trace.end_content;
        }
    }
    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    let floor = medians[0];
    let results = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| SubjectResult {
            name: s.name().to_owned(),
            median_ms: medians[i],
            ratio_to_floor: medians[i] / floor,
            ops_per_s: trace.patches.len() as f64 / (medians[i] / 1e3),
            memory_bytes: memory[i].0,
            memory_kind: memory[i].1,
            runs: runs_of[i],
            ok: ok[i],
        })
        .collect();
    Ok(TraceReport {
        trace: trace.name.clone(),
        patches: trace.patches.len(),
        runs,
        slow_runs,
        results,
    })
}

fn print_table(report: &TraceReport, trace: &Trace) {
    println!(
        "trace {}: {} patches, {} chars at the end",
        report.trace,
        thousands(report.patches as f64),
        thousands(trace.end_content.chars().count() as f64),
    );
    println!(
        "  {:<16} {:>4} {:>10} {:>9} {:>12} {:>11} {:<11} {:>4}",
        "subject", "runs", "median ms", "vs rope", "ops/s", "memory KiB", "(measure)", "ok"
    );
    for r in &report.results {
        println!(
            "  {:<16} {:>4} {:>10.2} {:>8.2}x {:>12} {:>11} {:<11} {:>4}",
            r.name,
            r.runs,
            r.median_ms,
            r.ratio_to_floor,
            thousands(r.ops_per_s),
            thousands(r.memory_bytes as f64 / 1024.0),
            r.memory_kind,
            if r.ok { "ok" } else { "FAIL" }
        );
    }
    println!();
}

/// Runs the `trace` subcommand.
pub fn run(args: &TraceArgs) -> anyhow::Result<()> {
    let paths = if args.traces.is_empty() {
        DEFAULT_TRACES
            .iter()
            .map(|rel| default_trace_path(rel))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        args.traces.clone()
    };
    // Parse everything before timing anything.
    let traces = paths
        .iter()
        .map(|p| Trace::load(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !HAS_CRDTS && !args.no_crdts {
        println!("{CRDT_NOTE}\n");
    }
    let mut reports = Vec::new();
    for trace in &traces {
        let subjects = subjects(trace, args.breakdown, !args.no_crdts)?;
        let report = bench_trace(trace, &subjects, args.runs, args.crdt_runs)?;
        print_table(&report, trace);
        reports.push(report);
    }
    print!(
        "memory: \"text buffer\" is the final rope's text buffer capacity (Rope::capacity), \
         tree nodes excluded"
    );
    if reports
        .iter()
        .any(|r| r.results.iter().any(|s| s.memory_kind == "encoded"))
    {
        print!(
            "; \"encoded\" is the size of the library's own full encoding of the final \
             document (diamond-types OpLog::encode(ENCODE_FULL), yrs v1 update, \
             Automerge::save), as none of them reports the memory it holds"
        );
    }
    println!(".");
    let failed = reports.iter().any(|r| r.results.iter().any(|s| !s.ok));
    if args.json {
        let line = match reports.as_slice() {
            [one] => serde_json::to_string(one)?,
            all => serde_json::to_string(all)?,
        };
        println!("{line}");
    }
    if failed {
        bail!("a subject's final text differs from the trace's endContent");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{
        "startContent": "",
        "endContent": "hé😭llo!",
        "txns": [
            {"time": "2021-04-19T06:06:58.000Z", "patches": [[0, 0, "hello"]]},
            {"patches": [[1, 1, "é😭x"]]},
            {"patches": [[7, 0, "!"], [3, 1, ""]]}
        ]
    }"#;

    #[test]
    fn parses_and_names() {
        let t = Trace::from_json("tiny", TINY).unwrap();
        assert_eq!(t.patches.len(), 4);
        assert_eq!(
            t.patches[1],
            Patch {
                pos: 1,
                del: 1,
                ins: "é😭x".into()
            }
        );
        assert_eq!(
            trace_name(Path::new("a/automerge-paper.json.gz")),
            "automerge-paper"
        );
        assert_eq!(trace_name(Path::new("x.json")), "x");
        assert!(Trace::from_json(
            "c",
            r#"{"kind": "concurrent", "endContent": "", "txns": []}"#
        )
        .is_err());
    }

    #[test]
    fn missing_default_trace_says_where_to_get_it() {
        let err = default_trace_path("sequential/no-such-trace.json.gz").unwrap_err();
        assert!(err.to_string().contains("josephg/editing-traces"), "{err}");
    }

    #[test]
    fn patches_become_wire_ops() {
        let p = |pos, del, ins: &str| {
            patch_to_op(&Patch {
                pos,
                del,
                ins: ins.into(),
            })
            .unwrap()
        };
        assert_eq!(p(0, 0, "hi").to_json(), r#"["hi"]"#);
        assert_eq!(p(3, 2, "").to_json(), r#"[3,{"d":2}]"#);
        assert_eq!(p(3, 2, "é").to_json(), r#"[3,{"d":2},"é"]"#);
        assert!(patch_to_op(&Patch {
            pos: 3,
            del: 0,
            ins: String::new()
        })
        .unwrap()
        .is_noop());
    }

    /// Replays TINY with every subject this build has; returns the report.
    fn replay_tiny(breakdown: bool, crdts: bool) -> TraceReport {
        let t = Trace::from_json("tiny", TINY).unwrap();
        let report = bench_trace(&t, &subjects(&t, breakdown, crdts).unwrap(), 3, 2).unwrap();
        for r in &report.results {
            assert!(r.ok, "{} gave the wrong text", r.name);
            assert!(r.memory_bytes > 0, "{} reported no memory", r.name);
        }
        assert_eq!(report.results[0].ratio_to_floor, 1.0);
        assert_eq!(report.results[0].runs, 3);
        report
    }

    fn names(report: &TraceReport) -> Vec<&str> {
        report.results.iter().map(|r| r.name.as_str()).collect()
    }

    const ENGINE_SUBJECTS: [&str; 4] = [
        "rope",
        "collab-ot apply",
        "rope + build op",
        "apply prebuilt",
    ];

    #[test]
    fn engine_subjects_replay_to_end_content() {
        let report = replay_tiny(true, false);
        assert_eq!(names(&report), ENGINE_SUBJECTS);
        assert!(report.results.iter().all(|r| r.runs == 3));
        assert_eq!(names(&replay_tiny(false, false)), ENGINE_SUBJECTS[..2]);
    }

    /// Without the feature, asking for the CRDTs still gives the engine's
    /// subjects (and the output says how to get the rest).
    #[cfg(not(feature = "crdt-compare"))]
    #[test]
    fn without_the_feature_crdts_are_left_out() {
        assert_eq!(names(&replay_tiny(true, true)), ENGINE_SUBJECTS);
        assert!(
            CRDT_NOTE
                .contains("cargo run --release -p collab-bench --features crdt-compare -- trace"),
            "{CRDT_NOTE}"
        );
    }

    #[cfg(feature = "crdt-compare")]
    #[test]
    fn crdt_subjects_replay_to_end_content() {
        let report = replay_tiny(true, true);
        assert_eq!(
            names(&report),
            [
                "rope",
                "collab-ot apply",
                "rope + build op",
                "apply prebuilt",
                "diamond-types",
                "yrs (+utf16 map)",
                "automerge"
            ]
        );
        assert_eq!(report.results[6].runs, 2);
    }
}
