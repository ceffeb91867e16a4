//! The subscribed filters as a tree of topic levels (PATCHES.md, 22).
//!
//! Finding the logs a published topic goes to used to compare the topic with every filter
//! (and remember the answer per topic). With a filter per taxi inbox that is a thousand
//! comparisons for the first message to each taxi, and every new filter was compared with
//! every remembered topic. Walking the tree costs a lookup or two per level of the topic,
//! however many filters there are. It answers exactly as `protocol::matches` does for each
//! filter, which a test checks on random topics and filters.

use std::collections::HashMap;

use super::FilterIdx;

/// Every filter that has a log, by its levels.
#[derive(Debug, Default)]
pub struct FilterTree {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    /// Filters going on with a literal level.
    levels: HashMap<Box<str>, Node>,
    /// Filters going on with `+`.
    plus: Option<Box<Node>>,
    /// The filter ending in `#` here: it matches whatever comes after, or nothing.
    hash: Option<FilterIdx>,
    /// The filter ending here.
    end: Option<FilterIdx>,
}

impl FilterTree {
    /// Adds `filter`, whose log is `idx`.
    pub fn insert(&mut self, filter: &str, idx: FilterIdx) {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                node.hash = Some(idx);
                return;
            }
            node = match level {
                "+" => node.plus.get_or_insert_with(Box::default),
                _ => node.levels.entry(level.into()).or_default(),
            };
        }
        node.end = Some(idx);
    }

    /// The logs of the filters `topic` matches, each once, in no particular order.
    pub fn matches(&self, topic: &str) -> Vec<FilterIdx> {
        let mut found = Vec::new();
        // Topics starting with `$` match no filter (as `protocol::matches`).
        if !topic.starts_with('$') {
            let levels: Vec<&str> = topic.split('/').collect();
            self.root.collect(&levels, &mut found);
        }
        found
    }
}

impl Node {
    /// Adds the filters below this node that match the rest of a topic, `levels`.
    fn collect(&self, levels: &[&str], found: &mut Vec<FilterIdx>) {
        found.extend(self.hash);
        let Some((level, rest)) = levels.split_first() else {
            found.extend(self.end);
            return;
        };
        // A `#` level in a topic matches no filter below it.
        if *level == "#" {
            return;
        }
        if let Some(next) = self.levels.get(*level) {
            next.collect(rest, found);
        }
        if let Some(next) = &self.plus {
            next.collect(rest, found);
        }
    }
}

#[cfg(test)]
mod test {
    use super::FilterTree;
    use crate::protocol::matches;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn sorted(mut v: Vec<usize>) -> Vec<usize> {
        v.sort_unstable();
        v
    }

    #[test]
    fn finds_literal_plus_and_hash_filters() {
        let mut tree = FilterTree::default();
        let filters = ["taxi/1/inbox", "taxi/+/position", "taxi/#", "#", "taxi/1/#"];
        for (idx, filter) in filters.iter().enumerate() {
            tree.insert(filter, idx);
        }
        assert_eq!(sorted(tree.matches("taxi/1/inbox")), vec![0, 2, 3, 4]);
        assert_eq!(sorted(tree.matches("taxi/2/position")), vec![1, 2, 3]);
        // `a/#` matches `a` itself.
        assert_eq!(sorted(tree.matches("taxi/1")), vec![2, 3, 4]);
        assert_eq!(sorted(tree.matches("taxi")), vec![2, 3]);
        assert_eq!(sorted(tree.matches("fleet/x")), vec![3]);
        assert!(tree.matches("$SYS/taxi/1/inbox").is_empty());
    }

    /// The tree and `protocol::matches` agree on every pair of many random topics and
    /// filters over a small alphabet (so that they often match), empty levels included.
    #[test]
    fn agrees_with_matching_each_filter() {
        let mut rng = StdRng::seed_from_u64(7);
        let level = |rng: &mut StdRng, wildcards: bool| -> String {
            let choices: &[&str] = if wildcards {
                &["a", "b", "", "+", "#", "$x"]
            } else {
                &["a", "b", "", "$x"]
            };
            choices[rng.gen_range(0..choices.len())].to_owned()
        };
        let path = |rng: &mut StdRng, wildcards: bool| -> String {
            let n = rng.gen_range(1..=4);
            (0..n)
                .map(|_| level(rng, wildcards))
                .collect::<Vec<_>>()
                .join("/")
        };
        let mut filters: Vec<String> = (0..300).map(|_| path(&mut rng, true)).collect();
        // Valid filters only: `#` last (the broker refuses the others before the router).
        filters.retain(|f| !f.split('/').rev().skip(1).any(|l| l == "#"));
        filters.sort();
        filters.dedup();
        let mut tree = FilterTree::default();
        for (idx, filter) in filters.iter().enumerate() {
            tree.insert(filter, idx);
        }
        for _ in 0..2000 {
            let topic = path(&mut rng, false);
            let expected: Vec<usize> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| matches(&topic, f))
                .map(|(idx, _)| idx)
                .collect();
            assert_eq!(sorted(tree.matches(&topic)), expected, "topic {topic:?}");
        }
    }
}
