//! `collab-ot`: the `text-unicode` operational-transformation engine behind
//! `collab`, as a pure library. It knows nothing of sockets, HTTP or SQL.
//!
//! * [`Operation`]: the wire type of ShareDB's plain-text type (skip `n`,
//!   insert `"s"`, delete `{"d": n}` or `{"d": "s"}`), always normalized,
//!   positions in Unicode scalar values.
//! * [`transform()`], [`compose`], [`Operation::invert`], [`transform_selection`]:
//!   the algebra, matching `ot-text-unicode` 4.x exactly (checked against
//!   vectors generated from it).
//! * [`Document`]: the server's state machine (transform late ops, exactly-once,
//!   presence). [`Client`]: the client's (ot.js / ShareDB style).
//! * [`protocol`]: the WebSocket frames of the protocol (docs/protocol.md §3), parsed by pure
//!   functions into messages or the protocol's error codes.
//! * [`json`]: the strict JSON every client input is read with (no duplicate
//!   keys, no integer past 2^53 − 1).
//!
//! ```
//! use collab_ot::{transform, Operation, Rope, Side};
//!
//! let doc = Rope::from_str("héllo 😭");
//! // Two people edit the same revision at once.
//! let alice = Operation::from_json(r#"[5, "!"]"#).unwrap();
//! let bob = Operation::from_json(r#"[{"d": "h"}, "H"]"#).unwrap();
//!
//! // Each applies their own edit, then the other's, transformed.
//! let mut a = doc.clone();
//! alice.apply(&mut a).unwrap();
//! transform(&bob, &alice, Side::Right).apply(&mut a).unwrap();
//! let mut b = doc.clone();
//! bob.apply(&mut b).unwrap();
//! transform(&alice, &bob, Side::Left).apply(&mut b).unwrap();
//!
//! assert_eq!(a, b);
//! assert_eq!(a.to_string(), "Héllo! 😭");
//! ```

pub mod client;
pub mod cursor;
pub mod document;
#[doc(hidden)]
pub mod fuzz;
pub mod json;
pub mod op;
pub mod protocol;
pub mod transform;

pub use client::{Client, ClientError, OutgoingOp, Resumed};
pub use cursor::{transform_position, transform_range, transform_selection, Selection};
pub use document::{
    transform_steps, Committed, Document, DocumentLimits, Peer, SubmitError, Submitted,
};
pub use op::{CompactString, Component, Delete, OpError, Operation};
pub use ropey::Rope;
pub use transform::{compose, transform, Side};
