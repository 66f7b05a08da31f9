//! Optional [Standard Webhooks](https://www.standardwebhooks.com/) signatures (as Svix sends
//! them), checked by [`super::ingest`] for a connection that has a `signing_secret`.
//!
//! The sender signs `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256 and sends
//! `webhook-signature: v1,<base64>` (several space-separated signatures during a key rotation).
//! A signature is accepted when one `v1` entry matches, compared in constant time, and the
//! timestamp is within [`TOLERANCE_SECONDS`] of the time the webhook was received.

use super::rejection::Rejection;
use crate::domain::time::Timestamp;
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;

/// The header names, lower case as HTTP/2 writes them (HTTP header names ignore case).
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// How far the signed timestamp may be from the time of receipt, either way.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// The prefix of a secret written the Svix way: `whsec_<base64 of the key>`.
const SECRET_PREFIX: &str = "whsec_";

/// Shortest key accepted: anything shorter can be guessed.
const MIN_KEY_BYTES: usize = 16;

/// Base64 that takes padding or leaves it out, as senders do both.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The three `webhook-*` headers of a request, as the HTTP stack gave them. All absent by
/// default, which is what a connection without a signing secret expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignatureHeaders<'a> {
    /// `webhook-id`
    pub id: Option<&'a str>,
    /// `webhook-timestamp`, in seconds since the Unix epoch.
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`
    pub signature: Option<&'a str>,
}

impl<'a> SignatureHeaders<'a> {
    /// Reads the three headers with `get`, the HTTP stack's (case-insensitive) header lookup;
    /// a header that is not valid text should be given as absent.
    pub fn from_lookup(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        Self {
            id: get(HEADER_ID),
            timestamp: get(HEADER_TIMESTAMP),
            signature: get(HEADER_SIGNATURE),
        }
    }
}

/// An HMAC key, decoded from a connection's `signing_secret`. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// `whsec_<base64>` (Svix's form: the key is the decoded bytes) or any other text (the key
    /// is its bytes). The error never repeats the secret.
    pub fn parse(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        let key = match secret.strip_prefix(SECRET_PREFIX) {
            Some(encoded) => LENIENT.decode(encoded).map_err(|_| {
                format!("a `{SECRET_PREFIX}` secret must be base64 after its prefix")
            })?,
            None => secret.as_bytes().to_vec(),
        };
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "a signing secret must hold at least {MIN_KEY_BYTES} bytes of key"
            ));
        }
        Ok(Self(key))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The `webhook-signature` value a sender writes: `v1,<base64>` (for tests and tools).
    pub fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body)))
    }
}

/// A header's value, or the refusal that says it is missing.
fn required<'h>(value: Option<&'h str>, header: &'static str) -> Result<&'h str, Rejection> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            refused(
                "signature_required",
                header,
                format!(
                    "this connection requires signed webhooks: the `{header}` header is missing"
                ),
            )
        })
}

fn refused(error: &'static str, header: &str, message: impl Into<String>) -> Rejection {
    let mut rejection = Rejection::new(401, error, message);
    rejection.field = Some(header.to_string());
    rejection
}

/// Checks the signature of `body` as received at `received_at`; a refusal is a 401 that names
/// the header at fault and never shows the expected signature.
pub fn verify(
    key: &SigningKey,
    headers: &SignatureHeaders<'_>,
    body: &[u8],
    received_at: Timestamp,
) -> Result<(), Rejection> {
    let id = required(headers.id, HEADER_ID)?;
    let timestamp = required(headers.timestamp, HEADER_TIMESTAMP)?;
    let signatures = required(headers.signature, HEADER_SIGNATURE)?;

    let sent_at: i64 = timestamp.parse().map_err(|_| {
        refused(
            "invalid_signature",
            HEADER_TIMESTAMP,
            "`webhook-timestamp` must be whole seconds since the Unix epoch",
        )
    })?;
    let now = received_at.as_micros().div_euclid(1_000_000);
    if (i128::from(now) - i128::from(sent_at)).abs() > i128::from(TOLERANCE_SECONDS) {
        return Err(refused(
            "signature_expired",
            HEADER_TIMESTAMP,
            format!(
                "`webhook-timestamp` is more than {TOLERANCE_SECONDS} seconds away from the time of receipt"
            ),
        ));
    }

    let expected = key.mac(id, timestamp, body);
    let mut versions_seen = false;
    let mut matched = false;
    for entry in signatures.split_ascii_whitespace() {
        let Some(("v1", encoded)) = entry.split_once(',') else {
            continue;
        };
        versions_seen = true;
        if let Ok(candidate) = LENIENT.decode(encoded) {
            // No early exit: every candidate is compared, each in constant time.
            matched |= bool::from(candidate.as_slice().ct_eq(&expected));
        }
    }
    if !versions_seen {
        return Err(refused(
            "invalid_signature",
            HEADER_SIGNATURE,
            "`webhook-signature` holds no `v1,<base64>` signature",
        ));
    }
    if !matched {
        return Err(refused(
            "invalid_signature",
            HEADER_SIGNATURE,
            "no signature in `webhook-signature` matches the body",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_micros(seconds * 1_000_000).unwrap()
    }

    fn headers<'a>(id: &'a str, timestamp: &'a str, signature: &'a str) -> SignatureHeaders<'a> {
        SignatureHeaders {
            id: Some(id),
            timestamp: Some(timestamp),
            signature: Some(signature),
        }
    }

    #[test]
    fn accepts_the_reference_example() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(key.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        verify(
            &key,
            &headers(ID, TIMESTAMP, SIGNATURE),
            BODY,
            at(1_614_265_330),
        )
        .unwrap();
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let key = SigningKey::parse(SECRET).unwrap();
        let several = format!("v1a,xyz v1,AAAA v1,bm90IGl0 {SIGNATURE}");
        verify(
            &key,
            &headers(ID, TIMESTAMP, &several),
            BODY,
            at(1_614_265_330 + 299),
        )
        .unwrap();
    }

    #[test]
    fn refuses_what_does_not_match() {
        let key = SigningKey::parse(SECRET).unwrap();
        let now = at(1_614_265_330);
        let cases: [(SignatureHeaders<'_>, &[u8], &str, &str); 8] = [
            (
                headers(ID, TIMESTAMP, SIGNATURE),
                br#"{"test": 2432232315}"#,
                "invalid_signature",
                HEADER_SIGNATURE,
            ),
            (
                headers("msg_other", TIMESTAMP, SIGNATURE),
                BODY,
                "invalid_signature",
                HEADER_SIGNATURE,
            ),
            (
                headers(
                    ID,
                    TIMESTAMP,
                    "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                ),
                BODY,
                "invalid_signature",
                HEADER_SIGNATURE,
            ),
            (
                headers(ID, "1614265331", SIGNATURE),
                BODY,
                "invalid_signature",
                HEADER_SIGNATURE,
            ),
            (
                headers(ID, "soon", SIGNATURE),
                BODY,
                "invalid_signature",
                HEADER_TIMESTAMP,
            ),
            (
                SignatureHeaders {
                    id: None,
                    ..headers(ID, TIMESTAMP, SIGNATURE)
                },
                BODY,
                "signature_required",
                HEADER_ID,
            ),
            (
                headers(ID, TIMESTAMP, "  "),
                BODY,
                "signature_required",
                HEADER_SIGNATURE,
            ),
            (
                SignatureHeaders::default(),
                BODY,
                "signature_required",
                HEADER_ID,
            ),
        ];
        for (headers, body, error, field) in cases {
            let rejection = verify(&key, &headers, body, now).unwrap_err();
            assert_eq!(rejection.status, 401);
            assert_eq!(rejection.error, error, "{headers:?}");
            assert_eq!(rejection.field.as_deref(), Some(field), "{headers:?}");
            assert!(!rejection.message.contains("g0hM9SsE"));
        }
    }

    #[test]
    fn the_timestamp_must_be_within_five_minutes() {
        let key = SigningKey::parse(SECRET).unwrap();
        let h = headers(ID, TIMESTAMP, SIGNATURE);
        for seconds in [1_614_265_330 - 301, 1_614_265_330 + 301] {
            let rejection = verify(&key, &h, BODY, at(seconds)).unwrap_err();
            assert_eq!(rejection.error, "signature_expired");
        }
        verify(&key, &h, BODY, at(1_614_265_330 - 300)).unwrap();
        let far = headers(ID, "-99999999999999999", SIGNATURE);
        assert_eq!(
            verify(&key, &far, BODY, at(1_614_265_330))
                .unwrap_err()
                .error,
            "signature_expired"
        );
    }

    #[test]
    fn secrets_raw_or_whsec() {
        let raw = SigningKey::parse("a-raw-secret-of-some-length").unwrap();
        assert_eq!(raw.0, b"a-raw-secret-of-some-length");
        assert!(SigningKey::parse("whsec_!!!").is_err());
        assert!(SigningKey::parse("short").is_err());
        assert!(SigningKey::parse("whsec_c2hvcnQ=").is_err());
        let err = SigningKey::parse("whsec_not base64 at all!").unwrap_err();
        assert!(!err.contains("not base64 at all"));
        assert_eq!(
            format!("{raw:?}"),
            "SigningKey(<redacted>)",
            "Debug never shows the key"
        );
    }
}
