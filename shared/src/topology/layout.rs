//! Shard placement: paths through the grid, cut into balanced runs, scored by halo traffic
//! (the layout rule is documented at [`ClusterTopology::place`](super::ClusterTopology::place)).

/// Halo cells per tick that cross a border in each direction class.
#[derive(Debug, Clone, Copy)]
pub(super) struct Weights {
    pub(super) north_south: u64,
    pub(super) east_west: u64,
}

/// Most band counts tried per orientation; bounds placement to a few million steps.
const MAX_BAND_CANDIDATES: u32 = 32;

/// The owner (backend index) of every shard, row-major, for the best layout found.
pub(super) fn best(w: u32, h: u32, parts: usize, weights: Weights) -> Vec<u32> {
    let mut best: Option<(u64, Vec<u32>)> = None;
    for transposed in [false, true] {
        let across = if transposed { h } else { w };
        let max_bands = across
            .min(u32::try_from(parts).unwrap_or(u32::MAX))
            .clamp(1, MAX_BAND_CANDIDATES);
        for bands in 1..=max_bands {
            let order = path(w, h, bands, transposed);
            let owner = assign(&order, parts);
            if !all_connected(&owner, w, h, parts) {
                continue;
            }
            let cost = halo_cost(&owner, w, h, weights);
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, owner));
            }
        }
    }
    // One band (stripes) is always connected, so `best` is set; fall back to it anyway.
    best.map_or_else(|| assign(&path(w, h, 1, false), parts), |(_, o)| o)
}

/// A path visiting every shard once: `bands` bands of whole columns (of rows when
/// `transposed`), taken in turn, each swept row by row in a snake, alternating down and
/// up so consecutive bands meet at the same edge. Returns row-major indices.
pub(super) fn path(w: u32, h: u32, bands: u32, transposed: bool) -> Vec<u32> {
    // Work in a frame where bands split the first axis (of length `a`).
    let (a, b) = if transposed { (h, w) } else { (w, h) };
    let mut order = Vec::with_capacity((a as usize) * (b as usize));
    let (base, extra) = (a / bands, a % bands);
    let mut start = 0;
    for band in 0..bands {
        let width = base + u32::from(band < extra);
        let end = start + width;
        let rows: Box<dyn Iterator<Item = u32>> = if band % 2 == 0 {
            Box::new(0..b)
        } else {
            Box::new((0..b).rev())
        };
        for (i, r) in rows.enumerate() {
            let cols: Box<dyn Iterator<Item = u32>> = if i % 2 == 0 {
                Box::new(start..end)
            } else {
                Box::new((start..end).rev())
            };
            for c in cols {
                let (x, y) = if transposed { (r, c) } else { (c, r) };
                order.push(y * w + x);
            }
        }
        start = end;
    }
    order
}

/// Cuts `order` into `parts` consecutive runs whose lengths differ by at most one (the
/// longer ones first) and gives run `i` to backend `i`.
pub(super) fn assign(order: &[u32], parts: usize) -> Vec<u32> {
    let mut owner = vec![0u32; order.len()];
    let parts = parts.max(1);
    let (base, extra) = (order.len() / parts, order.len() % parts);
    let mut next = order.iter();
    for (part, o) in (0..parts).zip(0u32..) {
        let len = base + usize::from(part < extra);
        for &shard in next.by_ref().take(len) {
            owner[shard as usize] = o;
        }
    }
    owner
}

/// True when every backend's shards form one 4-connected block (not counting wrap-around).
pub(super) fn all_connected(owner: &[u32], w: u32, h: u32, parts: usize) -> bool {
    let (w, h) = (w as usize, h as usize);
    let mut seen = vec![false; owner.len()];
    let mut blocks = vec![0u32; parts];
    let mut queue = std::collections::VecDeque::new();
    for start in 0..owner.len() {
        if seen[start] {
            continue;
        }
        let o = owner[start];
        blocks[o as usize] += 1;
        if blocks[o as usize] > 1 {
            return false;
        }
        seen[start] = true;
        queue.push_back(start);
        while let Some(i) = queue.pop_front() {
            let (x, y) = (i % w, i / w);
            let mut visit = |j: usize| {
                if !seen[j] && owner[j] == o {
                    seen[j] = true;
                    queue.push_back(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
    }
    true
}

/// Halo cells per tick sent between different backends, over all shards and all eight
/// torus neighbours.
pub(super) fn halo_cost(owner: &[u32], w: u32, h: u32, weights: Weights) -> u64 {
    let (w, h) = (w as usize, h as usize);
    let mut cost = 0;
    for y in 0..h {
        let (n, s) = ((y + h - 1) % h, (y + 1) % h);
        for x in 0..w {
            let (west, east) = ((x + w - 1) % w, (x + 1) % w);
            let o = owner[y * w + x];
            let differs = |xx: usize, yy: usize| u64::from(owner[yy * w + xx] != o);
            cost += (differs(x, n) + differs(x, s)) * weights.north_south
                + (differs(east, y) + differs(west, y)) * weights.east_west
                + differs(east, n)
                + differs(west, n)
                + differs(east, s)
                + differs(west, s);
        }
    }
    cost
}
