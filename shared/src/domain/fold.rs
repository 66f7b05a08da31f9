//! The call fold: the state of one call from the events seen for it.
//!
//! The fold sorts the events into one canonical order (time, then event id) and drops repeats
//! before reading them, so the same set of events gives the same state whatever order they
//! arrived in and however often each one came. The rules are written out in `docs/fold.md`.

use super::event::{CallEvent, Direction, EventKind, Recording};
use super::time::Timestamp;
use serde_json::Value;

/// What we know of one call.
#[derive(Clone, Debug, PartialEq)]
pub struct CallState {
    /// The earliest call event (summaries and merged-in calls do not count).
    pub started_at: Timestamp,
    /// The latest event of any kind.
    pub updated_at: Timestamp,
    /// The earliest answer.
    pub answered_at: Option<Timestamp>,
    /// The earliest end.
    pub ended_at: Option<Timestamp>,
    pub direction: Option<Direction>,
    pub internal_number: Option<String>,
    pub external_number: Option<String>,
    /// Directory keys of everyone who took part, in order of first appearance.
    pub participants: Vec<String>,
    /// The provider's own word that the call was or was not answered, if it gave one.
    pub answered_by_provider: Option<bool>,
    pub talk_seconds: Option<u64>,
    pub voicemail: bool,
    pub recording: Option<Recording>,
    /// The latest after-call summary.
    pub summary: Option<Value>,
}

impl CallState {
    pub fn is_answered(&self) -> bool {
        self.answered_at.is_some()
            || self.answered_by_provider == Some(true)
            || self.talk_seconds.is_some_and(|s| s > 0)
    }
}

/// Folds a call's own events, plus the events of calls merged into it (which only bring their
/// participants). `None` when there is no call event yet (only a summary, say): there is no
/// call to show.
pub fn fold(events: &[CallEvent], merged_in: &[CallEvent]) -> Option<CallState> {
    let events = canonical(events);
    let first_call_event = events
        .iter()
        .find(|e| !matches!(e.kind, EventKind::Summary { .. }))?;
    let mut state = CallState {
        started_at: first_call_event.at,
        updated_at: first_call_event.at,
        answered_at: None,
        ended_at: None,
        direction: None,
        internal_number: None,
        external_number: None,
        participants: Vec::new(),
        answered_by_provider: None,
        talk_seconds: None,
        voicemail: false,
        recording: None,
        summary: None,
    };
    for event in &events {
        state.updated_at = state.updated_at.max(event.at);
        // The first event that knows the direction decides it; later ones only fill gaps.
        state.direction = state.direction.or(event.direction);
        // Numbers: the latest event that tells them is the best informed.
        if event.internal_number.is_some() {
            state.internal_number.clone_from(&event.internal_number);
        }
        if event.external_number.is_some() {
            state.external_number.clone_from(&event.external_number);
        }
        add_participants(&mut state.participants, event);
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
            EventKind::Summary { summary } => state.summary = Some(summary.clone()),
            EventKind::Ringing
            | EventKind::Held
            | EventKind::Progress
            | EventKind::Merged { .. }
            | EventKind::Erased => {}
        }
    }
    for event in canonical(merged_in) {
        add_participants(&mut state.participants, event);
    }
    Some(state)
}

/// The events sorted by (time, id) with repeats removed.
fn canonical(events: &[CallEvent]) -> Vec<&CallEvent> {
    let mut sorted: Vec<&CallEvent> = events.iter().collect();
    sorted.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    sorted.dedup_by(|a, b| a.id == b.id);
    sorted
}

fn add_participants(participants: &mut Vec<String>, event: &CallEvent) {
    for key in &event.participants {
        if !participants.contains(key) {
            participants.push(key.clone());
        }
    }
}
