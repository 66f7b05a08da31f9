//! The users activated through Telsmart's onboarding, in the store's `activated_users` table,
//! and kept in memory once read: every webhook of a connection looks them up, and only this
//! store writes them (the server's activation routes), so it knows when to read them again.

use super::SqliteStore;
use crate::adapters::cached;
use crate::ports::{ActivatedUsers, UserDirectory};
use async_trait::async_trait;
use rusqlite::params;
use std::collections::BTreeMap;
use std::sync::Arc;

/// By connection id; a connection's entry goes when one of its users changes. Only connections
/// that take activations are read: the cache is as bounded as they are.
pub(super) type Cache = moka::future::Cache<String, ActivatedUsers>;

#[async_trait]
impl UserDirectory for SqliteStore {
    async fn activated_users(&self, connection_id: &str) -> anyhow::Result<ActivatedUsers> {
        let id = connection_id.to_owned();
        let read = async {
            let users: BTreeMap<String, String> = self
                .readers
                .read(move |c| {
                    c.prepare_cached(
                        "SELECT extension, user_id FROM activated_users WHERE connection_id = ?1",
                    )?
                    .query_map([id], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
                })
                .await?;
            anyhow::Ok(Arc::new(users))
        };
        // Calls that ask at once share one read.
        cached::get_or_read(&self.activated_users, connection_id, read).await
    }

    async fn activate(
        &self,
        connection_id: &str,
        extension: &str,
        user_id: &str,
    ) -> anyhow::Result<()> {
        let row = (
            connection_id.to_owned(),
            extension.to_owned(),
            user_id.to_owned(),
        );
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO activated_users (connection_id, extension, user_id) \
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![row.0, row.1, row.2])
            })
            .await?;
        self.activated_users.invalidate(connection_id).await;
        Ok(())
    }

    async fn deactivate(&self, connection_id: &str, extension: &str) -> anyhow::Result<()> {
        let key = (connection_id.to_owned(), extension.to_owned());
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "DELETE FROM activated_users WHERE connection_id = ?1 AND extension = ?2",
                )?
                .execute(params![key.0, key.1])
            })
            .await?;
        self.activated_users.invalidate(connection_id).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn activations_outlive_a_reopen_and_deactivations_remove_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = SqliteStore::open(&path).await.unwrap();
            store.activate("acme", "200", "usr_200").await.unwrap();
            store.activate("acme", "210", "usr_210").await.unwrap();
            store.activate("acme", "200", "usr_john").await.unwrap();
            store.activate("other", "200", "usr_x").await.unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            *store.activated_users("acme").await.unwrap(),
            BTreeMap::from([
                ("200".to_string(), "usr_john".to_string()),
                ("210".to_string(), "usr_210".to_string()),
            ])
        );
        // Read once, then kept until a change.
        let read = store.activated_users("acme").await.unwrap();
        assert!(Arc::ptr_eq(
            &read,
            &store.activated_users("acme").await.unwrap()
        ));
        store.deactivate("acme", "200").await.unwrap();
        store.deactivate("acme", "999").await.unwrap();
        assert_eq!(
            store
                .activated_users("acme")
                .await
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["210"]
        );
        store.activate("acme", "220", "usr_220").await.unwrap();
        assert_eq!(store.activated_users("acme").await.unwrap().len(), 2);
        assert_eq!(store.activated_users("nobody").await.unwrap().len(), 0);
    }
}
