//! Moving cursors and selections through an operation, so that a peer's caret
//! stays next to the same character while others type.

use serde::{Deserialize, Serialize};

use crate::op::{char_len, Component, Operation};

/// A caret, or a selection from `anchor` to `head` (the head may come first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Selection {
    Cursor(usize),
    Range(usize, usize),
}

/// Where the character position `cursor` ends up after `op`.
///
/// As in `ot-text-unicode`, text inserted exactly at the cursor lands after it,
/// and a cursor inside deleted text moves to the start of the deletion.
pub fn transform_position(mut cursor: usize, op: &Operation) -> usize {
    // `pos` walks the new document; the cursor is shifted as we go.
    let mut pos = 0;
    for c in op.components() {
        if cursor <= pos {
            break;
        }
        match c {
            Component::Skip(n) => pos += n,
            Component::Insert(s) => {
                let n = char_len(s);
                pos += n;
                cursor += n;
            }
            Component::Delete(d) => cursor -= d.len().min(cursor - pos),
        }
    }
    cursor
}

/// [`transform_position`] for each end of a selection.
pub fn transform_selection(selection: Selection, op: &Operation) -> Selection {
    match selection {
        Selection::Cursor(p) => Selection::Cursor(transform_position(p, op)),
        Selection::Range(a, h) => {
            Selection::Range(transform_position(a, op), transform_position(h, op))
        }
    }
}

/// [`transform_position`] for both ends of `[anchor, head]`, the shape
/// selections have on the wire.
pub fn transform_range([anchor, head]: [usize; 2], op: &Operation) -> [usize; 2] {
    [transform_position(anchor, op), transform_position(head, op)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_at_cursor_goes_after_it() {
        let op = Operation::insert(2, "xy");
        assert_eq!(transform_position(2, &op), 2);
        assert_eq!(transform_position(3, &op), 5);
    }

    #[test]
    fn cursor_in_deleted_text_moves_to_its_start() {
        let op = Operation::delete(1, 3);
        assert_eq!(transform_position(2, &op), 1);
        assert_eq!(transform_position(6, &op), 3);
        assert_eq!(
            transform_selection(Selection::Range(5, 0), &op),
            Selection::Range(2, 0)
        );
        assert_eq!(transform_range([5, 0], &op), [2, 0], "the wire shape");
    }
}
