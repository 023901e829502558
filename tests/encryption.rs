//! Encryption at rest (issue "Abuse-proof", item 8): with
//! `SLUICE_ENCRYPTION_KEY`, message text, titles, uploaded files and their
//! indexed text are never on disk in the clear; the same key reads them
//! back after a restart; a wrong key, or none, stops the start with one
//! line instead of serving garbage; a rotated key still reads what the old
//! one sealed.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sluice_test_support::harness::Harness;
use sluice_test_support::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const NEW_KEY: &str = "0202020202020202020202020202020202020202020202020202020202020202";
const SECRET_WORDS: &str = "PINEAPPLE-SUBMARINE-42";
const SECRET_FILE: &str = "CONFIDENTIAL-PAYLOAD-7";

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Starts `sluice` on `dir` with `env` and expects it to stop at once with
/// an error; its stderr.
fn refused_start(dir: &Path, env: &[(&str, &str)]) -> String {
    let output = Command::new(BIN)
        .env_clear()
        .env("SLUICE_DATA_DIR", dir)
        .env("SLUICE_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!output.status.success(), "it started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn text_and_files_are_sealed_at_rest_and_only_their_key_opens_them() {
    let mut h = Harness::start_with(BIN, &[("SLUICE_ENCRYPTION_KEY", KEY)]);
    let (id, mut ws) = h
        .session_with_ws("fake:tokens=3", &format!("remember {SECRET_WORDS}"))
        .await;
    ws.until("generation_end").await;
    let file = sluice_test_support::files::uploaded(
        &h.http,
        &h.url(""),
        None,
        "notes.txt",
        format!("The payload is {SECRET_FILE}. It must stay private.").into_bytes(),
    )
    .await;
    let file_id = file["id"].as_str().unwrap().to_owned();
    wait_until("the file is indexed", || async {
        let file = h.get_json(&h.url(&format!("/v1/files/{file_id}"))).await;
        (file["status"] == "indexed").then_some(())
    })
    .await;

    // Nothing on disk holds the text in the clear.
    h.sluice.kill();
    let data = h.data_dir().to_owned();
    let files = files_under(&data);
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        assert!(!contains(bytes, SECRET_WORDS), "{path} holds the message");
        assert!(
            !contains(bytes, SECRET_FILE),
            "{path} holds the file's text"
        );
    }

    // A wrong key, or none, stops the start, saying why.
    let wrong = refused_start(&data, &[("SLUICE_ENCRYPTION_KEY", NEW_KEY)]);
    assert!(wrong.contains("does not open the stored data"), "{wrong}");
    assert_eq!(wrong.trim().lines().count(), 1, "{wrong}");
    let none = refused_start(&data, &[]);
    assert!(none.contains("is encrypted"), "{none}");
    let seed_alias = refused_start(&data, &[("ENCRYPTION_KEY", NEW_KEY)]);
    assert!(seed_alias.contains("does not open"), "{seed_alias}");

    // The right key reads everything back.
    h.restart_with(&[("SLUICE_ENCRYPTION_KEY", KEY)]);
    let session = h.session(&id).await;
    assert!(
        session["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains(SECRET_WORDS),
        "{session}"
    );
    assert!(
        session["title"].as_str().unwrap().contains("PINEAPPLE"),
        "{session}"
    );
    let content = h
        .http
        .get(h.url(&format!("/v1/files/{file_id}/content")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(content.contains(SECRET_FILE), "{content}");

    // Rotated: a new key seals, the old one still opens what it sealed.
    h.restart_with(&[
        ("SLUICE_ENCRYPTION_KEY", NEW_KEY),
        ("SLUICE_ENCRYPTION_OLD_KEYS", KEY),
    ]);
    let session: Value = h.session(&id).await;
    assert!(
        session["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains(SECRET_WORDS)
    );
    let (_, mut ws) = h
        .session_with_ws("fake:tokens=2", "after the rotation")
        .await;
    ws.until("generation_end").await;
}
