//! Proof of work: compact targets, chain work, difficulty adjustment, median
//! time past and the subsidy schedule. All pure functions of their arguments.

use primitive_types::{U256, U512};

use super::amount::Amount;
use super::hash::Hash256;
use super::limits::MEDIAN_TIME_SPAN;
use super::params::ChainParams;

/// Why a compact target encoding is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CompactTargetError {
    #[error("compact target {0:#010x} is negative")]
    Negative(u32),
    #[error("compact target {0:#010x} overflows 256 bits")]
    Overflow(u32),
    #[error("compact target {0:#010x} is zero")]
    Zero(u32),
}

/// Decodes Bitcoin's compact "bits" into a 256-bit target.
pub fn target_from_compact(bits: u32) -> Result<U256, CompactTargetError> {
    let exponent = bits >> 24;
    let mantissa = bits & 0x007f_ffff;
    if bits & 0x0080_0000 != 0 && mantissa != 0 {
        return Err(CompactTargetError::Negative(bits));
    }
    if mantissa != 0
        && (exponent > 34
            || (mantissa > 0xff && exponent > 33)
            || (mantissa > 0xffff && exponent > 32))
    {
        return Err(CompactTargetError::Overflow(bits));
    }
    let target = if exponent <= 3 {
        U256::from(mantissa >> (8 * (3 - exponent)))
    } else {
        U256::from(mantissa) << (8 * (exponent - 3) as usize)
    };
    if target.is_zero() {
        return Err(CompactTargetError::Zero(bits));
    }
    Ok(target)
}

/// Encodes a target in compact form, keeping its top 23 significant bits.
pub fn compact_from_target(target: U256) -> u32 {
    let mut size = target.bits().div_ceil(8);
    let mut mantissa = if size <= 3 {
        (target.low_u64() << (8 * (3 - size))) as u32
    } else {
        (target >> (8 * (size - 3))).low_u32()
    };
    // The mantissa's top bit is a sign bit: move a byte into the exponent.
    if mantissa & 0x0080_0000 != 0 {
        mantissa >>= 8;
        size += 1;
    }
    mantissa | ((size as u32) << 24)
}

/// The hash read as a 256-bit little-endian number.
pub fn hash_as_number(hash: &Hash256) -> U256 {
    U256::from_little_endian(&hash.0)
}

/// Whether `hash` meets `target`.
pub fn meets_target(hash: &Hash256, target: &U256) -> bool {
    hash_as_number(hash) <= *target
}

/// Expected number of hashes to find a block at `target`: 2^256 / (target+1).
pub fn work_from_target(target: U256) -> U256 {
    if target == U256::MAX {
        return U256::one();
    }
    // 2^256 / (t+1) == (!t / (t+1)) + 1, computed without 257-bit numbers.
    (!target / (target + 1)) + 1
}

/// Work of a block with valid compact `bits` (zero for unusable bits).
pub fn work_from_compact(bits: u32) -> U256 {
    target_from_compact(bits)
        .map(work_from_target)
        .unwrap_or_default()
}

/// The blocks whose median times measure the last retarget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetargetWindow {
    pub first_height: u32,
    pub last_height: u32,
}

/// If a block at `height` starts a new difficulty period, the window of
/// earlier blocks whose time span decides its target. The window runs from
/// the last block before the previous period to the block before `height`,
/// so it spans a whole period of block intervals (one fewer for the first),
/// and consecutive windows share an endpoint.
pub fn retarget_window(params: &ChainParams, height: u32) -> Option<RetargetWindow> {
    if params.no_retargeting || height == 0 || !height.is_multiple_of(params.retarget_interval) {
        return None;
    }
    Some(RetargetWindow {
        first_height: height.saturating_sub(params.retarget_interval + 1),
        last_height: height - 1,
    })
}

/// The heights whose median time stands for window endpoint `end`: the
/// endpoint and the blocks before it, `MEDIAN_TIME_SPAN` in all (fewer near
/// genesis), the same blocks as the median time past of `end`'s child.
pub fn endpoint_heights(end: u32) -> std::ops::RangeInclusive<u32> {
    end.saturating_sub(MEDIAN_TIME_SPAN as u32 - 1)..=end
}

/// The height whose time is the median of `endpoint_heights(end)` when block
/// times rise with height: where the endpoint's clock reading sits on the
/// chain, so the period's expected duration counts the right intervals.
pub fn endpoint_median_height(end: u32) -> u32 {
    let heights = endpoint_heights(end);
    let count = heights.end() - heights.start() + 1;
    heights.start() + count / 2
}

/// The time a window endpoint stands for: the median of the times of
/// `endpoint_heights(end)`. One timestamp moves this median to a neighbour
/// among the other times at most, whatever its value.
pub fn endpoint_time(end: u32, time_at: impl Fn(u32) -> u32) -> u32 {
    let times: Vec<u32> = endpoint_heights(end).map(time_at).collect();
    median_time_past(&times)
}

/// The new target after a period whose endpoints read `first_time` and
/// `last_time` (`endpoint_time` of the window's first and last heights),
/// clamped to a `max_retarget_factor` change either way and to the network's
/// easiest target.
pub fn retarget(
    params: &ChainParams,
    prev_bits: u32,
    window: RetargetWindow,
    first_time: u32,
    last_time: u32,
) -> u32 {
    let intervals = i64::from(
        endpoint_median_height(window.last_height) - endpoint_median_height(window.first_height),
    )
    .max(1);
    let expected = intervals * i64::from(params.target_spacing_secs);
    let factor = i64::from(params.max_retarget_factor);
    let actual =
        (i64::from(last_time) - i64::from(first_time)).clamp(expected / factor, expected * factor);
    let pow_limit = params.pow_limit();
    let old = target_from_compact(prev_bits).unwrap_or(pow_limit);
    let scaled = old.full_mul(U256::from(actual as u64)) / U512::from(expected as u64);
    let new = U256::try_from(scaled).unwrap_or(U256::MAX).min(pow_limit);
    compact_from_target(new)
}

/// The bits a block at `height` must carry, given its parent's bits and a way
/// to read the time of any earlier block on the same chain.
pub fn next_work_required(
    params: &ChainParams,
    height: u32,
    prev_bits: u32,
    time_at: impl Fn(u32) -> u32,
) -> u32 {
    match retarget_window(params, height) {
        None => prev_bits,
        Some(window) => retarget(
            params,
            prev_bits,
            window,
            endpoint_time(window.first_height, &time_at),
            endpoint_time(window.last_height, &time_at),
        ),
    }
}

/// Median of the given block times (the previous `MEDIAN_TIME_SPAN` blocks,
/// fewer near genesis). A new block's time must be greater than this.
pub fn median_time_past(times: &[u32]) -> u32 {
    if times.is_empty() {
        return 0;
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

/// The block reward at `height`: the initial subsidy halved every
/// `halving_interval` blocks, zero after 64 halvings.
pub fn block_subsidy(params: &ChainParams, height: u32) -> Amount {
    let halvings = height / params.halving_interval;
    if halvings >= 64 {
        return Amount::ZERO;
    }
    Amount::from_units(params.initial_subsidy.units() >> halvings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::params::Network;
    use proptest::prelude::*;

    #[test]
    fn known_compact_values() {
        // Bitcoin's genesis target.
        let target = target_from_compact(0x1d00ffff).unwrap();
        assert_eq!(target, U256::from(0xffffu64) << 208);
        assert_eq!(compact_from_target(target), 0x1d00ffff);
        assert_eq!(target_from_compact(0x0112_3456).unwrap(), U256::from(0x12));
        assert_eq!(
            target_from_compact(0x0412_3456).unwrap(),
            U256::from(0x1234_5600u64)
        );
        assert_eq!(compact_from_target(U256::from(0x80u64)), 0x0200_8000);
        assert_eq!(
            target_from_compact(0x0492_3456),
            Err(CompactTargetError::Negative(0x0492_3456))
        );
        assert_eq!(
            target_from_compact(0xff12_3456),
            Err(CompactTargetError::Overflow(0xff12_3456))
        );
        assert_eq!(target_from_compact(0), Err(CompactTargetError::Zero(0)));
    }

    #[test]
    fn work_is_inverse_of_target() {
        assert_eq!(work_from_target(U256::MAX), U256::one());
        // Target 2^255 - 1: half of all hashes meet it, so 2 hashes expected.
        assert_eq!(work_from_target((U256::one() << 255) - 1), U256::from(2));
        assert_eq!(
            work_from_compact(0x1d00ffff),
            U256::from(0x0001_0001_0001u64)
        );
        assert!(work_from_compact(0x1d00ffff) > work_from_compact(0x1e0fffff));
    }

    #[test]
    fn retarget_follows_block_times_and_is_clamped() {
        let params = Network::Main.params();
        let bits = 0x1d00ffff;
        let window = retarget_window(params, 30).unwrap();
        assert_eq!(
            window,
            RetargetWindow {
                first_height: 19,
                last_height: 29
            }
        );
        let spacing = params.target_spacing_secs;
        // On schedule: unchanged.
        assert_eq!(
            retarget(params, bits, window, 1000, 1000 + 10 * spacing),
            bits
        );
        // Twice as slow: target doubles (easier).
        let slower = retarget(params, bits, window, 1000, 1000 + 20 * spacing);
        assert_eq!(
            target_from_compact(slower).unwrap(),
            target_from_compact(bits).unwrap() * 2
        );
        // Absurdly fast or slow: clamped to a factor of 4.
        let fastest = retarget(params, bits, window, 1000, 1000);
        assert_eq!(
            target_from_compact(fastest).unwrap(),
            target_from_compact(bits).unwrap() / 4
        );
        let slowest = retarget(params, bits, window, 1000, 1_000_000);
        assert_eq!(
            target_from_compact(slowest).unwrap(),
            target_from_compact(bits).unwrap() * 4
        );
        // Never easier than the limit.
        let at_limit = retarget(params, params.pow_limit_bits, window, 0, 1_000_000);
        assert_eq!(target_from_compact(at_limit).unwrap(), params.pow_limit());
        // Only on period boundaries, never for regtest.
        assert_eq!(retarget_window(params, 31), None);
        assert_eq!(retarget_window(params, 0), None);
        assert_eq!(retarget_window(Network::Regtest.params(), 20), None);
        assert_eq!(
            retarget_window(params, 10),
            Some(RetargetWindow {
                first_height: 0,
                last_height: 9
            })
        );
    }

    /// Times of an honest chain from genesis, one target spacing apart.
    fn on_schedule(params: &ChainParams, blocks: u32) -> Vec<u32> {
        (0..blocks)
            .map(|h| params.genesis_time + h * params.target_spacing_secs)
            .collect()
    }

    #[test]
    fn endpoint_medians_count_the_right_intervals_near_genesis() {
        assert_eq!(endpoint_heights(0), 0..=0);
        assert_eq!(endpoint_heights(9), 0..=9);
        assert_eq!(endpoint_heights(29), 19..=29);
        assert_eq!([0, 9, 19, 29].map(endpoint_median_height), [0, 5, 14, 24]);
        // A chain exactly on schedule keeps its target at every retarget,
        // the short first periods included.
        let params = Network::Main.params();
        let times = on_schedule(params, 60);
        for height in (10..60).step_by(10) {
            assert_eq!(
                next_work_required(params, height, 0x1d00ffff, |h| times[h as usize]),
                0x1d00ffff,
                "height {height}"
            );
        }
    }

    /// The attack of the issue "Chain safety under adversaries": the miner of
    /// a period's last block stamps it `max_future_block_time` ahead, the most
    /// a node accepts. With the span measured between single timestamps the
    /// next period became 4x easier (the clamp); measured between endpoint
    /// medians, the target moves at most one spacing's worth of the period,
    /// 11/10 of the honest target (protocol spec 6.2), and the next retarget
    /// is bounded the same way.
    #[test]
    fn a_far_future_timestamp_at_a_period_end_moves_the_target_at_most_one_interval() {
        for network in [Network::Main, Network::Test] {
            let params = network.params();
            let bits = 0x1d00ffff;
            let honest = on_schedule(params, 41);
            let mut attacked = honest.clone();
            // Block 29 ends the window of the retarget at 30. Its miner's
            // clock reads block 28's time plus a spacing, as everyone's.
            let now = honest[28] + params.target_spacing_secs;
            attacked[29] = now + params.max_future_block_time_secs;
            // The honest blocks after it stay valid: above their median time past.
            for h in 30..41usize {
                let before = &attacked[h.saturating_sub(MEDIAN_TIME_SPAN)..h];
                assert!(
                    attacked[h] > median_time_past(before),
                    "{network}: block {h}"
                );
            }

            let within_one_interval = |height: u32, honest_bits: u32, attacked_bits: u32| {
                let honest_target = target_from_compact(honest_bits).unwrap();
                let target = target_from_compact(attacked_bits).unwrap();
                assert!(
                    target * 10 <= honest_target * 11 && target * 10 >= honest_target * 9,
                    "{network}: at height {height} the target moved from {honest_target:#x} \
                     to {target:#x}, more than one interval in ten"
                );
            };
            let honest_30 = next_work_required(params, 30, bits, |h| honest[h as usize]);
            let attacked_30 = next_work_required(params, 30, bits, |h| attacked[h as usize]);
            within_one_interval(30, honest_30, attacked_30);
            let honest_40 = next_work_required(params, 40, honest_30, |h| honest[h as usize]);
            let attacked_40 = next_work_required(params, 40, attacked_30, |h| attacked[h as usize]);
            within_one_interval(40, honest_40, attacked_40);
        }
    }

    proptest! {
        /// One timestamp, anywhere and of any value, changes the retarget
        /// span by at most the largest gap between consecutive honest times.
        /// Block 0 is left alone: the genesis time is a network parameter.
        #[test]
        fn one_timestamp_moves_the_span_by_at_most_one_gap(
            gaps in proptest::collection::vec(1u32..=60, 40),
            victim in 1usize..41,
            forged in any::<u32>(),
            period in 1u32..=4,
        ) {
            let params = Network::Main.params();
            let mut honest = vec![params.genesis_time];
            for gap in &gaps {
                honest.push(honest.last().unwrap() + gap);
            }
            let mut attacked = honest.clone();
            attacked[victim] = forged;
            let window = retarget_window(params, period * 10).unwrap();
            let span = |times: &[u32]| {
                i64::from(endpoint_time(window.last_height, |h| times[h as usize]))
                    - i64::from(endpoint_time(window.first_height, |h| times[h as usize]))
            };
            let largest_gap = i64::from(*gaps.iter().max().unwrap());
            prop_assert!((span(&attacked) - span(&honest)).abs() <= largest_gap);
        }
    }

    #[test]
    fn median_time_past_takes_the_middle() {
        assert_eq!(median_time_past(&[5, 1, 3]), 3);
        assert_eq!(median_time_past(&[9, 2, 7, 4, 11, 1, 6, 8, 3, 10, 5]), 6);
        assert_eq!(median_time_past(&[]), 0);
    }

    #[test]
    fn subsidy_halves() {
        let params = Network::Main.params();
        assert_eq!(block_subsidy(params, 0), Amount::from_coins(50));
        assert_eq!(block_subsidy(params, 209_999), Amount::from_coins(50));
        assert_eq!(block_subsidy(params, 210_000), Amount::from_coins(25));
        assert_eq!(block_subsidy(params, 210_000 * 33).units(), 0);
        assert_eq!(block_subsidy(params, u32::MAX), Amount::ZERO);
    }

    proptest! {
        #[test]
        fn compact_round_trips_canonical_bits(words in any::<[u64; 4]>(), shift in 0usize..256) {
            let target = U256(words) >> shift;
            prop_assume!(!target.is_zero());
            let bits = compact_from_target(target);
            let decoded = target_from_compact(bits).unwrap();
            // Compact keeps the top bits: never larger, same magnitude.
            prop_assert!(decoded <= target);
            prop_assert_eq!(decoded.bits(), target.bits());
            // Bits produced by the encoder are canonical.
            prop_assert_eq!(compact_from_target(decoded), bits);
        }

        #[test]
        fn compact_decode_never_panics(bits in any::<u32>()) {
            if let Ok(target) = target_from_compact(bits) {
                let again = target_from_compact(compact_from_target(target)).unwrap();
                prop_assert_eq!(again, target);
            }
        }
    }
}
