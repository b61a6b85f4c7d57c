//! Replays every input in `tests/fuzz-inputs/` through the fuzz target's
//! checks: crash inputs found by `cargo fuzz run parse_apply` are committed
//! there (see `fuzz/README.md`), next to hand-picked edge cases.

use std::fs;
use std::path::Path;

#[test]
fn fuzz_inputs_replay_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-inputs");
    let mut count = 0;
    for entry in fs::read_dir(&dir).expect("fuzz-inputs directory exists") {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| collab_ot::fuzz::parse_apply(&data));
        assert!(outcome.is_ok(), "{} makes the engine panic", path.display());
        count += 1;
    }
    assert!(count >= 5, "expected the committed inputs, found {count}");
}
