//! Stored responses in the redb store (see [`crate::responses`]). A
//! response's link in its chain (its parent and its items) is kept apart
//! from the rest of its record, so reading a conversation reads only the
//! links, whatever the size of the response objects.

use futures::future::BoxFuture;
use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{RedbSessionStore, decode, encode, err};
use crate::responses::{ResponseRecord, ResponseStore};
use crate::{Backend, BackendError};

/// response id → JSON [`ResponseRecord`], its `items` left empty.
pub(super) const RESPONSES: TableDefinition<&str, &[u8]> = TableDefinition::new("responses");
/// response id → JSON [`Link`].
pub(super) const LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("response_links");

/// A response's place in its chain.
#[derive(Serialize, Deserialize)]
struct Link {
    parent: Option<String>,
    items: String,
}

impl ResponseStore for RedbSessionStore {
    fn create_response(
        &self,
        mut response: ResponseRecord,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        self.blocking(move |db| {
            let link = Link {
                parent: response.parent.clone(),
                items: std::mem::take(&mut response.items),
            };
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
                let mut links = txn.open_table(LINKS).map_err(err)?;
                links
                    .insert(response.id.as_str(), encode(&link).as_slice())
                    .map_err(err)?;
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
            let Some(bytes) = responses.get(id.as_str()).map_err(err)? else {
                return Ok(None);
            };
            let mut record: ResponseRecord = decode(bytes.value())?;
            let links = txn.open_table(LINKS).map_err(err)?;
            if let Some(link) = links.get(id.as_str()).map_err(err)? {
                record.items = decode::<Link>(link.value())?.items;
            }
            Ok(Some(record))
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
            let links = txn.open_table(LINKS).map_err(err)?;
            let mut items = Vec::new();
            let mut next = Some(id);
            while let Some(id) = next.take().filter(|_| items.len() < max as usize) {
                let Some(bytes) = links.get(id.as_str()).map_err(err)? else {
                    break;
                };
                let link: Link = decode(bytes.value())?;
                items.push(link.items);
                next = link.parent;
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
                let mut links = txn.open_table(LINKS).map_err(err)?;
                links.remove(id.as_str()).map_err(err)?;
                responses.remove(id.as_str()).map_err(err)?.is_some()
            };
            txn.commit().map_err(err)?;
            Ok(existed)
        })
    }
}
