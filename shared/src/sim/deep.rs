//! [`DeepShard`]: a shard with a halo `depth` cells deep, so it can take `depth` ticks per
//! border exchange instead of one; and [`Block`], the rectangle of cells that travels
//! between neighbours.
//!
//! A cell at tick `t + 1` depends on its 3 × 3 neighbourhood at tick `t`, so after `j` ticks
//! a wrong cell has spread `j` cells inwards. Fill a margin `d` deep with the neighbours'
//! cells at tick `t`, step the whole grid `j <= d` times, and the shard's own cells are exact
//! at tick `t + j` while the margin has gone stale from the outside in. Exchanging a
//! `d`-deep border every `d` ticks costs `d` times fewer messages and wake-ups than a
//! one-cell halo every tick, for a little redundant work on the margin (the kernel steps
//! `(w + 2d) × (h + 2d)` cells per tick instead of `(w + 2) × (h + 2)`).
//!
//! Layout: the shard's cells live inside a [`ShardGrid`] of `(w + 2d - 2) × (h + 2d - 2)`
//! cells whose own one-cell halo is the margin's outer ring. Shard cell `(x, y)` is
//! halo-inclusive position `(x + d, y + d)` of that grid.
//!
//! Which neighbour a block goes to, and when, is the tick engine's business.

use std::fmt;

use super::{
    edge::{Direction, HaloError},
    grid::{check_dims, ShardGrid},
    params::{cell_index, ParamsError, WorldParams},
    splitmix64, Rule,
};

/// The deepest margin allowed: a 64-cell border already makes one exchange per 64 ticks.
pub const MAX_HALO_DEPTH: u32 = 64;

/// The default depth's estimate of one border exchange's cost, in ticks of kernel work on
/// the shard: measured on the 2-core development VM with 4 backends, where an exchange
/// (messages, wake-ups, waiting for the slowest neighbour) took about 580 µs against 59 µs
/// per tick of stepping ten 250 × 250 shards.
const EXCHANGE_COST_IN_TICKS: f64 = 10.0;

/// The deepest margin [`default_depth`] picks.
const MAX_DEFAULT_DEPTH: u32 = 32;

/// A rectangle of cells, row-major, each row packed into whole `u64`s (cell `x` of a row is
/// bit `x % 64` of its word `x / 64`; bits past the width are zero).
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    width: u32,
    height: u32,
    words: Vec<u64>,
}

impl Block {
    fn zeroed(width: u32, height: u32) -> Block {
        let per_row = (width as usize).div_ceil(64);
        Block {
            width,
            height,
            words: vec![0; per_row * height as usize],
        }
    }

    fn words_per_row(&self) -> usize {
        (self.width as usize).div_ceil(64)
    }

    fn row(&self, y: usize) -> &[u64] {
        let n = self.words_per_row();
        &self.words[y * n..(y + 1) * n]
    }

    /// Cells per row.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Whether cell `(x, y)` is alive; cells outside the block are dead.
    pub fn get(&self, x: u32, y: u32) -> bool {
        if x >= self.width || y >= self.height {
            return false;
        }
        self.row(y as usize)[x as usize / 64] >> (x % 64) & 1 != 0
    }

    /// Bytes a `width` × `height` block takes on the wire.
    pub fn wire_len(width: u32, height: u32) -> usize {
        (width as usize).div_ceil(8) * height as usize
    }

    /// The wire form: each row in `ceil(width / 8)` bytes, least significant bit first.
    pub fn to_bytes(&self) -> Vec<u8> {
        let per_row = (self.width as usize).div_ceil(8);
        let mut out = Vec::with_capacity(per_row * self.height as usize);
        for y in 0..self.height as usize {
            let row = self.row(y);
            out.extend(row.iter().flat_map(|w| w.to_le_bytes()).take(per_row));
        }
        out
    }

    /// Reads the wire form of a `width` × `height` block. Bits past the width are ignored.
    ///
    /// # Errors
    /// [`HaloError::BlockBytes`] if `bytes` is not exactly [`Block::wire_len`] long.
    pub fn from_bytes(width: u32, height: u32, bytes: &[u8]) -> Result<Block, HaloError> {
        let expected = Block::wire_len(width, height);
        if bytes.len() != expected {
            return Err(HaloError::BlockBytes {
                width,
                height,
                expected,
                got: bytes.len(),
            });
        }
        let mut block = Block::zeroed(width, height);
        let per_row = (width as usize).div_ceil(8);
        let words_per_row = block.words_per_row();
        if per_row == 0 {
            return Ok(block);
        }
        for (y, row) in bytes.chunks_exact(per_row).enumerate() {
            let words = &mut block.words[y * words_per_row..(y + 1) * words_per_row];
            for (k, chunk) in row.chunks(8).enumerate() {
                let mut buf = [0u8; 8];
                buf[..chunk.len()].copy_from_slice(chunk);
                words[k] = u64::from_le_bytes(buf);
            }
            if !width.is_multiple_of(64) {
                if let Some(last) = words.last_mut() {
                    *last &= (1u64 << (width % 64)) - 1;
                }
            }
        }
        Ok(block)
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block {}x{}", self.width, self.height)
    }
}

/// One shard's cells with a margin `depth` cells deep on every side.
#[derive(Clone)]
pub struct DeepShard {
    width: u32,
    height: u32,
    depth: u32,
    grid: ShardGrid,
}

/// Where the rectangle for `side` lies along one axis: `(start, len)` of the shard's own
/// cells next to that side (`own`), or of the margin beyond it in halo-inclusive positions.
fn axis(offset: i32, size: u32, depth: u32, margin: bool) -> (usize, usize) {
    let (n, d) = (size as usize, depth as usize);
    match (offset, margin) {
        (-1, false) => (0, d),
        (1, false) => (n - d, d),
        (-1, true) => (0, d),
        (1, true) => (d + n, d),
        (_, false) => (0, n),
        (_, true) => (d, n),
    }
}

impl DeepShard {
    /// An all-dead shard of `width` × `height` cells with a margin `depth` deep.
    ///
    /// # Errors
    /// The shard size is zero or above the limit, or `depth` is not in
    /// `1..=min(width, height, MAX_HALO_DEPTH)`.
    pub fn new(width: u32, height: u32, depth: u32) -> Result<DeepShard, ParamsError> {
        check_dims(width, height)?;
        check_depth(depth, width, height)?;
        Ok(DeepShard {
            width,
            height,
            depth,
            grid: ShardGrid::with_dims(width + 2 * depth - 2, height + 2 * depth - 2),
        })
    }

    /// Shard `(shard_x, shard_y)` of `params`'s world at tick 0 (DESIGN §6).
    ///
    /// # Errors
    /// The parameters are invalid, the shard is outside the world, or `depth` is out of range.
    pub fn initial(
        params: &WorldParams,
        shard_x: u32,
        shard_y: u32,
        depth: u32,
    ) -> Result<DeepShard, ParamsError> {
        let flat = ShardGrid::initial(params, shard_x, shard_y)?;
        DeepShard::from_grid(&flat, depth)
    }

    /// The cells of `grid` (its halo is ignored) with a dead margin `depth` deep.
    ///
    /// # Errors
    /// `depth` is out of range for the grid's size.
    pub fn from_grid(grid: &ShardGrid, depth: u32) -> Result<DeepShard, ParamsError> {
        let mut deep = DeepShard::new(grid.width(), grid.height(), depth)?;
        let (w, d) = (grid.width() as usize, depth as usize);
        let mut row = vec![0u64; w.div_ceil(64)];
        for y in 0..grid.height() as usize {
            grid.read_span(y + 1, 1, w, &mut row);
            deep.grid.write_span(y + d, d, w, &row);
        }
        Ok(deep)
    }

    /// Cells per row.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Margin depth: the most ticks one border exchange covers.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Whether cell `(x, y)` is alive.
    ///
    /// # Panics
    /// If `(x, y)` is outside the shard.
    pub fn get(&self, x: u32, y: u32) -> bool {
        assert!(
            x < self.width && y < self.height,
            "cell ({x}, {y}) is outside a {}x{} shard",
            self.width,
            self.height
        );
        let mut word = [0u64];
        self.grid.read_span(
            (y + self.depth) as usize,
            (x + self.depth) as usize,
            1,
            &mut word,
        );
        word[0] != 0
    }

    /// Calls `f(y, words)` for every own row, north to south, with the row's cells packed
    /// from bit 0.
    fn for_each_row(&self, mut f: impl FnMut(usize, &[u64])) {
        let (w, d) = (self.width as usize, self.depth as usize);
        let mut row = vec![0u64; w.div_ceil(64)];
        for y in 0..self.height as usize {
            self.grid.read_span(y + d, d, w, &mut row);
            f(y, &row);
        }
    }

    /// Live cells in the shard (the margin is not counted).
    pub fn population(&self) -> u64 {
        let mut n = 0;
        self.for_each_row(|_, row| {
            n += row.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
        });
        n
    }

    /// Wrapping sum of `splitmix64(gy*W + gx)` over live cells, as
    /// [`ShardGrid::fingerprint`].
    pub fn fingerprint(&self, shard_x: u32, shard_y: u32, world_width: u64) -> u64 {
        let gx0 = u64::from(shard_x) * u64::from(self.width);
        let gy0 = u64::from(shard_y) * u64::from(self.height);
        let mut sum = 0u64;
        self.for_each_row(|y, row| {
            let gy = gy0 + y as u64;
            for (k, &word) in row.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let gx = gx0 + (k * 64) as u64 + u64::from(bits.trailing_zeros());
                    sum = sum.wrapping_add(splitmix64(cell_index(gx, gy, world_width)));
                    bits &= bits - 1;
                }
            }
        });
        sum
    }

    /// Every row as text, `#` alive and `.` dead, north to south.
    pub fn rows(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.height as usize);
        let w = self.width as usize;
        self.for_each_row(|_, row| {
            out.push(
                (0..w)
                    .map(|x| {
                        if row[x / 64] >> (x % 64) & 1 != 0 {
                            '#'
                        } else {
                            '.'
                        }
                    })
                    .collect(),
            );
        });
        out
    }

    /// Size of the block for `side`: what [`DeepShard::border`] returns and
    /// [`DeepShard::set_margin`] takes.
    pub fn block_size(side: Direction, width: u32, height: u32, depth: u32) -> (u32, u32) {
        let (dx, dy) = side.offset();
        let w = if dx == 0 { width } else { depth };
        let h = if dy == 0 { height } else { depth };
        (w, h)
    }

    /// The shard's own cells along `side`, `depth` deep: what the neighbour in direction
    /// `side` needs for its margin on `side.opposite()`.
    pub fn border(&self, side: Direction) -> Block {
        let (dx, dy) = side.offset();
        let d = self.depth as usize;
        let (x0, w) = axis(dx, self.width, self.depth, false);
        let (y0, h) = axis(dy, self.height, self.depth, false);
        let mut block = Block::zeroed(w as u32, h as u32);
        let per_row = block.words_per_row();
        for (y, out) in block.words.chunks_exact_mut(per_row.max(1)).enumerate() {
            self.grid.read_span(y0 + y + d, x0 + d, w, out);
        }
        block
    }

    /// Fills the margin on `side` from `block`, which must be the border on side
    /// `side.opposite()` of the neighbour in direction `side`, at this shard's tick.
    ///
    /// # Errors
    /// [`HaloError::WrongBlock`] if the block's size does not fit the side; nothing changes.
    pub fn set_margin(&mut self, side: Direction, block: &Block) -> Result<(), HaloError> {
        let (dx, dy) = side.offset();
        let (p0, w) = axis(dx, self.width, self.depth, true);
        let (r0, h) = axis(dy, self.height, self.depth, true);
        if (block.width as usize, block.height as usize) != (w, h) {
            return Err(HaloError::WrongBlock {
                side,
                expected: (w as u32, h as u32),
                got: (block.width, block.height),
            });
        }
        for y in 0..h {
            self.grid.write_span(r0 + y, p0, w, block.row(y));
        }
        Ok(())
    }

    /// The shard's own cells, without the margin, as one `width` × `height` block: the form
    /// a whole shard travels in (its bytes are [`Block::to_bytes`]).
    pub fn cells(&self) -> Block {
        let (w, h, d) = (
            self.width as usize,
            self.height as usize,
            self.depth as usize,
        );
        let mut block = Block::zeroed(self.width, self.height);
        let per_row = block.words_per_row();
        for (y, out) in block
            .words
            .chunks_exact_mut(per_row.max(1))
            .enumerate()
            .take(h)
        {
            self.grid.read_span(y + d, d, w, out);
        }
        block
    }

    /// A shard whose own cells are `cells` (its margin dead), with a margin `depth` deep: the
    /// reverse of [`DeepShard::cells`].
    ///
    /// # Errors
    /// As [`DeepShard::new`] for the block's size and `depth`.
    pub fn from_cells(cells: &Block, depth: u32) -> Result<DeepShard, ParamsError> {
        let mut deep = DeepShard::new(cells.width, cells.height, depth)?;
        let (w, d) = (cells.width as usize, depth as usize);
        for y in 0..cells.height as usize {
            deep.grid.write_span(y + d, d, w, cells.row(y));
        }
        Ok(deep)
    }

    /// Advances one generation under `rule`. The shard's cells are exact after `j` steps if
    /// every margin was filled at the tick before the first of them and `j <= depth`.
    pub fn step(&mut self, rule: &Rule) {
        self.grid.step(rule);
    }
}

impl fmt::Debug for DeepShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "DeepShard {}x{} depth {}",
            self.width, self.height, self.depth
        )?;
        for row in self.rows() {
            writeln!(f, "{row}")?;
        }
        Ok(())
    }
}

/// Checks that `depth` fits a `width` × `height` shard: a margin deeper than the shard would
/// need cells from beyond the next neighbour.
///
/// # Errors
/// [`ParamsError::HaloDepth`].
pub fn check_depth(depth: u32, width: u32, height: u32) -> Result<(), ParamsError> {
    let max = width.min(height).min(MAX_HALO_DEPTH);
    if depth == 0 || depth > max {
        return Err(ParamsError::HaloDepth { depth, max });
    }
    Ok(())
}

/// The margin depth used when none is asked for. A deeper margin means fewer exchanges but
/// more redundant kernel work per tick (counted in whole 64-cell words per row, as the kernel
/// works); this picks the depth up to 32 with the least estimated cost per tick,
/// `work(d) / work(1) + EXCHANGE_COST_IN_TICKS / d`. For 250 × 250 shards that is 32.
pub fn default_depth(width: u32, height: u32) -> u32 {
    let work = |d: u32| {
        let (w, h) = (
            u64::from(width) + 2 * u64::from(d),
            u64::from(height) + 2 * u64::from(d),
        );
        (w.div_ceil(64) * h) as f64
    };
    let base = work(1);
    let cost = |d: u32| work(d) / base + EXCHANGE_COST_IN_TICKS / f64::from(d);
    (1..=MAX_DEFAULT_DEPTH.min(width).min(height))
        .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sim::{Direction, PlainGrid};

    fn random_grid(w: u32, h: u32, seed: u64) -> ShardGrid {
        ShardGrid::from_fn(w, h, |x, y| {
            splitmix64(seed ^ (u64::from(y) << 32 | u64::from(x))) & 3 == 0
        })
        .unwrap()
    }

    /// Steps a world of `nx` × `ny` shards, each a `DeepShard` exchanging blocks every
    /// `depth` ticks (fewer at the end), and returns the world's rows after `ticks`.
    fn run_deep(world: &[Vec<ShardGrid>], depth: u32, ticks: u32, rule: &Rule) -> Vec<String> {
        let ny = world.len();
        let nx = world[0].len();
        let mut shards: Vec<Vec<DeepShard>> = world
            .iter()
            .map(|row| {
                row.iter()
                    .map(|g| DeepShard::from_grid(g, depth).unwrap())
                    .collect()
            })
            .collect();
        let mut done = 0;
        while done < ticks {
            let batch = depth.min(ticks - done);
            let borders: Vec<Vec<[Block; 8]>> = shards
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|s| Direction::ALL.map(|d| s.border(d)))
                        .collect()
                })
                .collect();
            for (y, row) in shards.iter_mut().enumerate() {
                for (x, shard) in row.iter_mut().enumerate() {
                    for d in Direction::ALL {
                        let (ox, oy) = d.offset();
                        let nx_ = (x as i64 + i64::from(ox)).rem_euclid(nx as i64) as usize;
                        let ny_ = (y as i64 + i64::from(oy)).rem_euclid(ny as i64) as usize;
                        let block = &borders[ny_][nx_][d.opposite().index()];
                        shard.set_margin(d, block).unwrap();
                    }
                    for _ in 0..batch {
                        shard.step(rule);
                    }
                }
            }
            done += batch;
        }
        let mut rows = Vec::new();
        for row in &shards {
            let per_shard: Vec<Vec<String>> = row.iter().map(|s| s.rows()).collect();
            for y in 0..per_shard[0].len() {
                rows.push(per_shard.iter().map(|r| r[y].as_str()).collect());
            }
        }
        rows
    }

    /// The same world stepped one tick at a time on one plain grid.
    fn run_plain(world: &[Vec<ShardGrid>], ticks: u32, rule: &Rule) -> Vec<String> {
        let (sw, sh) = (world[0][0].width(), world[0][0].height());
        let (nx, ny) = (world[0].len() as u32, world.len() as u32);
        let (w, h) = (nx * sw, ny * sh);
        let mut plain = PlainGrid::from_fn(w, h, |x, y| {
            world[(y / sh) as usize][(x / sw) as usize].get(x % sw, y % sh)
        })
        .unwrap();
        for _ in 0..ticks {
            let edges = plain.edges();
            plain.halo_from_neighbours([&edges; 8]).unwrap();
            plain.step(rule);
        }
        plain.rows().collect()
    }

    #[test]
    fn a_block_round_trips_through_the_wire_form() {
        let g = random_grid(70, 5, 3);
        let deep = DeepShard::from_grid(&g, 3).unwrap();
        for side in Direction::ALL {
            let b = deep.border(side);
            let (w, h) = DeepShard::block_size(side, 70, 5, 3);
            assert_eq!((b.width(), b.height()), (w, h));
            let bytes = b.to_bytes();
            assert_eq!(bytes.len(), Block::wire_len(w, h));
            assert_eq!(Block::from_bytes(w, h, &bytes).unwrap(), b);
        }
        assert!(Block::from_bytes(70, 3, &[0; 5]).is_err());
    }

    #[test]
    fn borders_hold_the_cells_next_to_each_side() {
        let g = random_grid(9, 7, 11);
        let deep = DeepShard::from_grid(&g, 2).unwrap();
        assert_eq!(deep.rows(), g.rows().collect::<Vec<_>>());
        assert_eq!(deep.population(), g.population());
        assert_eq!(deep.fingerprint(2, 1, 40), g.fingerprint(2, 1, 40));
        let se = deep.border(Direction::SouthEast);
        for y in 0..2 {
            for x in 0..2 {
                assert_eq!(se.get(x, y), g.get(7 + x, 5 + y));
            }
        }
        let west = deep.border(Direction::West);
        for y in 0..7 {
            for x in 0..2 {
                assert_eq!(west.get(x, y), g.get(x, y));
            }
        }
    }

    #[test]
    fn a_wrong_block_is_refused_and_changes_nothing() {
        let g = random_grid(9, 7, 1);
        let mut deep = DeepShard::from_grid(&g, 2).unwrap();
        let before = deep.rows();
        let wrong = deep.border(Direction::West);
        assert!(deep.set_margin(Direction::North, &wrong).is_err());
        assert_eq!(deep.rows(), before);
    }

    #[test]
    fn depth_is_bounded_by_the_shard() {
        assert!(DeepShard::new(4, 8, 4).is_ok());
        assert!(DeepShard::new(4, 8, 5).is_err());
        assert!(DeepShard::new(4, 8, 0).is_err());
        assert!(DeepShard::new(200, 200, MAX_HALO_DEPTH + 1).is_err());
    }

    #[test]
    fn default_depth_weighs_extra_work_against_fewer_exchanges() {
        assert_eq!(default_depth(250, 250), 32);
        assert_eq!(default_depth(97, 61), 15);
        assert_eq!(default_depth(1, 1), 1);
        assert_eq!(default_depth(3, 200), 3);
        // A row of 62 cells fills one word with a one-cell halo; a deeper margin makes two.
        assert!(default_depth(62, 62) < 16);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Deep margins exchanged every `depth` ticks give exactly the one-tick-at-a-time
        /// result, whatever the shard sizes (word boundaries included), depth and rule.
        #[test]
        fn deep_exchange_equals_stepping_one_tick_at_a_time(
            nx in 1usize..4, ny in 1usize..4,
            sw in 1u32..80, sh in 1u32..12,
            depth_pick in 1u32..10, ticks in 0u32..20,
            seed in any::<u64>(), highlife in any::<bool>(),
        ) {
            let depth = depth_pick.min(sw).min(sh);
            let rule: Rule = if highlife { "B36/S23" } else { "B3/S23" }.parse().unwrap();
            let world: Vec<Vec<ShardGrid>> = (0..ny)
                .map(|y| (0..nx).map(|x| random_grid(sw, sh, seed ^ (y * 8 + x) as u64)).collect())
                .collect();
            prop_assert_eq!(run_deep(&world, depth, ticks, &rule), run_plain(&world, ticks, &rule));
        }

        /// A shard's cells survive their byte form, whatever the size (word boundaries
        /// included) and depth, and a shard rebuilt from them steps as the original does.
        #[test]
        fn cells_survive_their_bytes_and_step_alike(
            w in 1u32..140, h in 1u32..20, depth_pick in 1u32..10, seed in any::<u64>(),
        ) {
            let depth = depth_pick.min(w).min(h);
            let mut shard = DeepShard::from_grid(&random_grid(w, h, seed), depth).unwrap();
            let bytes = shard.cells().to_bytes();
            prop_assert_eq!(bytes.len(), Block::wire_len(w, h));
            let block = Block::from_bytes(w, h, &bytes).unwrap();
            let mut back = DeepShard::from_cells(&block, depth).unwrap();
            prop_assert_eq!(back.rows(), shard.rows());
            let rule: Rule = "B3/S23".parse().unwrap();
            for _ in 0..depth {
                shard.step(&rule);
                back.step(&rule);
            }
            prop_assert_eq!(back.rows(), shard.rows());
        }
    }
}
