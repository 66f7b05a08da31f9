//! Phone numbers as logs may show them: all but their last digits masked.

/// A phone number fit for a log: its last three digits, the rest masked. Short internal
/// extensions (up to four characters) are not personal data and stay readable.
pub fn mask_number(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 4 {
        return number.to_string();
    }
    let keep = 3;
    let masked = chars.len() - keep;
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < masked && c.is_ascii_alphanumeric() {
                '*'
            } else {
                *c
            }
        })
        .collect()
}

/// Shortest run of digits taken for a phone number in free text: anything shorter (a status,
/// a size, an extension) stays readable.
const MIN_NUMBER_DIGITS: usize = 6;

/// What may stand between the digits of one phone number in free text (`+32 470 11 12 22`,
/// `+32 (0)470/11.12.22`). Not `-`: dates and times are written with it, and stay readable.
fn joins_digits(c: char) -> bool {
    matches!(c, ' ' | '\u{a0}' | '.' | '/' | '(' | ')')
}

/// Free text (a refusal's message, which may quote the payload) with every phone number
/// masked as [`mask_number`] masks one: a run of [`MIN_NUMBER_DIGITS`] or more digits, counted
/// across the spaces, dots, slashes and brackets numbers are written with (one or two of them
/// at a time), all but the last three digits masked.
pub fn mask_numbers_in(text: &str) -> String {
    const KEEP: usize = 3;
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let mut end = i;
        loop {
            while end < chars.len() && chars[end].is_ascii_digit() {
                end += 1;
            }
            let gap = chars[end..]
                .iter()
                .take(2)
                .take_while(|c| joins_digits(**c))
                .count();
            if gap > 0 && chars.get(end + gap).is_some_and(char::is_ascii_digit) {
                end += gap;
            } else {
                break;
            }
        }
        let number = &chars[i..end];
        let digits = number.iter().filter(|c| c.is_ascii_digit()).count();
        let mut seen = 0;
        for c in number {
            if c.is_ascii_digit() {
                seen += 1;
                let masked = digits >= MIN_NUMBER_DIGITS && seen <= digits - KEEP;
                out.push(if masked { '*' } else { *c });
            } else {
                out.push(*c);
            }
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_all_but_the_last_digits() {
        assert_eq!(mask_number("+3228992675"), "+*******675");
        assert_eq!(mask_number("200"), "200");
        assert_eq!(
            mask_numbers_in("`from` is `+32 28992675` not 2024, HTTP 422"),
            "`from` is `+** *****675` not 2024, HTTP 422"
        );
        // However a number is written, only its last three digits show.
        for (written, shown) in [
            ("+32 470 11 12 22", "+** *** ** *2 22"),
            ("0470/11.12.22", "****/**.*2.22"),
            ("+32 (0)470 111 222", "+** (*)*** *** 222"),
            ("+32\u{a0}470\u{a0}111222", "+**\u{a0}***\u{a0}***222"),
        ] {
            assert_eq!(
                mask_numbers_in(&format!("`to` is `{written}`")),
                format!("`to` is `{shown}`")
            );
        }
        // Short numbers and dates stay readable.
        assert_eq!(
            mask_numbers_in("HTTP 422 at 2026-12-07 12:30, 3 of 12 tries"),
            "HTTP 422 at 2026-12-07 12:30, 3 of 12 tries"
        );
    }
}
