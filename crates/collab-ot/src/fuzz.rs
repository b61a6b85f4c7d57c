//! The checks behind the `cargo fuzz` target (`fuzz/`) and its committed
//! regression inputs (`tests/fuzz_regressions.rs`), kept here so both run the
//! very same code. Not part of the supported API.

use crate::{compose, transform, transform_position, Operation, Rope, Side};

/// Parses untrusted input the way the server does and runs it through every
/// engine entry point. Panics on any broken invariant; returns quietly for
/// input the engine rightly refuses. The first line is the document, the
/// rest the operation's JSON.
pub fn parse_apply(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (doc, json) = text.split_once('\n').unwrap_or(("", &text));
    let Ok(op) = Operation::from_json(json) else {
        return;
    };
    let reparsed = Operation::from_json(&op.to_json()).expect("own output parses");
    assert_eq!(reparsed, op, "JSON round trip changed the operation");
    let rope = Rope::from_str(doc);
    let mut applied = rope.clone();
    match op.apply(&mut applied) {
        Ok(()) => {
            let expected = rope.len_chars() as isize + op.len_delta();
            assert_eq!(applied.len_chars() as isize, expected, "length drift");
            let inverse = op.invert_with_doc(&rope).expect("a valid op inverts");
            inverse.apply(&mut applied).expect("the inverse applies");
            assert_eq!(applied, rope, "inverse did not restore the document");
        }
        Err(_) => assert_eq!(applied, rope, "a refused op changed the document"),
    }
    let _ = transform(&op, &op, Side::Left);
    let _ = compose(&op, &op);
    let _ = transform_position(doc.chars().count(), &op);
}
