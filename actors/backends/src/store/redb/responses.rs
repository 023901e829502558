//! Stored responses in the redb store (see [`crate::responses`]).

use futures::future::BoxFuture;
use redb::{ReadableDatabase, TableDefinition};

use super::{RedbSessionStore, decode, encode, err};
use crate::responses::{ResponseRecord, ResponseStore};
use crate::{Backend, BackendError};

/// response id → JSON [`ResponseRecord`].
pub(super) const RESPONSES: TableDefinition<&str, &[u8]> = TableDefinition::new("responses");

impl ResponseStore for RedbSessionStore {
    fn create_response(
        &self,
        response: ResponseRecord,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut responses = txn.open_table(RESPONSES).map_err(err)?;
                let earlier = responses
                    .insert(response.id.as_str(), encode(&response).as_slice())
                    .map_err(err)?;
                if earlier.is_some() {
                    // Dropping the transaction uncommitted keeps the first.
                    return Err(BackendError::rejected(
                        Backend::Store,
                        format!("response {} exists", response.id),
                    ));
                }
            }
            txn.commit().map_err(err)
        })
    }

    fn get_response(
        &self,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<ResponseRecord>, BackendError>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let responses = txn.open_table(RESPONSES).map_err(err)?;
            match responses.get(id.as_str()).map_err(err)? {
                Some(bytes) => decode(bytes.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    fn conversation(
        &self,
        id: &str,
        max: u32,
    ) -> BoxFuture<'static, Result<Vec<String>, BackendError>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let responses = txn.open_table(RESPONSES).map_err(err)?;
            let mut items = Vec::new();
            let mut next = Some(id);
            while let Some(id) = next.take().filter(|_| items.len() < max as usize) {
                let Some(bytes) = responses.get(id.as_str()).map_err(err)? else {
                    break;
                };
                let record: ResponseRecord = decode(bytes.value())?;
                items.push(record.items);
                next = record.parent;
            }
            items.reverse();
            Ok(items)
        })
    }

    fn delete_response(&self, id: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let existed = {
                let mut responses = txn.open_table(RESPONSES).map_err(err)?;
                responses.remove(id.as_str()).map_err(err)?.is_some()
            };
            txn.commit().map_err(err)?;
            Ok(existed)
        })
    }
}
