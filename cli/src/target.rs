//! What the operator commands work on: the local server's store (`--config FILE`) or, with the
//! `aws` feature, a deployment on AWS (`--aws`: its tables and queues, as the stack's outputs
//! name them, with the SDK's usual credentials chain). Every command takes the same shape on
//! both.

use callbridge_shared::adapters::sqlite::SqliteStore;
use callbridge_shared::config::Config;
use callbridge_shared::domain::record::{CallRecord, RecordError};
use callbridge_shared::ports::{CallFilter, CallStore, Queue};
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// The local server's configuration file: its `data_file` is the store.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[cfg(feature = "aws")]
    #[command(flatten)]
    pub aws: AwsTarget,
}

/// A deployment on AWS.
#[cfg(feature = "aws")]
#[derive(clap::Args, Clone, Debug)]
pub struct AwsTarget {
    /// Work on the AWS deployment rather than a local store.
    #[arg(long, conflicts_with = "config")]
    pub aws: bool,
    /// The calls table: the stack's `CallsTableName` output.
    #[arg(long, env = "CALLS_TABLE")]
    pub calls_table: Option<String>,
    /// The webhook queue: the stack's `QueueUrl` output.
    #[arg(long, env = "QUEUE_URL")]
    pub queue_url: Option<String>,
    /// The dead-letter queue: the stack's `DeadLetterQueueUrl` output.
    #[arg(long, env = "DEAD_LETTER_QUEUE_URL")]
    pub dead_letter_queue_url: Option<String>,
    /// The stack's `CallRetentionDays`: a call this command writes is kept as long after it as
    /// the worker keeps one.
    #[arg(long, env = "CALL_RETENTION_DAYS", default_value_t = callbridge_shared::config::AwsConfig::default().call_retention_days)]
    pub call_retention_days: u64,
}

#[cfg(feature = "aws")]
impl AwsTarget {
    /// A setting the command needs, or an error naming its flag and variable.
    pub fn setting<'a>(
        value: &'a Option<String>,
        flag: &str,
        variable: &str,
    ) -> anyhow::Result<&'a str> {
        value.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--aws needs {flag} (or {variable}): see the stack's outputs")
        })
    }

    /// The deployment's calls and queue, with the SDK's configuration from the environment.
    pub async fn open(&self) -> anyhow::Result<AwsCalls> {
        use callbridge_shared::adapters::aws::{aws_config, aws_sdk_dynamodb, aws_sdk_sqs};
        let aws = aws_config::load_from_env().await;
        Ok(AwsCalls::new(
            aws_sdk_dynamodb::Client::new(&aws),
            aws_sdk_sqs::Client::new(&aws),
            Self::setting(&self.calls_table, "--calls-table", "CALLS_TABLE")?,
            Self::setting(&self.queue_url, "--queue-url", "QUEUE_URL")?,
            callbridge_shared::config::AwsConfig {
                call_retention_days: self.call_retention_days,
                ..Default::default()
            }
            .call_retention(),
        ))
    }
}

/// The calls of a deployment on AWS and the queue that changes them.
#[cfg(feature = "aws")]
pub struct AwsCalls {
    pub calls: callbridge_shared::adapters::aws::dynamo_calls::DynamoCalls,
    pub queue: callbridge_shared::adapters::aws::sqs_queue::SqsQueue,
}

#[cfg(feature = "aws")]
impl AwsCalls {
    pub fn new(
        dynamodb: callbridge_shared::adapters::aws::aws_sdk_dynamodb::Client,
        sqs: callbridge_shared::adapters::aws::aws_sdk_sqs::Client,
        calls_table: &str,
        queue_url: &str,
        retention: std::time::Duration,
    ) -> Self {
        use std::sync::Arc;
        Self {
            calls: callbridge_shared::adapters::aws::dynamo_calls::DynamoCalls::new(
                dynamodb,
                calls_table,
                retention,
                Arc::default(),
            ),
            queue: callbridge_shared::adapters::aws::sqs_queue::SqsQueue::new(
                sqs,
                queue_url,
                Arc::default(),
            ),
        }
    }
}

/// An opened target.
pub enum Store {
    Local(Box<SqliteStore>),
    #[cfg(feature = "aws")]
    Aws(AwsCalls),
}

impl Target {
    pub async fn open(&self) -> anyhow::Result<Store> {
        #[cfg(feature = "aws")]
        if self.aws.aws {
            return Ok(Store::Aws(self.aws.open().await?));
        }
        Ok(Store::Local(Box::new(self.open_local().await?)))
    }

    /// The local store; an error when the target is AWS.
    pub async fn open_local(&self) -> anyhow::Result<SqliteStore> {
        let Some(config) = &self.config else {
            anyhow::bail!(if cfg!(feature = "aws") {
                "say which store: --config FILE (the local server's) or --aws"
            } else {
                "say which store: --config FILE (the local server's)"
            });
        };
        let config = Config::load(config)?;
        anyhow::ensure!(
            config.data_file.exists(),
            "there is no data file at {}: has the server run with this configuration?",
            config.data_file.display()
        );
        SqliteStore::open(&config.data_file).await
    }
}

impl Store {
    /// Up to `limit` calls (locally the latest first; on AWS in no particular order); an
    /// inner error for a record that does not read.
    pub async fn calls(
        &self,
        filter: CallFilter<'_>,
        limit: usize,
    ) -> anyhow::Result<Vec<Result<CallRecord, RecordError>>> {
        match self {
            Store::Local(store) => store.stored_calls(filter, limit).await,
            #[cfg(feature = "aws")]
            Store::Aws(aws) => aws.calls.scan(filter, limit).await,
        }
    }

    /// The call of `resource_id`; an error when there is none, an inner one when its record
    /// does not read.
    pub async fn call(&self, resource_id: &str) -> anyhow::Result<Result<CallRecord, RecordError>> {
        self.calls(CallFilter::Resource(resource_id), 1)
            .await?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("there is no call {resource_id}"))
    }

    /// The calls, to change one directly (what only an operator may decide).
    pub fn call_store(&self) -> &dyn CallStore {
        match self {
            Store::Local(store) => &**store,
            #[cfg(feature = "aws")]
            Store::Aws(aws) => &aws.calls,
        }
    }

    /// Where a call's changes are queued, in order with its webhooks.
    pub fn queue(&self) -> &dyn Queue {
        match self {
            Store::Local(store) => &**store,
            #[cfg(feature = "aws")]
            Store::Aws(aws) => &aws.queue,
        }
    }
}
