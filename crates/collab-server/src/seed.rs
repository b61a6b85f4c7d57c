//! `collab seed`: a few sample documents with edit history, for trying the
//! server out. Edits go through the rooms, the same path as live edits,
//! including two concurrent ones that the engine transforms.

use collab_ot::Operation;

use crate::app::AppState;
use crate::domain::{DocumentId, Title};
use crate::rooms::{RoomError, Submission};
use crate::store::{NewDocument, StoreError};

struct Sample {
    id: &'static str,
    title: &'static str,
    content: &'static str,
    /// `(base revision, operation JSON)`, submitted in order.
    edits: &'static [(u64, &'static str)],
}

const SAMPLES: &[Sample] = &[
    Sample {
        id: "welcome",
        title: "Welcome to collab",
        content: "Welcome to collab!\n",
        edits: &[
            (0, r#"[19, "Edit this document together.\n"]"#),
            (1, r#"["👋 "]"#),
            // Written against rev 1 too: transformed past the wave.
            (1, r#"[7, " friends"]"#),
        ],
    },
    Sample {
        id: "shopping-list",
        title: "Shopping list",
        content: "- milk\n",
        edits: &[
            (0, r#"[7, "- bread\n"]"#),
            (1, r#"[2, {"d": "milk"}, "oat milk"]"#),
            (1, r#"[15, "- apples\n"]"#),
        ],
    },
    Sample {
        id: "meeting-notes",
        title: "Meeting notes",
        content: "",
        edits: &[(0, r#"["Agenda:\n"]"#), (1, r#"[8, "1. Ship it\n"]"#)],
    },
];

/// The client id the seed's edits are committed under.
const SEED_CLIENT: &str = "seed";

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("seed edit of {id} was refused: {source}")]
    Edit { id: &'static str, source: RoomError },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    pub created: Vec<String>,
    pub skipped: Vec<String>,
}

/// Create every sample document that does not exist yet.
pub async fn seed(state: &AppState) -> Result<SeedReport, SeedError> {
    let mut report = SeedReport::default();
    for sample in SAMPLES {
        let id = DocumentId::parse(sample.id).expect("sample ids are valid");
        if state.store.document(&id).await?.is_some() {
            report.skipped.push(sample.id.to_owned());
            continue;
        }
        let title = Title::parse(sample.title).expect("sample titles are valid");
        let new = NewDocument {
            id: id.clone(),
            title,
            content: sample.content.to_owned(),
        };
        match state.store.create_document(new).await {
            Ok(_) => {}
            // Created by someone else meanwhile: theirs wins.
            Err(StoreError::Conflict(_)) => {
                report.skipped.push(sample.id.to_owned());
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        for (seq, (base_rev, op)) in (1..).zip(sample.edits) {
            let op = Operation::from_json(op).expect("sample ops are valid");
            let submission = Submission {
                author: None,
                client_id: Some(SEED_CLIENT.to_owned()),
                seq: Some(seq),
                base_rev: *base_rev,
                op,
            };
            state
                .rooms
                .submit(&id, submission)
                .await
                .map_err(|source| SeedError::Edit {
                    id: sample.id,
                    source,
                })?;
        }
        report.created.push(sample.id.to_owned());
    }
    Ok(report)
}
