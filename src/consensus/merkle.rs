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
}
