//! Trace-replay subjects for three CRDT libraries: `diamond-types`, `yrs` and
//! `automerge`, each driven through its ordinary local-editing API, as an
//! editor embedding it would.
//!
//! Built only with the `crdt-compare` feature of collab-bench, which brings in
//! the three libraries (and needs rustc 1.90, for automerge 0.12):
//! `cargo run --release -p collab-bench --features crdt-compare -- trace`.
//!
//! Positions in a trace are Unicode code points:
//! * diamond-types indexes its text by code point (`char`) natively;
//! * automerge is told to, with [`TextEncoding::UnicodeCodePoint`] (also its
//!   default without the `utf8-indexing` / `utf16-indexing` features);
//! * yrs only offers UTF-8 bytes or UTF-16 code units (`OffsetKind`), so it
//!   runs in UTF-16 mode, where a code point below U+10000 is one unit. For a
//!   trace that inserts anything above that, the subject keeps a shadow rope to
//!   translate positions, inside the timed loop, and says so in its name.
//!
//! None of these libraries reports the memory it holds, so a state's
//! "memory" is the size of its own full encoding (see [`Replayed::memory_kind`]).

use anyhow::Context;
use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc, TextEncoding};
use collab_ot::Rope;
use diamond_types::list::encoding::ENCODE_FULL;
use diamond_types::list::ListCRDT;
use yrs::{GetString, OffsetKind, Options, ReadTxn, StateVector, Text, TextRef, Transact};

use super::{Replayed, Subject, Trace};

/// The CRDT subjects for `trace`.
pub fn subjects(trace: &Trace) -> Vec<Box<dyn Subject>> {
    vec![
        Box::new(DiamondTypes),
        Box::new(Yrs {
            needs_utf16_map: !trace_is_bmp_only(trace),
        }),
        Box::new(Automerge),
    ]
}

/// Whether every character the trace ever inserts is in the Basic
/// Multilingual Plane, where code points and UTF-16 code units coincide.
fn trace_is_bmp_only(trace: &Trace) -> bool {
    let bmp = |s: &str| s.chars().all(|c| c.len_utf16() == 1);
    bmp(&trace.start_content) && trace.patches.iter().all(|p| bmp(&p.ins))
}

fn u32_pos(n: usize) -> anyhow::Result<u32> {
    u32::try_from(n).context("position beyond yrs's u32 range")
}

/// diamond-types: a `ListCRDT` (an oplog plus a branch holding the text),
/// one local agent, `insert` / `delete` by code point.
struct DiamondTypes;

impl Subject for DiamondTypes {
    fn name(&self) -> &'static str {
        "diamond-types"
    }

    fn replay(&self, trace: &Trace) -> anyhow::Result<Box<dyn Replayed>> {
        let mut doc = ListCRDT::new();
        let agent = doc.get_or_create_agent_id("bench");
        if !trace.start_content.is_empty() {
            doc.insert(agent, 0, &trace.start_content);
        }
        for p in &trace.patches {
            if p.del > 0 {
                doc.delete(agent, p.pos..p.pos + p.del);
            }
            if !p.ins.is_empty() {
                doc.insert(agent, p.pos, &p.ins);
            }
        }
        Ok(Box::new(doc))
    }
}

impl Replayed for ListCRDT {
    fn text(&self) -> String {
        self.branch.content().to_string()
    }

    /// `OpLog::encode(ENCODE_FULL)`: the full history, inserted text
    /// lz4-compressed, deleted text not stored.
    fn memory_bytes(&self) -> usize {
        self.oplog.encode(ENCODE_FULL).len()
    }

    fn memory_kind(&self) -> &'static str {
        "encoded"
    }
}

/// yrs (the Rust port of Yjs): one `Doc` with one `TextRef`, one
/// transaction per patch, offsets in UTF-16 code units.
struct Yrs {
    /// The trace inserts characters outside the BMP, so code-point positions
    /// must be translated to UTF-16 through a shadow rope.
    needs_utf16_map: bool,
}

struct YrsState {
    doc: yrs::Doc,
    text: TextRef,
}

impl Yrs {
    fn new_doc() -> (yrs::Doc, TextRef) {
        let doc = yrs::Doc::with_options(Options {
            offset_kind: OffsetKind::Utf16,
            ..Options::with_client_id(yrs::ClientID::new(1))
        });
        let text = doc.get_or_insert_text("text");
        (doc, text)
    }
}

impl Subject for Yrs {
    fn name(&self) -> &'static str {
        if self.needs_utf16_map {
            "yrs (+utf16 map)"
        } else {
            "yrs"
        }
    }

    fn is_slow(&self) -> bool {
        true
    }

    fn replay(&self, trace: &Trace) -> anyhow::Result<Box<dyn Replayed>> {
        let (doc, text) = Yrs::new_doc();
        if !trace.start_content.is_empty() {
            text.insert(&mut doc.transact_mut(), 0, &trace.start_content);
        }
        if self.needs_utf16_map {
            let mut shadow = Rope::from_str(&trace.start_content);
            for p in &trace.patches {
                let start = shadow.try_char_to_utf16_cu(p.pos)?;
                let end = shadow.try_char_to_utf16_cu(p.pos + p.del)?;
                let mut txn = doc.transact_mut();
                if p.del > 0 {
                    text.remove_range(&mut txn, u32_pos(start)?, u32_pos(end - start)?);
                    shadow.remove(p.pos..p.pos + p.del);
                }
                if !p.ins.is_empty() {
                    text.insert(&mut txn, u32_pos(start)?, &p.ins);
                    shadow.insert(p.pos, &p.ins);
                }
            }
        } else {
            for p in &trace.patches {
                let pos = u32_pos(p.pos)?;
                let mut txn = doc.transact_mut();
                if p.del > 0 {
                    text.remove_range(&mut txn, pos, u32_pos(p.del)?);
                }
                if !p.ins.is_empty() {
                    text.insert(&mut txn, pos, &p.ins);
                }
            }
        }
        Ok(Box::new(YrsState { doc, text }))
    }
}

impl Replayed for YrsState {
    fn text(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    /// The whole document as one Yjs v1 update (uncompressed).
    fn memory_bytes(&self) -> usize {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
            .len()
    }

    fn memory_kind(&self) -> &'static str {
        "encoded"
    }
}

/// automerge: a document whose root holds one text object, one transaction
/// (one change) per patch, `splice_text` by code point.
struct Automerge;

struct AutomergeState {
    doc: automerge::Automerge,
    text: automerge::ObjId,
}

impl Subject for Automerge {
    fn name(&self) -> &'static str {
        "automerge"
    }

    fn is_slow(&self) -> bool {
        true
    }

    fn replay(&self, trace: &Trace) -> anyhow::Result<Box<dyn Replayed>> {
        let mut doc = automerge::Automerge::new_with_encoding(TextEncoding::UnicodeCodePoint);
        let mut tx = doc.transaction();
        let text = tx.put_object(automerge::ROOT, "text", ObjType::Text)?;
        if !trace.start_content.is_empty() {
            tx.splice_text(&text, 0, 0, &trace.start_content)?;
        }
        tx.commit();
        for (i, p) in trace.patches.iter().enumerate() {
            let del = isize::try_from(p.del).context("deletion too long")?;
            let mut tx = doc.transaction();
            tx.splice_text(&text, p.pos, del, &p.ins)
                .with_context(|| format!("patch {i} {p:?}"))?;
            tx.commit();
        }
        Ok(Box::new(AutomergeState { doc, text }))
    }
}

impl Replayed for AutomergeState {
    fn text(&self) -> String {
        self.doc.text(&self.text).unwrap_or_default()
    }

    /// `Automerge::save()`: the compressed columnar document format.
    fn memory_bytes(&self) -> usize {
        self.doc.save().len()
    }

    fn memory_kind(&self) -> &'static str {
        "encoded"
    }
}
