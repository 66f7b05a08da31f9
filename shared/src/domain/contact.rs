//! Contacts: the CRM's `genericContact` behind a call's other party, found by phone number.
//!
//! Providers write numbers as they dial them (`+3228992675`, `003228992675`, `02 899 26 75`,
//! `3228992675`), so a number is normalised to E.164 before it is looked up: in a connection's
//! static `contacts` directory (here, purely, while mapping) or through its
//! `contact_lookup_url` (in the pipeline, whose answer the call's record keeps).

use phonenumber::country;
use phonenumber::{Mode, PhoneNumber};

/// A connection's home country, for numbers written without a country code (`02 899 26 75`
/// in Belgium). An ISO 3166 code, as `phonenumber` knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Country(country::Id);

impl std::str::FromStr for Country {
    type Err = String;
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        code.trim()
            .to_ascii_uppercase()
            .parse()
            .map(Country)
            .map_err(|_| format!("`{code}` is not an ISO 3166 country code (BE, NL, IN, ...)"))
    }
}

/// Fewest digits of a number written internationally without its `+` (TeleCMI, TelTel): fewer
/// could be an extension or a short national number.
const MIN_INTERNATIONAL_DIGITS: usize = 10;
/// E.164's longest number.
const MAX_E164_DIGITS: usize = 15;

/// The number in E.164 (`+3228992675`), or `None` when it is not a phone number of anywhere
/// (an extension, a SIP user, `anonymous`). `default_country` reads numbers without a country
/// code; without one only international numbers (`+32...`, `0032...` does not qualify) are
/// understood, plus a bare number that starts with a country code.
pub fn to_e164(number: &str, default_country: Option<Country>) -> Option<String> {
    let number = number.trim();
    if let Some(valid) = parse(number, default_country).filter(phonenumber::is_valid) {
        return Some(valid.format().mode(Mode::E164).to_string());
    }
    // `phonenumber` takes a number that starts with a country code but no `+` for a national
    // one; a provider that drops the `+` (TeleCMI's and TelTel's documented format, Telsmart's
    // `3228992675` as a JSON number) means it. Such a number keeps its digits even when the
    // range is not in use (Ofcom's drama numbers `447700900...`): it is the provider's.
    let digits = number.bytes().all(|b| b.is_ascii_digit())
        && !number.starts_with('0')
        && (MIN_INTERNATIONAL_DIGITS..=MAX_E164_DIGITS).contains(&number.len());
    if !digits {
        return None;
    }
    let international = format!("+{number}");
    parse(&international, None)?;
    Some(international)
}

/// Loads `phonenumber`'s numbering plans, which it reads in full on first use (tens of
/// milliseconds): a server calls it before it listens, so that its first webhook does not
/// wait for them.
pub fn load_numbering_plans() {
    parse("+3228992675", None);
}

fn parse(number: &str, country: Option<Country>) -> Option<PhoneNumber> {
    phonenumber::parse(country.map(|c| c.0), number).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be() -> Option<Country> {
        Some("BE".parse().unwrap())
    }

    #[test]
    fn every_way_of_writing_a_belgian_number_is_one_e164() {
        for written in [
            "+3228992675",
            "+32 2 899 26 75",
            "02 899 26 75",
            "028992675",
            "0032 2 899 26 75",
            "3228992675",
        ] {
            assert_eq!(
                to_e164(written, be()).as_deref(),
                Some("+3228992675"),
                "{written}"
            );
        }
    }

    #[test]
    fn the_default_country_reads_national_numbers_only() {
        assert_eq!(
            to_e164("+31 20 794 8000", be()).as_deref(),
            Some("+31207948000")
        );
        assert_eq!(
            to_e164("020 794 8000", Some("nl".parse().unwrap())).as_deref(),
            Some("+31207948000")
        );
        assert_eq!(to_e164("+3228992675", None).as_deref(), Some("+3228992675"));
        assert_eq!(to_e164("3228992675", None).as_deref(), Some("+3228992675"));
        assert_eq!(to_e164("02 899 26 75", None), None);
    }

    #[test]
    fn international_digits_without_a_plus_get_one() {
        // TeleCMI's international platform and TelTel write the country code without `+`.
        for (written, e164) in [
            ("442000000001", "+442000000001"),
            ("447700900456", "+447700900456"),
            ("37129876543", "+37129876543"),
        ] {
            assert_eq!(to_e164(written, None).as_deref(), Some(e164), "{written}");
            assert_eq!(to_e164(written, be()).as_deref(), Some(e164), "{written}");
        }
        // A national number of the connection's country is read as one first.
        assert_eq!(
            to_e164("0612345678", Some("NL".parse().unwrap())).as_deref(),
            Some("+31612345678")
        );
        // Too short for a number with its country code: an extension or a short code.
        assert_eq!(to_e164("447700", None), None);
    }

    #[test]
    fn what_is_not_a_phone_number_has_no_e164() {
        for not_a_number in ["200", "101", "anonymous", "", "piet@example.com", "+32 1"] {
            assert_eq!(to_e164(not_a_number, be()), None, "{not_a_number}");
        }
    }

    #[test]
    fn countries_are_iso_codes() {
        assert_eq!("be".parse::<Country>(), "BE".parse::<Country>());
        assert!("Belgium".parse::<Country>().is_err());
        assert!("".parse::<Country>().is_err());
    }
}
