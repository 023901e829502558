//! The production object store: S3 or an S3-compatible server (MinIO),
//! through aws-sdk-s3, path-style (`endpoint/bucket/key`), with static
//! credentials. The bucket is created at start if it is missing.
//!
//! A put is one `PutObject` whose body is read from the local file in
//! pieces (so it is retried from the file, never held in memory); S3 makes
//! an object visible whole or not at all. TLS, for an `https` endpoint, is
//! rustls on ring, like every other client in Sluice.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use futures::future::BoxFuture;

use super::{Object, ObjectStore, check_key};
use crate::{Backend, BackendError};

/// Longest wait for a connection to the S3 endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for S3 to start answering a request it has received.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest one attempt at a request may take, body included (a 100 MiB
/// upload at 1 MiB/s fits).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where and how to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `http(s)://host:port` of the S3 API.
    pub endpoint: String,
    /// The bucket holding Sluice's objects.
    pub bucket: String,
    /// Region name (MinIO accepts any; `us-east-1` by convention).
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

/// Objects in an S3 bucket.
#[derive(Clone)]
pub struct S3ObjectStore {
    client: Client,
    bucket: String,
}

impl S3ObjectStore {
    /// A client for `config`'s bucket, creating the bucket if it is
    /// missing. Fails if the endpoint cannot be reached or refuses the
    /// credentials.
    pub async fn connect(config: &S3Config) -> Result<Self, BackendError> {
        let store = Self::new(config);
        store.ensure_bucket(&config.region).await?;
        Ok(store)
    }

    /// A client for `config`'s bucket, without a request yet.
    pub fn new(config: &S3Config) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .build();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts)
            .region(Region::new(config.region.clone()))
            .endpoint_url(&config.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &config.access_key,
                &config.secret_key,
                None,
                None,
                "sluice",
            ))
            .build();
        Self {
            client: Client::from_conf(conf),
            bucket: config.bucket.clone(),
        }
    }

    /// Creates the bucket if it is missing.
    pub async fn ensure_bucket(&self, region: &str) -> Result<(), BackendError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => {}
            Err(e) => return Err(error(e)),
        }
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        if region != "us-east-1" {
            create = create.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(region.into())
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "object store: created the bucket");
                Ok(())
            }
            // Another replica created it first.
            Err(e)
                if e.as_service_error().is_some_and(|e| {
                    e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(error(e)),
        }
    }
}

/// Transport failures, timeouts and 5xx answers are `Unavailable`; any
/// other answer (access denied, no such bucket) is `Rejected`.
fn error<E>(e: SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (message, server_side) = match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let message = format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("no message")
            );
            (message, service.raw().status().is_server_error())
        }
        // Not the error's own text: it quotes the endpoint and the
        // request, which a client told `overloaded` has no business seeing.
        other => {
            tracing::debug!(error = %DisplayErrorContext(other), "S3 request failed");
            match other {
                SdkError::TimeoutError(_) => ("S3 did not answer in time".to_owned(), true),
                SdkError::DispatchFailure(_) => ("S3 cannot be reached".to_owned(), true),
                SdkError::ResponseError(_) => {
                    ("S3 sent an answer that cannot be read".to_owned(), true)
                }
                _ => ("the S3 request could not be made".to_owned(), false),
            }
        }
    };
    if server_side {
        BackendError::unavailable(Backend::Objects, message)
    } else {
        BackendError::rejected(Backend::Objects, message)
    }
}

impl ObjectStore for S3ObjectStore {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn put_file(
        &self,
        key: &str,
        path: &Path,
        len: u64,
        content_type: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let checked = check_key(key);
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(len as i64);
        let path = path.to_owned();
        Box::pin(async move {
            checked?;
            let body = ByteStream::read_from()
                .path(&path)
                .length(aws_sdk_s3::primitives::Length::Exact(len))
                .build()
                .await
                .map_err(|e| BackendError::rejected(Backend::Objects, e))?;
            request.body(body).send().await.map_err(error)?;
            Ok(())
        })
    }

    fn get(&self, key: &str) -> BoxFuture<'static, Result<Option<Object>, BackendError>> {
        let checked = check_key(key);
        let request = self.client.get_object().bucket(&self.bucket).key(key);
        Box::pin(async move {
            checked?;
            let output = match request.send().await {
                Ok(output) => output,
                Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                    return Ok(None);
                }
                Err(e) => return Err(error(e)),
            };
            let len = output.content_length().unwrap_or(0).max(0) as u64;
            let body = futures::stream::try_unfold(output.body, |mut body| async move {
                match body.next().await {
                    Some(Ok(piece)) => Ok(Some((piece, body))),
                    Some(Err(e)) => Err(BackendError::unavailable(Backend::Objects, e)),
                    None => Ok(None),
                }
            });
            Ok(Some(Object {
                len,
                body: Box::pin(body),
            }))
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let checked = check_key(key);
        let request = self.client.delete_object().bucket(&self.bucket).key(key);
        Box::pin(async move {
            checked?;
            request.send().await.map_err(error)?;
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        let request = self.client.head_bucket().bucket(&self.bucket);
        Box::pin(async move {
            request.send().await.map_err(error)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use sluice_test_support::s3::{ACCESS_KEY, SECRET_KEY, TestS3};

    use super::*;
    use crate::ErrorKind;

    fn config(server: &TestS3, bucket: &str) -> S3Config {
        S3Config {
            endpoint: server.url(),
            bucket: bucket.into(),
            region: "us-east-1".into(),
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
        }
    }

    #[tokio::test]
    async fn s3_store_conforms_and_creates_its_bucket() {
        let server = TestS3::start();
        assert!(!server.bucket_dir("uploads").exists());
        let store = S3ObjectStore::connect(&config(&server, "uploads"))
            .await
            .unwrap();
        assert!(server.bucket_dir("uploads").is_dir());
        super::super::conformance::run(&store).await;
        // A second replica finds the bucket there.
        S3ObjectStore::connect(&config(&server, "uploads"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn wrong_credentials_are_refused_and_a_stopped_server_is_unavailable() {
        let mut server = TestS3::start();
        let mut wrong = config(&server, "uploads");
        wrong.secret_key = "not-the-secret".into();
        let refused = S3ObjectStore::connect(&wrong).await.err().unwrap();
        assert_eq!(refused.kind, ErrorKind::Rejected, "{refused}");

        let store = S3ObjectStore::connect(&config(&server, "uploads"))
            .await
            .unwrap();
        server.stop();
        let down = store.ping().await.unwrap_err();
        assert_eq!(down.kind, ErrorKind::Unavailable, "{down}");
        server.resume();
        store.ping().await.unwrap();
    }
}
