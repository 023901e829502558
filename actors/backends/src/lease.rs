//! Session ownership leases: which replica is the single writer of a
//! session. The owner renews its lease while it holds the session; when a
//! replica dies its leases expire and another may take the session over.
//!
//! Contract for implementations (the conformance suite below holds every
//! implementation to it):
//! - `acquire` succeeds only if nobody holds the lease (or it expired), and
//!   is idempotent for the current owner.
//! - `renew` extends the owner's lease, or takes it back if nobody holds it
//!   (it expired, or the store lost it in a restart); it fails if another
//!   owner holds it, so a replica that lost its lease learns it at its next
//!   renewal. `release` acts only for the current owner.
//! - A lease not renewed within its time-to-live expires by itself.

pub mod memory;
pub mod redis;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::BackendError;

/// Per-session ownership leases.
pub trait Leases: Send + Sync + 'static {
    /// Takes the lease for `owner` if it is free (or already `owner`'s).
    /// The same operation as [`Leases::renew`], named for the caller's intent.
    fn acquire(
        &self,
        session_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        self.renew(session_id, owner, ttl)
    }

    /// Extends `owner`'s lease (taking it back if nobody holds it); false if
    /// another owner holds it.
    fn renew(
        &self,
        session_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, BackendError>>;

    /// Gives the lease up if `owner` holds it.
    fn release(
        &self,
        session_id: &str,
        owner: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>>;

    /// The current owner, if any.
    fn owner(&self, session_id: &str) -> BoxFuture<'static, Result<Option<String>, BackendError>>;
}

/// The conformance suite every [`Leases`] must pass; `make` gives a fresh store.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    pub async fn run<L: Leases>(make: impl Fn() -> L) {
        let leases = make();
        assert!(leases.acquire("s", "a", LONG).await.unwrap());
        assert!(
            leases.acquire("s", "a", LONG).await.unwrap(),
            "idempotent for the owner"
        );
        assert!(!leases.acquire("s", "b", LONG).await.unwrap());
        assert_eq!(leases.owner("s").await.unwrap().as_deref(), Some("a"));
        assert!(!leases.renew("s", "b", LONG).await.unwrap());
        assert!(leases.renew("s", "a", LONG).await.unwrap());
        leases.release("s", "b").await.unwrap();
        assert_eq!(
            leases.owner("s").await.unwrap().as_deref(),
            Some("a"),
            "only the owner releases"
        );
        leases.release("s", "a").await.unwrap();
        assert_eq!(leases.owner("s").await.unwrap(), None);
        assert!(leases.acquire("s", "b", LONG).await.unwrap());
        assert!(
            !leases.renew("s", "a", LONG).await.unwrap(),
            "a lost lease cannot be renewed"
        );
        assert!(leases.owner("other").await.unwrap().is_none());

        // An unrenewed lease expires by itself (waited for, not assumed).
        let leases = make();
        assert!(
            leases
                .acquire("t", "a", Duration::from_millis(200))
                .await
                .unwrap()
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while leases.owner("t").await.unwrap().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the lease never expired"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(leases.acquire("t", "b", LONG).await.unwrap());
        assert!(!leases.renew("t", "a", LONG).await.unwrap());

        // An owner whose lease vanished unnoticed takes it back on renewal.
        assert!(
            leases
                .acquire("u", "a", Duration::from_millis(100))
                .await
                .unwrap()
        );
        while leases.owner("u").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(leases.renew("u", "a", LONG).await.unwrap());
        assert_eq!(leases.owner("u").await.unwrap().as_deref(), Some("a"));
    }
}
