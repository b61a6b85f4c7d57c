//! Conformance against the reference implementation `ot-text-unicode` 4.0.0.
//!
//! The vectors in `tests/vectors/` are produced by `tools/ot-vectors/generate.js`
//! (run by hand, see its README). Each file is a JSON array of cases; every
//! case's inputs are parsed into engine types, the engine function is run, and
//! its result (serialized back to JSON) must equal the reference's result.
//! All failures of a file are collected and the first few printed, so one run
//! shows the whole picture.

use collab_ot::{Operation, Rope, Selection, Side};
use serde_json::Value;

const APPLY: &str = include_str!("vectors/apply.json");
const TRANSFORM: &str = include_str!("vectors/transform.json");
const COMPOSE: &str = include_str!("vectors/compose.json");
const TRANSFORM_SELECTION: &str = include_str!("vectors/transform_selection.json");
const INVERT: &str = include_str!("vectors/invert.json");

/// Minimum number of cases a vector file must have (guards against an empty
/// or truncated file passing vacuously).
const MIN_CASES: usize = 100;
/// How many failures to print in detail.
const MAX_REPORTED: usize = 20;

/// Runs `check` on every case of a vector file. `check` returns the engine's
/// result as JSON (compared against the case's `result` field) or an error
/// message (counted as a failure).
fn run_vectors(name: &str, src: &str, check: impl Fn(&Value) -> Result<Value, String>) {
    let cases: Vec<Value> = serde_json::from_str(src)
        .unwrap_or_else(|e| panic!("{name}: vector file is not a JSON array: {e}"));
    assert!(
        cases.len() > MIN_CASES,
        "{name}: only {} cases (expected > {MIN_CASES}); regenerate with tools/ot-vectors",
        cases.len()
    );

    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let expected = &case["result"];
        // A panic inside the engine is reported as a failure of this case
        // rather than aborting the whole file.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(case)))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "<non-string panic>".to_owned());
                Err(format!("panicked: {msg}"))
            });
        let actual = match outcome {
            Ok(v) if v == *expected => continue,
            Ok(v) => v.to_string(),
            Err(e) => format!("error: {e}"),
        };
        let mut inputs = case.clone();
        if let Some(obj) = inputs.as_object_mut() {
            obj.remove("result");
        }
        failures.push(format!(
            "case #{i}\n    input:    {inputs}\n    expected: {expected}\n    actual:   {actual}"
        ));
    }

    if !failures.is_empty() {
        let shown = failures.len().min(MAX_REPORTED);
        let mut msg = format!(
            "{name}: {} of {} cases differ from ot-text-unicode (showing {shown}):\n",
            failures.len(),
            cases.len()
        );
        for f in &failures[..shown] {
            msg.push_str(f);
            msg.push('\n');
        }
        panic!("{msg}");
    }
}

fn field<'a>(case: &'a Value, key: &str) -> Result<&'a Value, String> {
    case.get(key)
        .ok_or_else(|| format!("case has no field {key:?}"))
}

fn str_field<'a>(case: &'a Value, key: &str) -> Result<&'a str, String> {
    field(case, key)?
        .as_str()
        .ok_or_else(|| format!("field {key:?} is not a string"))
}

/// Parses an op with serde, and checks `Operation::from_json` agrees.
fn op_field(case: &Value, key: &str) -> Result<Operation, String> {
    let v = field(case, key)?;
    let op: Operation = serde_json::from_value(v.clone())
        .map_err(|e| format!("serde rejected op {key:?} = {v}: {e}"))?;
    let via_from_json = Operation::from_json(&v.to_string())
        .map_err(|e| format!("Operation::from_json rejected op {key:?} = {v}: {e}"))?;
    let (a, b) = (op_value(&op)?, op_value(&via_from_json)?);
    if a != b {
        return Err(format!(
            "serde and from_json disagree on {key:?} = {v}: {a} vs {b}"
        ));
    }
    Ok(op)
}

/// Serializes an op with serde, and checks `Operation::to_json` agrees.
fn op_value(op: &Operation) -> Result<Value, String> {
    let v = serde_json::to_value(op).map_err(|e| format!("serializing op: {e}"))?;
    let from_to_json: Value = serde_json::from_str(&op.to_json())
        .map_err(|e| format!("Operation::to_json is not JSON ({}): {e}", op.to_json()))?;
    if v != from_to_json {
        return Err(format!("serde gives {v} but to_json gives {from_to_json}"));
    }
    Ok(v)
}

#[test]
fn apply_matches_reference() {
    run_vectors("apply.json", APPLY, |case| {
        let doc = str_field(case, "doc")?;
        let op = op_field(case, "op")?;
        let out = op.apply_str(doc).map_err(|e| format!("apply_str: {e}"))?;

        // The rope path must agree with the string path.
        let mut rope = Rope::from_str(doc);
        op.check(&rope).map_err(|e| format!("check: {e}"))?;
        op.apply(&mut rope)
            .map_err(|e| format!("apply(&mut Rope): {e}"))?;
        if rope != out {
            return Err(format!(
                "apply_str gives {out:?} but apply(&mut Rope) gives {:?}",
                rope.to_string()
            ));
        }
        Ok(Value::String(out))
    });
}

#[test]
fn transform_matches_reference() {
    run_vectors("transform.json", TRANSFORM, |case| {
        let op = op_field(case, "op")?;
        let other = op_field(case, "other")?;
        let side = match str_field(case, "side")? {
            "left" => Side::Left,
            "right" => Side::Right,
            s => return Err(format!("bad side {s:?}")),
        };
        op_value(&collab_ot::transform(&op, &other, side))
    });
}

#[test]
fn compose_matches_reference() {
    run_vectors("compose.json", COMPOSE, |case| {
        let a = op_field(case, "a")?;
        let b = op_field(case, "b")?;
        op_value(&collab_ot::compose(&a, &b))
    });
}

#[test]
fn transform_selection_matches_reference() {
    run_vectors("transform_selection.json", TRANSFORM_SELECTION, |case| {
        let op = op_field(case, "op")?;
        let sel_json = field(case, "selection")?;
        let sel: Selection = serde_json::from_value(sel_json.clone())
            .map_err(|e| format!("serde rejected selection {sel_json}: {e}"))?;
        let out = collab_ot::transform_selection(sel, &op);
        serde_json::to_value(out).map_err(|e| format!("serializing selection: {e}"))
    });
}

#[test]
fn invert_matches_reference() {
    run_vectors("invert.json", INVERT, |case| {
        let doc = Rope::from_str(str_field(case, "doc")?);
        let op = op_field(case, "op")?;
        let out = match str_field(case, "kind")? {
            "invert_with_doc" => op.invert_with_doc(&doc),
            "make_invertible" => op.make_invertible(&doc),
            "invert" => op.invert(),
            k => return Err(format!("bad kind {k:?}")),
        }
        .map_err(|e| format!("engine error: {e}"))?;
        op_value(&out)
    });
}

/// Every invert.json kind is present, so none is silently untested.
#[test]
fn invert_vectors_cover_every_kind() {
    let cases: Vec<Value> = serde_json::from_str(INVERT).expect("invert.json is JSON");
    for kind in ["invert_with_doc", "make_invertible", "invert"] {
        let n = cases.iter().filter(|c| c["kind"] == kind).count();
        assert!(
            n > MIN_CASES,
            "invert.json has only {n} cases of kind {kind:?}"
        );
    }
}
