//! Access control as an operator meets it, through the real binary: the
//! `collab token` command, the refusal to serve an open server on a public
//! address, and logs that never contain a token.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use collab_server::auth::{now_secs, Secret, Verifier};
use common::ws::{next_json, read_until_closed, send_text};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const SECRET: &str = "binary-test-secret-binary-test-secret";
const WAIT: Duration = Duration::from_secs(30);

/// The binary, run in an empty directory (no stray `.env`).
fn collab(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_collab"));
    cmd.current_dir(dir)
        .env_remove("COLLAB_AUTH_SECRET")
        .env_remove("COLLAB_AUTH_PUBLIC_KEY")
        .env_remove("COLLAB_ALLOW_ANONYMOUS")
        .env_remove("REDIS_URL")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/collab.db", dir.display()),
        )
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    cmd
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

async fn mint(dir: &Path, args: &[&str]) -> std::process::Output {
    collab(dir)
        .arg("token")
        .args(args)
        .env("COLLAB_AUTH_SECRET", SECRET)
        .output()
        .await
        .expect("run collab token")
}

#[tokio::test]
async fn collab_token_mints_tokens_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = mint(
        dir.path(),
        &[
            "--sub",
            "ann",
            "--doc",
            "notes=write",
            "--doc",
            "team-*=read",
            "--ttl",
            "10m",
            "--name",
            "Ann",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.trim();
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the token on stdout: {stdout:?}"
    );
    let verifier = Verifier::new(Some(&Secret::new(SECRET)), None, 30)
        .unwrap()
        .unwrap();
    let t = verifier.verify(token).expect("the token verifies");
    assert_eq!((t.sub.as_str(), t.name.as_deref()), ("ann", Some("Ann")));
    assert!((now_secs() + 590..=now_secs() + 600).contains(&t.exp));
    assert!(t.jti.is_some(), "revocable by jti");

    // Without a secret, or with a bad argument: a clear error, no token.
    let out = collab(dir.path())
        .args(["token", "--sub", "x", "--doc", "*=read"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("COLLAB_AUTH_SECRET"));
    let out = mint(dir.path(), &["--sub", "x", "--doc", "notes=owner"]).await;
    assert!(!out.status.success() && out.stdout.is_empty());
}

/// Starts `collab serve` with its output in `log`.
async fn serve(mut cmd: Command, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    cmd.arg("serve")
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start collab")
}

async fn wait_for_log(child: &mut Child, log: &Path, needle: &str) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("exited ({status}): {text}"));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_open_server_stays_on_loopback_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let public = |cmd: &mut Command| {
        cmd.env("COLLAB_BIND", "0.0.0.0:0");
    };

    let mut cmd = collab(dir.path());
    public(&mut cmd);
    let mut child = serve(cmd, &log).await;
    let refused = wait_for_log(&mut child, &log, "listening")
        .await
        .unwrap_err();
    assert!(refused.contains("COLLAB_ALLOW_ANONYMOUS"), "{refused}");

    for (key, value) in [
        ("COLLAB_ALLOW_ANONYMOUS", "true"),
        ("COLLAB_AUTH_SECRET", SECRET),
    ] {
        let mut cmd = collab(dir.path());
        public(&mut cmd);
        cmd.env(key, value);
        let mut child = serve(cmd, &log).await;
        let text = wait_for_log(&mut child, &log, "listening")
            .await
            .expect("serves");
        // Open mode says so, once; token mode does not.
        let warned = text.matches("the server is OPEN").count();
        assert_eq!(
            warned,
            usize::from(key == "COLLAB_ALLOW_ANONYMOUS"),
            "{text}"
        );
        child.kill().await.unwrap();
    }
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let addr = free_addr();
    let mut cmd = collab(dir.path());
    cmd.env("COLLAB_AUTH_SECRET", SECRET)
        .env("COLLAB_BIND", addr.to_string())
        // Everything the server and its libraries say.
        .env("RUST_LOG", "trace");
    let mut child = serve(cmd, &log).await;
    wait_for_log(&mut child, &log, "listening")
        .await
        .expect("serves");

    let mut used: Vec<String> = Vec::new();
    let cwd = dir.path().to_owned();
    let tok = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let cwd = cwd.clone();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = mint(&cwd, &refs).await;
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
    };
    let admin = tok(&["--sub", "root", "--doc", "*=admin"]).await;
    let writer = tok(&["--sub", "w", "--doc", "notes=write"]).await;
    let refreshed = tok(&["--sub", "w", "--doc", "notes=read"]).await;
    let other = tok(&["--sub", "x", "--doc", "notes=read"]).await;
    used.extend([
        admin.clone(),
        writer.clone(),
        refreshed.clone(),
        other.clone(),
    ]);

    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");
    let res = http
        .post(url("/api/documents"))
        .bearer_auth(&admin)
        .json(&json!({"id": "notes", "title": "n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let link: Value = http
        .post(url("/api/documents/notes/links"))
        .bearer_auth(&admin)
        .json(&json!({"role": "read"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link_token = link["token"].as_str().unwrap().to_owned();
    used.push(link_token.clone());
    // A bad token is not logged either.
    let forged = format!("{}x", &writer[..writer.len() - 1]);
    used.push(forged.clone());
    for t in [&writer, &forged, &link_token] {
        let _ = http
            .get(url("/api/documents/notes?x=1"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
    }

    let ws_url = |t: &str| format!("ws://{addr}/ws/documents/notes?token={t}&client_id=c");
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&writer))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    send_text(
        &mut ws,
        json!({"type": "auth", "token": refreshed}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "auth");
    send_text(&mut ws, json!({"type": "auth", "token": other}).to_string()).await;
    let (frames, _) = read_until_closed(&mut ws, WAIT).await;
    assert_eq!(frames[0]["code"], "unauthorized");
    let (mut bad, _) = tokio_tungstenite::connect_async(ws_url(&forged))
        .await
        .unwrap();
    let _ = bad.next().await;
    let res = http
        .post(url("/api/auth/revocations"))
        .bearer_auth(&admin)
        .json(&json!({"jti": link["jti"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    child.kill().await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("token=[redacted]"),
        "the WebSocket URLs were logged, redacted"
    );
    for t in &used {
        let signature = t.rsplit('.').next().unwrap();
        let leaks: Vec<&str> = text.lines().filter(|l| l.contains(signature)).collect();
        assert!(
            leaks.is_empty(),
            "a token is in the log:\n{}",
            leaks.join("\n")
        );
    }
}
