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

/// The number in E.164 (`+3228992675`), or `None` when it is not a valid phone number of
/// anywhere (an extension, a SIP user, `anonymous`). `default_country` reads numbers without
/// a country code; without one only international numbers (`+32...`, `0032...` does not
/// qualify) are understood, plus a bare number that starts with a valid country code.
pub fn to_e164(number: &str, default_country: Option<Country>) -> Option<String> {
    let number = number.trim();
    // `phonenumber` takes a number that starts with a country code but no `+` for a national
    // one; a provider that drops the `+` (Telsmart's `3228992675` as a JSON number) means it.
    let parsed = parse(number, default_country).or_else(|| {
        number
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| parse(&format!("+{number}"), None))
            .flatten()
    })?;
    Some(parsed.format().mode(Mode::E164).to_string())
}

fn parse(number: &str, country: Option<Country>) -> Option<PhoneNumber> {
    phonenumber::parse(country.map(|c| c.0), number)
        .ok()
        .filter(phonenumber::is_valid)
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
