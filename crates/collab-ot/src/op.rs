//! The `text-unicode` operation: its components, its wire form, and how it
//! applies to a document.
//!
//! An [`Operation`] is always kept normalized (adjacent components of one kind
//! merged, no empty components, no trailing skip), because the reference
//! implementation's `transform` and `compose` give different answers for
//! equivalent un-normalized inputs. Normalizing once at the boundary makes
//! every later step agree with the reference.

use std::fmt;

pub use compact_str::CompactString;
use ropey::Rope;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The JSON is not an operation at all.
    #[error("operation is not valid JSON of the text-unicode shape: {0}")]
    Malformed(String),
    /// A skip of zero, an empty insert or an empty delete.
    #[error("operation component {index} is empty (zero or \"\")")]
    EmptyComponent { index: usize },
    /// The operation reaches past the end of the document.
    #[error("operation covers {needed} characters but the document has {len}")]
    PastEnd { needed: usize, len: usize },
    /// A `{"d": "text"}` component names characters the document does not have there.
    #[error("delete at position {pos} does not match the document's text")]
    DeleteMismatch { pos: usize },
    /// `invert` needs every delete in the `{"d": "text"}` form.
    #[error("operation deletes by count and cannot be inverted without the document")]
    NotInvertible,
}

/// What a delete component removes: a count, or the exact text (invertible form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delete {
    Count(usize),
    Text(CompactString),
}

impl Delete {
    /// Characters (Unicode scalar values) this delete removes.
    pub fn len(&self) -> usize {
        match self {
            Delete::Count(n) => *n,
            Delete::Text(s) => char_len(s),
        }
    }

    /// True for a delete of nothing (never present in a normalized operation).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part of this delete from character `start` to `end` (or its end).
    pub(crate) fn slice(&self, start: usize, end: Option<usize>) -> Delete {
        match self {
            Delete::Count(n) => Delete::Count(end.map_or(*n, |e| e.min(*n)) - start),
            Delete::Text(s) => Delete::Text(char_slice(s, start, end).into()),
        }
    }
}

/// One step of an operation, walking the document from position 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    /// Keep the next `n` characters.
    Skip(usize),
    /// Insert this text at the current position. Short text is stored
    /// inline: a keystroke costs no allocation.
    Insert(CompactString),
    /// Remove characters at the current position.
    Delete(Delete),
}

impl Component {
    /// Length in characters: skipped, inserted or deleted.
    pub fn len(&self) -> usize {
        match self {
            Component::Skip(n) => *n,
            Component::Insert(s) => char_len(s),
            Component::Delete(d) => d.len(),
        }
    }

    /// True for a zero skip, an empty insert or an empty delete.
    pub fn is_empty(&self) -> bool {
        match self {
            Component::Skip(n) => *n == 0,
            Component::Insert(s) => s.is_empty(),
            Component::Delete(Delete::Count(n)) => *n == 0,
            Component::Delete(Delete::Text(s)) => s.is_empty(),
        }
    }
}

/// Components stored inline: a typical edit (skip, delete, insert) needs no
/// allocation, which keeps the engine within reach of a bare rope.
type Components = SmallVec<[Component; 3]>;

/// A normalized `text-unicode` operation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Operation(Components);

impl Operation {
    /// The operation that changes nothing.
    pub fn new() -> Self {
        Operation(Components::new())
    }

    /// Builds an operation from components, rejecting empty ones and normalizing.
    pub fn from_components(components: Vec<Component>) -> Result<Self, OpError> {
        if let Some(index) = components.iter().position(Component::is_empty) {
            return Err(OpError::EmptyComponent { index });
        }
        Ok(Self::normalized(components))
    }

    /// Merges, drops empties and trims; the only way an `Operation` is built.
    pub(crate) fn normalized(components: impl IntoIterator<Item = Component>) -> Self {
        let mut out = Builder::default();
        for c in components {
            out.push(c);
        }
        out.finish()
    }

    /// Parses the wire JSON form. Never panics, whatever the input.
    pub fn from_json(json: &str) -> Result<Self, OpError> {
        serde_json::from_str(json).map_err(|e| OpError::Malformed(e.to_string()))
    }

    /// The wire JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an operation always serializes")
    }

    /// The components, normalized.
    pub fn components(&self) -> &[Component] {
        &self.0
    }

    /// Inserts `text` at `pos` (the no-op for empty text).
    pub fn insert(pos: usize, text: &str) -> Self {
        // Built directly rather than normalized: this is every keystroke.
        let mut out = Components::new();
        if !text.is_empty() {
            if pos > 0 {
                out.push(Component::Skip(pos));
            }
            out.push(Component::Insert(text.into()));
        }
        Operation(out)
    }

    /// Deletes `len` characters at `pos`, by count.
    pub fn delete(pos: usize, len: usize) -> Self {
        let mut out = Components::new();
        if len > 0 {
            if pos > 0 {
                out.push(Component::Skip(pos));
            }
            out.push(Component::Delete(Delete::Count(len)));
        }
        Operation(out)
    }

    /// True when applying this changes nothing.
    pub fn is_noop(&self) -> bool {
        self.0.is_empty()
    }

    /// Characters of the document this operation walks over (skips and deletes):
    /// it applies to any document at least this long.
    pub fn base_len(&self) -> usize {
        self.0
            .iter()
            .map(|c| match c {
                Component::Insert(_) => 0,
                other => other.len(),
            })
            .sum()
    }

    /// How much longer (or, negative, shorter) the document gets.
    pub fn len_delta(&self) -> isize {
        self.0
            .iter()
            .map(|c| match c {
                Component::Skip(_) => 0,
                Component::Insert(s) => char_len(s) as isize,
                Component::Delete(d) => -(d.len() as isize),
            })
            .sum()
    }

    /// Checks that this operation applies to `doc`: it stays within the
    /// document and every text delete matches.
    pub fn check(&self, doc: &Rope) -> Result<(), OpError> {
        let len = doc.len_chars();
        let needed = self.base_len();
        if needed > len {
            return Err(OpError::PastEnd { needed, len });
        }
        if self.has_no_text_delete() {
            return Ok(());
        }
        let mut pos = 0;
        for c in &self.0 {
            match c {
                Component::Skip(n) => pos += n,
                Component::Insert(_) => {}
                Component::Delete(Delete::Count(n)) => pos += n,
                Component::Delete(Delete::Text(s)) => {
                    let n = char_len(s);
                    if doc.slice(pos..pos + n) != s.as_str() {
                        return Err(OpError::DeleteMismatch { pos });
                    }
                    pos += n;
                }
            }
        }
        Ok(())
    }

    /// Applies the operation to `doc` in place. All or nothing: an invalid
    /// operation leaves `doc` untouched.
    pub fn apply(&self, doc: &mut Rope) -> Result<(), OpError> {
        // Most operations are one edit at one place. The rope checks bounds
        // itself and changes nothing on error, so no separate pass is needed.
        let (pos, edit) = match self.0.as_slice() {
            [Component::Skip(pos), edit] => (*pos, edit),
            [edit] => (0, edit),
            _ => return self.apply_checked(doc),
        };
        let past_end = |doc: &Rope| OpError::PastEnd {
            needed: pos + edit.len(),
            len: doc.len_chars(),
        };
        match edit {
            Component::Insert(s) => doc.try_insert(pos, s).map_err(|_| OpError::PastEnd {
                needed: pos,
                len: doc.len_chars(),
            }),
            Component::Delete(Delete::Count(n)) => {
                doc.try_remove(pos..pos + n).map_err(|_| past_end(doc))
            }
            _ => self.apply_checked(doc),
        }
    }

    /// The general case: check everything, then edit.
    fn apply_checked(&self, doc: &mut Rope) -> Result<(), OpError> {
        self.check(doc)?;
        // `pos` walks the document as it is being rewritten.
        let mut pos = 0;
        for c in &self.0 {
            match c {
                Component::Skip(n) => pos += n,
                Component::Insert(s) => {
                    doc.insert(pos, s);
                    pos += char_len(s);
                }
                Component::Delete(d) => doc.remove(pos..pos + d.len()),
            }
        }
        Ok(())
    }

    /// Applies the operation to a string, returning the new string.
    pub fn apply_str(&self, doc: &str) -> Result<String, OpError> {
        let mut rope = Rope::from_str(doc);
        self.apply(&mut rope)?;
        Ok(rope.to_string())
    }

    /// The operation that undoes this one. Needs the `{"d": "text"}` form
    /// of every delete (see [`Operation::make_invertible`]).
    pub fn invert(&self) -> Result<Operation, OpError> {
        let mut out = Builder::default();
        for c in &self.0 {
            out.push(match c {
                Component::Skip(n) => Component::Skip(*n),
                Component::Insert(s) => Component::Delete(Delete::Text(s.clone())),
                Component::Delete(Delete::Text(s)) => Component::Insert(s.clone()),
                Component::Delete(Delete::Count(_)) => return Err(OpError::NotInvertible),
            });
        }
        Ok(out.finish())
    }

    /// Rewrites every count delete as the text it removes from `doc`.
    pub fn make_invertible(&self, doc: &Rope) -> Result<Operation, OpError> {
        self.check(doc)?;
        let mut pos = 0;
        let mut out = Builder::default();
        for c in &self.0 {
            out.push(match c {
                Component::Delete(Delete::Count(n)) => {
                    let text: String = doc.slice(pos..pos + n).chars().collect();
                    Component::Delete(Delete::Text(text.into()))
                }
                other => other.clone(),
            });
            if !matches!(c, Component::Insert(_)) {
                pos += c.len();
            }
        }
        Ok(out.finish())
    }

    /// The inverse of this operation as applied to `doc`.
    pub fn invert_with_doc(&self, doc: &Rope) -> Result<Operation, OpError> {
        self.make_invertible(doc)?.invert()
    }

    /// Replaces text deletes by count deletes (smaller on the wire).
    pub fn strip_invertible(&self) -> Operation {
        Self::normalized(self.0.iter().map(|c| match c {
            Component::Delete(d) => Component::Delete(Delete::Count(d.len())),
            other => other.clone(),
        }))
    }

    /// True when no component deletes by text: nothing to compare with the document.
    fn has_no_text_delete(&self) -> bool {
        !self
            .0
            .iter()
            .any(|c| matches!(c, Component::Delete(Delete::Text(_))))
    }

    /// True when [`Operation::invert`] will succeed.
    pub fn is_invertible(&self) -> bool {
        !self
            .0
            .iter()
            .any(|c| matches!(c, Component::Delete(Delete::Count(_))))
    }
}

/// Appends components while keeping the result normalized, exactly as the
/// reference's `append`: adjacent components of one kind merge; two text
/// deletes keep their text, a count delete beside any delete makes a count.
#[derive(Default)]
pub(crate) struct Builder(Components);

impl Builder {
    pub(crate) fn push(&mut self, c: Component) {
        if c.is_empty() {
            return;
        }
        match (self.0.last_mut(), c) {
            (Some(Component::Skip(a)), Component::Skip(b)) => *a += b,
            (Some(Component::Insert(a)), Component::Insert(b)) => a.push_str(&b),
            (Some(Component::Delete(a)), Component::Delete(b)) => {
                let merged = match (std::mem::replace(a, Delete::Count(0)), b) {
                    (Delete::Text(mut x), Delete::Text(y)) => {
                        x.push_str(&y);
                        Delete::Text(x)
                    }
                    (x, y) => Delete::Count(x.len() + y.len()),
                };
                *a = merged;
            }
            (_, c) => self.0.push(c),
        }
    }

    pub(crate) fn finish(mut self) -> Operation {
        if let Some(Component::Skip(_)) = self.0.last() {
            self.0.pop();
        }
        Operation(self.0)
    }
}

/// Characters (Unicode scalar values) in `s`.
pub(crate) fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// `s` from character `start` to character `end` (or the end).
pub(crate) fn char_slice(s: &str, start: usize, end: Option<usize>) -> &str {
    let byte = |n: usize| s.char_indices().nth(n).map_or(s.len(), |(i, _)| i);
    let from = byte(start);
    match end {
        Some(e) => &s[from..from + byte_len_of_chars(&s[from..], e - start)],
        None => &s[from..],
    }
}

/// Bytes taken by the first `n` characters of `s` (all of `s` if shorter).
pub(crate) fn byte_len_of_chars(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

impl Serialize for Component {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self {
            Component::Skip(n) => ser.serialize_u64(*n as u64),
            Component::Insert(s) => ser.serialize_str(s),
            Component::Delete(d) => {
                let mut map = ser.serialize_map(Some(1))?;
                match d {
                    Delete::Count(n) => map.serialize_entry("d", n)?,
                    Delete::Text(s) => map.serialize_entry("d", s)?,
                }
                map.end()
            }
        }
    }
}

impl Serialize for Operation {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut seq = ser.serialize_seq(Some(self.0.len()))?;
        for c in &self.0 {
            seq.serialize_element(c)?;
        }
        seq.end()
    }
}

/// Largest count accepted on the wire; keeps position arithmetic far from overflow.
const MAX_COUNT: u64 = 1 << 40;

fn count<E: de::Error>(n: u64) -> Result<usize, E> {
    if n == 0 {
        Err(E::custom("components must not be zero"))
    } else if n > MAX_COUNT {
        Err(E::custom("count is too large"))
    } else {
        Ok(n as usize)
    }
}

/// Documents never hold U+0000: PostgreSQL cannot store it in text, and
/// editors disagree on how to show it. Refusing it where operations are
/// read keeps every store and every peer able to hold every document.
fn refuse_nul<E: de::Error>(s: &str) -> Result<(), E> {
    if s.contains('\0') {
        return Err(E::custom("text must not contain U+0000 (NUL)"));
    }
    Ok(())
}

struct ComponentVisitor;

impl<'de> Visitor<'de> for ComponentVisitor {
    type Value = Component;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a positive integer, a non-empty string or {\"d\": n | \"text\"}")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Component, E> {
        count(n).map(Component::Skip)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Component, E> {
        u64::try_from(n)
            .map_err(|_| E::custom("skips must be positive"))
            .and_then(|n| self.visit_u64(n))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Component, E> {
        Err(E::custom("skips must be integers"))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Component, E> {
        if s.is_empty() {
            return Err(E::custom("inserts must not be empty"));
        }
        refuse_nul(s)?;
        Ok(Component::Insert(s.into()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Component, A::Error> {
        let mut delete = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "d" || delete.is_some() {
                return Err(de::Error::custom(
                    "a delete is exactly {\"d\": n} or {\"d\": \"text\"}",
                ));
            }
            delete = Some(map.next_value::<DeleteValue>()?.0);
        }
        delete
            .map(Component::Delete)
            .ok_or_else(|| de::Error::custom("a delete needs its \"d\" field"))
    }
}

struct DeleteValue(Delete);

impl<'de> Deserialize<'de> for DeleteValue {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DeleteValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive integer or a non-empty string")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<DeleteValue, E> {
                count(n).map(|n| DeleteValue(Delete::Count(n)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<DeleteValue, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom("deletes must be positive"))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<DeleteValue, E> {
                Err(E::custom("deletes must be integers"))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DeleteValue, E> {
                if s.is_empty() {
                    return Err(E::custom("deletes must not be empty"));
                }
                refuse_nul(s)?;
                Ok(DeleteValue(Delete::Text(s.into())))
            }
        }
        de.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Component {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(ComponentVisitor)
    }
}

impl<'de> Deserialize<'de> for Operation {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Operation;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of operation components")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Operation, A::Error> {
                let mut out = Builder::default();
                while let Some(c) = seq.next_element::<Component>()? {
                    out.push(c);
                }
                Ok(out.finish())
            }
        }
        de.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(json: &str) -> Operation {
        Operation::from_json(json).unwrap()
    }

    #[test]
    fn parses_and_normalizes() {
        assert_eq!(
            op(r#"[2, 3, "a", "b", {"d": 1}, {"d": 2}, 5]"#).to_json(),
            r#"[5,"ab",{"d":3}]"#
        );
        assert_eq!(
            op(r#"[{"d": "x"}, {"d": "y"}]"#).to_json(),
            r#"[{"d":"xy"}]"#
        );
        assert_eq!(op(r#"[{"d": "x"}, {"d": 2}]"#).to_json(), r#"[{"d":3}]"#);
        assert_eq!(op("[4]").to_json(), "[]");
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in [
            "",
            "{}",
            "[0]",
            "[-1]",
            "[1.5]",
            r#"[""]"#,
            r#"[{"d": 0}]"#,
            r#"[{"d": ""}]"#,
            r#"[{"d": -2}]"#,
            r#"[{"x": 1}]"#,
            r#"[{"d": 1, "e": 2}]"#,
            r#"[{}]"#,
            "[null]",
            "[true]",
            "[[1]]",
            r#"[{"d": [1]}]"#,
            "[99999999999999999999]",
            "[1e3]",
            r#"["a\u0000b"]"#,
            r#"[{"d": "\u0000"}]"#,
            r#"[{"d": 1, "d": 1}]"#,
        ] {
            assert!(Operation::from_json(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn applies_by_code_point() {
        let o = op(r#"[1, "é", {"d": "😭"}, 1, {"d": 1}]"#);
        assert_eq!(o.apply_str("a😭bc").unwrap(), "aéb");
        assert_eq!(o.len_delta(), -1);
        assert_eq!(o.base_len(), 4);
    }

    #[test]
    fn refuses_ops_that_do_not_fit_and_leaves_doc_alone() {
        let mut doc = Rope::from_str("abc");
        assert_eq!(op(r#"[3, "x", 1]"#).apply(&mut doc), Ok(())); // trailing skip dropped
        assert_eq!(doc.to_string(), "abcx");
        let before = doc.clone();
        assert_eq!(
            op(r#"["y", 5, "z"]"#).apply(&mut doc),
            Err(OpError::PastEnd { needed: 5, len: 4 })
        );
        assert_eq!(
            op(r#"["y", 1, {"d": "c"}]"#).apply(&mut doc),
            Err(OpError::DeleteMismatch { pos: 1 })
        );
        assert_eq!(doc, before);
    }

    #[test]
    fn inverts() {
        let doc = Rope::from_str("hello 😭 world");
        let o = op(r#"[6, {"d": 2}, "🎉", 3, {"d": "ld"}]"#);
        let inv = o.invert_with_doc(&doc).unwrap();
        let mut d = doc.clone();
        o.apply(&mut d).unwrap();
        inv.apply(&mut d).unwrap();
        assert_eq!(d, doc);
        assert_eq!(o.invert(), Err(OpError::NotInvertible));
        assert!(!o.is_invertible());
        assert!(o.make_invertible(&doc).unwrap().is_invertible());
        assert_eq!(
            o.make_invertible(&doc).unwrap().strip_invertible(),
            o.strip_invertible()
        );
    }

    #[test]
    fn slices_by_chars() {
        assert_eq!(char_slice("a😭bc", 1, Some(3)), "😭b");
        assert_eq!(char_slice("a😭bc", 2, None), "bc");
        assert_eq!(char_slice("ab", 2, None), "");
    }
}
