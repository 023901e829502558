//! [`BoundedProvider`]: at most so many provider requests at once on this
//! replica (`SLUICE_MAX_CONCURRENT_REQUESTS`). A request past them waits
//! for a place, in order, for a bounded time, then fails as `overloaded`
//! without asking the provider. A streamed request holds its place until
//! its stream ends or is dropped.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use sluice_backends::llm::{ChunkStream, LlmError, LlmProvider};
use sluice_protocol::openai::ChatRequest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{GaugeGuard, Metrics};

/// A provider asked by at most `max` requests at once.
pub struct BoundedProvider {
    inner: Arc<dyn LlmProvider>,
    places: Arc<Semaphore>,
    max: usize,
    wait: Duration,
    metrics: Metrics,
}

/// A place taken, with the gauge that counts it running.
struct Place {
    _permit: OwnedSemaphorePermit,
    _running: GaugeGuard,
}

impl BoundedProvider {
    /// `inner`, asked by at most `max` (at least 1) requests at once; a
    /// request waits at most `wait` for a place.
    pub fn new(inner: Arc<dyn LlmProvider>, max: usize, wait: Duration, metrics: Metrics) -> Self {
        let max = max.max(1);
        Self {
            inner,
            places: Arc::new(Semaphore::new(max)),
            max,
            wait,
            metrics,
        }
    }

    fn place(&self) -> BoxFuture<'static, Result<Place, LlmError>> {
        let places = self.places.clone();
        let (max, wait, metrics) = (self.max, self.wait, self.metrics.clone());
        Box::pin(async move {
            let waiting =
                GaugeGuard::new(metrics.provider_requests.with_label_values(&["waiting"]));
            let permit = tokio::time::timeout(wait, places.acquire_owned()).await;
            drop(waiting);
            match permit {
                Ok(Ok(permit)) => Ok(Place {
                    _permit: permit,
                    _running: GaugeGuard::new(
                        metrics.provider_requests.with_label_values(&["running"]),
                    ),
                }),
                _ => {
                    metrics.limited_total.with_label_values(&["provider"]).inc();
                    Err(LlmError::Busy(format!(
                        "the server is at its limit of {max} provider requests at once; retry shortly"
                    )))
                }
            }
        })
    }
}

impl LlmProvider for BoundedProvider {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn stream(&self, request: ChatRequest) -> ChunkStream {
        let place = self.place();
        let inner = self.inner.clone();
        async_stream::stream! {
            let place = match place.await {
                Ok(place) => place,
                Err(e) => {
                    yield Err(e);
                    return;
                }
            };
            let mut chunks = inner.stream(request);
            while let Some(chunk) = chunks.next().await {
                yield chunk;
            }
            drop(place);
        }
        .boxed()
    }

    fn complete(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<serde_json::Value, LlmError>> {
        let place = self.place();
        let inner = self.inner.clone();
        Box::pin(async move {
            let _place = place.await?;
            inner.complete(request).await
        })
    }

    fn embeddings(
        &self,
        request: serde_json::Value,
    ) -> BoxFuture<'static, Result<serde_json::Value, LlmError>> {
        let place = self.place();
        let inner = self.inner.clone();
        Box::pin(async move {
            let _place = place.await?;
            inner.embeddings(request).await
        })
    }

    fn models(&self) -> Vec<String> {
        self.inner.models()
    }

    fn check(&self) -> BoxFuture<'static, Result<(), LlmError>> {
        // A health check takes no place: `/ready` answers while busy.
        self.inner.check()
    }
}

#[cfg(test)]
mod tests {
    use sluice_backends::llm::demo::DemoProvider;

    use super::*;

    #[tokio::test]
    async fn past_the_places_a_request_waits_then_is_overloaded() {
        let demo: Arc<dyn LlmProvider> = Arc::new(DemoProvider::new(Duration::from_millis(50)));
        let bounded =
            BoundedProvider::new(demo, 1, Duration::from_millis(100), Metrics::unregistered());
        let request: ChatRequest = serde_json::from_value(
            serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
        )
        .unwrap();
        let mut first = bounded.stream(request.clone());
        assert!(first.next().await.unwrap().is_ok());
        // The first holds the only place while its stream lives.
        let mut second = bounded.stream(request.clone());
        let refused = second.next().await.unwrap().unwrap_err();
        assert_eq!(refused.code(), sluice_protocol::ErrorCode::Overloaded);
        assert!(second.next().await.is_none());
        drop(first);
        let mut third = bounded.stream(request);
        assert!(third.next().await.unwrap().is_ok());
    }
}
