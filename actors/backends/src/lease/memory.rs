//! In-process leases. Limits: they bind only this process, so they are for a
//! single replica (and for tests of the lease logic).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::Leases;
use crate::BackendError;

/// Leases in a map of session → (owner, expiry).
#[derive(Default)]
pub struct MemoryLeases {
    held: Mutex<HashMap<String, (String, Instant)>>,
}

impl MemoryLeases {
    /// An empty lease table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the live (unexpired) entries.
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, (String, Instant)>) -> T) -> T {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        held.retain(|_, (_, expiry)| *expiry > now);
        f(&mut held)
    }
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, Result<T, BackendError>> {
    Box::pin(async move { Ok(value) })
}

/// Takes or extends the lease for `owner`; false if someone else holds it.
fn take(
    held: &mut HashMap<String, (String, Instant)>,
    session_id: &str,
    owner: &str,
    ttl: Duration,
) -> bool {
    let expiry = Instant::now() + ttl;
    match held.get_mut(session_id) {
        Some((current, _)) if current != owner => false,
        Some((_, until)) => {
            *until = expiry;
            true
        }
        None => {
            held.insert(session_id.to_owned(), (owner.to_owned(), expiry));
            true
        }
    }
}

impl Leases for MemoryLeases {
    fn renew(
        &self,
        session_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        ready(self.with(|held| take(held, session_id, owner, ttl)))
    }

    fn release(
        &self,
        session_id: &str,
        owner: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        self.with(|held| {
            if held
                .get(session_id)
                .is_some_and(|(current, _)| current == owner)
            {
                held.remove(session_id);
            }
        });
        ready(())
    }

    fn owner(&self, session_id: &str) -> BoxFuture<'static, Result<Option<String>, BackendError>> {
        ready(self.with(|held| held.get(session_id).map(|(owner, _)| owner.clone())))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_leases_conform() {
        crate::lease::conformance::run(super::MemoryLeases::new).await;
    }
}
