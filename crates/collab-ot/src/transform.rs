//! `transform` and `compose`, the two algebraic operations of OT.
//!
//! Both walk one operation while taking matching pieces of the other. Which
//! components may be split while taking differs (transform never splits an
//! insert, compose never splits a delete), and the result must agree exactly
//! with `ot-text-unicode` 4.x, so both share one `Taker`.

use crate::op::{byte_len_of_chars, char_len, Builder, Component, Operation};

/// Which operation wins a tie: two inserts at the same position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The transformed operation's insert goes first.
    Left,
    /// The other operation's insert goes first.
    Right,
}

/// Which kind of component `Taker::take` must hand out whole.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Whole {
    Inserts,
    Deletes,
}

/// Hands out an operation's components piece by piece.
struct Taker<'a> {
    components: &'a [Component],
    index: usize,
    /// Characters already taken from `components[index]`.
    offset: usize,
    /// Bytes already taken from `components[index]` when it is an insert.
    byte_offset: usize,
}

impl<'a> Taker<'a> {
    fn new(op: &'a Operation) -> Self {
        Taker {
            components: op.components(),
            index: 0,
            offset: 0,
            byte_offset: 0,
        }
    }

    fn peek(&self) -> Option<&'a Component> {
        self.components.get(self.index)
    }

    fn advance(&mut self) {
        self.index += 1;
        self.offset = 0;
        self.byte_offset = 0;
    }

    /// The rest of the current component.
    fn take_rest(&mut self) -> Option<Component> {
        let c = self.components.get(self.index)?;
        let part = match c {
            Component::Skip(n) => Component::Skip(n - self.offset),
            Component::Insert(s) => Component::Insert(s[self.byte_offset..].into()),
            Component::Delete(d) => Component::Delete(d.slice(self.offset, None)),
        };
        self.advance();
        Some(part)
    }

    /// Up to `n` characters of the current component. Past the end of the
    /// operation there are skips forever.
    fn take(&mut self, n: usize, whole: Whole) -> Component {
        let Some(c) = self.components.get(self.index) else {
            return Component::Skip(n);
        };
        let fits = match c {
            Component::Skip(len) => len - self.offset <= n,
            Component::Insert(s) => {
                whole == Whole::Inserts || s[self.byte_offset..].chars().nth(n).is_none()
            }
            Component::Delete(d) => whole == Whole::Deletes || d.len() - self.offset <= n,
        };
        if fits {
            return self.take_rest().expect("a current component exists");
        }
        let part = match c {
            Component::Skip(_) => Component::Skip(n),
            Component::Insert(s) => {
                let rest = &s[self.byte_offset..];
                let bytes = byte_len_of_chars(rest, n);
                self.byte_offset += bytes;
                Component::Insert(rest[..bytes].into())
            }
            Component::Delete(d) => Component::Delete(d.slice(self.offset, Some(self.offset + n))),
        };
        self.offset += n;
        part
    }
}

/// Rewrites `op` so that it applies after `other`; both applied to the same
/// document. `side` breaks ties between inserts at the same position.
///
/// For any document `d` on which both apply,
/// `apply(apply(d, other), transform(op, other, Left)) ==
///  apply(apply(d, op), transform(other, op, Right))`.
pub fn transform(op: &Operation, other: &Operation, side: Side) -> Operation {
    let mut out = Builder::default();
    let mut take = Taker::new(op);
    for c in other.components() {
        match c {
            Component::Skip(n) => {
                let mut left = *n;
                while left > 0 {
                    let part = take.take(left, Whole::Inserts);
                    if !matches!(part, Component::Insert(_)) {
                        left -= part.len();
                    }
                    out.push(part);
                }
            }
            Component::Insert(s) => {
                if side == Side::Left && matches!(take.peek(), Some(Component::Insert(_))) {
                    out.push(take.take_rest().expect("peeked"));
                }
                out.push(Component::Skip(char_len(s)));
            }
            Component::Delete(d) => {
                let mut left = d.len();
                while left > 0 {
                    match take.take(left, Whole::Inserts) {
                        Component::Skip(k) => left -= k,
                        insert @ Component::Insert(_) => out.push(insert),
                        // Both deleted these characters: ours has nothing left to do.
                        Component::Delete(x) => left -= x.len(),
                    }
                }
            }
        }
    }
    while let Some(c) = take.take_rest() {
        out.push(c);
    }
    out.finish()
}

/// One operation with the effect of `a` then `b` (`b` applies to the result of `a`).
pub fn compose(a: &Operation, b: &Operation) -> Operation {
    let mut out = Builder::default();
    let mut take = Taker::new(a);
    for c in b.components() {
        match c {
            Component::Skip(n) => {
                let mut left = *n;
                while left > 0 {
                    let part = take.take(left, Whole::Deletes);
                    if !matches!(part, Component::Delete(_)) {
                        left -= part.len();
                    }
                    out.push(part);
                }
            }
            Component::Insert(s) => out.push(Component::Insert(s.clone())),
            Component::Delete(d) => {
                let len = d.len();
                let mut done = 0;
                while done < len {
                    match take.take(len - done, Whole::Deletes) {
                        Component::Skip(k) => {
                            out.push(Component::Delete(d.slice(done, Some(done + k))));
                            done += k;
                        }
                        // `b` deletes what `a` inserted: both vanish.
                        Component::Insert(s) => done += char_len(&s),
                        del @ Component::Delete(_) => out.push(del),
                    }
                }
            }
        }
    }
    while let Some(c) = take.take_rest() {
        out.push(c);
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(json: &str) -> Operation {
        Operation::from_json(json).unwrap()
    }

    #[test]
    fn ties_follow_side() {
        let a = op(r#"[1, "a"]"#);
        let b = op(r#"[1, "b"]"#);
        assert_eq!(transform(&a, &b, Side::Left).to_json(), r#"[1,"a"]"#);
        assert_eq!(transform(&a, &b, Side::Right).to_json(), r#"[2,"a"]"#);
    }

    #[test]
    fn overlapping_deletes_shrink() {
        let a = op(r#"[1, {"d": "bcd"}]"#);
        let b = op(r#"[2, {"d": 3}]"#);
        assert_eq!(transform(&a, &b, Side::Left).to_json(), r#"[1,{"d":"b"}]"#);
    }

    #[test]
    fn compose_cancels_insert_then_delete() {
        let a = op(r#"[2, "xyz"]"#);
        let b = op(r#"[3, {"d": 1}, 1, "😭"]"#);
        let c = compose(&a, &b);
        assert_eq!(
            c.apply_str("abcd").unwrap(),
            b.apply_str(&a.apply_str("abcd").unwrap()).unwrap()
        );
        assert_eq!(c.to_json(), r#"[2,"xz😭"]"#);
    }
}
