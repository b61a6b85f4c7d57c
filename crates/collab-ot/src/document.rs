//! The server's view of one document: content, revision, recent history,
//! exactly-once bookkeeping and peers' selections.
//!
//! It performs no I/O. The server calls [`Document::submit`], persists the
//! [`Committed`] op it gets back, and only then acknowledges it. Should the
//! store fail, the server drops this state and rebuilds it from the store.

use std::collections::{BTreeMap, HashMap, VecDeque};

use ropey::Rope;

use crate::cursor::transform_range;
use crate::op::{OpError, Operation};
use crate::transform::{transform, Side};

/// Bounds that keep one document's memory, size and work in check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentLimits {
    /// Largest document, in characters.
    pub max_chars: usize,
    /// Committed operations kept in memory, for transforming late submissions
    /// and for resuming clients without sending the whole content.
    pub history: usize,
    /// Most components one submitted operation may have (after normalizing).
    pub max_op_components: usize,
    /// Most work one submission may cost to transform to the current
    /// revision, in [`transform_steps`]: a large operation may reach back
    /// less far than a keystroke.
    pub max_transform_steps: u64,
}

impl Default for DocumentLimits {
    fn default() -> Self {
        DocumentLimits {
            max_chars: 10_000_000,
            history: 1_000,
            max_op_components: 10_000,
            max_transform_steps: 2_000_000,
        }
    }
}

/// The cost of transforming `op` past each of `against`, in components
/// walked: each transform visits every component of both operations once.
/// Known before any transform runs, so a submission can be refused (or
/// moved off a latency-sensitive thread) before it costs anything.
pub fn transform_steps<'a>(
    op: &Operation,
    against: impl IntoIterator<Item = &'a Operation>,
) -> u64 {
    let own = op.components().len() as u64;
    against
        .into_iter()
        .map(|other| own + other.components().len() as u64)
        .sum()
}

/// An operation in the document's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The revision this operation produced (it applies to `rev - 1`).
    pub rev: u64,
    pub op: Operation,
    pub client_id: Option<String>,
    pub seq: Option<u64>,
    /// Who made it: the `sub` of the token it was sent with; `None` when
    /// the server is open (no access control).
    pub author: Option<String>,
}

/// The outcome of a successful [`Document::submit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Newly committed: persist it, then acknowledge and broadcast it.
    Applied(Committed),
    /// This `(client_id, seq)` was committed before, at `rev`: acknowledge
    /// again with that revision and change nothing.
    Duplicate { rev: u64 },
}

/// Why a submission was refused. The document is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error(
        "revision {rev} is out of range: this document can take revisions {oldest} to {current}"
    )]
    RevOutOfRange { rev: u64, oldest: u64, current: u64 },
    #[error("invalid operation: {0}")]
    InvalidOp(#[from] OpError),
    #[error("the document would have {chars} characters; the limit is {max}")]
    TooLarge { chars: usize, max: usize },
    #[error("seq {seq} is older than this client's last committed seq {last}")]
    StaleSeq { seq: u64, last: u64 },
    #[error("the operation has {components} components; at most {max} are allowed")]
    TooComplex { components: usize, max: usize },
    #[error(
        "bringing this operation from revision {rev} up to date would take {steps} transform \
         steps; at most {max} are allowed: rebase it on a newer revision"
    )]
    TooFarBehind { rev: u64, steps: u64, max: u64 },
    #[error("seq {seq} was already used by this client for a different operation")]
    SeqReused { seq: u64 },
}

/// A connected peer as others see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Peer {
    pub client_id: String,
    /// `[anchor, head]`, kept current through every committed operation.
    pub selection: Option<[usize; 2]>,
    pub user: serde_json::Value,
    /// The authenticated user behind the connection (the token's `sub`),
    /// when the server checks tokens.
    pub user_id: Option<String>,
}

/// Most transform work spent checking that a resend is the edit it claims
/// to be; a costlier check is skipped (the resend is trusted), so a resend
/// never costs more than a keystroke.
const VERIFY_STEPS: u64 = 10_000;

#[derive(Debug, Clone)]
struct Entry {
    committed: Committed,
    /// Document length before this operation: lets a late submission be
    /// checked against the revision it was written for.
    base_len: usize,
}

/// The latest commit of one client, enough to recognise a resend.
#[derive(Debug, Clone, Copy)]
struct LastCommit {
    seq: u64,
    rev: u64,
}

/// The authoritative state of one document.
#[derive(Debug, Clone)]
pub struct Document {
    content: Rope,
    rev: u64,
    limits: DocumentLimits,
    history: VecDeque<Entry>,
    last_commit: HashMap<String, LastCommit>,
    /// Who committed under each client id (the latest op's author), for
    /// servers that check tokens: one user must not be able to pass off
    /// their ops as another's client, nor be acknowledged for its seqs.
    owners: HashMap<String, String>,
    peers: BTreeMap<String, Peer>,
}

impl Document {
    /// A document with `content` at revision `rev` and no history yet.
    pub fn new(content: Rope, rev: u64, limits: DocumentLimits) -> Self {
        Document {
            content,
            rev,
            limits,
            history: VecDeque::new(),
            last_commit: HashMap::new(),
            owners: HashMap::new(),
            peers: BTreeMap::new(),
        }
    }

    pub fn rev(&self) -> u64 {
        self.rev
    }

    pub fn content(&self) -> &Rope {
        &self.content
    }

    pub fn len_chars(&self) -> usize {
        self.content.len_chars()
    }

    pub fn limits(&self) -> DocumentLimits {
        self.limits
    }

    /// The oldest revision a submission may be based on.
    pub fn oldest_rev(&self) -> u64 {
        self.rev - self.history.len() as u64
    }

    /// Takes a client's operation written against `base_rev`: transforms it
    /// against everything committed since (side `Left`, as ShareDB does),
    /// checks it, applies it and records it.
    pub fn submit(
        &mut self,
        client_id: Option<&str>,
        seq: Option<u64>,
        base_rev: u64,
        op: Operation,
    ) -> Result<Submitted, SubmitError> {
        self.submit_as(None, client_id, seq, base_rev, op)
    }

    /// [`Document::submit`], recording `author` as the op's author.
    pub fn submit_as(
        &mut self,
        author: Option<&str>,
        client_id: Option<&str>,
        seq: Option<u64>,
        base_rev: u64,
        op: Operation,
    ) -> Result<Submitted, SubmitError> {
        if let (Some(client_id), Some(seq)) = (client_id, seq) {
            if let Some(rev) = self.duplicate(client_id, seq, base_rev, &op)? {
                return Ok(Submitted::Duplicate { rev });
            }
        }
        self.check_submission(base_rev, &op)?;
        let oldest = self.oldest_rev();
        let concurrent = self.history.range((base_rev - oldest) as usize..);
        let op = concurrent.fold(op, |op, e| transform(&op, &e.committed.op, Side::Left));
        self.commit_current(author, client_id, seq, op)
    }

    /// Everything about a submission that can be known without transforming
    /// it: the revision is in range, the operation fits the document as it
    /// was at `base_rev` and is not too large, and transforming it is within
    /// [`DocumentLimits::max_transform_steps`]. Returns that cost, so a
    /// caller can choose where to run an expensive transform
    /// ([`Document::ops_after`]).
    pub fn check_submission(&self, base_rev: u64, op: &Operation) -> Result<u64, SubmitError> {
        let components = op.components().len();
        if components > self.limits.max_op_components {
            return Err(SubmitError::TooComplex {
                components,
                max: self.limits.max_op_components,
            });
        }
        let oldest = self.oldest_rev();
        if base_rev > self.rev || base_rev < oldest {
            return Err(SubmitError::RevOutOfRange {
                rev: base_rev,
                oldest,
                current: self.rev,
            });
        }
        let concurrent = self.history.range((base_rev - oldest) as usize..);
        let base_len = concurrent
            .clone()
            .next()
            .map_or(self.content.len_chars(), |e| e.base_len);
        let needed = op.base_len();
        if needed > base_len {
            return Err(OpError::PastEnd {
                needed,
                len: base_len,
            }
            .into());
        }
        let steps = transform_steps(op, concurrent.map(|e| &e.committed.op));
        if steps > self.limits.max_transform_steps {
            return Err(SubmitError::TooFarBehind {
                rev: base_rev,
                steps,
                max: self.limits.max_transform_steps,
            });
        }
        Ok(steps)
    }

    /// The operations committed after `base_rev`, in order, when all are in
    /// memory: what a submission based on `base_rev` is transformed past.
    pub fn ops_after(&self, base_rev: u64) -> Option<Vec<Operation>> {
        self.ops_since(base_rev)
            .map(|ops| ops.map(|c| c.op.clone()).collect())
    }

    /// The document's length, in characters, at revision `rev`, when that
    /// revision is in memory.
    pub fn len_at(&self, rev: u64) -> Option<usize> {
        let oldest = self.oldest_rev();
        if rev < oldest || rev > self.rev {
            return None;
        }
        Some(
            self.history
                .get((rev - oldest) as usize)
                .map_or(self.content.len_chars(), |e| e.base_len),
        )
    }

    /// Commits an operation that is already transformed to the current
    /// revision (checked here again: it must apply and fit the size limit).
    fn commit_current(
        &mut self,
        author: Option<&str>,
        client_id: Option<&str>,
        seq: Option<u64>,
        op: Operation,
    ) -> Result<Submitted, SubmitError> {
        op.check(&self.content)?;
        let chars = self.content.len_chars() as isize + op.len_delta();
        // A document already over a lowered limit may still shrink.
        if op.len_delta() > 0 && chars as usize > self.limits.max_chars {
            return Err(SubmitError::TooLarge {
                chars: chars as usize,
                max: self.limits.max_chars,
            });
        }
        let committed = Committed {
            rev: self.rev + 1,
            op,
            client_id: client_id.map(str::to_owned),
            seq,
            author: author.map(str::to_owned),
        };
        self.commit(committed.clone());
        Ok(Submitted::Applied(committed))
    }

    /// Applies an operation that is already in the op log, as when loading a
    /// document from its snapshot and the log's tail.
    pub fn replay(&mut self, committed: Committed) -> Result<(), SubmitError> {
        if committed.rev != self.rev + 1 {
            return Err(SubmitError::RevOutOfRange {
                rev: committed.rev.saturating_sub(1),
                oldest: self.rev,
                current: self.rev,
            });
        }
        committed.op.check(&self.content)?;
        self.commit(committed);
        Ok(())
    }

    /// Records that `(client_id, seq)` was committed at `rev`, as learned from
    /// the store, so a resend after a restart is recognised.
    pub fn remember(&mut self, client_id: &str, seq: u64, rev: u64) {
        let newer = self
            .last_commit
            .get(client_id)
            .is_none_or(|last| last.seq < seq);
        if newer {
            self.last_commit
                .insert(client_id.to_owned(), LastCommit { seq, rev });
        }
    }

    /// The user who committed under `client_id` (the author of its latest
    /// op since this document was loaded), if any did with a token.
    pub fn client_owner(&self, client_id: &str) -> Option<&str> {
        self.owners.get(client_id).map(String::as_str)
    }

    /// Records that `client_id` belongs to `author`, as learned from the store.
    pub fn set_client_owner(&mut self, client_id: &str, author: &str) {
        self.owners.insert(client_id.to_owned(), author.to_owned());
    }

    /// Whether this document has seen any commit from `client_id` since it
    /// was loaded. When it has not, the server must ask the store about a
    /// `(client_id, seq)` before trusting [`Document::submit`] with it.
    pub fn knows_client(&self, client_id: &str) -> bool {
        self.last_commit.contains_key(client_id)
    }

    /// The committed operations producing `since + 1 ..= rev`, when all are held.
    pub fn ops_since(&self, since: u64) -> Option<impl Iterator<Item = &Committed>> {
        let oldest = self.oldest_rev();
        if since < oldest || since > self.rev {
            return None;
        }
        Some(
            self.history
                .range((since - oldest) as usize..)
                .map(|e| &e.committed),
        )
    }

    /// Sets a peer's selection (clamped to the document) and, when given, its user info.
    pub fn set_presence(
        &mut self,
        client_id: &str,
        selection: Option<[usize; 2]>,
        user: Option<serde_json::Value>,
        user_id: Option<&str>,
    ) -> &Peer {
        let len = self.content.len_chars();
        let peer = self
            .peers
            .entry(client_id.to_owned())
            .or_insert_with(|| Peer {
                client_id: client_id.to_owned(),
                selection: None,
                user: serde_json::Value::Object(Default::default()),
                user_id: None,
            });
        if let Some(user_id) = user_id {
            peer.user_id = Some(user_id.to_owned());
        }
        peer.selection = selection.map(|[a, h]| [a.min(len), h.min(len)]);
        if let Some(user) = user {
            peer.user = user;
        }
        peer
    }

    pub fn remove_peer(&mut self, client_id: &str) -> Option<Peer> {
        self.peers.remove(client_id)
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// `Some(rev)` when `(client_id, seq)` is already committed: a resend, to
    /// acknowledge again. When the committed operation is still in memory
    /// and cheap to compare, the resend must be the same edit: `op`, brought
    /// from `base_rev` to just before that commit, must equal what was
    /// committed. Otherwise two connections share a client id and reuse a
    /// `seq` for different edits, and acknowledging the second would claim
    /// it was applied ([`SubmitError::SeqReused`]).
    pub fn duplicate(
        &self,
        client_id: &str,
        seq: u64,
        base_rev: u64,
        op: &Operation,
    ) -> Result<Option<u64>, SubmitError> {
        let Some(rev) = self.committed_rev(client_id, seq)? else {
            return Ok(None);
        };
        let oldest = self.oldest_rev();
        if rev <= oldest || rev > self.rev || base_rev < oldest {
            // Not in memory any more (or learned from the store): trust it.
            return Ok(Some(rev));
        }
        if base_rev >= rev {
            // A resend is written before its own commit, never after it.
            return Err(SubmitError::SeqReused { seq });
        }
        let between = self
            .history
            .range((base_rev - oldest) as usize..(rev - oldest) as usize);
        let committed = &between
            .clone()
            .next_back()
            .expect("rev is in history")
            .committed;
        let before = between.clone().take((rev - base_rev - 1) as usize);
        if transform_steps(op, before.clone().map(|e| &e.committed.op)) > VERIFY_STEPS {
            return Ok(Some(rev));
        }
        let resent = before.fold(op.clone(), |op, e| {
            transform(&op, &e.committed.op, Side::Left)
        });
        if resent == committed.op {
            Ok(Some(rev))
        } else {
            Err(SubmitError::SeqReused { seq })
        }
    }

    fn committed_rev(&self, client_id: &str, seq: u64) -> Result<Option<u64>, SubmitError> {
        let Some(last) = self.last_commit.get(client_id) else {
            return Ok(None);
        };
        if seq > last.seq {
            return Ok(None);
        }
        if seq == last.seq {
            return Ok(Some(last.rev));
        }
        self.history
            .iter()
            .rev()
            .map(|e| &e.committed)
            .find(|c| c.seq == Some(seq) && c.client_id.as_deref() == Some(client_id))
            .map(|c| Some(c.rev))
            .ok_or(SubmitError::StaleSeq {
                seq,
                last: last.seq,
            })
    }

    /// Applies a checked operation and records it everywhere it matters.
    fn commit(&mut self, committed: Committed) {
        let base_len = self.content.len_chars();
        committed
            .op
            .apply(&mut self.content)
            .expect("operation was checked against this content");
        self.rev = committed.rev;
        for peer in self.peers.values_mut() {
            peer.selection = peer.selection.map(|s| transform_range(s, &committed.op));
        }
        if let (Some(client_id), Some(seq)) = (&committed.client_id, committed.seq) {
            self.remember(client_id, seq, committed.rev);
            if let Some(author) = &committed.author {
                if self.owners.get(client_id) != Some(author) {
                    self.owners.insert(client_id.clone(), author.clone());
                }
            }
        }
        self.history.push_back(Entry {
            committed,
            base_len,
        });
        while self.history.len() > self.limits.history {
            self.history.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(s: &str) -> Document {
        Document::new(Rope::from_str(s), 0, DocumentLimits::default())
    }

    fn op(json: &str) -> Operation {
        Operation::from_json(json).unwrap()
    }

    #[test]
    fn concurrent_submissions_are_transformed() {
        let mut d = doc("abc");
        let first = d.submit(Some("a"), Some(1), 0, op(r#"[1, "X"]"#)).unwrap();
        assert!(matches!(
            first,
            Submitted::Applied(Committed { rev: 1, .. })
        ));
        let second = d.submit(Some("b"), Some(1), 0, op(r#"[2, "Y"]"#)).unwrap();
        let Submitted::Applied(c) = second else {
            panic!("not applied")
        };
        assert_eq!((c.rev, c.op.to_json()), (2, r#"[3,"Y"]"#.to_owned()));
        assert_eq!(d.content().to_string(), "aXbYc");
    }

    #[test]
    fn resends_are_applied_once() {
        let mut d = doc("");
        d.submit(Some("a"), Some(1), 0, op(r#"["x"]"#)).unwrap();
        d.submit(Some("a"), Some(2), 1, op(r#"[1, "y"]"#)).unwrap();
        d.submit(Some("b"), Some(1), 2, op(r#"["z"]"#)).unwrap();
        assert_eq!(
            d.submit(Some("a"), Some(2), 1, op(r#"[1, "y"]"#)),
            Ok(Submitted::Duplicate { rev: 2 })
        );
        assert_eq!(
            d.submit(Some("a"), Some(1), 0, op(r#"["x"]"#)),
            Ok(Submitted::Duplicate { rev: 1 })
        );
        assert_eq!(d.content().to_string(), "zxy");
        assert_eq!(d.rev(), 3);
    }

    #[test]
    fn client_ids_are_owned_by_their_first_author() {
        let mut d = doc("");
        assert_eq!(d.client_owner("c"), None);
        d.submit_as(Some("ann"), Some("c"), Some(1), 0, op(r#"["a"]"#))
            .unwrap();
        assert_eq!(d.client_owner("c"), Some("ann"));
        // Open-mode ops (no author) bind nobody and change no owner.
        d.submit(Some("c"), Some(2), 1, op(r#"["b"]"#)).unwrap();
        d.submit(Some("o"), Some(1), 2, op(r#"["b"]"#)).unwrap();
        assert_eq!(
            (d.client_owner("c"), d.client_owner("o")),
            (Some("ann"), None)
        );
        d.set_client_owner("o", "bob");
        assert_eq!(d.client_owner("o"), Some("bob"));
    }

    #[test]
    fn remembered_commits_count_as_duplicates() {
        let mut d = doc("abc");
        d.remember("a", 7, 41);
        assert_eq!(
            d.submit(Some("a"), Some(7), 0, op(r#"["q"]"#)),
            Ok(Submitted::Duplicate { rev: 41 })
        );
        assert_eq!(
            d.submit(Some("a"), Some(3), 0, op(r#"["q"]"#)),
            Err(SubmitError::StaleSeq { seq: 3, last: 7 })
        );
    }

    #[test]
    fn refuses_without_changing_anything() {
        let limits = DocumentLimits {
            max_chars: 5,
            history: 2,
            ..DocumentLimits::default()
        };
        let mut d = Document::new(Rope::from_str("abc"), 0, limits);
        for i in 1..=3 {
            d.submit(None, None, i - 1, op(r#"[1, {"d": 1}, "e"]"#))
                .unwrap();
        }
        let before = d.content().clone();
        assert_eq!(
            d.submit(None, None, 0, op(r#"["x"]"#)),
            Err(SubmitError::RevOutOfRange {
                rev: 0,
                oldest: 1,
                current: 3
            })
        );
        assert_eq!(
            d.submit(None, None, 4, op(r#"["x"]"#)),
            Err(SubmitError::RevOutOfRange {
                rev: 4,
                oldest: 1,
                current: 3
            })
        );
        assert_eq!(
            d.submit(None, None, 3, op(r#"["xyz"]"#)),
            Err(SubmitError::TooLarge { chars: 6, max: 5 })
        );
        assert!(matches!(
            d.submit(None, None, 1, op(r#"[4, "x"]"#)),
            Err(SubmitError::InvalidOp(OpError::PastEnd {
                needed: 4,
                len: 3
            }))
        ));
        assert!(matches!(
            d.submit(None, None, 3, op(r#"[{"d": "zz"}]"#)),
            Err(SubmitError::InvalidOp(OpError::DeleteMismatch { .. }))
        ));
        assert_eq!(d.content(), &before);
        assert_eq!(d.rev(), 3);
    }

    #[test]
    fn peers_follow_edits_and_resume_lists_are_bounded() {
        let mut d = doc("hello");
        d.set_presence(
            "p",
            Some([5, 2]),
            Some(serde_json::json!({"name": "P"})),
            None,
        );
        d.set_presence("q", Some([99, 0]), None, Some("user-q"));
        d.submit(None, None, 0, op(r#"["ab", 3, {"d": 1}]"#))
            .unwrap();
        let sel: Vec<_> = d.peers().map(|p| p.selection).collect();
        assert_eq!(sel, vec![Some([6, 4]), Some([6, 0])]);
        assert_eq!(d.ops_since(0).map(|i| i.count()), Some(1));
        assert_eq!(d.ops_since(1).map(|i| i.count()), Some(0));
        assert!(d.ops_since(2).is_none());
        assert!(d.remove_peer("p").is_some());
        assert_eq!(d.peers().count(), 1);
    }

    #[test]
    fn work_is_bounded_before_any_transform() {
        let limits = DocumentLimits {
            max_op_components: 4,
            max_transform_steps: 20,
            ..DocumentLimits::default()
        };
        let mut d = Document::new(Rope::from_str("abcdef"), 0, limits);
        assert_eq!(
            d.submit(None, None, 0, op(r#"[1, "x", 1, "y", 1, "z"]"#)),
            Err(SubmitError::TooComplex {
                components: 6,
                max: 4
            })
        );
        // Ten one-component commits: a keystroke from revision 0 costs
        // 10 × (1 + 1) = 20 steps, two components cost 30.
        for i in 0..10 {
            d.submit(None, None, i, op(r#"["k"]"#)).unwrap();
        }
        assert_eq!(d.check_submission(0, &op(r#"["a"]"#)), Ok(20));
        assert_eq!(
            d.submit(None, None, 0, op(r#"[1, "a"]"#)),
            Err(SubmitError::TooFarBehind {
                rev: 0,
                steps: 30,
                max: 20
            })
        );
        assert_eq!(d.check_submission(5, &op(r#"[1, "a"]"#)), Ok(15));
        // Checked against the length at its base revision, before transforming.
        assert!(matches!(
            d.check_submission(0, &op(r#"[7, "a"]"#)),
            Err(SubmitError::InvalidOp(OpError::PastEnd {
                needed: 7,
                len: 6
            }))
        ));
        assert_eq!(d.len_at(0), Some(6));
        assert_eq!(d.len_at(10), Some(16));
        assert_eq!(d.ops_after(8).map(|o| o.len()), Some(2));
        assert_eq!(d.rev(), 10);
    }

    #[test]
    fn a_reused_seq_with_another_edit_is_refused_not_acknowledged() {
        let mut d = doc("abc");
        d.submit(Some("a"), Some(1), 0, op(r#"[1, "X"]"#)).unwrap();
        d.submit(Some("b"), Some(1), 0, op(r#"["Y"]"#)).unwrap();
        d.submit(Some("a"), Some(2), 1, op(r#"[3, "Z"]"#)).unwrap();
        let before = (d.content().to_string(), d.rev());
        // The same edit resent, as written or moved past ops it saw since.
        assert_eq!(
            d.submit(Some("a"), Some(2), 1, op(r#"[3, "Z"]"#)),
            Ok(Submitted::Duplicate { rev: 3 })
        );
        assert_eq!(
            d.submit(Some("a"), Some(2), 2, op(r#"[4, "Z"]"#)),
            Ok(Submitted::Duplicate { rev: 3 })
        );
        // Another edit under the same (client_id, seq).
        assert_eq!(
            d.submit(Some("a"), Some(2), 1, op(r#"["other"]"#)),
            Err(SubmitError::SeqReused { seq: 2 })
        );
        assert_eq!(
            d.submit(Some("a"), Some(2), 3, op(r#"[3, "Z"]"#)),
            Err(SubmitError::SeqReused { seq: 2 })
        );
        assert_eq!(
            d.submit(Some("a"), Some(1), 0, op(r#"[2, "X"]"#)),
            Err(SubmitError::SeqReused { seq: 1 })
        );
        assert_eq!((d.content().to_string(), d.rev()), before);
    }

    #[test]
    fn replay_rebuilds_state() {
        let mut d = doc("ab");
        let c = Committed {
            rev: 1,
            op: op(r#"[2, "c"]"#),
            client_id: Some("a".into()),
            seq: Some(1),
            author: Some("alice".into()),
        };
        d.replay(c.clone()).unwrap();
        assert_eq!(d.content().to_string(), "abc");
        assert!(d.replay(c).is_err());
        assert!(d.knows_client("a"));
    }
}
