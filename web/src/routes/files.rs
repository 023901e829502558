//! Files (PROTOCOL.md §8): uploads, listing, reading and deleting.
//!
//! An upload is `multipart/form-data` with the file in the field `file`
//! (and optionally OpenAI's `purpose`). Its bytes go to a temp file as
//! they arrive, so a large upload never sits in memory; each piece must
//! arrive within [`BODY_TIMEOUT`] of the last (a stalled upload is
//! `408`), past [`PACE_GRACE`] the upload must average [`MIN_PACE`] (`408`
//! too), and the whole file within `SLUICE_MAX_UPLOAD_BYTES` (`413`,
//! refused from its `Content-Length` before anything is read when that
//! says so already). Nothing is stored until the file is whole and its
//! type accepted.

use actix_multipart::{Field, Multipart};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use serde::Deserialize;
use sluice_protocol::ErrorCode;
use sluice_protocol::files::FileList;

use crate::auth::User;
use crate::body::BODY_TIMEOUT;
use crate::error::ApiError;
use crate::state::AppState;

/// Default page size of `GET /v1/files`.
const DEFAULT_PAGE: usize = 20;

/// Largest page of `GET /v1/files`.
const MAX_PAGE: usize = 100;

/// Largest value of a form field other than `file` (`purpose`).
const MAX_FIELD_BYTES: usize = 1024;

/// Multipart framing allowed beyond the file itself (boundaries, headers,
/// small fields) before a declared `Content-Length` is refused unread.
const FRAMING_BYTES: u64 = 64 * 1024;

/// Longest `purpose`, in bytes.
const MAX_PURPOSE_BYTES: usize = 64;

fn stalled() -> ApiError {
    ApiError::new(
        ErrorCode::RequestTimeout,
        format!("the upload stalled for {} s", BODY_TIMEOUT.as_secs()),
    )
}

fn unreadable(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("cannot read the multipart body: {e}"))
}

/// Time an upload may take before its pace is checked.
const PACE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Slowest average pace an upload may keep past [`PACE_GRACE`] (bytes a
/// second): a client dripping a byte every few seconds would otherwise hold
/// a connection and a spool file for as long as it likes.
const MIN_PACE: u64 = 8 * 1024;

/// An upload's average pace, checked as its pieces arrive.
struct Pace {
    started: std::time::Instant,
    bytes: u64,
}

impl Pace {
    fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `bytes` more; refuses an upload slower than [`MIN_PACE`] on
    /// average once past [`PACE_GRACE`].
    fn arrived(&mut self, bytes: usize) -> Result<(), ApiError> {
        self.bytes += bytes as u64;
        let elapsed = self.started.elapsed();
        if elapsed > PACE_GRACE && (self.bytes as f64) < MIN_PACE as f64 * elapsed.as_secs_f64() {
            return Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the upload is arriving slower than {} KiB/s",
                    MIN_PACE / 1024
                ),
            ));
        }
        Ok(())
    }
}

/// The next item of a multipart stream, within [`BODY_TIMEOUT`].
async fn next<S, T, E>(stream: &mut S) -> Result<Option<T>, ApiError>
where
    S: futures::Stream<Item = Result<T, E>> + Unpin,
    E: std::fmt::Display,
{
    match tokio::time::timeout(BODY_TIMEOUT, stream.next()).await {
        Err(_) => Err(stalled()),
        Ok(None) => Ok(None),
        Ok(Some(item)) => item.map(Some).map_err(unreadable),
    }
}

/// A small text field, refused past [`MAX_FIELD_BYTES`].
async fn small_field(field: &mut Field) -> Result<String, ApiError> {
    let mut value = Vec::new();
    while let Some(piece) = next(field).await? {
        value.extend_from_slice(&piece);
        if value.len() > MAX_FIELD_BYTES {
            return Err(ApiError::bad_request(format!(
                "form fields other than `file` hold at most {MAX_FIELD_BYTES} bytes"
            )));
        }
    }
    String::from_utf8(value).map_err(|_| ApiError::bad_request("a form field is not UTF-8"))
}

/// `POST /v1/files` → `201` file object.
pub async fn upload(
    req: HttpRequest,
    state: web::Data<AppState>,
    user: User,
    mut form: Multipart,
) -> Result<HttpResponse, ApiError> {
    let limit = state.files.max_upload_bytes();
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit.saturating_add(FRAMING_BYTES)) {
        state
            .metrics
            .uploads_total
            .with_label_values(&["too_large"])
            .inc();
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the upload is over the limit of {limit} bytes"),
        ));
    }
    let mut purpose = String::from("assistants");
    let mut sealed = None;
    let mut pace = Pace::new();
    while let Some(mut field) = next(&mut form).await? {
        pace.arrived(0)?;
        match field.name() {
            Some("file") if sealed.is_none() => {
                let filename = field
                    .content_disposition()
                    .and_then(|d| d.get_filename())
                    .unwrap_or("upload")
                    .to_owned();
                let mut upload = state
                    .files
                    .begin_upload(&user.0, &filename, &purpose)
                    .await?;
                while let Some(piece) = next(&mut field).await? {
                    pace.arrived(piece.len())?;
                    upload.write(&piece).await?;
                }
                sealed = Some(upload.finish().await?);
            }
            Some("file") => return Err(ApiError::bad_request("one file per upload")),
            Some("purpose") => {
                let value = small_field(&mut field).await?;
                if value.is_empty()
                    || value.len() > MAX_PURPOSE_BYTES
                    || value.chars().any(char::is_control)
                {
                    return Err(ApiError::bad_request(format!(
                        "purpose must be 1 to {MAX_PURPOSE_BYTES} printable bytes"
                    )));
                }
                purpose = value;
            }
            _ => {
                small_field(&mut field).await?;
            }
        }
    }
    // Stored only once the whole body was read and found fine: an error
    // after the file's field leaves nothing behind either.
    match sealed {
        Some(upload) => {
            let file = upload.store().await?;
            Ok(HttpResponse::Created().json(file.to_object()))
        }
        None => Err(ApiError::bad_request(
            "the multipart body has no field named `file`",
        )),
    }
}

/// Query of `GET /v1/files`.
#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    before: Option<String>,
}

/// `GET /v1/files?limit=&before=`: the caller's files, newest first.
pub async fn list(
    state: web::Data<AppState>,
    user: User,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    let mut files = state
        .files
        .list(&user.0, limit + 1, query.before.as_deref())
        .await?;
    let has_more = files.len() > limit;
    files.truncate(limit);
    Ok(HttpResponse::Ok().json(FileList {
        object: "list".into(),
        data: files.iter().map(|f| f.to_object()).collect(),
        has_more,
    }))
}

/// `GET /v1/files/{id}`.
pub async fn get(
    state: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let file = state.files.get(&user.0, &id).await?;
    Ok(HttpResponse::Ok().json(file.to_object()))
}

/// `GET /v1/files/{id}/content`: the bytes, as a download. A file is the
/// user's own content, never a page of this site: it is served as an
/// attachment, not sniffed, and sandboxed, and HTML as plain text.
pub async fn content(
    state: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (file, object) = state.files.content(&user.0, &id).await?;
    let content_type = match file.content_type.as_str() {
        t if t.starts_with("text/") || t == "application/json" => {
            if t == "application/json" {
                "application/json".to_owned()
            } else {
                "text/plain; charset=utf-8".to_owned()
            }
        }
        t => t.to_owned(),
    };
    let disposition = header::ContentDisposition {
        disposition: header::DispositionType::Attachment,
        parameters: vec![header::DispositionParam::Filename(file.filename.clone())],
    };
    let body = object.body.map(|piece| {
        piece.map_err(|e| {
            tracing::warn!(error = %e, "a file's bytes stopped coming");
            std::io::Error::other(e.to_string())
        })
    });
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(disposition)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "sandbox; default-src 'none'",
        ))
        .no_chunking(object.len)
        .streaming(body))
}

/// `DELETE /v1/files/{id}`: removes its chunks, its bytes and its row.
pub async fn delete(
    state: web::Data<AppState>,
    user: User,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.files.delete(&user.0, &id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "id": id.as_str(), "object": "file", "deleted": true,
    })))
}
