//! The contact of a call's other party, from the connection's contact lookup. The answer is
//! kept in the call's record ([`CallRecord::add_contact_lookup`]), so the fold and the mapping
//! stay pure and mapping the call again gives the same resource.
//!
//! [`CallRecord::add_contact_lookup`]: crate::domain::record::CallRecord::add_contact_lookup

use crate::domain::connection::Connection;
use crate::domain::event::CallEvent;
use crate::ports::ContactLookup;

/// What the lookup says of the other party of `event`: its E.164 number and contact id
/// (`None`: no contact). Nothing when there is nothing to ask (no lookup, no phone number, a
/// number the static directory knows) or the lookup fails: a call is not held up for its
/// contact, and its next event asks again.
pub async fn look_up(
    lookup: &dyn ContactLookup,
    connection: &Connection,
    event: &CallEvent,
) -> Option<(String, Option<String>)> {
    let contacts = &connection.contacts;
    contacts.lookup_url.as_ref()?;
    let e164 = contacts.e164(event.external_number.as_deref()?)?;
    if contacts.numbers.contains_key(&e164) {
        return None;
    }
    match lookup.contact(connection, &e164).await {
        Ok(contact) => Some((e164, contact)),
        Err(e) => {
            tracing::warn!(connection = connection.id, error = %e, "the contact lookup failed; the call goes on without its contact for now");
            None
        }
    }
}
