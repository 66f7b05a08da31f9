//! Recording references from providers, made safe to hand to a CRM that shows them as links:
//! a provider (or a tenant holding its token) must not be able to point a CRM user at a script,
//! at another host through userinfo, or at another tenant's files.

use super::ParseError;

/// Longest recording reference accepted, a URL or a file name.
const MAX_LEN: usize = 2048;

/// A recording URL as the provider gives it (TelTel `audio_url`). An absolute `https` URL
/// with a plain host is kept. An `http` URL is read but not passed on: a CRM page served over
/// https cannot play it, and it would send the recording in clear. Anything else (another
/// scheme such as `javascript:` or `data:`, a relative URL, userinfo, spaces or control
/// characters) is not a recording and the payload is refused.
pub fn url(field: &str, value: Option<String>) -> Result<Option<String>, ParseError> {
    let Some(url) = value else {
        return Ok(None);
    };
    let refuse = |why: &str| Err(ParseError::field(field, why.to_string()));
    if url.len() > MAX_LEN {
        return refuse("is too long for a recording URL");
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return refuse("must be a URL without spaces, control characters or backslashes");
    }
    let lower = url.to_ascii_lowercase();
    let (rest, https) = if let Some(rest) = lower.strip_prefix("https://") {
        (rest, true)
    } else if let Some(rest) = lower.strip_prefix("http://") {
        (rest, false)
    } else {
        return refuse("must be an absolute https URL");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let plain_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !plain_host {
        return refuse("must name a plain host (no user, password or unusual characters)");
    }
    Ok(https.then_some(url))
}

/// A recording file name (TeleCMI `filename`, `voicename`) that the connection's template
/// turns into a URL: only a plain name (letters, digits, `.`, `_`, `-`, not starting with a
/// dot) can be put into a URL without changing where it points; anything else is refused.
pub fn file_name(field: &str, value: Option<String>) -> Result<Option<String>, ParseError> {
    let Some(name) = value else {
        return Ok(None);
    };
    let plain = !name.is_empty()
        && name.len() <= MAX_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !plain {
        return Err(ParseError::field(
            field,
            "must be a plain file name (letters, digits, `.`, `_`, `-`, not starting with `.`)",
        ));
    }
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_of(text: &str) -> Result<Option<String>, ParseError> {
        url("audio_url", Some(text.to_string()))
    }

    #[test]
    fn an_https_recording_url_is_kept() {
        for kept in [
            "https://files.teltel.example/recordings/2025/12/01/a3f1.mp3",
            "HTTPS://files.teltel.example:8443/r.mp3?sig=abc#t=1",
        ] {
            assert_eq!(url_of(kept).unwrap().as_deref(), Some(kept), "{kept}");
        }
    }

    #[test]
    fn an_http_recording_url_is_dropped() {
        assert_eq!(url_of("http://files.teltel.example/r.mp3").unwrap(), None);
    }

    #[test]
    fn what_is_not_an_https_link_to_a_plain_host_is_refused() {
        for hostile in [
            "javascript:alert(document.cookie)",
            "JavaScript:alert(1)",
            "data:text/html;base64,PHNjcmlwdD4=",
            "//evil.example/x.mp3",
            "/recordings/x.mp3",
            "https://files.teltel.example@evil.example/x.mp3",
            "https://user:pass@files.teltel.example/x.mp3",
            "https:///x.mp3",
            "https://files.teltel.example/x.mp3\njavascript:x",
            "https://files teltel.example/x.mp3",
            "https://files.teltel.example\\@evil.example/x.mp3",
        ] {
            let error = url_of(hostile).unwrap_err();
            assert_eq!(error.field.as_deref(), Some("audio_url"), "{hostile}");
        }
    }

    #[test]
    fn only_a_plain_file_name_is_a_recording_file() {
        let name = |text: &str| file_name("filename", Some(text.to_string()));
        assert_eq!(
            name("1650635340436_ccd826f9-67a4.mp3").unwrap().as_deref(),
            Some("1650635340436_ccd826f9-67a4.mp3")
        );
        for hostile in [
            "../../other-tenant/secret.mp3?x=1#frag",
            "@evil.example/x.mp3",
            "a/b.mp3",
            "..",
            ".hidden.mp3",
            "x.mp3?sig=1",
            "x.mp3#frag",
            "x%2F..%2Fy.mp3",
            "x y.mp3",
            "",
        ] {
            assert_eq!(
                name(hostile).unwrap_err().field.as_deref(),
                Some("filename"),
                "{hostile}"
            );
        }
    }
}
