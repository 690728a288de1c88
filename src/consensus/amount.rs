//! Amounts in integer base units. There are no floats anywhere in ChainCore's
//! money path: 1 CC = 100 000 000 units, and every sum is checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Base units in one CC.
pub const COIN: u64 = 100_000_000;
/// No amount, and no sum of amounts in a transaction, may exceed this.
pub const MAX_MONEY: u64 = 21_000_000 * COIN;

/// A non-negative number of base units, at most `MAX_MONEY` once validated.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Amount(u64);

impl Amount {
    pub const ZERO: Amount = Amount(0);
    pub const MAX: Amount = Amount(MAX_MONEY);

    pub const fn from_units(units: u64) -> Amount {
        Amount(units)
    }

    pub const fn from_coins(coins: u64) -> Amount {
        Amount(coins * COIN)
    }

    pub const fn units(self) -> u64 {
        self.0
    }

    /// Whether the amount lies in `0..=MAX_MONEY`.
    pub const fn is_valid(self) -> bool {
        self.0 <= MAX_MONEY
    }

    /// Sum, or `None` if it overflows or leaves the valid money range.
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0
            .checked_add(other.0)
            .map(Amount)
            .filter(|a| a.is_valid())
    }

    /// Difference, or `None` if it would be negative.
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// Adds every amount, or `None` if any partial sum leaves the valid range.
    pub fn checked_sum<I: IntoIterator<Item = Amount>>(amounts: I) -> Option<Amount> {
        amounts
            .into_iter()
            .try_fold(Amount::ZERO, |acc, a| acc.checked_add(a))
    }
}

impl fmt::Display for Amount {
    /// `12.34500000`: whole coins, a point and exactly eight decimals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:08}", self.0 / COIN, self.0 % COIN)
    }
}

/// A decimal CC amount that cannot be represented exactly in base units.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid amount {input:?}: {reason}")]
pub struct ParseAmountError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for Amount {
    type Err = ParseAmountError;

    /// Parses a decimal number of CC (`"1"`, `"0.5"`, `"12.00000001"`) exactly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseAmountError {
            input: s.to_string(),
            reason,
        };
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(err("empty"));
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("only digits and one decimal point are allowed"));
        }
        if frac.len() > 8 {
            return Err(err("more than 8 decimal places"));
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err("too large"))?
        };
        let frac_units: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse::<u64>().map_err(|_| err("bad fraction"))? * 10u64.pow(8 - frac.len() as u32)
        };
        let units = whole
            .checked_mul(COIN)
            .and_then(|u| u.checked_add(frac_units))
            .ok_or_else(|| err("too large"))?;
        let amount = Amount(units);
        if !amount.is_valid() {
            return Err(err("exceeds the maximum money supply"));
        }
        Ok(amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn overflow_and_out_of_range_sums_are_rejected() {
        assert_eq!(Amount::MAX.checked_add(Amount::from_units(1)), None);
        assert_eq!(
            Amount::from_units(u64::MAX).checked_add(Amount::from_units(1)),
            None
        );
        assert_eq!(
            Amount::checked_sum([Amount::from_units(u64::MAX), Amount::from_units(2)]),
            None
        );
        assert_eq!(Amount::ZERO.checked_sub(Amount::from_units(1)), None);
        assert_eq!(
            Amount::checked_sum([Amount::from_coins(1), Amount::from_units(5)]),
            Some(Amount::from_units(COIN + 5))
        );
    }

    #[test]
    fn parses_decimal_exactly() {
        assert_eq!("1".parse::<Amount>().unwrap(), Amount::from_coins(1));
        assert_eq!("0.1".parse::<Amount>().unwrap().units(), 10_000_000);
        assert_eq!(".00000001".parse::<Amount>().unwrap().units(), 1);
        assert_eq!(
            "20999999.99999999".parse::<Amount>().unwrap().units(),
            MAX_MONEY - 1
        );
        for bad in [
            "",
            ".",
            "1.000000001",
            "-1",
            "1e8",
            "21000000.00000001",
            "1,5",
            "nan",
        ] {
            assert!(bad.parse::<Amount>().is_err(), "{bad:?} should not parse");
        }
    }

    proptest! {
        #[test]
        fn display_parses_back(units in 0..=MAX_MONEY) {
            let amount = Amount::from_units(units);
            prop_assert_eq!(amount.to_string().parse::<Amount>().unwrap(), amount);
        }
    }
}
