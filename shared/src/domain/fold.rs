//! The call fold: the state of one call from the events seen for it.
//!
//! The fold sorts the events into one canonical order (time, then event id) and drops repeats
//! before reading them, so the same set of events gives the same state whatever order they
//! arrived in and however often each one came. The rules are written out in `docs/fold.md`.

use super::event::{CallEvent, Direction, EventKind, Recording};
use super::time::Timestamp;
use serde_json::Value;
use std::collections::BTreeMap;

/// What we know of one call.
#[derive(Clone, Debug, PartialEq)]
pub struct CallState {
    /// The earliest call event (summaries and transfers do not count).
    pub started_at: Timestamp,
    /// The latest event of any kind.
    pub updated_at: Timestamp,
    /// The earliest answer.
    pub answered_at: Option<Timestamp>,
    /// The earliest end.
    pub ended_at: Option<Timestamp>,
    pub direction: Option<Direction>,
    pub internal_number: Option<String>,
    /// The other party: the first event that names one (the caller of an inbound call, the
    /// number an outbound call dialled); a forward or a transfer later on does not change it.
    pub external_number: Option<String>,
    /// Directory keys of those who took part (answered, joined, placed the call, were
    /// transferred in), in order of first appearance.
    pub participants: Vec<String>,
    /// Directory keys of those the call rang, in order of first appearance.
    pub rang: Vec<String>,
    /// A queue member's leg (Telsmart): one of many for one customer call.
    pub queue_member: bool,
    /// The provider's own word that the call was or was not answered, if it gave one.
    pub answered_by_provider: Option<bool>,
    pub talk_seconds: Option<u64>,
    pub voicemail: bool,
    pub recording: Option<Recording>,
    /// The latest after-call summary.
    pub summary: Option<Value>,
}

impl CallState {
    pub fn is_ended(&self) -> bool {
        self.ended_at.is_some()
    }

    pub fn is_answered(&self) -> bool {
        self.answered_at.is_some()
            || self.answered_by_provider == Some(true)
            || self.talk_seconds.is_some_and(|s| s > 0)
    }

    /// The directory keys the resource lists as users: those who took part in an answered
    /// call; for a call nobody answered, everyone it rang (and whoever placed it).
    pub fn users(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.participants.iter().map(String::as_str).collect();
        if !self.is_answered() || keys.is_empty() {
            for key in &self.rang {
                if !keys.contains(&key.as_str()) {
                    keys.push(key);
                }
            }
        }
        keys
    }
}

/// Folds one call's own events. `None` when there is no call event yet (only a summary or a
/// transfer, say): there is no call to show.
pub fn fold(events: &[CallEvent]) -> Option<CallState> {
    let events = canonical(events.iter());
    let first_call_event = events.iter().find(|e| counts_as_call(e))?;
    let mut state = CallState {
        started_at: first_call_event.at,
        updated_at: first_call_event.at,
        answered_at: None,
        ended_at: None,
        direction: None,
        internal_number: None,
        external_number: None,
        participants: Vec::new(),
        rang: Vec::new(),
        queue_member: false,
        answered_by_provider: None,
        talk_seconds: None,
        voicemail: false,
        recording: None,
        summary: None,
    };
    for event in &events {
        state.updated_at = state.updated_at.max(event.at);
        state.queue_member |= event.queue_member;
        add_people(&mut state, event);
        if !counts_as_call(event) {
            if let EventKind::Summary { summary } = &event.kind {
                state.summary = Some(summary.clone());
            }
            continue;
        }
        // The first event that knows the direction decides it; later ones only fill gaps.
        state.direction = state.direction.or(event.direction);
        // Our side: the latest event that tells it is the best informed.
        if event.internal_number.is_some() {
            state.internal_number.clone_from(&event.internal_number);
        }
        // The other party is who the call was with from its start.
        if state.external_number.is_none() {
            state.external_number.clone_from(&event.external_number);
        }
        if event.recording.is_some() {
            state.recording.clone_from(&event.recording);
        }
        match &event.kind {
            EventKind::Answered => {
                state.answered_at.get_or_insert(event.at);
            }
            EventKind::Ended(ending) => {
                state.ended_at.get_or_insert(event.at);
                state.answered_by_provider = ending.answered.or(state.answered_by_provider);
                state.talk_seconds = ending.talk_seconds.or(state.talk_seconds);
                state.voicemail |= ending.voicemail;
            }
            EventKind::Ringing | EventKind::Held | EventKind::Progress => {}
            EventKind::Summary { .. } | EventKind::Merged { .. } | EventKind::Erased => {}
        }
    }
    Some(state)
}

/// What a call linked to others by a transfer shows.
#[derive(Clone, Debug, PartialEq)]
pub enum View {
    /// This call is the one the CRM shows, with what the linked calls bring to it.
    Shown(Box<CallState>),
    /// Another call of the transfer is the customer's: this one is closed, from `at` (the
    /// transfer) on, and the CRM is told it is gone.
    MergedAway { at: Timestamp },
    /// Nothing to show yet.
    Hidden,
}

/// The view of call `own_key`, from its own events and the events of the calls a transfer
/// linked to it (Voys `merged_id`). Whichever call the provider keeps, the call shown is the
/// customer's: the one with an external party (`is_external` says whether a number is one),
/// the earliest started if both have one or neither does. It keeps its start, direction,
/// answer and numbers; the end comes from the call the provider kept, which is the one that
/// goes on after the transfer; everyone who took part in either is a user.
pub fn view(
    own_key: &str,
    events: &[CallEvent],
    linked: &[CallEvent],
    is_external: impl Fn(&str) -> bool,
) -> View {
    let mut calls: BTreeMap<&str, Vec<CallEvent>> = BTreeMap::new();
    for event in events.iter().chain(linked) {
        calls
            .entry(&event.call_key)
            .or_default()
            .push(event.clone());
    }
    let folded: BTreeMap<&str, CallState> = calls
        .iter()
        .filter_map(|(key, events)| fold(events).map(|state| (*key, state)))
        .collect();
    let customer = |state: &CallState| state.external_number.as_deref().is_some_and(&is_external);
    let shown = folded
        .iter()
        .min_by_key(|(key, state)| (!customer(state), state.started_at, **key));
    let Some((&shown_key, shown)) = shown else {
        return View::Hidden;
    };
    if shown_key != own_key {
        let at = transfers(events.iter().chain(linked))
            .map(|e| e.at)
            .min()
            .unwrap_or(shown.started_at);
        return View::MergedAway { at };
    }
    let mut state = shown.clone();
    // The calls the provider kept through a transfer: the call goes on under their id.
    let kept: Vec<&str> = transfers(events.iter().chain(linked))
        .map(|e| e.call_key.as_str())
        .collect();
    if !kept.is_empty() && !kept.contains(&shown_key) {
        let ends = kept.iter().filter_map(|key| folded.get(key));
        match ends.filter(|s| s.is_ended()).min_by_key(|s| s.ended_at) {
            Some(end) => {
                state.ended_at = end.ended_at;
                state.answered_by_provider = end.answered_by_provider;
                state.talk_seconds = end.talk_seconds;
                state.voicemail = end.voicemail;
            }
            None => {
                state.ended_at = None;
                state.answered_by_provider = None;
                state.talk_seconds = None;
            }
        }
        if state.answered_at.is_none() && state.is_answered() {
            state.answered_at = kept.iter().find_map(|key| folded.get(key)?.answered_at);
        }
    }
    for (key, other) in &folded {
        if *key == shown_key {
            continue;
        }
        state.updated_at = state.updated_at.max(other.updated_at);
        for person in &other.participants {
            add(&mut state.participants, person);
        }
        if state.recording.is_none() {
            state.recording.clone_from(&other.recording);
        }
    }
    // Those a transfer event names (its target, who made it) took part, whichever call
    // carries it.
    for transfer in transfers(events.iter().chain(linked)) {
        state.updated_at = state.updated_at.max(transfer.at);
        for person in &transfer.participants {
            add(&mut state.participants, person);
        }
    }
    View::Shown(Box::new(state))
}

fn transfers<'a>(
    events: impl Iterator<Item = &'a CallEvent>,
) -> impl Iterator<Item = &'a CallEvent> {
    events.filter(|e| matches!(e.kind, EventKind::Merged { .. }))
}

/// Whether an event tells the call's own life: a summary only annotates it, and a transfer
/// only links it to another call.
fn counts_as_call(event: &CallEvent) -> bool {
    !matches!(
        event.kind,
        EventKind::Summary { .. } | EventKind::Merged { .. }
    )
}

/// The events sorted by (time, id) with repeats removed.
fn canonical<'a>(events: impl Iterator<Item = &'a CallEvent>) -> Vec<&'a CallEvent> {
    let mut sorted: Vec<&CallEvent> = events.collect();
    sorted.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    sorted.dedup_by(|a, b| a.id == b.id);
    sorted
}

fn add_people(state: &mut CallState, event: &CallEvent) {
    for key in &event.participants {
        add(&mut state.participants, key);
    }
    for key in &event.rang {
        add(&mut state.rang, key);
    }
}

fn add(keys: &mut Vec<String>, key: &str) {
    if !keys.iter().any(|k| k == key) {
        keys.push(key.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Ending, Provider};

    const CUSTOMER: &str = "X";
    const CONSULTATION: &str = "Y";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_micros(1_693_580_400_000_000 + seconds * 1_000_000).unwrap()
    }

    fn event(call: &str, seconds: i64, kind: EventKind) -> CallEvent {
        let mut event = CallEvent::new(Provider::Voys, call, at(seconds), kind);
        event.id = format!("{call}-{seconds}");
        event
    }

    /// Voys' attended transfer: the customer calls in (X), Piet (201) answers, calls Anna
    /// (202) on Y, and the transfer links them; `kept` is the id Voys keeps.
    fn transfer(kept: &str) -> (Vec<CallEvent>, Vec<CallEvent>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        let mut ring = event(CUSTOMER, 12, EventKind::Ringing);
        ring.direction = Some(Direction::Inbound);
        ring.external_number = Some("+31612345678".into());
        ring.internal_number = Some("+31508009000".into());
        ring.rang = vec!["201".into()];
        x.push(ring.clone());
        let mut answer = ring.clone();
        (answer.id, answer.at, answer.kind) = ("X-17".into(), at(17), EventKind::Answered);
        answer.participants = vec!["201".into()];
        answer.rang.clear();
        x.push(answer);
        let mut consult = event(CONSULTATION, 37, EventKind::Ringing);
        consult.direction = Some(Direction::Outbound);
        consult.external_number = Some("202".into());
        consult.internal_number = Some("201".into());
        consult.participants = vec!["201".into()];
        consult.rang = vec!["202".into()];
        y.push(consult.clone());
        let mut consult_answer = consult;
        consult_answer.id = "Y-41".into();
        (consult_answer.at, consult_answer.kind) = (at(41), EventKind::Answered);
        consult_answer.participants = vec!["201".into(), "202".into()];
        y.push(consult_answer);
        let merged = if kept == CUSTOMER {
            CONSULTATION
        } else {
            CUSTOMER
        };
        let mut linked = event(
            kept,
            65,
            EventKind::Merged {
                merged_call_key: merged.into(),
            },
        );
        // The transfer describes the call after it: the customer with Anna.
        linked.direction = Some(Direction::Inbound);
        linked.external_number = Some("+31612345678".into());
        linked.participants = vec!["202".into(), "201".into()];
        let mut end = event(
            kept,
            260,
            EventKind::Ended(Ending {
                answered: Some(true),
                ..Ending::default()
            }),
        );
        end.direction = Some(Direction::Inbound);
        end.external_number = Some("+31612345678".into());
        let kept_events = if kept == CUSTOMER { &mut x } else { &mut y };
        kept_events.push(linked);
        kept_events.push(end);
        (x, y)
    }

    fn is_external(number: &str) -> bool {
        !["201", "202"].contains(&number)
    }

    fn shown(view: View) -> CallState {
        match view {
            View::Shown(state) => *state,
            other => panic!("expected the call shown, got {other:?}"),
        }
    }

    #[test]
    fn the_customer_s_call_is_shown_whichever_id_the_provider_keeps() {
        for kept in [CUSTOMER, CONSULTATION] {
            let (x, y) = transfer(kept);
            let state = shown(view(CUSTOMER, &x, &y, is_external));
            assert_eq!(state.started_at, at(12), "kept {kept}");
            assert_eq!(state.direction, Some(Direction::Inbound));
            assert_eq!(state.answered_at, Some(at(17)));
            assert_eq!(state.ended_at, Some(at(260)));
            assert!(state.is_answered());
            assert_eq!(state.external_number.as_deref(), Some("+31612345678"));
            assert_eq!(state.internal_number.as_deref(), Some("+31508009000"));
            assert_eq!(state.users(), ["201", "202"]);
            assert_eq!(
                view(CONSULTATION, &y, &x, is_external),
                View::MergedAway { at: at(65) },
                "kept {kept}"
            );
        }
    }

    #[test]
    fn the_customer_s_call_waits_for_the_end_of_the_call_that_goes_on() {
        let (x, mut y) = transfer(CONSULTATION);
        y.retain(|e| !matches!(e.kind, EventKind::Ended(_)));
        let state = shown(view(CUSTOMER, &x, &y, is_external));
        assert_eq!(state.ended_at, None);
    }

    #[test]
    fn a_call_with_only_its_transfer_is_not_shown_yet() {
        let (_, y) = transfer(CONSULTATION);
        let linked: Vec<CallEvent> = y
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Merged { .. }))
            .cloned()
            .collect();
        assert_eq!(view(CONSULTATION, &linked, &[], is_external), View::Hidden);
    }

    #[test]
    fn an_answered_call_lists_who_took_part_and_a_missed_one_who_it_rang() {
        let (x, _) = transfer(CUSTOMER);
        let ringing = fold(&x[..1]).unwrap();
        assert_eq!(ringing.users(), ["201"]);
        let mut picked_up = x[1].clone();
        picked_up.participants = vec!["203".into()];
        let answered = fold(&[x[0].clone(), picked_up]).unwrap();
        assert_eq!(answered.users(), ["203"], "Piet only rang");
    }

    #[test]
    fn the_other_party_is_the_first_one_named() {
        let (mut x, _) = transfer(CUSTOMER);
        x.truncate(2);
        let mut forwarded = event(CUSTOMER, 30, EventKind::Progress);
        forwarded.external_number = Some("+37120000001".into());
        x.push(forwarded);
        assert_eq!(
            fold(&x).unwrap().external_number.as_deref(),
            Some("+31612345678")
        );
    }
}
