//! Exact-DSML replay memory (SERVING.md §3.8): tool-call id → the DSML block
//! the model sampled for that turn.
//!
//! Clients send tool calls back as JSON; rendering them canonically would not
//! reproduce the sampled bytes (key order, spacing, entities, separator), and
//! the prompt would stop matching the live KV at that point. So every id of a
//! parsed tool-call turn is mapped to the turn's raw block, and an assistant
//! message whose ids all map to one block renders that block verbatim.
//!
//! Limits: at most `max_ids` ids and [`MAX_BYTES`] of ids plus distinct
//! blocks; the least recently stored ids go first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ds4_engine::kvstore::ToolMapping;

/// Accounted bytes (ids + distinct blocks) kept at most.
pub const MAX_BYTES: usize = 512 << 20;

struct Entry {
    block: Arc<str>,
    stamp: u64,
    /// Loaded from a disk checkpoint's map rather than sampled by this
    /// process (§3.8: "source RAM or DISK").
    from_disk: bool,
}

pub struct ToolMemory {
    max_ids: usize,
    max_bytes: usize,
    ids: HashMap<String, Entry>,
    order: BTreeMap<u64, String>,
    /// Distinct blocks and how many ids use each.
    blocks: HashMap<Arc<str>, usize>,
    bytes: usize,
    tick: u64,
}

/// How the assistant tool calls of one request were rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Turns replayed from memory.
    pub mem: usize,
    /// Of those, turns whose block came from a disk checkpoint's map.
    pub disk: usize,
    /// Turns rendered canonically.
    pub canonical: usize,
    /// Of those, turns with an id the memory does not know.
    pub missing_ids: usize,
}

impl ToolMemory {
    pub fn new(max_ids: usize) -> Self {
        Self::with_limits(max_ids, MAX_BYTES)
    }

    pub fn with_limits(max_ids: usize, max_bytes: usize) -> Self {
        Self {
            max_ids: max_ids.max(1),
            max_bytes,
            ids: HashMap::new(),
            order: BTreeMap::new(),
            blocks: HashMap::new(),
            bytes: 0,
            tick: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// Maps every id to `block` (the calls of one turn share it).
    pub fn put(&mut self, ids: &[String], block: &str) {
        self.insert(ids, block, false);
    }

    /// Mappings read from disk checkpoints: only ids not known already (a
    /// block sampled by this process wins).
    pub fn put_from_disk(&mut self, ids: &[String], block: &str) {
        let new: Vec<String> = ids
            .iter()
            .filter(|id| !self.contains(id))
            .cloned()
            .collect();
        self.insert(&new, block, true);
    }

    /// Every id whose block occurs in `text`, with its block: what a
    /// checkpoint of that text carries. One substring search per distinct
    /// block.
    pub fn mappings_in(&self, text: &str) -> Vec<ToolMapping> {
        let present: std::collections::HashSet<&str> = self
            .blocks
            .keys()
            .filter(|b| text.contains(&***b))
            .map(|b| &**b)
            .collect();
        let mut out: Vec<ToolMapping> = self
            .ids
            .iter()
            .filter(|(_, e)| present.contains(&*e.block))
            .map(|(id, e)| ToolMapping {
                id: id.clone(),
                dsml: e.block.to_string(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn insert(&mut self, ids: &[String], block: &str, from_disk: bool) {
        if block.is_empty() {
            return;
        }
        let block: Arc<str> = match self.blocks.get_key_value(block) {
            Some((b, _)) => Arc::clone(b),
            None => Arc::from(block),
        };
        for id in ids.iter().filter(|id| !id.is_empty()) {
            self.remove(id);
            self.tick += 1;
            let uses = self.blocks.entry(Arc::clone(&block)).or_insert(0);
            if *uses == 0 {
                self.bytes += block.len();
            }
            *uses += 1;
            self.bytes += id.len();
            self.ids.insert(
                id.clone(),
                Entry {
                    block: Arc::clone(&block),
                    stamp: self.tick,
                    from_disk,
                },
            );
            self.order.insert(self.tick, id.clone());
        }
        while self.ids.len() > self.max_ids || (self.bytes > self.max_bytes && self.ids.len() > 1) {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.remove(&oldest);
        }
    }

    fn remove(&mut self, id: &str) {
        let Some(e) = self.ids.remove(id) else {
            return;
        };
        self.order.remove(&e.stamp);
        self.bytes -= id.len();
        if let Some(uses) = self.blocks.get_mut(&e.block) {
            *uses -= 1;
            if *uses == 0 {
                self.blocks.remove(&e.block);
                self.bytes -= e.block.len();
            }
        }
    }

    /// The block to replay for one assistant message's calls: every id known
    /// and all mapping to the same block.
    pub fn block_for(&self, ids: &[Option<String>]) -> Option<Arc<str>> {
        self.replay_for(ids).map(|(b, _)| b)
    }

    /// [`ToolMemory::block_for`], and whether any of the ids came from disk.
    pub fn replay_for(&self, ids: &[Option<String>]) -> Option<(Arc<str>, bool)> {
        let mut found: Option<&Arc<str>> = None;
        let mut from_disk = false;
        for id in ids {
            let e = self.ids.get(id.as_deref()?)?;
            match found {
                Some(b) if !Arc::ptr_eq(b, &e.block) => return None,
                _ => found = Some(&e.block),
            }
            from_disk |= e.from_disk;
        }
        found.map(|b| (Arc::clone(b), from_disk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<Option<String>> {
        v.iter().map(|s| Some(s.to_string())).collect()
    }

    #[test]
    fn checkpoint_mappings_and_disk_entries() {
        let mut m = ToolMemory::new(10);
        m.put(&["a".into(), "b".into()], "BLOCK1");
        m.put(&["c".into()], "BLOCK2");
        let found: Vec<(String, String)> = m
            .mappings_in("text BLOCK1 text")
            .into_iter()
            .map(|t| (t.id, t.dsml))
            .collect();
        assert_eq!(
            found,
            vec![("a".into(), "BLOCK1".into()), ("b".into(), "BLOCK1".into())]
        );
        assert!(m.mappings_in("nothing here").is_empty());
        // A disk mapping does not replace a sampled one, and is marked.
        m.put_from_disk(&["c".into(), "d".into()], "BLOCK3");
        assert_eq!(m.replay_for(&ids(&["c"])).unwrap().0.as_ref(), "BLOCK2");
        assert!(!m.replay_for(&ids(&["c"])).unwrap().1);
        let (block, disk) = m.replay_for(&ids(&["d"])).unwrap();
        assert_eq!((block.as_ref(), disk), ("BLOCK3", true));
        // Sampled again by this process: no longer from disk.
        m.put(&["d".into()], "BLOCK3");
        assert!(!m.replay_for(&ids(&["d"])).unwrap().1);
    }

    #[test]
    fn replays_only_when_all_ids_share_a_block() {
        let mut m = ToolMemory::new(10);
        m.put(&["a".into(), "b".into()], "BLOCK1");
        m.put(&["c".into()], "BLOCK2");
        assert_eq!(m.block_for(&ids(&["a", "b"])).as_deref(), Some("BLOCK1"));
        assert_eq!(m.block_for(&ids(&["a", "c"])), None);
        assert_eq!(m.block_for(&ids(&["a", "x"])), None);
        assert_eq!(m.block_for(&[None]), None);
        assert_eq!(m.block_for(&[]), None);
    }

    #[test]
    fn tool_memory_max_ids_prunes_oldest() {
        // SERVING.md §9 item 59.
        let mut m = ToolMemory::new(2);
        m.put(&["call_a".into()], "A");
        m.put(&["call_b".into()], "B");
        m.put(&["call_c".into()], "C");
        assert!(!m.contains("call_a"));
        assert!(m.contains("call_b") && m.contains("call_c"));
        assert_eq!(m.block_for(&ids(&["call_a"])), None);
    }

    #[test]
    fn byte_budget_prunes_and_accounts() {
        let mut m = ToolMemory::with_limits(100, 20);
        m.put(&["x".into(), "y".into()], "0123456789");
        assert_eq!(m.bytes, 12);
        m.put(&["z".into()], "abcdefghij");
        assert!(m.bytes <= 20);
        assert!(m.contains("z"));
        m.put(&["z".into()], "abcdefghij");
        assert!(m.contains("z"));
    }
}
