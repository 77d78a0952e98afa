//! Dates as Korean law counts them, in Asia/Seoul.
//!
//! The rules (Civil Act arts. 157–160), decided here once:
//! - **Age** counts the day of birth (art. 158): a person attains age N on the
//!   N-th anniversary of their birth date. Someone born on **29 February**
//!   has no anniversary in a common year; the period then ends on the last
//!   day of February (art. 160(3)), so they attain the age on **1 March**.
//! - **Validity of N years** from an issue date does not count the issue day
//!   (art. 157) and ends on the day before the corresponding day (art.
//!   160(2)): usually valid through the same month/day N years later. Issued
//!   on **29 February**, the period starts 1 March, so it is valid through
//!   **28 February**; issued on **28 February** the day before a leap year's
//!   29th, it is valid through that **29 February**.
//!
//! Asia/Seoul is UTC+9 all year (no daylight saving since 1988).

use time::{Date, Month, OffsetDateTime, UtcOffset};

/// Asia/Seoul's offset.
pub const SEOUL: UtcOffset = match UtcOffset::from_hms(9, 0, 0) {
    Ok(offset) => offset,
    Err(_) => panic!("+09:00 is a valid offset"),
};

/// The calendar date in Seoul at the instant `now`.
pub fn seoul_date(now: OffsetDateTime) -> Date {
    now.to_offset(SEOUL).date()
}

/// The date a person born on `birth` attains `years` of age.
pub fn anniversary(birth: Date, years: u16) -> Option<Date> {
    let year = birth.year().checked_add(i32::from(years))?;
    match Date::from_calendar_date(year, birth.month(), birth.day()) {
        Ok(date) => Some(date),
        // 29 February in a common year: 1 March (see module docs).
        Err(_) => Date::from_calendar_date(year, Month::March, 1).ok(),
    }
}

/// Age in full years on `date` of a person born on `birth` (0 before birth).
pub fn age_on(birth: Date, date: Date) -> u16 {
    if date <= birth {
        return 0;
    }
    let mut years = u16::try_from(date.year() - birth.year()).unwrap_or(0);
    while years > 0 && anniversary(birth, years).is_none_or(|a| a > date) {
        years -= 1;
    }
    years
}

/// The last day a document issued on `issued` stays valid for `years` years.
pub fn expiry_date(issued: Date, years: u16) -> Option<Date> {
    // The issue day is not counted: the period starts the next day and ends
    // the day before the corresponding day (arts. 157, 160(2)).
    let start = issued.next_day()?;
    let year = start.year().checked_add(i32::from(years))?;
    match Date::from_calendar_date(year, start.month(), start.day()) {
        Ok(corresponding) => corresponding.previous_day(),
        // Starting on 29 February, no such day: the month's last (art. 160(3)).
        Err(_) => Date::from_calendar_date(year, start.month(), start.month().length(year)).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn age_turns_on_the_birthday() {
        let birth = date!(2009 - 12 - 27);
        assert_eq!(age_on(birth, date!(2026 - 12 - 26)), 16);
        assert_eq!(age_on(birth, date!(2026 - 12 - 27)), 17);
        assert_eq!(age_on(birth, date!(2009 - 12 - 27)), 0);
        assert_eq!(age_on(birth, date!(2000 - 01 - 01)), 0);
    }

    #[test]
    fn leap_day_birthdays_turn_on_the_first_of_march_in_common_years() {
        let birth = date!(2008 - 02 - 29);
        assert_eq!(age_on(birth, date!(2025 - 02 - 28)), 16);
        assert_eq!(age_on(birth, date!(2025 - 03 - 01)), 17);
        assert_eq!(age_on(birth, date!(2024 - 02 - 29)), 16);
        assert_eq!(age_on(birth, date!(2024 - 02 - 28)), 15);
    }

    #[test]
    fn three_years_of_validity() {
        assert_eq!(
            expiry_date(date!(2026 - 12 - 27), 3),
            Some(date!(2029 - 12 - 27))
        );
        assert_eq!(
            expiry_date(date!(2028 - 02 - 29), 3),
            Some(date!(2031 - 02 - 28))
        );
        assert_eq!(
            expiry_date(date!(2028 - 02 - 29), 4),
            Some(date!(2032 - 02 - 29))
        );
    }

    #[test]
    fn seoul_is_nine_hours_ahead_of_utc() {
        // 15:00 UTC on 26 December is already 27 December in Seoul.
        assert_eq!(
            seoul_date(datetime!(2026-12-26 15:00 UTC)),
            date!(2026 - 12 - 27)
        );
        assert_eq!(
            seoul_date(datetime!(2026-12-26 14:59:59 UTC)),
            date!(2026 - 12 - 26)
        );
    }
}
