//! The join rules of design.md ("Join and stats rules, precisely"), as
//! pure functions: which click a conversion is attributed to, and why an
//! event is an orphan.

use adpipe_events::{Click, Conversion};

/// Why a click or conversion went to `joined.orphans` (the header
/// `adpipe.orphan.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrphanReason {
    /// A click's impression was not in state after the wait (or a
    /// conversion's click is itself such an orphan).
    ImpressionNotFound,
    /// A conversion's named click never arrived within the wait.
    ClickNotFound,
    /// A conversion's named click is older than the attribution window.
    OutsideWindow,
    /// A conversion's named click belongs to another user.
    ClickUserMismatch,
    /// A conversion naming no click found no click of the user on the same
    /// advertiser within the window, after the wait.
    NoClick,
}

impl OrphanReason {
    /// The header value.
    pub fn name(self) -> &'static str {
        match self {
            OrphanReason::ImpressionNotFound => "impression_not_found",
            OrphanReason::ClickNotFound => "click_not_found",
            OrphanReason::OutsideWindow => "outside_window",
            OrphanReason::ClickUserMismatch => "click_user_mismatch",
            OrphanReason::NoClick => "no_click",
        }
    }

    /// Every reason, for metrics.
    pub const ALL: [OrphanReason; 5] = [
        OrphanReason::ImpressionNotFound,
        OrphanReason::ClickNotFound,
        OrphanReason::OutsideWindow,
        OrphanReason::ClickUserMismatch,
        OrphanReason::NoClick,
    ];
}

/// Whether a conversion naming `click` may join it: the same user, and
/// `conversion.event_time − click.event_time ≤ window` (inclusive; a click
/// slightly after the conversion, from clock skew, still joins).
pub fn named_click_verdict(
    conversion: &Conversion,
    click: &Click,
    window_ms: i64,
) -> Result<(), OrphanReason> {
    if click.user_id != conversion.user_id {
        return Err(OrphanReason::ClickUserMismatch);
    }
    if conversion.event_time.saturating_sub(click.event_time) > window_ms {
        return Err(OrphanReason::OutsideWindow);
    }
    Ok(())
}

/// A click a user made on an advertiser, as the last-click index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickRef {
    /// The click's event time.
    pub event_time: i64,
    /// The click's event id.
    pub click_id: String,
}

/// The click a conversion naming none is attributed to (LAST_CLICK): among
/// the user's clicks on the conversion's advertiser, those with
/// `click.event_time ≤ conversion.event_time` within the window; the latest
/// by event time, ties broken by the larger event id.
pub fn last_click(conversion_time: i64, window_ms: i64, clicks: &[ClickRef]) -> Option<&ClickRef> {
    clicks
        .iter()
        .filter(|click| {
            click.event_time <= conversion_time
                && conversion_time.saturating_sub(click.event_time) <= window_ms
        })
        .max_by(|a, b| {
            (a.event_time, a.click_id.as_str()).cmp(&(b.event_time, b.click_id.as_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use adpipe_events::samples;

    const DAY: i64 = 86_400_000;

    fn refs(clicks: &[(i64, &str)]) -> Vec<ClickRef> {
        clicks
            .iter()
            .map(|&(event_time, id)| ClickRef {
                event_time,
                click_id: id.to_owned(),
            })
            .collect()
    }

    #[test]
    fn last_click_is_the_latest_before_the_conversion_within_the_window() {
        let clicks = refs(&[(100, "a"), (200, "b"), (300, "late"), (200, "c")]);
        // 300 is after the conversion: not eligible; 200 ties, "c" > "b".
        assert_eq!(
            last_click(250, DAY, &clicks).map(|c| c.click_id.as_str()),
            Some("c")
        );
        // The window is inclusive.
        assert_eq!(
            last_click(250, 150, &clicks).map(|c| c.click_id.as_str()),
            Some("c")
        );
        assert_eq!(
            last_click(350, 50, &clicks).map(|c| c.click_id.as_str()),
            Some("late")
        );
        assert_eq!(last_click(99, DAY, &clicks), None, "every click is later");
        assert_eq!(
            last_click(1_000, 10, &clicks),
            None,
            "every click is too old"
        );
    }

    #[test]
    fn a_named_click_joins_within_the_window_and_for_the_same_user() {
        let mut conversion = samples::conversion(1);
        let mut click = samples::click(1);
        click.user_id = conversion.user_id.clone();
        click.event_time = 1_000;
        conversion.event_time = 1_000 + 30 * DAY;
        assert_eq!(named_click_verdict(&conversion, &click, 30 * DAY), Ok(()));
        conversion.event_time += 1;
        assert_eq!(
            named_click_verdict(&conversion, &click, 30 * DAY),
            Err(OrphanReason::OutsideWindow)
        );
        conversion.event_time = 900; // the click came later: clock skew
        assert_eq!(named_click_verdict(&conversion, &click, 30 * DAY), Ok(()));
        click.user_id = "someone else".to_owned();
        assert_eq!(
            named_click_verdict(&conversion, &click, 30 * DAY),
            Err(OrphanReason::ClickUserMismatch)
        );
    }
}
