//! Pure eviction planning for the miner image cache: which of the images the daemon pulled to remove
//! so that what it keeps fits `docker.image_cache_bytes`, least recently used first.
//!
//! Protected images (in use by a run, or about to be: pre-pulled for the next submissions) count
//! against the budget but are never chosen; when they alone exceed it the cache stays over budget
//! until they are released. No I/O: [`super::images`] applies the plan.

use std::collections::HashSet;

/// One image the daemon pulled, as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedImage {
    /// Digest-pinned reference (the cache key).
    pub pinned: String,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Unix time it was last used.
    pub last_used: f64,
}

/// The references to remove, oldest use first, so that the rest fits `budget` bytes.
pub fn plan_eviction(images: &[CachedImage], budget: u64, protected: &HashSet<String>) -> Vec<String> {
    // u128: a sum of u64 sizes cannot overflow it.
    let budget = u128::from(budget);
    let mut total: u128 = images.iter().map(|i| u128::from(i.size_bytes)).sum();
    if total <= budget {
        return Vec::new();
    }
    let mut candidates: Vec<&CachedImage> =
        images.iter().filter(|i| !protected.contains(&i.pinned)).collect();
    // Ties (same second) break on the reference so the plan is deterministic.
    candidates.sort_by(|a, b| {
        a.last_used
            .total_cmp(&b.last_used)
            .then_with(|| a.pinned.cmp(&b.pinned))
    });
    let mut evict = Vec::new();
    for image in candidates {
        if total <= budget {
            break;
        }
        total -= u128::from(image.size_bytes);
        evict.push(image.pinned.clone());
    }
    evict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(name: &str, size: u64, last_used: f64) -> CachedImage {
        CachedImage {
            pinned: name.to_owned(),
            size_bytes: size,
            last_used,
        }
    }

    fn none() -> HashSet<String> {
        HashSet::new()
    }

    #[test]
    fn within_budget_nothing_is_evicted() {
        let images = [img("a", 40, 1.0), img("b", 60, 2.0)];
        assert!(plan_eviction(&images, 100, &none()).is_empty());
        assert!(plan_eviction(&[], 0, &none()).is_empty());
    }

    #[test]
    fn least_recently_used_go_first_until_the_rest_fits() {
        let images = [img("new", 50, 30.0), img("old", 50, 10.0), img("mid", 50, 20.0)];
        assert_eq!(plan_eviction(&images, 100, &none()), vec!["old"]);
        assert_eq!(plan_eviction(&images, 50, &none()), vec!["old", "mid"]);
        assert_eq!(plan_eviction(&images, 0, &none()), vec!["old", "mid", "new"]);
    }

    #[test]
    fn a_large_recent_image_can_evict_several_old_small_ones() {
        let images = [img("s1", 10, 1.0), img("s2", 10, 2.0), img("big", 95, 3.0)];
        assert_eq!(plan_eviction(&images, 100, &none()), vec!["s1", "s2"]);
    }

    #[test]
    fn protected_images_count_but_are_never_chosen() {
        let images = [img("running", 80, 1.0), img("idle", 30, 2.0)];
        let protected = HashSet::from(["running".to_owned()]);
        assert_eq!(plan_eviction(&images, 100, &protected), vec!["idle"]);
        // Over budget by protected images alone: nothing more can go.
        assert_eq!(plan_eviction(&images, 10, &protected), vec!["idle"]);
        let all = HashSet::from(["running".to_owned(), "idle".to_owned()]);
        assert!(plan_eviction(&images, 10, &all).is_empty());
    }

    #[test]
    fn ties_break_on_the_reference_and_sizes_never_overflow() {
        let images = [img("b", u64::MAX, 5.0), img("a", u64::MAX, 5.0)];
        assert_eq!(plan_eviction(&images, u64::MAX - 1, &none()), vec!["a", "b"]);
    }

    #[test]
    fn a_zero_budget_keeps_nothing_idle() {
        let images = [img("a", 1, 1.0), img("b", 1, 2.0)];
        let protected = HashSet::from(["b".to_owned()]);
        assert_eq!(plan_eviction(&images, 0, &protected), vec!["a"]);
    }
}
