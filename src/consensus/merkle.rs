//! Bitcoin's merkle tree over txids: pairs are hashed with sha256d, and a
//! level with an odd number of nodes pairs its last node with itself.
//!
//! That duplication lets two different transaction lists share a root
//! (CVE-2012-2459: `[a, b, c]` and `[a, b, c, c]`), so the root computation
//! also reports whether any level hashed two identical siblings; a block whose
//! tree is "mutated" that way is invalid.

use super::hash::{sha256d, Hash256};

fn hash_pair(left: &Hash256, right: &Hash256) -> Hash256 {
    let mut data = [0u8; 64];
    data[..32].copy_from_slice(&left.0);
    data[32..].copy_from_slice(&right.0);
    sha256d(&data)
}

/// The merkle root of `leaves` and whether any level had two equal siblings.
/// An empty list has the zero root.
pub fn merkle_root(leaves: &[Hash256]) -> (Hash256, bool) {
    if leaves.is_empty() {
        return (Hash256::ZERO, false);
    }
    let mut level = leaves.to_vec();
    let mut mutated = false;
    while level.len() > 1 {
        mutated |= level.chunks_exact(2).any(|pair| pair[0] == pair[1]);
        level = level
            .chunks(2)
            .map(|pair| hash_pair(&pair[0], pair.get(1).unwrap_or(&pair[0])))
            .collect();
    }
    (level[0], mutated)
}

/// The sibling hashes from leaf `index` up to the root (a merkle proof).
/// Returns `None` if `index` is out of range.
pub fn merkle_branch(leaves: &[Hash256], mut index: usize) -> Option<Vec<Hash256>> {
    if index >= leaves.len() {
        return None;
    }
    let mut branch = Vec::new();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        let sibling = (index ^ 1).min(level.len() - 1);
        branch.push(level[sibling]);
        level = level
            .chunks(2)
            .map(|pair| hash_pair(&pair[0], pair.get(1).unwrap_or(&pair[0])))
            .collect();
        index /= 2;
    }
    Some(branch)
}

/// The root that `leaf` at `index` proves with `branch`.
pub fn root_from_branch(leaf: Hash256, mut index: usize, branch: &[Hash256]) -> Hash256 {
    let mut node = leaf;
    for sibling in branch {
        node = if index & 1 == 0 {
            hash_pair(&node, sibling)
        } else {
            hash_pair(sibling, &node)
        };
        index /= 2;
    }
    node
}

/// A partial merkle tree proving that the leaf at `index` is in the tree of
/// `leaves`: Bitcoin's `CPartialMerkleTree` (BIP 37), whose `merkleblock`
/// message esplora answers at `/tx/{txid}/merkleblock-proof`. Walks the
/// tree depth first from the root: a flag bit per node visited (1: a
/// matched leaf lies below it), and the hash of every node whose subtree
/// holds no match, and of every matched leaf. `None` if `index` is out of
/// range.
pub fn partial_merkle_tree(leaves: &[Hash256], index: usize) -> Option<(Vec<Hash256>, Vec<bool>)> {
    if index >= leaves.len() {
        return None;
    }
    let mut levels = vec![leaves.to_vec()];
    while levels.last().expect("one level").len() > 1 {
        let next = levels
            .last()
            .expect("one level")
            .chunks(2)
            .map(|pair| hash_pair(&pair[0], pair.get(1).unwrap_or(&pair[0])))
            .collect();
        levels.push(next);
    }
    let mut hashes = Vec::new();
    let mut bits = Vec::new();
    build_partial(&levels, levels.len() - 1, 0, index, &mut hashes, &mut bits);
    Some((hashes, bits))
}

fn build_partial(
    levels: &[Vec<Hash256>],
    height: usize,
    pos: usize,
    index: usize,
    hashes: &mut Vec<Hash256>,
    bits: &mut Vec<bool>,
) {
    let above_match = index >> height == pos;
    bits.push(above_match);
    if height == 0 || !above_match {
        hashes.push(levels[height][pos]);
        return;
    }
    build_partial(levels, height - 1, pos * 2, index, hashes, bits);
    if pos * 2 + 1 < levels[height - 1].len() {
        build_partial(levels, height - 1, pos * 2 + 1, index, hashes, bits);
    }
}

/// Recomputes the root of a partial merkle tree over `leaf_count` leaves
/// (the tests' check of `partial_merkle_tree`; clients verify with their
/// own, e.g. the `bitcoin` crate's `MerkleBlock::extract_matches`)
/// and returns it with the matched leaves and their indexes; `None` if the
/// hashes and flags do not describe such a tree (all of them used, none
/// missing).
#[cfg(test)]
fn extract_partial(
    leaf_count: usize,
    hashes: &[Hash256],
    bits: &[bool],
) -> Option<(Hash256, Vec<(usize, Hash256)>)> {
    if leaf_count == 0 {
        return None;
    }
    let width = |height: usize| (leaf_count + (1 << height) - 1) >> height;
    let mut height = 0;
    while width(height) > 1 {
        height += 1;
    }
    struct Walk<'a> {
        hashes: &'a [Hash256],
        bits: &'a [bool],
        used_hashes: usize,
        used_bits: usize,
        matches: Vec<(usize, Hash256)>,
    }
    fn walk(
        w: &mut Walk,
        width: &dyn Fn(usize) -> usize,
        height: usize,
        pos: usize,
    ) -> Option<Hash256> {
        let above_match = *w.bits.get(w.used_bits)?;
        w.used_bits += 1;
        if height == 0 || !above_match {
            let hash = *w.hashes.get(w.used_hashes)?;
            w.used_hashes += 1;
            if height == 0 && above_match {
                w.matches.push((pos, hash));
            }
            return Some(hash);
        }
        let left = walk(w, width, height - 1, pos * 2)?;
        let right = if pos * 2 + 1 < width(height - 1) {
            let right = walk(w, width, height - 1, pos * 2 + 1)?;
            if right == left {
                return None;
            }
            right
        } else {
            left
        };
        Some(hash_pair(&left, &right))
    }
    let mut w = Walk {
        hashes,
        bits,
        used_hashes: 0,
        used_bits: 0,
        matches: Vec::new(),
    };
    let root = walk(&mut w, &width, height, 0)?;
    (w.used_hashes == hashes.len() && w.used_bits.div_ceil(8) == bits.len().div_ceil(8))
        .then_some((root, w.matches))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(n: u8) -> Hash256 {
        sha256d(&[n])
    }

    #[test]
    fn single_leaf_is_its_own_root() {
        assert_eq!(merkle_root(&[leaf(1)]), (leaf(1), false));
    }

    #[test]
    fn two_leaves_hash_together() {
        let (root, mutated) = merkle_root(&[leaf(1), leaf(2)]);
        assert_eq!(root, hash_pair(&leaf(1), &leaf(2)));
        assert!(!mutated);
    }

    #[test]
    fn three_leaves_duplicate_the_last() {
        let (root, mutated) = merkle_root(&[leaf(1), leaf(2), leaf(3)]);
        let expected = hash_pair(
            &hash_pair(&leaf(1), &leaf(2)),
            &hash_pair(&leaf(3), &leaf(3)),
        );
        assert_eq!(root, expected);
        assert!(!mutated);
    }

    #[test]
    fn odd_levels_above_the_leaves() {
        // Five leaves: levels of 5, 3, 2, 1 nodes.
        let leaves: Vec<_> = (1..=5).map(leaf).collect();
        let l1 = [
            hash_pair(&leaves[0], &leaves[1]),
            hash_pair(&leaves[2], &leaves[3]),
            hash_pair(&leaves[4], &leaves[4]),
        ];
        let l2 = [hash_pair(&l1[0], &l1[1]), hash_pair(&l1[2], &l1[2])];
        assert_eq!(merkle_root(&leaves), (hash_pair(&l2[0], &l2[1]), false));
    }

    #[test]
    fn duplicated_tail_collides_and_is_flagged() {
        let honest = [leaf(1), leaf(2), leaf(3)];
        let mutated = [leaf(1), leaf(2), leaf(3), leaf(3)];
        let (honest_root, honest_flag) = merkle_root(&honest);
        let (mutated_root, mutated_flag) = merkle_root(&mutated);
        assert_eq!(honest_root, mutated_root, "the CVE-2012-2459 collision");
        assert!(!honest_flag);
        assert!(mutated_flag);
        // The duplication may also hide one level up.
        let six: Vec<_> = [1, 2, 3, 4, 5, 6, 5, 6].into_iter().map(leaf).collect();
        assert!(merkle_root(&six).1);
    }

    #[test]
    fn branches_prove_every_leaf() {
        for n in 1..=9u8 {
            let leaves: Vec<_> = (0..n).map(leaf).collect();
            let (root, _) = merkle_root(&leaves);
            for (i, l) in leaves.iter().enumerate() {
                let branch = merkle_branch(&leaves, i).unwrap();
                assert_eq!(root_from_branch(*l, i, &branch), root, "n={n} i={i}");
            }
            assert!(merkle_branch(&leaves, n as usize).is_none());
        }
    }

    #[test]
    fn a_partial_tree_proves_each_leaf_and_only_it() {
        for count in 1..=13usize {
            let leaves: Vec<Hash256> = (0..count as u8).map(leaf).collect();
            let (root, _) = merkle_root(&leaves);
            for index in 0..count {
                let (hashes, bits) = partial_merkle_tree(&leaves, index).unwrap();
                let (found_root, matches) = extract_partial(count, &hashes, &bits).unwrap();
                assert_eq!(found_root, root, "{count} leaves, index {index}");
                assert_eq!(matches, vec![(index, leaves[index])]);
            }
            assert!(partial_merkle_tree(&leaves, count).is_none());
        }
    }

    /// Bitcoin's own example: the only transaction of a one-transaction
    /// block is proven by its hash and a single set flag.
    #[test]
    fn a_single_leaf_tree_is_the_leaf_and_one_flag() {
        let (hashes, bits) = partial_merkle_tree(&[leaf(7)], 0).unwrap();
        assert_eq!((hashes, bits), (vec![leaf(7)], vec![true]));
    }

    #[test]
    fn a_truncated_partial_tree_is_refused() {
        let leaves: Vec<Hash256> = (0..6u8).map(leaf).collect();
        let (hashes, bits) = partial_merkle_tree(&leaves, 4).unwrap();
        assert!(extract_partial(6, &hashes[..hashes.len() - 1], &bits).is_none());
        assert!(extract_partial(6, &hashes, &bits[..2]).is_none());
    }
}
