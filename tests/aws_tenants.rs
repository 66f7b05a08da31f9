//! Token rotation through the webhook endpoint on the AWS path (the moto emulator), with the
//! ingest containers' connection cache shortened from its minute (`CONNECTION_CACHE_SECS`) so
//! the test need not wait one: after `rotate`, a fresh container takes both tokens and a warm
//! one still knows only the old until its cache runs out; after `retire-token`, a fresh
//! container refuses the old token at once while a warm one may take it until its cache runs
//! out, never longer.
//!
//! Needs `moto_server` (on the PATH or in `.venv`, installed by `infra/setup.sh`).

mod aws_support;
#[allow(dead_code)]
#[path = "support/scenario.rs"]
mod scenario;

use aws_support::AwsBridge;
use callbridge::recorder::{Behaviour, Recorder};
use callbridge_shared::hosts::lambda::webhook_function::Ingest;
use scenario::{Scenario, copies_of, on_copies};
use std::time::{Duration, Instant};

/// The shortened cache: long enough for a few requests on a loaded machine, short enough to
/// wait out.
const CACHE: Duration = Duration::from_secs(5);

/// Posts webhook `i` of `s` to `ingest` with `token`; returns the status.
async fn status(bridge: &AwsBridge, ingest: &Ingest, s: &Scenario, token: &str, i: usize) -> u16 {
    let request = AwsBridge::webhook_request(&s.connection, token, &s.webhooks[i]);
    bridge.send_to(ingest, s.provider, &request).await.status
}

/// When a container's cache of the connection was filled: between `before` and `after`.
struct Filled {
    before: Instant,
    after: Instant,
}

impl Filled {
    /// Fills `ingest`'s cache with webhook `i` under `token`, which must be taken.
    async fn by(bridge: &AwsBridge, ingest: &Ingest, s: &Scenario, token: &str, i: usize) -> Self {
        let before = Instant::now();
        assert_eq!(status(bridge, ingest, s, token, i).await, 202);
        Self {
            before,
            after: Instant::now(),
        }
    }

    /// Fails when the cache may have run out already: what is checked next would not be a
    /// check of the cache.
    fn assert_still_held(&self, what: &str) {
        assert!(
            self.before.elapsed() < CACHE,
            "{what}: the machine took longer than the {CACHE:?} cache; nothing was checked"
        );
    }

    async fn run_out(&self) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(self.after + CACHE)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_works_at_once_and_a_retired_one_stops_when_the_cache_runs_out() {
    let s = on_copies(
        &[scenario::all()
            .into_iter()
            .find(|s| s.name == "telsmart/3-held-and-resumed.json")
            .expect("the scenario")],
        "rotation",
    )
    .remove(0);
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let bridge = AwsBridge::start(
        "rotation",
        &recorder.url(),
        &copies_of(std::slice::from_ref(&s)),
    )
    .await;
    let table = bridge.connections();
    let old = s.token();

    // A warm container: it has read the connection, with its one token.
    let warm = bridge.ingest_caching_for(s.provider, CACHE);
    let filled = Filled::by(&bridge, &warm, &s, &old, 0).await;

    let new = callbridge::connections::rotate(&table, &s.connection)
        .await
        .expect("rotate");
    let fresh = bridge.ingest_caching_for(s.provider, CACHE);
    assert_eq!(
        status(&bridge, &fresh, &s, &old, 0).await,
        202,
        "the old token after rotate"
    );
    assert_eq!(
        status(&bridge, &fresh, &s, &new, 0).await,
        202,
        "the new token after rotate"
    );
    let warm_new = status(&bridge, &warm, &s, &new, 0).await;
    filled.assert_still_held("after rotate");
    assert_eq!(
        warm_new, 401,
        "a warm container knows only the token it read"
    );
    filled.run_out().await;
    let filled = Filled::by(&bridge, &warm, &s, &new, 1).await;
    assert_eq!(
        status(&bridge, &warm, &s, &old, 1).await,
        202,
        "both tokens, read again"
    );

    callbridge::connections::retire_token(&table, &s.connection)
        .await
        .expect("retire-token");
    let fresh = bridge.ingest_caching_for(s.provider, CACHE);
    assert_eq!(
        status(&bridge, &fresh, &s, &old, 2).await,
        401,
        "the retired token, fresh"
    );
    assert_eq!(status(&bridge, &fresh, &s, &new, 2).await, 202);
    // The minute a warm Lambda may still hold the retired token, here shortened.
    let warm_old = status(&bridge, &warm, &s, &old, 2).await;
    filled.assert_still_held("after retire-token");
    assert_eq!(
        warm_old, 202,
        "a warm container takes the retired token while it holds it"
    );
    filled.run_out().await;
    assert_eq!(
        status(&bridge, &warm, &s, &old, 3).await,
        401,
        "the retired token, read again"
    );
    for i in 3..s.webhooks.len() {
        assert_eq!(status(&bridge, &warm, &s, &new, i).await, 202);
    }

    // What was taken under either token is one call, delivered whole.
    for batch in bridge.source.drain(&bridge.worker()).await {
        assert!(batch.failed.is_empty(), "{:?}", batch.failed);
    }
    let events = recorder.events();
    s.assert_in_order(&events);
    s.assert_deliveries(&events);
}
