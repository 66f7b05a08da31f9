//! Lambda: telsmart webhooks in, onto the queue (see `callbridge_shared::hosts::lambda::webhook_function`).

use callbridge_shared::domain::event::Provider;
use callbridge_shared::hosts::lambda::webhook_function::Ingest;
use callbridge_shared::telemetry::{LogFormat, init_logging};
use lambda_http::Error;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging(LogFormat::Json);
    let ingest = Ingest::from_env(Provider::Telsmart).await?;
    lambda_http::run(ingest.router()).await
}
