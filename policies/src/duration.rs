//! Durations as the policy file writes them: a number and a unit.

/// Parses `90d`, `12h`, `30m` or `45s` (one number, one unit).
pub fn parse_duration(text: &str) -> Option<time::Duration> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let number: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    if number <= 0 {
        return None;
    }
    let seconds = match unit {
        'd' => number.checked_mul(86_400)?,
        'h' => number.checked_mul(3_600)?,
        'm' => number.checked_mul(60)?,
        's' => number,
        _ => return None,
    };
    Some(time::Duration::seconds(seconds))
}

/// A `[keys]` or `[officers]` duration, `name` naming it in the error.
pub(crate) fn duration(name: &str, text: &str) -> Result<time::Duration, String> {
    parse_duration(text).ok_or_else(|| {
        format!(
            "{name} {text:?} must be a positive number with a unit: d, h, m or s (e.g. \"90d\")"
        )
    })
}
