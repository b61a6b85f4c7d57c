//! Algebraic properties of the engine, over generated documents and operations.
//!
//! Every property runs 10,000 cases (override with `PROPTEST_CASES`).

use collab_ot::{
    compose, transform, transform_position, Client, Committed, Component, Delete, Document,
    DocumentLimits, Operation, Rope, Side, Submitted,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ALPHABET: &[char] = &['a', 'b', 'c', ' ', '\n', 'é', '中', '😭', '🎉', '𝄞'];

fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(ALPHABET), 0..max)
        .prop_map(|chars| chars.into_iter().collect())
}

/// One step of a generated operation, scaled to the document when built.
#[derive(Debug, Clone)]
enum Step {
    Skip(usize),
    Insert(String),
    DeleteCount(usize),
    DeleteText(usize),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        (1..6usize).prop_map(Step::Skip),
        text(4).prop_map(Step::Insert),
        (1..5usize).prop_map(Step::DeleteCount),
        (1..5usize).prop_map(Step::DeleteText),
    ];
    prop::collection::vec(step, 0..6)
}

/// Builds a valid operation on `doc` from generated steps.
fn build(doc: &str, steps: &[Step]) -> Operation {
    let chars: Vec<char> = doc.chars().collect();
    let mut pos = 0;
    let mut out = Vec::new();
    for step in steps {
        let left = chars.len() - pos;
        match step {
            Step::Skip(n) if left > 0 => {
                let n = (*n).min(left);
                out.push(Component::Skip(n));
                pos += n;
            }
            Step::Insert(s) if !s.is_empty() => out.push(Component::Insert(s.as_str().into())),
            Step::DeleteCount(n) if left > 0 => {
                let n = (*n).min(left);
                out.push(Component::Delete(Delete::Count(n)));
                pos += n;
            }
            Step::DeleteText(n) if left > 0 => {
                let n = (*n).min(left);
                let s: String = chars[pos..pos + n].iter().collect();
                out.push(Component::Delete(Delete::Text(s.into())));
                pos += n;
            }
            _ => {}
        }
    }
    Operation::from_components(out).expect("generated components are never empty")
}

fn apply(doc: &str, op: &Operation) -> String {
    op.apply_str(doc).expect("operation applies")
}

/// For each character of `doc`, where it is after `op` (None if deleted).
fn survivors(doc: &str, op: &Operation) -> Vec<Option<usize>> {
    let n = doc.chars().count();
    let mut map = vec![None; n];
    let (mut old, mut new) = (0, 0);
    for c in op.components() {
        match c {
            Component::Skip(k) => {
                for slot in &mut map[old..old + k] {
                    *slot = Some(new);
                    new += 1;
                }
                old += k;
            }
            Component::Insert(s) => new += s.chars().count(),
            Component::Delete(d) => old += d.len(),
        }
    }
    for slot in &mut map[old..] {
        *slot = Some(new);
        new += 1;
    }
    map
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn tp1_transformed_ops_converge(doc in text(30), a in steps(), b in steps()) {
        let (a, b) = (build(&doc, &a), build(&doc, &b));
        let left = apply(&apply(&doc, &a), &transform(&b, &a, Side::Left));
        let right = apply(&apply(&doc, &b), &transform(&a, &b, Side::Right));
        prop_assert_eq!(left, right);
    }

    #[test]
    fn compose_is_apply_then_apply(doc in text(30), a in steps(), b in steps()) {
        let a = build(&doc, &a);
        let mid = apply(&doc, &a);
        let b = build(&mid, &b);
        prop_assert_eq!(apply(&doc, &compose(&a, &b)), apply(&mid, &b));
    }

    #[test]
    fn invert_undoes(doc in text(30), a in steps()) {
        let rope = Rope::from_str(&doc);
        let a = build(&doc, &a).make_invertible(&rope).unwrap();
        prop_assert_eq!(apply(&apply(&doc, &a), &a.invert().unwrap()), doc.clone());
        let b = build(&doc, &[]);
        prop_assert_eq!(b.invert_with_doc(&rope).unwrap(), b);
    }

    /// A caret stays right after the character before it; when that character
    /// is deleted, it stays between the surviving neighbours.
    #[test]
    fn cursors_stay_next_to_their_character(doc in text(30), a in steps(), at in 0..31usize) {
        let a = build(&doc, &a);
        let len = doc.chars().count();
        let p = at.min(len);
        let q = transform_position(p, &a);
        let map = survivors(&doc, &a);
        let new_len = apply(&doc, &a).chars().count();
        prop_assert!(q <= new_len);
        if p == 0 {
            prop_assert_eq!(q, 0);
        } else if let Some(j) = map[p - 1] {
            prop_assert_eq!(q, j + 1);
        } else {
            let before = map[..p].iter().rev().find_map(|m| *m).map_or(0, |j| j + 1);
            let after = map[p..].iter().find_map(|m| *m).unwrap_or(new_len);
            prop_assert!(before <= q && q <= after, "{} not in {}..={}", q, before, after);
        }
    }

    #[test]
    fn parsing_never_panics(s in ".{0,40}", doc in text(10)) {
        if let Ok(op) = Operation::from_json(&s) {
            let _ = op.apply_str(&doc);
        }
    }

    #[test]
    fn parsing_json_shapes_never_panics(v in json_value(), doc in text(10)) {
        let s = v.to_string();
        if let Ok(op) = Operation::from_json(&s) {
            let rope = Rope::from_str(&doc);
            let _ = op.apply_str(&doc);
            let _ = op.invert_with_doc(&rope);
            let _ = transform(&op, &op, Side::Left);
            let _ = compose(&op, &op);
            let _ = transform_position(3, &op);
        }
    }

    #[test]
    fn clients_converge(seed in any::<u64>(), clients in 3..=5usize) {
        simulate(seed, clients)?;
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..6).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        text(4).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            inner.clone().prop_map(|v| json!({ "d": v })),
            (text(2), inner).prop_map(|(k, v)| json!({ k: v })),
        ]
    })
}

/// A message from the server to one client.
enum Down {
    Ack { seq: u64, rev: u64 },
    Op(Committed),
}

struct Site {
    client: Client,
    /// Frames on their way to the server; lost on disconnect.
    up: Vec<collab_ot::OutgoingOp>,
    /// Frames on their way to this client; lost on disconnect.
    down: Vec<Down>,
    last_seq_sent: u64,
}

/// Several clients edit one server document through a lossy, delaying
/// network, reconnecting at random. Everyone must converge, the history must
/// be gap-free, and every seq a client sent must be committed exactly once.
fn simulate(seed: u64, n: usize) -> Result<(), TestCaseError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let limits = DocumentLimits {
        max_chars: 10_000,
        history: 100_000,
        max_op_components: usize::MAX,
        max_transform_steps: u64::MAX,
    };
    let mut server = Document::new(Rope::from_str("hi"), 0, limits);
    let mut sites: Vec<Site> = (0..n)
        .map(|i| Site {
            client: Client::new(format!("c{i}"), Rope::from_str("hi"), 0),
            up: Vec::new(),
            down: Vec::new(),
            last_seq_sent: 0,
        })
        .collect();

    let steps = rng.gen_range(20..80);
    for step in 0..steps + 10_000 {
        let settling = step >= steps;
        let i = rng.gen_range(0..n);
        match rng.gen_range(0..10) {
            0..=2 if !settling => {
                let doc = sites[i].client.content().to_string();
                let op = random_op(&mut rng, &doc);
                if let Some(out) = sites[i].client.local_edit(op).unwrap() {
                    sites[i].last_seq_sent = out.seq;
                    sites[i].up.push(out);
                }
            }
            3..=5 if !sites[i].up.is_empty() => {
                let out = sites[i].up.remove(0);
                let id = sites[i].client.client_id().to_owned();
                match server
                    .submit(Some(&id), Some(out.seq), out.rev, out.op)
                    .unwrap()
                {
                    Submitted::Applied(c) => {
                        for (j, site) in sites.iter_mut().enumerate() {
                            site.down.push(if j == i {
                                Down::Ack {
                                    seq: out.seq,
                                    rev: c.rev,
                                }
                            } else {
                                Down::Op(c.clone())
                            });
                        }
                    }
                    Submitted::Duplicate { rev } => {
                        sites[i].down.push(Down::Ack { seq: out.seq, rev })
                    }
                }
            }
            6..=8 if !sites[i].down.is_empty() => {
                let site = &mut sites[i];
                let next = match site.down.remove(0) {
                    Down::Ack { seq, rev } => site.client.ack(seq, rev).unwrap(),
                    Down::Op(c) => {
                        site.client.remote(c.rev, c.op).unwrap();
                        None
                    }
                };
                if let Some(out) = next {
                    site.last_seq_sent = out.seq;
                    site.up.push(out);
                }
            }
            9 if !settling => {
                // Drop the connection: whatever was on the wire is lost.
                let site = &mut sites[i];
                site.up.clear();
                site.down.clear();
                // Half the time the client resends at once, before reading
                // the welcome: the server must recognise a committed resend.
                if rng.gen_bool(0.5) {
                    if let Some(out) = site.client.resend() {
                        site.up.push(out);
                    }
                }
                let since = site.client.rev();
                let welcome: Vec<Committed> = server.ops_since(since).unwrap().cloned().collect();
                site.client.resume(&welcome).unwrap();
                if let Some(out) = site.client.resend() {
                    if site.up.last().map(|o| o.seq) != Some(out.seq) {
                        site.last_seq_sent = site.last_seq_sent.max(out.seq);
                        site.up.push(out);
                    }
                }
            }
            _ => {}
        }
        let quiet = sites
            .iter()
            .all(|s| s.up.is_empty() && s.down.is_empty() && !s.client.has_pending());
        if settling && quiet {
            break;
        }
    }

    let history: Vec<Committed> = server.ops_since(0).unwrap().cloned().collect();
    let revs: Vec<u64> = history.iter().map(|c| c.rev).collect();
    prop_assert_eq!(revs, (1..=server.rev()).collect::<Vec<_>>());
    for site in &sites {
        prop_assert!(!site.client.has_pending(), "did not settle");
        prop_assert_eq!(site.client.content(), server.content());
        prop_assert_eq!(site.client.rev(), server.rev());
        let id = site.client.client_id();
        let seqs: Vec<u64> = history
            .iter()
            .filter(|c| c.client_id.as_deref() == Some(id))
            .filter_map(|c| c.seq)
            .collect();
        prop_assert_eq!(seqs, (1..=site.last_seq_sent).collect::<Vec<_>>());
    }
    Ok(())
}

fn random_op(rng: &mut StdRng, doc: &str) -> Operation {
    let len = doc.chars().count();
    let pos = rng.gen_range(0..=len);
    if len > pos && rng.gen_bool(0.4) {
        Operation::delete(pos, rng.gen_range(1..=(len - pos).min(3)))
    } else {
        let s: String = (0..rng.gen_range(1..3))
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
            .collect();
        Operation::insert(pos, &s)
    }
}
