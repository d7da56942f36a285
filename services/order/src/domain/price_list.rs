//! What each plan costs. The order service owns prices; they are configurable.

use std::str::FromStr;

use super::Plan;

/// A price in minor units of an ISO-4217 currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub amount_minor: i64,
    pub currency: String,
}

/// The price of every plan, in one currency with two decimal places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceList {
    basic: i64,
    pro: i64,
    enterprise: i64,
    currency: String,
}

/// The default prices of the plans (build-support/docs/configuration.md: `PLAN_PRICES`).
pub const DEFAULT_PRICES: &str = "basic=9.99,pro=29.99,enterprise=99.99";

impl PriceList {
    /// Parses `basic=9.99,pro=29.99,enterprise=99.99` (every plan, in any order) in `currency`.
    pub fn parse(prices: &str, currency: &str) -> Result<Self, String> {
        let currency = currency.trim().to_ascii_uppercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "currency {currency:?} is not an ISO-4217 code like USD"
            ));
        }
        let (mut basic, mut pro, mut enterprise) = (None, None, None);
        for entry in prices.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (plan, amount) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not plan=price"))?;
            let slot = match plan.trim() {
                "basic" => &mut basic,
                "pro" => &mut pro,
                "enterprise" => &mut enterprise,
                other => return Err(format!("unknown plan {other:?}")),
            };
            *slot = Some(parse_minor_units(amount.trim())?);
        }
        match (basic, pro, enterprise) {
            (Some(basic), Some(pro), Some(enterprise)) => Ok(Self {
                basic,
                pro,
                enterprise,
                currency,
            }),
            _ => Err("every plan needs a price: basic, pro and enterprise".into()),
        }
    }

    /// The price of `plan`.
    pub fn price(&self, plan: Plan) -> Price {
        let amount_minor = match plan {
            Plan::Basic => self.basic,
            Plan::Pro => self.pro,
            Plan::Enterprise => self.enterprise,
        };
        Price {
            amount_minor,
            currency: self.currency.clone(),
        }
    }
}

impl Default for PriceList {
    fn default() -> Self {
        Self::parse(DEFAULT_PRICES, "USD").expect("the default prices are valid")
    }
}

impl FromStr for PriceList {
    type Err = String;

    /// Parses the prices in USD.
    fn from_str(prices: &str) -> Result<Self, Self::Err> {
        Self::parse(prices, "USD")
    }
}

/// `9.99` → 999; at most two decimals, no sign.
fn parse_minor_units(amount: &str) -> Result<i64, String> {
    let invalid = || format!("price {amount:?} is not an amount like 9.99");
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.len() > 2 || (!fraction.is_empty() && !digits(fraction)) {
        return Err(invalid());
    }
    let whole: i64 = whole.parse().map_err(|_| invalid())?;
    let cents: i64 = format!("{fraction:0<2}").parse().map_err(|_| invalid())?;
    whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(cents))
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_prices_are_those_of_the_spec() {
        let prices = PriceList::default();
        assert_eq!(prices.price(Plan::Basic).amount_minor, 999);
        assert_eq!(prices.price(Plan::Pro).amount_minor, 2999);
        assert_eq!(prices.price(Plan::Enterprise).amount_minor, 9999);
        assert_eq!(prices.price(Plan::Pro).currency, "USD");
    }

    #[test]
    fn prices_parse_in_any_order_and_precision() {
        let prices = PriceList::parse("pro=30, enterprise=100.5,basic=0.5", "eur").expect("valid");
        assert_eq!(prices.price(Plan::Basic).amount_minor, 50);
        assert_eq!(prices.price(Plan::Pro).amount_minor, 3000);
        assert_eq!(prices.price(Plan::Enterprise).amount_minor, 10050);
        assert_eq!(prices.price(Plan::Basic).currency, "EUR");
    }

    #[test]
    fn bad_price_lists_say_why() {
        for (prices, currency) in [
            ("basic=9.99,pro=29.99", "USD"),
            ("basic=9.999,pro=1,enterprise=1", "USD"),
            ("basic=-1,pro=1,enterprise=1", "USD"),
            ("basic=1,pro=1,enterprise=1,gold=5", "USD"),
            ("basic=1,pro=1,enterprise=1", "dollars"),
        ] {
            assert!(
                PriceList::parse(prices, currency).is_err(),
                "{prices} {currency}"
            );
        }
    }
}
