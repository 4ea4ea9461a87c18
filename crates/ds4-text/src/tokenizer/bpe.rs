//! Byte-level BPE over token ids (SERVING.md §1.4).
//!
//! Merges are keyed by the id pair, so a piece is encoded without building any strings: start
//! from the single-byte token ids and repeatedly apply the lowest-rank merge, leftmost on ties.
//! That is exactly what HF's heap-based `merge_all` computes (it orders candidates by
//! `(rank, position)` and skips stale entries).

use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

/// No-merge sentinel rank.
const NO_RANK: u32 = u32::MAX;

/// Pieces longer than this (in bytes) use the heap algorithm; shorter ones a linear rescan,
/// which is faster for the common case of a handful of symbols.
const HEAP_THRESHOLD: usize = 48;

pub struct Bpe {
    /// `(left << 32 | right) -> (rank, merged id)`.
    merges: FxHashMap<u64, (u32, u32)>,
    /// Token id of each single byte (`u32::MAX` when the vocab lacks it).
    pub byte_ids: [u32; 256],
    /// Number of real token ids; ids at or above are synthetic merge results (see
    /// [`Bpe::synthetic`]).
    pub n_tokens: u32,
    /// Byte ids that a synthetic id stands for. A merge whose result string is not in the vocab
    /// still takes part in merging (ds4 merges by string) and is emitted byte by byte.
    pub synthetic: Vec<Vec<u32>>,
    /// Set by [`Bpe::finalize`] when outputs may hold synthetic or missing-byte ids.
    needs_fixup: bool,
}

#[inline]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

impl Bpe {
    pub fn new(byte_ids: [u32; 256], n_tokens: u32) -> Self {
        Bpe {
            merges: FxHashMap::default(),
            byte_ids,
            n_tokens,
            synthetic: Vec::new(),
            needs_fixup: false,
        }
    }

    pub fn finalize(&mut self) {
        self.needs_fixup = !self.synthetic.is_empty() || self.byte_ids.contains(&u32::MAX);
    }

    /// Registers merge `rank`; an existing pair keeps its earlier (lower) rank, as in HF.
    pub fn add_merge(&mut self, left: u32, right: u32, rank: u32, merged: u32) {
        self.merges
            .entry(key(left, right))
            .or_insert((rank, merged));
    }

    pub fn new_synthetic(&mut self, bytes: Vec<u32>) -> u32 {
        self.synthetic.push(bytes);
        self.n_tokens + (self.synthetic.len() as u32 - 1)
    }

    /// Byte ids of a (possibly synthetic) symbol.
    pub fn expand_into(&self, id: u32, out: &mut Vec<u32>) {
        if id < self.n_tokens {
            out.push(id);
        } else {
            out.extend_from_slice(&self.synthetic[(id - self.n_tokens) as usize]);
        }
    }

    #[inline]
    fn rank(&self, a: u32, b: u32) -> (u32, u32) {
        match self.merges.get(&key(a, b)) {
            Some(&r) => r,
            None => (NO_RANK, 0),
        }
    }

    /// Encodes one pre-token; appends its ids to `out`. `scratch` is reused between calls.
    pub fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>, scratch: &mut Scratch) {
        let start = out.len();
        if piece.len() > HEAP_THRESHOLD {
            self.encode_heap(piece, out, scratch);
        } else {
            self.encode_linear(piece, out, scratch);
        }
        if self.needs_fixup {
            self.fix_up(out, start);
        }
    }

    /// Expands synthetic ids and drops bytes the vocab cannot represent (ds4 behaviour).
    fn fix_up(&self, out: &mut Vec<u32>, start: usize) {
        let tail: Vec<u32> = out.drain(start..).collect();
        for id in tail {
            if id != u32::MAX {
                self.expand_into(id, out);
            }
        }
        out.retain(|&id| id != u32::MAX);
    }

    fn encode_linear(&self, piece: &[u8], out: &mut Vec<u32>, scratch: &mut Scratch) {
        let syms = &mut scratch.syms;
        let ranks = &mut scratch.ranks;
        syms.clear();
        syms.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
        if syms.len() < 2 {
            out.extend_from_slice(syms);
            return;
        }
        // ranks[i] = (rank, merged id) of the pair (syms[i], syms[i + 1]).
        ranks.clear();
        ranks.extend(syms.windows(2).map(|w| self.rank(w[0], w[1])));
        loop {
            let mut best = NO_RANK;
            let mut at = 0;
            for (i, &(r, _)) in ranks.iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if best == NO_RANK {
                break;
            }
            syms[at] = ranks[at].1;
            syms.remove(at + 1);
            ranks.remove(at);
            if at < ranks.len() {
                ranks[at] = self.rank(syms[at], syms[at + 1]);
            }
            if at > 0 {
                ranks[at - 1] = self.rank(syms[at - 1], syms[at]);
            }
        }
        out.extend_from_slice(syms);
    }

    fn encode_heap(&self, piece: &[u8], out: &mut Vec<u32>, scratch: &mut Scratch) {
        let n = piece.len();
        let nodes = &mut scratch.nodes;
        nodes.clear();
        nodes.extend(piece.iter().enumerate().map(|(i, &b)| Node {
            id: self.byte_ids[b as usize],
            prev: if i == 0 { NONE } else { i as u32 - 1 },
            next: if i + 1 == n { NONE } else { i as u32 + 1 },
            alive: true,
        }));
        let heap = &mut scratch.heap;
        heap.clear();
        for i in 0..n - 1 {
            let (r, m) = self.rank(nodes[i].id, nodes[i + 1].id);
            if r != NO_RANK {
                heap.push(Cand::new(r, i as u32, m, nodes[i + 1].id));
            }
        }
        while let Some(c) = heap.pop() {
            let pos = c.pos as usize;
            let node = nodes[pos];
            if !node.alive || node.next == NONE {
                continue;
            }
            let right = node.next as usize;
            // Stale if either side changed since this candidate was pushed.
            if nodes[right].id != c.right {
                continue;
            }
            let (r, m) = self.rank(node.id, nodes[right].id);
            if r != c.rank || m != c.merged {
                continue;
            }
            nodes[pos].id = c.merged;
            nodes[right].alive = false;
            let after = nodes[right].next;
            nodes[pos].next = after;
            if after != NONE {
                nodes[after as usize].prev = pos as u32;
                let (r, m) = self.rank(c.merged, nodes[after as usize].id);
                if r != NO_RANK {
                    heap.push(Cand::new(r, pos as u32, m, nodes[after as usize].id));
                }
            }
            let before = nodes[pos].prev;
            if before != NONE {
                let (r, m) = self.rank(nodes[before as usize].id, c.merged);
                if r != NO_RANK {
                    heap.push(Cand::new(r, before, m, c.merged));
                }
            }
        }
        let mut i = 0u32;
        while i != NONE {
            out.push(nodes[i as usize].id);
            i = nodes[i as usize].next;
        }
    }
}

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
pub struct Node {
    id: u32,
    prev: u32,
    next: u32,
    alive: bool,
}

/// A merge candidate; the max-heap pops the lowest `(rank, pos)` first.
#[derive(PartialEq, Eq)]
pub struct Cand {
    rank: u32,
    pos: u32,
    merged: u32,
    right: u32,
}

impl Cand {
    fn new(rank: u32, pos: u32, merged: u32, right: u32) -> Self {
        Cand {
            rank,
            pos,
            merged,
            right,
        }
    }
}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.rank, other.pos).cmp(&(self.rank, self.pos))
    }
}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Reusable buffers for [`Bpe::encode_piece`].
#[derive(Default)]
pub struct Scratch {
    syms: Vec<u32>,
    ranks: Vec<(u32, u32)>,
    nodes: Vec<Node>,
    heap: BinaryHeap<Cand>,
}

/// Pieces are cached by their bytes; entries live in one arena to avoid a `Vec` per word.
pub struct WordCache {
    map: FxHashMap<Box<[u8]>, (u32, u32)>,
    arena: Vec<u32>,
}

/// Longer pieces are rare and rarely repeat; caching them would only evict useful entries.
pub const CACHE_MAX_PIECE: usize = 64;
const CACHE_MAX_ENTRIES: usize = 200_000;

impl WordCache {
    pub fn new() -> Self {
        WordCache {
            map: FxHashMap::default(),
            arena: Vec::new(),
        }
    }

    #[inline]
    pub fn get(&self, piece: &[u8]) -> Option<&[u32]> {
        self.map
            .get(piece)
            .map(|&(s, l)| &self.arena[s as usize..(s + l) as usize])
    }

    pub fn insert(&mut self, piece: &[u8], ids: &[u32]) {
        if self.map.len() >= CACHE_MAX_ENTRIES {
            self.map.clear();
            self.arena.clear();
        }
        let s = self.arena.len() as u32;
        self.arena.extend_from_slice(ids);
        self.map.insert(piece.into(), (s, ids.len() as u32));
    }
}

impl Default for WordCache {
    fn default() -> Self {
        Self::new()
    }
}
