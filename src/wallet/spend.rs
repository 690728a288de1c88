//! Spend planning: which coins pay for a payment, what fee it carries and
//! what change comes back, then the signed transaction. Pure functions of
//! the coins the node reported.

use crate::consensus::address::PubKeyHash;
use crate::consensus::amount::Amount;
use crate::consensus::keys::PrivateKey;
use crate::consensus::transaction::{OutPoint, Transaction, TxIn, TxOut, TX_VERSION};
use crate::encoding::Encode;
use crate::mempool::{DUST_LIMIT, MAX_STANDARD_TX_SIZE, MIN_RELAY_FEE_RATE};

/// The lowest fee rate the network relays, in units per byte.
pub const MIN_FEE_RATE_PER_BYTE: u64 = MIN_RELAY_FEE_RATE.div_ceil(1000);

/// One output the wallet owns, as the node reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coin {
    pub outpoint: OutPoint,
    pub value: Amount,
    /// Already spent by a transaction in the node's mempool.
    pub spent_in_mempool: bool,
    /// A block reward that cannot be spent yet.
    pub immature: bool,
    /// In a block; otherwise the change of one of our own transactions in
    /// the mempool (spendable, as Bitcoin Core spends its own change).
    pub confirmed: bool,
}

/// How the fee is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeePolicy {
    /// Exactly this fee (plus change too small to be worth keeping).
    Fixed(Amount),
    /// This many units per byte of the signed transaction.
    Rate(u64),
}

/// A payment ready to be signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendPlan {
    pub inputs: Vec<Coin>,
    pub amount: Amount,
    pub fee: Amount,
    /// Change back to the wallet; none when it would be dust.
    pub change: Option<Amount>,
    /// Size of the signed transaction in bytes.
    pub size: usize,
}

/// Why a payment cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpendError {
    #[error("the amount must be more than zero")]
    ZeroAmount,
    #[error("{units} units is below the network's dust limit of {DUST_LIMIT} units: nodes would not relay the payment")]
    AmountBelowDust { units: u64 },
    #[error(
        "a fee rate of {0} units/byte is below the network's minimum of {MIN_FEE_RATE_PER_BYTE}"
    )]
    FeeRateTooLow(u64),
    #[error(
        "insufficient funds: sending {amount} CC with a fee of {fee} CC needs {needed} CC, \
         but only {spendable} CC is spendable ({pending} CC more is spent by transactions in \
         the mempool, {immature} CC is in immature block rewards)"
    )]
    InsufficientFunds {
        amount: Amount,
        fee: Amount,
        needed: Amount,
        spendable: Amount,
        pending: Amount,
        immature: Amount,
    },
    #[error("the payment would need more than {0} inputs, over the standard transaction size")]
    TooManyInputs(usize),
    #[error("amounts overflow the money range")]
    Overflow,
    #[error(
        "the fee of {fee} CC ({rate} units/byte) is over the wallet's limit of {limit} CC \
         (the lower of --max-fee {max_fee} CC and --max-fee-percent {max_percent}% of the \
         {amount} CC sent): nothing was sent; raise a limit if this fee is meant"
    )]
    FeeOverLimit {
        fee: Amount,
        rate: u64,
        limit: Amount,
        max_fee: Amount,
        max_percent: u64,
        amount: Amount,
    },
}

/// The most a payment may pay in fees: `max_fee`, and `max_percent` of the
/// amount sent, whichever is lower. Guards against a node (or a typo) that
/// asks for an absurd fee rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeLimit {
    pub max_fee: Amount,
    pub max_percent: u64,
}

/// Default absolute fee limit: 0.01 CC is 4 000 units per byte for a
/// 250-byte payment, far above any fee a working network asks.
pub const DEFAULT_MAX_FEE: Amount = Amount::from_units(1_000_000);
/// Default fee limit relative to the amount sent, in percent.
pub const DEFAULT_MAX_FEE_PERCENT: u64 = 10;

impl Default for FeeLimit {
    fn default() -> FeeLimit {
        FeeLimit {
            max_fee: DEFAULT_MAX_FEE,
            max_percent: DEFAULT_MAX_FEE_PERCENT,
        }
    }
}

impl FeeLimit {
    /// The limit for sending `amount`.
    pub fn limit(&self, amount: Amount) -> Amount {
        let relative = (u128::from(amount.units()) * u128::from(self.max_percent) / 100)
            .min(u128::from(u64::MAX)) as u64;
        Amount::from_units(self.max_fee.units().min(relative))
    }

    /// Refuses a plan whose fee is over the limit.
    pub fn check(&self, plan: &SpendPlan) -> Result<(), SpendError> {
        let limit = self.limit(plan.amount);
        if plan.fee > limit {
            return Err(SpendError::FeeOverLimit {
                fee: plan.fee,
                rate: plan.fee.units() / plan.size.max(1) as u64,
                limit,
                max_fee: self.max_fee,
                max_percent: self.max_percent,
                amount: plan.amount,
            });
        }
        Ok(())
    }
}

/// Bytes of a signed transaction with `inputs` spends and `outputs` outputs.
/// Inputs and outputs have fixed sizes, so this is exact.
pub fn signed_size(inputs: usize, outputs: usize) -> usize {
    Transaction {
        version: TX_VERSION,
        inputs: vec![
            TxIn::Spend {
                prevout: OutPoint::NULL,
                pubkey: [0; 33],
                signature: [0; 64],
            };
            inputs
        ],
        outputs: vec![
            TxOut {
                amount: Amount::ZERO,
                owner: PubKeyHash([0; 20]),
            };
            outputs
        ],
        lock_time: 0,
    }
    .encoded_len()
}

/// Picks coins for `amount` under `policy`: spendable coins only (mature,
/// not spent in the mempool), confirmed ones before unconfirmed change, and
/// largest first within each, so the transaction stays small and rarely
/// waits on another. Change worth less than the fee to spend it later, or
/// below the mempool's `DUST_LIMIT`, goes to the fee instead; a payment
/// below the dust limit is refused, as nodes would not relay it.
pub fn plan_spend(
    coins: &[Coin],
    amount: Amount,
    policy: FeePolicy,
) -> Result<SpendPlan, SpendError> {
    if amount == Amount::ZERO {
        return Err(SpendError::ZeroAmount);
    }
    if amount.units() < DUST_LIMIT {
        return Err(SpendError::AmountBelowDust {
            units: amount.units(),
        });
    }
    let rate = match policy {
        FeePolicy::Rate(rate) if rate < MIN_FEE_RATE_PER_BYTE => {
            return Err(SpendError::FeeRateTooLow(rate))
        }
        FeePolicy::Rate(rate) => rate,
        FeePolicy::Fixed(_) => MIN_FEE_RATE_PER_BYTE,
    };
    let fee_for = |inputs: usize, outputs: usize| match policy {
        FeePolicy::Fixed(fee) => fee.units(),
        FeePolicy::Rate(rate) => rate.saturating_mul(signed_size(inputs, outputs) as u64),
    };
    // Change below what spending it would cost is not worth an output, and
    // change below the dust limit would make the pool refuse the payment.
    let input_size = signed_size(2, 1) - signed_size(1, 1);
    let keeps_change =
        |change: u64| change > rate.saturating_mul(input_size as u64) && change >= DUST_LIMIT;

    let mut spendable: Vec<Coin> = coins
        .iter()
        .filter(|c| !c.spent_in_mempool && !c.immature)
        .copied()
        .collect();
    spendable.sort_by(|a, b| {
        b.confirmed
            .cmp(&a.confirmed)
            .then(b.value.cmp(&a.value))
            .then(a.outpoint.cmp(&b.outpoint))
    });
    let max_inputs = (1..=spendable.len().max(1))
        .take_while(|n| signed_size(*n, 2) <= MAX_STANDARD_TX_SIZE)
        .last()
        .unwrap_or(0);

    let mut total = 0u64;
    for (i, coin) in spendable.iter().enumerate() {
        let count = i + 1;
        if count > max_inputs {
            return Err(SpendError::TooManyInputs(max_inputs));
        }
        total = total
            .checked_add(coin.value.units())
            .ok_or(SpendError::Overflow)?;
        let with_change = amount
            .units()
            .checked_add(fee_for(count, 2))
            .ok_or(SpendError::Overflow)?;
        if total >= with_change && keeps_change(total - with_change) {
            return Ok(SpendPlan {
                inputs: spendable[..count].to_vec(),
                amount,
                fee: Amount::from_units(fee_for(count, 2)),
                change: Some(Amount::from_units(total - with_change)),
                size: signed_size(count, 2),
            });
        }
        let without_change = amount
            .units()
            .checked_add(fee_for(count, 1))
            .ok_or(SpendError::Overflow)?;
        if total >= without_change {
            return Ok(SpendPlan {
                inputs: spendable[..count].to_vec(),
                amount,
                fee: Amount::from_units(total - amount.units()),
                change: None,
                size: signed_size(count, 1),
            });
        }
    }
    let sum = |pick: fn(&Coin) -> bool| {
        Amount::from_units(
            coins
                .iter()
                .filter(|c| pick(c))
                .map(|c| c.value.units())
                .sum(),
        )
    };
    let fee = Amount::from_units(fee_for(spendable.len().max(1), 2));
    Err(SpendError::InsufficientFunds {
        amount,
        fee,
        needed: amount.checked_add(fee).ok_or(SpendError::Overflow)?,
        spendable: Amount::from_units(total),
        pending: sum(|c| c.spent_in_mempool),
        immature: sum(|c| c.immature && !c.spent_in_mempool),
    })
}

/// The signed transaction of `plan`: the payment first, then the change.
pub fn build_transaction(plan: &SpendPlan, key: &PrivateKey, to: PubKeyHash) -> Transaction {
    let owner = key.pubkey_hash();
    let mut outputs = vec![TxOut {
        amount: plan.amount,
        owner: to,
    }];
    if let Some(change) = plan.change {
        outputs.push(TxOut {
            amount: change,
            owner,
        });
    }
    let mut tx = Transaction {
        version: TX_VERSION,
        inputs: plan
            .inputs
            .iter()
            .map(|c| TxIn::Spend {
                prevout: c.outpoint,
                pubkey: [0; 33],
                signature: [0; 64],
            })
            .collect(),
        outputs,
        lock_time: 0,
    };
    let spent: Vec<TxOut> = plan
        .inputs
        .iter()
        .map(|coin| TxOut {
            amount: coin.value,
            owner,
        })
        .collect();
    tx.sign_inputs(&spent, &vec![key; spent.len()]);
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::hash::Hash256;

    fn coin(n: u8, units: u64) -> Coin {
        Coin {
            outpoint: OutPoint::new(Hash256([n; 32]), 0),
            value: Amount::from_units(units),
            spent_in_mempool: false,
            immature: false,
            confirmed: true,
        }
    }

    #[test]
    fn sizes_are_exact() {
        let key = crate::testkit::key(7);
        let plan = plan_spend(
            &[coin(1, 50_000), coin(2, 70_000)],
            Amount::from_units(100_000),
            FeePolicy::Rate(3),
        )
        .unwrap();
        let tx = build_transaction(&plan, &key, PubKeyHash([9; 20]));
        assert_eq!(tx.encoded_len(), plan.size);
        assert_eq!(plan.fee.units(), 3 * plan.size as u64);
        let outputs: u64 = tx.outputs.iter().map(|o| o.amount.units()).sum();
        assert_eq!(outputs + plan.fee.units(), 120_000);
    }

    #[test]
    fn largest_coins_first_with_change() {
        let coins = [coin(1, 10_000), coin(2, 900_000), coin(3, 300_000)];
        let plan = plan_spend(&coins, Amount::from_units(500_000), FeePolicy::Rate(1)).unwrap();
        assert_eq!(plan.inputs, vec![coins[1]]);
        assert_eq!(
            plan.change.unwrap().units(),
            900_000 - 500_000 - plan.fee.units()
        );
    }

    #[test]
    fn mempool_spent_and_immature_coins_are_never_used() {
        let mut pending = coin(1, 1_000_000);
        pending.spent_in_mempool = true;
        let mut young = coin(2, 2_000_000);
        young.immature = true;
        let coins = [pending, young, coin(3, 40_000), coin(4, 30_000)];
        let plan = plan_spend(&coins, Amount::from_units(60_000), FeePolicy::Rate(1)).unwrap();
        assert_eq!(plan.inputs, vec![coins[2], coins[3]]);
        let error = plan_spend(&coins, Amount::from_units(90_000), FeePolicy::Rate(1)).unwrap_err();
        match &error {
            SpendError::InsufficientFunds {
                spendable,
                pending,
                immature,
                ..
            } => {
                assert_eq!(spendable.units(), 70_000);
                assert_eq!(pending.units(), 1_000_000);
                assert_eq!(immature.units(), 2_000_000);
            }
            other => panic!("{other:?}"),
        }
        assert!(error.to_string().contains("insufficient funds"));
    }

    #[test]
    fn confirmed_coins_go_first_and_unconfirmed_change_fills_in() {
        let mut change = coin(9, 5_000_000);
        change.confirmed = false;
        let coins = [change, coin(1, 300_000), coin(2, 200_000)];
        let small = plan_spend(&coins, Amount::from_units(400_000), FeePolicy::Rate(1)).unwrap();
        assert_eq!(small.inputs, vec![coins[1], coins[2]]);
        let large = plan_spend(&coins, Amount::from_units(1_000_000), FeePolicy::Rate(1)).unwrap();
        assert_eq!(large.inputs, vec![coins[1], coins[2], coins[0]]);
    }

    #[test]
    fn dust_change_goes_to_the_fee_and_fixed_fees_are_kept() {
        let size = signed_size(1, 1) as u64;
        // Exactly enough for a 1-output transaction plus 10 units.
        let plan = plan_spend(
            &[coin(1, 100_000 + size + 10)],
            Amount::from_units(100_000),
            FeePolicy::Rate(1),
        )
        .unwrap();
        assert_eq!(plan.change, None);
        assert_eq!(plan.fee.units(), size + 10);
        let fixed = plan_spend(
            &[coin(1, 1_000_000)],
            Amount::from_units(100_000),
            FeePolicy::Fixed(Amount::from_units(5_000)),
        )
        .unwrap();
        assert_eq!(fixed.fee.units(), 5_000);
        assert_eq!(fixed.change.unwrap().units(), 895_000);
    }

    #[test]
    fn change_below_the_dust_limit_goes_to_the_fee() {
        let with_change = 100_000 + signed_size(1, 2) as u64;
        // At 1 unit/byte an input costs 133 units to spend: 300 units of
        // change would be worth keeping, but is below the dust limit.
        let plan = plan_spend(
            &[coin(1, with_change + 300)],
            Amount::from_units(100_000),
            FeePolicy::Rate(1),
        )
        .unwrap();
        assert_eq!(plan.change, None);
        assert_eq!(plan.fee.units(), with_change + 300 - 100_000);
        let plan = plan_spend(
            &[coin(1, with_change + DUST_LIMIT)],
            Amount::from_units(100_000),
            FeePolicy::Rate(1),
        )
        .unwrap();
        assert_eq!(plan.change, Some(Amount::from_units(DUST_LIMIT)));
        // Whatever is left over beside the payment and its fee, no output
        // is dust.
        let policies = [
            FeePolicy::Rate(1),
            FeePolicy::Rate(2),
            FeePolicy::Rate(5),
            FeePolicy::Fixed(Amount::from_units(250)),
        ];
        for policy in policies {
            let fee = match policy {
                FeePolicy::Rate(rate) => rate * signed_size(1, 2) as u64,
                FeePolicy::Fixed(fee) => fee.units(),
            };
            for extra in 0..3 * DUST_LIMIT {
                let coins = [coin(1, 100_000 + fee + extra)];
                let plan = plan_spend(&coins, Amount::from_units(100_000), policy).unwrap();
                let tx = build_transaction(&plan, &crate::testkit::key(3), PubKeyHash([9; 20]));
                assert!(
                    tx.outputs.iter().all(|o| o.amount.units() >= DUST_LIMIT),
                    "{policy:?} {plan:?}"
                );
            }
        }
    }

    #[test]
    fn refusals() {
        let coins = [coin(1, 1_000)];
        assert_eq!(
            plan_spend(&coins, Amount::ZERO, FeePolicy::Rate(1)),
            Err(SpendError::ZeroAmount)
        );
        assert_eq!(
            plan_spend(
                &coins,
                Amount::from_units(DUST_LIMIT - 1),
                FeePolicy::Rate(1)
            ),
            Err(SpendError::AmountBelowDust {
                units: DUST_LIMIT - 1
            })
        );
        assert_eq!(
            plan_spend(&coins, Amount::from_units(DUST_LIMIT), FeePolicy::Rate(0)),
            Err(SpendError::FeeRateTooLow(0))
        );
        let many: Vec<Coin> = (0..2_000u32)
            .map(|i| Coin {
                outpoint: OutPoint::new(Hash256([1; 32]), i),
                value: Amount::from_units(1_000),
                spent_in_mempool: false,
                immature: false,
                confirmed: true,
            })
            .collect();
        assert!(matches!(
            plan_spend(&many, Amount::from_units(1_900_000), FeePolicy::Rate(1)),
            Err(SpendError::TooManyInputs(_))
        ));
    }

    /// A node answering 4e7 units/byte made a 1 CC payment pay 99 CC of
    /// fee: the limit refuses it, and passes ordinary fees.
    #[test]
    fn fees_over_the_limit_are_refused() {
        let coins = [coin(1, 100 * 100_000_000)];
        let one_cc = Amount::from_units(100_000_000);
        let limit = FeeLimit::default();
        let absurd = plan_spend(&coins, one_cc, FeePolicy::Rate(40_000_000)).unwrap();
        assert!(absurd.fee.units() > 90 * 100_000_000);
        assert!(matches!(
            limit.check(&absurd),
            Err(SpendError::FeeOverLimit { .. })
        ));
        let ordinary = plan_spend(&coins, one_cc, FeePolicy::Rate(10)).unwrap();
        assert_eq!(limit.check(&ordinary), Ok(()));
        // Relative: 10% of a tiny payment.
        assert_eq!(
            limit.limit(Amount::from_units(1_000)),
            Amount::from_units(100)
        );
        let tiny = plan_spend(&coins, Amount::from_units(1_000), FeePolicy::Rate(2)).unwrap();
        assert!(limit.check(&tiny).is_err());
        let raised = FeeLimit {
            max_fee: DEFAULT_MAX_FEE,
            max_percent: 1_000,
        };
        assert_eq!(raised.check(&tiny), Ok(()));
        let fixed = plan_spend(
            &coins,
            one_cc,
            FeePolicy::Fixed(Amount::from_units(2_000_000)),
        )
        .unwrap();
        assert!(limit.check(&fixed).is_err(), "an exact fee is capped too");
    }
}
