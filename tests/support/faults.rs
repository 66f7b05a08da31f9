//! What the fault tests of the local server and of the AWS path share: the calls the CRM is
//! told to fail, and the counts and checks of what it got.

use super::scenario::{self, Scenario, assert_no_stranger};
use callbridge::recorder::{Answer, Behaviour, RecordedEvent, summary};
use callbridge_shared::domain::record::CallKey;
use callbridge_shared::ports::CallStore;
use std::collections::HashMap;

/// Every transient failure of a CRM, each retried under the same key and body: 5xx, 429
/// without and with a `Retry-After` of `retry_after_secs`, a connection closed unanswered.
pub fn transient_failures(retry_after_secs: u64) -> Vec<Answer> {
    let mut answers: Vec<Answer> = [500, 502, 503, 504, 429]
        .into_iter()
        .map(Answer::status)
        .collect();
    answers.push(Answer::retry_after(429, retry_after_secs));
    answers.push(Answer::reset());
    answers
}

/// The refusals no retry can fix: each is parked with the CRM's answer.
pub fn refusals() -> Vec<Answer> {
    [400, 401, 403, 404, 422]
        .into_iter()
        .map(Answer::status)
        .collect()
}

/// Tries per idempotency key, among the events of `resources`.
pub fn tries_per_key<'a>(
    events: &'a [RecordedEvent],
    resources: &[String],
) -> HashMap<&'a str, usize> {
    let mut tries = HashMap::new();
    for e in events {
        if e.resource_id()
            .is_some_and(|id| resources.iter().any(|r| r == id))
            && let Some(key) = e.idempotency_key()
        {
            *tries.entry(key).or_default() += 1;
        }
    }
    tries
}

/// Whether a delivery of `s` has been tried `n` times.
pub fn tried(s: &Scenario, events: &[RecordedEvent], n: usize) -> bool {
    tries_per_key(events, &delivered_resources(s))
        .values()
        .any(|tries| *tries >= n)
}

/// The resources of a scenario the CRM is sent anything for.
pub fn delivered_resources(s: &Scenario) -> Vec<String> {
    s.expected
        .calls
        .iter()
        .filter(|(_, call)| !call.events.is_empty())
        .map(|(key, _)| s.resource_id(key))
        .collect()
}

/// The events the CRM got for the calls of `s`.
pub fn events_of<'a>(s: &Scenario, events: &'a [RecordedEvent]) -> Vec<&'a RecordedEvent> {
    let ids = s.resource_ids();
    events
        .iter()
        .filter(|e| {
            e.resource_id()
                .is_some_and(|id| ids.iter().any(|i| i == id))
        })
        .collect()
}

/// Scenarios whose every call has at least two events, so a held-up first delivery has
/// later ones waiting behind it.
pub fn scenarios_with_later_events() -> Vec<Scenario> {
    scenario::all()
        .into_iter()
        .filter(|s| s.expected.calls.values().all(|c| c.events.len() >= 2))
        .collect()
}

/// A CRM answering `answer` to every request about the calls of its scenario.
pub fn fail_resources(victims: &[(Scenario, Answer)]) -> Behaviour {
    Behaviour {
        fail_resources: victims
            .iter()
            .flat_map(|(s, answer)| s.resource_ids().into_iter().map(move |id| (id, *answer)))
            .collect(),
        ..Behaviour::default()
    }
}

/// Every scenario delivered in order, each revision under one key and body, and nothing else.
pub fn assert_all_delivered(scenarios: &[Scenario], events: &[RecordedEvent]) {
    for s in scenarios {
        s.assert_in_order(events);
        s.assert_deliveries(events);
    }
    assert_no_stranger(scenarios, events);
}

/// No change applied twice, whatever its keys: the recorder counts each change (resource and
/// body) it applied, so a revision sent again under a second key, or any repeat to a CRM that
/// ignores keys, fails here. Returns how many changes were applied.
pub fn assert_applied_once(events: &[RecordedEvent]) -> usize {
    if let Some(doubled) = events.iter().find(|e| e.doubled()) {
        let keys: Vec<&str> = same_change(events, doubled)
            .filter(|e| e.applied())
            .filter_map(RecordedEvent::idempotency_key)
            .collect();
        panic!(
            "{doubled} applied a change the CRM had applied before, under the keys {keys:?}: {}\n{}",
            doubled.body,
            summary(events)
        );
    }
    events.iter().filter(|e| e.applied()).count()
}

/// The requests carrying the same change (resource and body) as `event`.
fn same_change<'a>(
    events: &'a [RecordedEvent],
    event: &'a RecordedEvent,
) -> impl Iterator<Item = &'a RecordedEvent> {
    events
        .iter()
        .filter(move |e| e.resource_id() == event.resource_id() && e.body == event.body)
}

/// Whether `event` brought the CRM a change it had already taken: a repeat of a taken key, or
/// for a CRM that ignores keys, a doubled effect.
pub fn is_repeat(event: &RecordedEvent) -> bool {
    event.duplicate || event.applied_before > 0
}

/// Every repeat of a change the CRM had taken is explained: an earlier request of the same
/// change was taken and `window` says the bridge could not know (its answer came after the
/// bridge's timeout, or a crash came before the bridge wrote it down). Returns the repeats.
pub fn assert_repeats_only_in(
    events: &[RecordedEvent],
    what: &str,
    window: impl Fn(&RecordedEvent) -> bool,
) -> usize {
    let repeats: Vec<&RecordedEvent> = events.iter().filter(|e| is_repeat(e)).collect();
    for repeat in &repeats {
        let explained = same_change(events, repeat)
            .take_while(|e| e.seq < repeat.seq)
            .any(|e| e.accepted() && window(e));
        assert!(
            explained,
            "{repeat} repeats a change the CRM had taken, outside {what}:\n{}",
            summary(events)
        );
    }
    repeats.len()
}

/// Repeats allowed only after an answer that came later than the bridge's `timeout_ms`.
pub fn assert_repeats_only_after_late_answers(events: &[RecordedEvent], timeout_ms: u64) -> usize {
    assert_repeats_only_in(events, "an answer that came too late", |taken| {
        taken.answered_after_ms > timeout_ms
    })
}

/// After answers that came too late: every scenario delivered, and the CRM took the first try
/// of each key that timed out, so the later ones are repeats of it, same key and same body
/// (checked by `assert_deliveries`), which it ignores. Returns (applied, repeats).
pub fn assert_delivered_with_repeats(
    scenarios: &[Scenario],
    events: &[RecordedEvent],
    timeout_ms: u64,
) -> (usize, usize) {
    assert_all_delivered(scenarios, events);
    let repeats = assert_repeats_only_after_late_answers(events, timeout_ms);
    assert!(
        repeats > 0,
        "no repeat after a timeout:\n{}",
        summary(events)
    );
    (assert_applied_once(events), repeats)
}

/// Every call of `s` merged into another (a Voys transfer) has all its events in the survivor:
/// the merge's second write happened. (The scenarios' final resources do not always show it.)
pub async fn assert_merged_whole(store: &dyn CallStore, s: &Scenario) {
    let mut merges = 0;
    for call_key in s.expected.calls.keys() {
        let key = CallKey::new(&s.connection, s.provider, call_key);
        let (merged, _) = store
            .load(&key)
            .await
            .expect("the store answers")
            .unwrap_or_else(|| panic!("{}: no record of {call_key}", s.name));
        let Some(survivor) = &merged.merged_into else {
            continue;
        };
        merges += 1;
        let survivor_key = CallKey::new(&s.connection, s.provider, survivor);
        let (survivor, _) = store
            .load(&survivor_key)
            .await
            .expect("the store answers")
            .unwrap_or_else(|| panic!("{}: no record of the survivor {survivor}", s.name));
        for event in &merged.events {
            assert!(
                survivor.merged_in.iter().any(|e| e.id == event.id),
                "{}: event {} of {call_key} never reached the call it was merged into",
                s.name,
                event.id
            );
        }
    }
    assert!(merges > 0, "{}: no call was merged", s.name);
}
