//! Memory under a flood: one client sending the largest frames it may, as
//! fast as it can, while a peer of the same document reads nothing, must
//! not grow the server by more than a stated budget. Its own test binary,
//! so no other test shares the process whose memory is measured.

#[macro_use]
mod common;

use common::ws::*;
use common::{spawn_app_with, test_config, TestDb};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Resident memory of this process, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// What one flooding connection may cost the server, at most.
const BUDGET: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_the_largest_frames_stays_within_budget() {
    let Some(before) = rss_bytes() else {
        eprintln!("skipping: no /proc/self/statm on this system");
        return;
    };
    let db = TestDb::sqlite();
    let mut config = test_config(&db);
    config.max_message_bytes = 1 << 20;
    config.max_document_chars = 10_000_000;
    let app = spawn_app_with(config).await;
    app.create("d", "D", "").await;
    // A peer that reads nothing after its welcome.
    let (_stalled, _) = join(&app, "d", "stalled").await;
    let (mut attacker, _) = join(&app, "d", "attacker").await;

    // 300 frames, two thirds of them ~1 MB: presence with a long name
    // (refused), presence with a large unknown field (dropped), and edits
    // broadcast to the stalled peer (whose queue is bounded).
    let big = "n".repeat((1 << 20) - 200);
    let mut rev = 0;
    for i in 0..300u64 {
        let frame = match i % 3 {
            0 => {
                json!({"type": "presence", "selection": null, "user": {"name": big, "color": "#000"}})
            }
            1 => {
                json!({"type": "presence", "selection": null, "user": {"name": "a", "color": "#000", "x": big}})
            }
            _ => {
                rev += 1;
                json!({"type": "op", "rev": rev - 1, "seq": rev, "op": [{"d": 1}, "x"]})
            }
        };
        // The first edit creates the character the later ones replace.
        let frame = if i == 2 {
            json!({"type": "op", "rev": 0, "seq": 1, "op": ["x"]})
        } else {
            frame
        };
        attacker
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }
    // Everything was read and answered once the last edit is acknowledged.
    let last = rev;
    tokio::time::timeout(WAIT, async {
        loop {
            let f = next_json(&mut attacker).await;
            if f["type"] == "ack" && f["seq"] == last {
                break;
            }
        }
    })
    .await
    .expect("the attacker's last edit was never acknowledged");
    let after = rss_bytes().expect("rss");
    let grown = after.saturating_sub(before);
    assert!(
        grown < BUDGET,
        "the server grew by {} MiB (budget {} MiB)",
        grown >> 20,
        BUDGET >> 20
    );
    app.stop().await;
}
