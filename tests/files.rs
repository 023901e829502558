//! Files on one replica with the embedded backends (a directory, the redb
//! index, the local embedder) and the fake provider: uploads, indexing,
//! attachments in the provider's prompt, limits and privacy.

use std::io::Cursor;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use sluice_test_support::client::SseClient;
use sluice_test_support::files::{pdf_with_text, pdf_without_text, settled_file, upload, uploaded};
use sluice_test_support::harness::Harness;
use sluice_test_support::rest::settled_answer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 13 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A document of many paragraphs, one of which (in the middle) holds the
/// answer to the question the tests ask.
fn handbook() -> String {
    let mut text = String::from("# Harbour operations handbook\n\n");
    for i in 0..40 {
        text.push_str(&format!(
            "Section {i}. Routine checks of bollards, fenders and mooring lines happen every \
             morning; the duty officer signs the log after each round number {i}.\n\n"
        ));
        if i == 20 {
            text.push_str(
                "The quay crane was repaired in March by Nordic Lift, invoice 4471, after its \
                 hoist motor overheated.\n\n",
            );
        }
    }
    text
}

async fn send(h: &Harness, id: &str, body: Value) -> reqwest::Response {
    h.http
        .post(h.url(&format!("/v1/sessions/{id}/messages")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The `generation_end` events of a session, replayed from the start.
async fn generation_ends(h: &Harness, id: &str) -> Vec<Value> {
    let mut sse = SseClient::connect(&h.events_url(id, "?after=0"), None).await;
    let mut ends = Vec::new();
    let last = h.session(id).await["last_seq"].as_u64().unwrap();
    while let Some(event) = sse.next().await {
        if event.event == "generation_end" {
            ends.push(event.data.clone());
        }
        if event.id.as_deref().and_then(|i| i.parse::<u64>().ok()) == Some(last) {
            break;
        }
    }
    ends
}

/// The last chat request the provider received.
fn last_chat_request(h: &Harness) -> Value {
    h.upstream.requests().pop().expect("a provider request")
}

#[tokio::test]
async fn a_documents_best_passage_reaches_the_provider_and_the_answer_names_its_source() {
    let h = Harness::start(BIN);
    let base = h.url("");
    let file = uploaded(&h.http, &base, None, "handbook.md", handbook().into_bytes()).await;
    assert_eq!(file["content_type"], "text/markdown");
    assert_eq!(file["bytes"].as_u64().unwrap(), handbook().len() as u64);
    let file = settled_file(&h.http, &base, None, file["id"].as_str().unwrap()).await;
    assert_eq!(file["status"], "indexed", "{file}");
    assert!(file["chunks"].as_u64().unwrap() > 3, "{file}");
    let file_id = file["id"].as_str().unwrap();

    let session = h.create_session("fake:tokens=5").await;
    let response = send(
        &h,
        &session,
        json!({"content": "Who repaired the quay crane, and what was the invoice number?", "attachments": [file_id]}),
    )
    .await;
    assert_eq!(response.status(), 202);
    let answer = settled_answer(&h.http, &base, &session).await;
    assert_eq!(answer["status"], "complete");

    // The passage with the answer is in a system message just before the
    // question, under the file's name.
    let request = last_chat_request(&h);
    let messages = request["messages"].as_array().unwrap();
    let question = messages.len() - 1;
    assert_eq!(messages[question]["role"], "user");
    let excerpts = messages[question - 1]["content"].as_str().unwrap();
    assert_eq!(messages[question - 1]["role"], "system");
    assert!(excerpts.contains("Nordic Lift, invoice 4471"), "{excerpts}");
    assert!(excerpts.contains("[handbook.md, part"), "{excerpts}");

    // The answer's end names the file; the history keeps the attachment.
    let ends = generation_ends(&h, &session).await;
    let sources = &ends.last().unwrap()["sources"];
    assert_eq!(sources[0]["file_id"], file_id, "{sources}");
    assert_eq!(sources[0]["filename"], "handbook.md");
    let history = h.session(&session).await;
    assert_eq!(history["messages"][0]["attachments"], json!([file_id]));

    // A follow-up question is grounded too (the file is in the history),
    // and a question about nothing in it puts no excerpts in.
    send(
        &h,
        &session,
        json!({"content": "Which company fixed the crane hoist motor?"}),
    )
    .await;
    settled_answer(&h.http, &base, &session).await;
    let request = last_chat_request(&h);
    let text = request["messages"].to_string();
    assert!(text.contains("Nordic Lift"), "{text}");

    // A request that shares no words with the file it attaches ("summarize
    // this") still gets the file's passages.
    let other = h.create_session("fake:tokens=3").await;
    send(
        &h,
        &other,
        json!({"content": "Summarize this for me.", "attachments": [file_id]}),
    )
    .await;
    settled_answer(&h.http, &base, &other).await;
    let text = last_chat_request(&h)["messages"].to_string();
    assert!(text.contains("[handbook.md, part"), "{text}");

    let metrics = h.metrics().await;
    assert!(
        metrics.contains("sluice_retrievals_total{outcome=\"hits\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_indexing_total{outcome=\"indexed\"} 1"));
}

#[tokio::test]
async fn images_reach_the_provider_as_image_url_parts_and_large_ones_are_scaled_down() {
    let h = Harness::start(BIN);
    let base = h.url("");
    let small = png(32, 24);
    let small_file = uploaded(&h.http, &base, None, "photo.bin", small.clone()).await;
    // The type comes from the bytes, not the name.
    assert_eq!(small_file["content_type"], "image/png");
    let big_file = uploaded(&h.http, &base, None, "big.png", png(3000, 1500)).await;
    for file in [&small_file, &big_file] {
        let settled = settled_file(&h.http, &base, None, file["id"].as_str().unwrap()).await;
        assert_eq!(settled["status"], "indexed", "{settled}");
        assert_eq!(settled["chunks"], 0);
    }

    let session = h.create_session("fake:tokens=3").await;
    let ids = [small_file["id"].clone(), big_file["id"].clone()];
    let response = send(
        &h,
        &session,
        json!({"content": "What is in these?", "attachments": ids}),
    )
    .await;
    assert_eq!(response.status(), 202);
    settled_answer(&h.http, &base, &session).await;
    let request = last_chat_request(&h);
    let parts = request["messages"].as_array().unwrap().last().unwrap()["content"].clone();
    assert_eq!(
        parts[0],
        json!({"type": "text", "text": "What is in these?"})
    );
    let url = |i: usize| parts[i]["image_url"]["url"].as_str().unwrap().to_owned();
    let decode = |url: &str| {
        let data = url.split_once(";base64,").unwrap().1;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap()
    };
    assert!(url(1).starts_with("data:image/png;base64,"));
    assert_eq!(decode(&url(1)), small);
    assert!(
        url(2).starts_with("data:image/jpeg;base64,"),
        "{}",
        &url(2)[..40]
    );
    let scaled = image::load_from_memory(&decode(&url(2))).unwrap();
    assert_eq!((scaled.width(), scaled.height()), (2048, 1024));

    // Content parts, as chat-completions clients write them: the inline
    // image becomes one of the user's files, attached to the message.
    let inline = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png(8, 8))
    );
    let response = send(
        &h,
        &session,
        json!({"content": [{"type": "text", "text": "And this one?"}, {"type": "image_url", "image_url": {"url": inline}}]}),
    )
    .await;
    assert_eq!(response.status(), 202);
    settled_answer(&h.http, &base, &session).await;
    let history = h.session(&session).await;
    let message = &history["messages"][2];
    assert_eq!(message["content"], "And this one?");
    let attached = message["attachments"][0].as_str().unwrap();
    let file: Value = h.get_json(&h.url(&format!("/v1/files/{attached}"))).await;
    assert_eq!(file["content_type"], "image/png");
    let request = last_chat_request(&h);
    let last = &request["messages"].as_array().unwrap().last().unwrap()["content"];
    assert_eq!(last[1]["image_url"]["url"], inline);

    // A retry of the same send (same client_msg_id) stores its image once.
    let retried = json!({"content": [{"type": "text", "text": "Once"}, {"type": "image_url", "image_url": {"url": inline}}], "client_msg_id": "retry-1"});
    let first: Value = send(&h, &session, retried.clone())
        .await
        .json()
        .await
        .unwrap();
    settled_answer(&h.http, &base, &session).await;
    let again: Value = send(&h, &session, retried).await.json().await.unwrap();
    assert_eq!(
        (&first["message_id"], &first["generation_id"]),
        (&again["message_id"], &again["generation_id"])
    );
    assert_eq!(again["replayed"], true);

    // A send that fails after its inline image was taken keeps nothing:
    // an unknown attachment beside it (named in the answer).
    let response = send(
        &h,
        &session,
        json!({"content": [{"type": "image_url", "image_url": {"url": inline}}], "attachments": ["no-such-file"]}),
    )
    .await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "no such file: no-such-file");

    // A remote URL, or a data URL that is not an image, is refused.
    for content in [
        json!([{"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest"}}]),
        json!([{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGVsbG8="}}]),
        json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]),
    ] {
        let response = send(&h, &session, json!({"content": content})).await;
        assert!(matches!(response.status().as_u16(), 400 | 415), "{content}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].is_string());
    }
    let files: Value = h.get_json(&h.url("/v1/files")).await;
    assert_eq!(files["data"].as_array().unwrap().len(), 4, "{files}");
}

#[tokio::test]
async fn pdfs_are_read_from_their_text_layer_and_unreadable_files_fail_with_a_reason() {
    let h = Harness::start(BIN);
    let base = h.url("");
    let good = uploaded(
        &h.http,
        &base,
        None,
        "minutes.pdf",
        pdf_with_text(&[
            "Board minutes",
            "The lighthouse lens was replaced by Fresnel Works.",
        ]),
    )
    .await;
    assert_eq!(good["content_type"], "application/pdf");
    let scanned = uploaded(&h.http, &base, None, "scan.pdf", pdf_without_text()).await;
    let corrupt = uploaded(
        &h.http,
        &base,
        None,
        "broken.pdf",
        b"%PDF-1.7\nthis is not a PDF".to_vec(),
    )
    .await;
    let truncated = uploaded(&h.http, &base, None, "cut.png", png(50, 50)[..60].to_vec()).await;

    let good = settled_file(&h.http, &base, None, good["id"].as_str().unwrap()).await;
    assert_eq!(good["status"], "indexed", "{good}");
    let scanned = settled_file(&h.http, &base, None, scanned["id"].as_str().unwrap()).await;
    assert_eq!(scanned["status"], "failed");
    assert!(
        scanned["error"].as_str().unwrap().contains("no text"),
        "{scanned}"
    );
    for file in [corrupt, truncated] {
        let file = settled_file(&h.http, &base, None, file["id"].as_str().unwrap()).await;
        assert_eq!(file["status"], "failed", "{file}");
        assert!(!file["error"].as_str().unwrap().is_empty());
    }
    // A 900 KB PDF whose page is one content stream, listed four times,
    // that inflates to 900 MB: parsed in a child process that may use 1 GiB,
    // it fails there, and the server's own memory does not grow.
    let pid = h.sluice.pid();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .unwrap()
            .to_owned();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            / 1024
    };
    let before = rss();
    let bomb = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pdf-bomb.pdf"
    ))
    .unwrap();
    let bomb = uploaded(&h.http, &base, None, "bomb.pdf", bomb).await;
    let bomb = settled_file(&h.http, &base, None, bomb["id"].as_str().unwrap()).await;
    assert_eq!(bomb["status"], "failed", "{bomb}");
    assert!(bomb["error"].as_str().unwrap().contains("within"), "{bomb}");
    assert!(
        rss() < before + 200,
        "the server's peak memory grew from {before} MiB to {} MiB",
        rss()
    );

    let session = h.create_session("fake:tokens=3").await;
    let response = send(
        &h,
        &session,
        json!({"content": "Who replaced the lighthouse lens?", "attachments": [good["id"]]}),
    )
    .await;
    assert_eq!(response.status(), 202);
    settled_answer(&h.http, &base, &session).await;
    let text = last_chat_request(&h)["messages"].to_string();
    assert!(text.contains("Fresnel Works"), "{text}");
    // The server is still up and answering.
    assert_eq!(
        h.http.get(h.url("/health")).send().await.unwrap().status(),
        200
    );
}

/// Files in the objects directory and the spool, for "nothing left behind".
fn stored_files(h: &Harness) -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&h.data_dir().join("objects"), &mut out);
    walk(&h.data_dir().join("spool"), &mut out);
    out
}

#[tokio::test]
async fn refused_and_aborted_uploads_leave_nothing_behind() {
    let h = Harness::start_with(BIN, &[("SLUICE_MAX_UPLOAD_BYTES", "4096")]);
    let base = h.url("");
    let expect = |status: u16, code: &'static str| {
        move |response: reqwest::Response| async move {
            assert_eq!(response.status(), status);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], code, "{body}");
        }
    };
    // Over the limit, by its declared length and while streaming.
    expect(413, "payload_too_large")(
        upload(&h.http, &base, None, "big.txt", vec![b'a'; 200_000]).await,
    )
    .await;
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 1000])));
    let part =
        reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(chunks)).file_name("big.txt");
    let response = h
        .http
        .post(h.url("/v1/files"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    expect(413, "payload_too_large")(response).await;
    // Types the allow-list does not hold, whatever their names say.
    expect(415, "unsupported_media_type")(
        upload(
            &h.http,
            &base,
            None,
            "notes.txt",
            b"PK\x03\x04\x14\0\0\0\x08\0".to_vec(),
        )
        .await,
    )
    .await;
    expect(415, "unsupported_media_type")(
        upload(
            &h.http,
            &base,
            None,
            "a.md",
            b"MZ\x90\0\x03\0\0\0\x04\0\0\0".to_vec(),
        )
        .await,
    )
    .await;
    expect(415, "unsupported_media_type")(
        upload(
            &h.http,
            &base,
            None,
            "latin1.txt",
            b"caf\xe9 \x01\x02".to_vec(),
        )
        .await,
    )
    .await;
    expect(400, "bad_request")(upload(&h.http, &base, None, "empty.txt", Vec::new()).await).await;
    let no_file = h
        .http
        .post(h.url("/v1/files"))
        .multipart(reqwest::multipart::Form::new().text("purpose", "assistants"))
        .send()
        .await
        .unwrap();
    expect(400, "bad_request")(no_file).await;
    // Errors after the file's field: nothing of the file is kept.
    let two_files = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"one".to_vec()).file_name("a.txt"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"two".to_vec()).file_name("b.txt"),
        );
    let response = h
        .http
        .post(h.url("/v1/files"))
        .multipart(two_files)
        .send()
        .await
        .unwrap();
    expect(400, "bad_request")(response).await;
    let bad_purpose = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"one".to_vec()).file_name("a.txt"),
        )
        .text("purpose", "x".repeat(500));
    let response = h
        .http
        .post(h.url("/v1/files"))
        .multipart(bad_purpose)
        .send()
        .await
        .unwrap();
    expect(400, "bad_request")(response).await;
    let not_multipart = h
        .http
        .post(h.url("/v1/files"))
        .json(&json!({"file": "x"}))
        .send()
        .await
        .unwrap();
    expect(400, "bad_request")(not_multipart).await;

    // A client that goes away mid-upload.
    let mut stream = tokio::net::TcpStream::connect(h.sluice.addr).await.unwrap();
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: {}\r\nContent-Type: multipart/form-data; boundary=XX\r\n\
         Content-Length: 3000\r\n\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\n",
        h.sluice.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);

    // A stalled upload is answered 408 and its connection closed.
    let mut stream = tokio::net::TcpStream::connect(h.sluice.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 100]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the stalled upload was answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    let files: Value = h.get_json(&h.url("/v1/files")).await;
    assert_eq!(files["data"], json!([]));
    assert_eq!(stored_files(&h), Vec::<String>::new());
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("sluice_uploads_total{outcome=\"too_large\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_uploads_total{outcome=\"unsupported\"} 3"),
        "{metrics}"
    );
    // One that fits is still taken.
    uploaded(&h.http, &base, None, "ok.txt", b"fits".to_vec()).await;
}

/// A client dripping its upload a byte at a time, never stalling for the
/// 10 s that count as stalled, is cut off once its pace falls behind.
#[tokio::test]
async fn an_upload_dripped_a_byte_at_a_time_is_cut_off() {
    let h = Harness::start(BIN);
    let mut stream = tokio::net::TcpStream::connect(h.sluice.addr).await.unwrap();
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: {}\r\nContent-Type: multipart/form-data; boundary=XX\r\n\
         Content-Length: 100000\r\n\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\n",
        h.sluice.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Read while dripping, so the answer is taken before the server's
    // close could reset the connection.
    let drip = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if writer.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(90), reader.read_to_end(&mut answer)).await;
    drip.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("slower than"), "{answer}");
    assert_eq!(stored_files(&h), Vec::<String>::new());
}

fn mint(secret: &str, sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    sluice_web::auth::mint(secret, sub, exp).unwrap()
}

#[tokio::test]
async fn a_users_files_and_their_chunks_are_invisible_to_everyone_else() {
    const SECRET: &str = "files-test-secret-0123456789";
    let h = Harness::start_with(BIN, &[("SLUICE_JWT_SECRET", SECRET)]);
    let base = h.url("");
    let (alice, bob) = (mint(SECRET, "alice"), mint(SECRET, "bob"));
    let secret_doc = "The vault combination is 31-41-59, known to Alice only.";
    let file = uploaded(&h.http, &base, Some(&alice), "vault.txt", secret_doc.into()).await;
    let id = file["id"].as_str().unwrap();
    settled_file(&h.http, &base, Some(&alice), id).await;
    // Bob's own document about the same thing.
    let bobs = uploaded(
        &h.http,
        &base,
        Some(&bob),
        "mine.txt",
        "The vault combination is unknown to Bob.".into(),
    )
    .await;
    settled_file(&h.http, &base, Some(&bob), bobs["id"].as_str().unwrap()).await;

    let as_bob = |method: reqwest::Method, path: String| {
        h.http
            .request(method, h.url(&path))
            .bearer_auth(&bob)
            .send()
    };
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/files/{id}")),
        (reqwest::Method::GET, format!("/v1/files/{id}/content")),
        (reqwest::Method::DELETE, format!("/v1/files/{id}")),
    ] {
        let response = as_bob(method.clone(), path.clone()).await.unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    let listed: Value = as_bob(reqwest::Method::GET, "/v1/files".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<_> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].clone())
        .collect();
    assert_eq!(listed, [bobs["id"].clone()]);

    // Attaching Alice's file to Bob's message names it, as not found.
    let session: Value = h
        .http
        .post(h.url("/v1/sessions"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = session["id"].as_str().unwrap();
    let response = h
        .http
        .post(h.url(&format!("/v1/sessions/{session}/messages")))
        .bearer_auth(&bob)
        .json(&json!({"content": "What is the vault combination?", "attachments": [id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], format!("no such file: {id}"));
    // With his own file, the excerpts are his alone.
    let response = h
        .http
        .post(h.url(&format!("/v1/sessions/{session}/messages")))
        .bearer_auth(&bob)
        .json(&json!({"content": "What is the vault combination?", "attachments": [bobs["id"]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    for _ in 0..600 {
        if h.upstream
            .requests()
            .iter()
            .any(|r| r["messages"].to_string().contains("unknown to Bob"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let prompts: String = h
        .upstream
        .requests()
        .iter()
        .map(|r| r["messages"].to_string())
        .collect();
    assert!(prompts.contains("unknown to Bob"));
    assert!(!prompts.contains("31-41-59"), "{prompts}");

    // Alice still has hers, whole.
    let content = h
        .http
        .get(h.url(&format!("/v1/files/{id}/content")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), 200);
    assert_eq!(content.headers()["x-content-type-options"], "nosniff");
    assert!(
        content.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(content.text().await.unwrap(), secret_doc);
}

#[tokio::test]
async fn deleting_a_file_removes_its_bytes_chunks_and_row() {
    let h = Harness::start(BIN);
    let base = h.url("");
    let file = uploaded(&h.http, &base, None, "handbook.md", handbook().into_bytes()).await;
    let id = file["id"].as_str().unwrap().to_owned();
    settled_file(&h.http, &base, None, &id).await;
    let session = h.create_session("fake:tokens=3").await;
    send(
        &h,
        &session,
        json!({"content": "Who repaired the quay crane?", "attachments": [id]}),
    )
    .await;
    settled_answer(&h.http, &base, &session).await;
    assert_eq!(stored_files(&h).len(), 1);

    let response = h
        .http
        .delete(h.url(&format!("/v1/files/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"id": id, "object": "file", "deleted": true}));
    assert_eq!(
        h.http
            .get(h.url(&format!("/v1/files/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        h.http
            .delete(h.url(&format!("/v1/files/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(stored_files(&h), Vec::<String>::new());
    // The conversation goes on without it: no excerpts any more.
    send(
        &h,
        &session,
        json!({"content": "Who repaired the quay crane?"}),
    )
    .await;
    let answer = settled_answer(&h.http, &base, &session).await;
    assert_eq!(answer["status"], "complete");
    let text = last_chat_request(&h)["messages"].to_string();
    assert!(!text.contains("Nordic Lift"), "{text}");
}

#[tokio::test]
async fn a_file_left_unindexed_is_indexed_after_a_restart() {
    // The provider's embeddings fail first: the file stays `stored`. The
    // replica is killed, perhaps holding its claim on the file in the
    // middle of another attempt; restarted under its name, it takes the
    // claim back at once.
    let mut h = Harness::start_with(
        BIN,
        &[
            ("SLUICE_EMBEDDING_MODEL", "fake:status=503"),
            ("SLUICE_REPLICA_ID", "files-1"),
        ],
    );
    let base = h.url("");
    let file = uploaded(&h.http, &base, None, "handbook.md", handbook().into_bytes()).await;
    let id = file["id"].as_str().unwrap().to_owned();
    sluice_test_support::wait_until("a failed indexing attempt", || async {
        h.metrics()
            .await
            .contains("sluice_indexing_total{outcome=\"retry\"}")
            .then_some(())
    })
    .await;
    let file: Value = h.get_json(&h.url(&format!("/v1/files/{id}"))).await;
    assert_eq!(file["status"], "stored");

    h.restart_with(&[("SLUICE_EMBEDDING_MODEL", "fake-embed")]);
    let file = settled_file(&h.http, &h.url(""), None, &id).await;
    assert_eq!(file["status"], "indexed", "{file}");
    let requests = h.upstream.embedding_requests();
    assert_eq!(requests.last().unwrap()["model"], "fake-embed");
    let ready: Value = h.get_json(&h.url("/ready")).await;
    assert_eq!(ready["backends"]["embedder"]["kind"], "provider");
}

#[tokio::test]
async fn embeddings_are_relayed_on_the_openai_api() {
    let h = Harness::start_with(BIN, &[("SLUICE_EMBEDDING_MODEL", "fake-embed")]);
    let response = h
        .http
        .post(h.url("/v1/embeddings"))
        .json(&json!({"input": ["harbour crane", "lighthouse"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(h.upstream.embedding_requests()[0]["model"], "fake-embed");
    for bad in [
        json!({"input": 3}),
        json!({"input": []}),
        json!(["x"]),
        json!({"input": "x", "model": 7}),
    ] {
        let response = h
            .http
            .post(h.url("/v1/embeddings"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    let ready: Value = h.get_json(&h.url("/ready")).await;
    assert_eq!(ready["backends"]["embedder"]["kind"], "provider");
    assert_eq!(ready["backends"]["objects"]["kind"], "directory");
    assert_eq!(ready["backends"]["vectors"]["kind"], "redb");
}
