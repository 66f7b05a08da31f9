//! Lambda: the queue's consumer, calls into DynamoDB and out to the CRM (see
//! `callbridge_shared::hosts::lambda::worker_function`).

use callbridge_shared::hosts::lambda::worker_function::Worker;
use callbridge_shared::telemetry::{LogFormat, init_logging};
use lambda_runtime::{Error, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging(LogFormat::Json);
    let worker = Worker::from_env().await?;
    lambda_runtime::run(service_fn(|event| worker.handle(event))).await
}
