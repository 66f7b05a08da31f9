//! The connections of the configuration file (`Config::connections`), for the local server.

use crate::domain::connection::Connection;
use crate::ports::ConnectionDirectory;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;

pub struct ConfigDirectory {
    connections: HashMap<String, Arc<Connection>>,
}

impl ConfigDirectory {
    pub fn new(connections: impl IntoIterator<Item = Connection>) -> Self {
        Self {
            connections: connections
                .into_iter()
                .map(|c| (c.id.clone(), Arc::new(c)))
                .collect(),
        }
    }
}

#[async_trait]
impl ConnectionDirectory for ConfigDirectory {
    async fn connection(&self, id: &str) -> anyhow::Result<Option<Arc<Connection>>> {
        Ok(self.connections.get(id).cloned())
    }
}
