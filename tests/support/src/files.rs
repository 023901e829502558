//! Uploads and the fixtures tests upload: a PDF with a text layer, one
//! without, and images.

use std::time::Duration;

use serde_json::Value;

/// `POST {base}/v1/files` with `bytes` as the field `file` named `name`,
/// with a bearer `token` if given.
pub async fn upload(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    name: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned());
    let form = reqwest::multipart::Form::new()
        .text("purpose", "assistants")
        .part("file", part);
    let mut request = http.post(format!("{base}/v1/files")).multipart(form);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("upload")
}

/// Uploads and returns the file object (asserting 201).
pub async fn uploaded(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    name: &str,
    bytes: Vec<u8>,
) -> Value {
    let response = upload(http, base, token, name, bytes).await;
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(status, 201, "{body}");
    body
}

/// The file once it is no longer `stored` (a hang guard of 60 s).
pub async fn settled_file(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    id: &str,
) -> Value {
    for _ in 0..1200 {
        let mut request = http.get(format!("{base}/v1/files/{id}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let file: Value = request.send().await.unwrap().json().await.unwrap();
        if file["status"] != "stored" {
            return file;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("file {id} was never indexed");
}

/// A one-page PDF whose text layer holds `lines` (Helvetica, no
/// embedded font), with a correct cross-reference table.
pub fn pdf_with_text(lines: &[&str]) -> Vec<u8> {
    let mut content = String::from("BT /F1 12 Tf 72 720 Td 14 TL\n");
    for line in lines {
        let escaped = line
            .replace('\\', "\\\\")
            .replace('(', "\\(")
            .replace(')', "\\)");
        content.push_str(&format!("({escaped}) Tj T*\n"));
    }
    content.push_str("ET");
    pdf(&content)
}

/// A one-page PDF with no text layer (a drawn rectangle, as a scan has
/// only images).
pub fn pdf_without_text() -> Vec<u8> {
    pdf("0 0 1 rg 100 100 200 200 re f")
}

fn pdf(content: &str) -> Vec<u8> {
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_owned(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_owned(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}
