//! AIP-158 pagination: page sizes, opaque page tokens and the keyset query over
//! `(create_time, id)` that every list call runs.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::error::Violation;

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// Larger requests are served this many (AIP-158 says to coerce, not fail).
pub const MAX_PAGE_SIZE: i64 = 1000;
/// The earliest time Postgres' `timestamptz` holds (4714-11-24 BC, Julian day 0), in
/// microseconds since the Unix epoch. Its latest (294276 AD) lies beyond what `chrono` holds.
const POSTGRES_MIN_MICROS: i64 = -210_866_803_200_000_000;

/// The number of items to return for a requested `page_size`.
pub fn page_size(requested: i32) -> Result<i64, Violation> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(Violation::new("page_size", "must not be negative")),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// The page a list request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// How many items, at most.
    pub size: i64,
    /// Where the page starts; `None` for the first.
    pub after: Option<PageToken>,
}

/// Reads a request's `page_size` and `page_token`; what is wrong with them goes into
/// `violations` (so a caller reports every bad field at once), and then the result is `None`.
pub fn page(page_size: i32, page_token: &str, violations: &mut Vec<Violation>) -> Option<Page> {
    let size = self::page_size(page_size)
        .map_err(|violation| violations.push(violation))
        .ok();
    let after = PageToken::decode(page_token)
        .map_err(|violation| violations.push(violation))
        .ok();
    Some(Page {
        size: size?,
        after: after?,
    })
}

/// Where the next page starts: after the item with this creation time and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    pub create_time: DateTime<Utc>,
    pub id: Uuid,
}

impl PageToken {
    /// The token, as an opaque string of 48 hex digits.
    pub fn encode(&self) -> String {
        format!(
            "{:016x}{}",
            self.create_time.timestamp_micros(),
            self.id.simple()
        )
    }

    /// Reads a token from a request; the empty string is the first page.
    pub fn decode(raw: &str) -> Result<Option<Self>, Violation> {
        if raw.is_empty() {
            return Ok(None);
        }
        let invalid = || Violation::new("page_token", "is not a token this server issued");
        if raw.len() != 48 || !raw.is_ascii() {
            return Err(invalid());
        }
        let (micros, id) = raw.split_at(16);
        let micros = u64::from_str_radix(micros, 16)
            .map_err(|_| invalid())?
            .cast_signed();
        // A time Postgres cannot hold would fail the query: no row was created then.
        if micros < POSTGRES_MIN_MICROS {
            return Err(invalid());
        }
        let create_time = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
        let id = Uuid::parse_str(id).map_err(|_| invalid())?;
        Ok(Some(Self { create_time, id }))
    }
}

/// Splits one extra fetched row off `rows` (queried with `limit + 1`) and returns the page and
/// its `next_page_token` (empty on the last page).
pub fn paginate<T>(
    mut rows: Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> PageToken,
) -> (Vec<T>, String) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows
            .last()
            .map(|last| key(last).encode())
            .unwrap_or_default();
        (rows, next)
    } else {
        (rows, String::new())
    }
}

/// Ends a list query whose `where` clause is open: keeps the rows after `after` in
/// `(create_time, id_column)` order, oldest first, and at most `limit` of them. `id_column` is
/// the table's id, written by the caller, never taken from a request.
pub fn push_keyset_page(
    query: &mut QueryBuilder<'_, Postgres>,
    id_column: &'static str,
    after: Option<PageToken>,
    limit: i64,
) {
    if let Some(after) = after {
        query.push(format_args!(" and (create_time, {id_column}) > ("));
        query.push_bind(after.create_time);
        query.push(", ");
        query.push_bind(after.id);
        query.push(")");
    }
    query.push(format_args!(" order by create_time, {id_column} limit "));
    query.push_bind(limit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips() {
        let token = PageToken {
            create_time: DateTime::from_timestamp_micros(1_764_000_000_123_456).expect("valid"),
            id: Uuid::new_v4(),
        };
        assert_eq!(PageToken::decode(&token.encode()), Ok(Some(token)));
    }

    #[test]
    fn foreign_tokens_are_rejected() {
        assert!(PageToken::decode("abc").is_err());
        assert!(PageToken::decode(&"z".repeat(48)).is_err());
        assert_eq!(PageToken::decode(""), Ok(None));
    }

    #[test]
    fn tokens_before_the_earliest_time_postgres_holds_are_rejected() {
        let token = |micros: i64| format!("{:016x}{}", micros, Uuid::new_v4().simple());
        assert!(PageToken::decode(&token(POSTGRES_MIN_MICROS)).is_ok());
        for micros in [
            POSTGRES_MIN_MICROS - 1,
            -8_000_000_000_000_000_000,
            i64::MIN,
        ] {
            assert!(PageToken::decode(&token(micros)).is_err(), "{micros}");
        }
    }

    #[test]
    fn page_sizes_default_cap_and_reject_negatives() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(5), Ok(5));
        assert_eq!(page_size(1_000_000), Ok(MAX_PAGE_SIZE));
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn paginate_keeps_limit_rows_and_points_past_the_last() {
        let time = DateTime::from_timestamp_micros(1).expect("valid");
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let key = |id: &Uuid| PageToken {
            create_time: time,
            id: *id,
        };

        let (page, next) = paginate(ids.clone(), 2, key);
        assert_eq!(page, ids[..2]);
        assert_eq!(PageToken::decode(&next), Ok(Some(key(&ids[1]))));

        let (page, next) = paginate(ids.clone(), 3, key);
        assert_eq!(page.len(), 3);
        assert!(next.is_empty());
    }

    #[test]
    fn the_first_page_has_no_keyset_condition() {
        let mut query = QueryBuilder::new("select id from t where owner = ");
        query.push_bind(Uuid::nil());
        push_keyset_page(&mut query, "t_id", None, 11);
        assert_eq!(
            query.sql(),
            "select id from t where owner = $1 order by create_time, t_id limit $2"
        );
    }

    #[test]
    fn a_later_page_starts_after_its_token() {
        let after = PageToken {
            create_time: DateTime::from_timestamp_micros(1).expect("valid"),
            id: Uuid::nil(),
        };
        let mut query = QueryBuilder::new("select id from t where true");
        push_keyset_page(&mut query, "t_id", Some(after), 11);
        assert_eq!(
            query.sql(),
            "select id from t where true and (create_time, t_id) > ($1, $2) \
             order by create_time, t_id limit $3"
        );
    }
}
