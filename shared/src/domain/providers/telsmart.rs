//! telsmart webhooks. (Being written.)

use super::{Fields, ParseError, Webhook};

pub fn parse(_payload: &Fields<'_>) -> Result<Webhook, ParseError> {
    Err(ParseError::payload("telsmart is not supported yet"))
}
