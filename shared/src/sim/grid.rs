//! [`ShardGrid`]: one shard's cells, bit-packed, with a one-cell halo, and the fast kernel that
//! steps it.
//!
//! # Layout
//!
//! Row `r` of the buffer (`r` in `0..h+2`) is grid row `y = r - 1`, so rows `0` and `h + 1` are
//! the north and south halo. Within a row, cell `x` is bit `x + 1` (bit `p % 64` of word
//! `p / 64`), so bit 0 is the west halo and bit `w + 1` the east halo; a row is
//! `stride = ceil((w + 2) / 64)` words and bits past `w + 1` are always zero. One zero word pads
//! each end of the buffer, so the kernel can read one word before the first row and after the
//! last without a bounds special case.
//!
//! # Kernel
//!
//! For each output word the kernel forms, with bitwise full adders, the vertical sums of three
//! rows (two bits per column), shifts them one column west and east (carrying bits across word
//! boundaries), and adds them into the four bit planes of the neighbour count (0 to 8). The rule
//! is then bitwise logic over those planes: a multiplexer tree selecting, per cell, the rule's
//! birth or survival bit for that count, or the shorter `B3/S23` expression. Every row is
//! processed in one flat pass over the buffer: the garbage a shift drags in across a row
//! boundary lands only in halo bit positions, which are cleared afterwards. The inner loop has
//! no branches and reads fixed-length slices, so it vectorises. Two buffers are swapped each
//! step; nothing is allocated.
//!
//! This module owns the cell storage and the kernel; which halo goes where, and where it comes
//! from, is [`super::edge`]'s and [`super::world`]'s business.

use rayon::prelude::*;

use super::{
    edge::{Direction, Edge, HaloError, ShardEdges, Span},
    params::{cell_index, ParamsError, WorldParams, MAX_SHARD_CELLS},
    splitmix64, Rule,
};

/// Zero words before the first row and after the last.
const PAD: usize = 1;

/// Aim for bands of about this many words when stepping one grid on several threads, so each
/// task is large enough to be worth scheduling (32 KiB of output).
const BAND_WORDS: usize = 4096;

/// One shard's cells with a one-cell halo, packed 64 cells per `u64`; the fast kernel.
///
/// The halo is the ring of cells just outside the shard, copied from its neighbours before each
/// step (see [`super::edge`] for directions). [`ShardGrid::step`] reads it and then clears it:
/// a step with no halo set treats the outside as dead.
#[derive(Clone)]
pub struct ShardGrid {
    width: u32,
    height: u32,
    /// Words per row, halo bits included.
    stride: usize,
    /// Interior bits of a row's first word (bit 0 is the west halo).
    first_mask: u64,
    /// Interior bits of a row's last word (equal to `first_mask` when `stride == 1`).
    last_mask: u64,
    cells: Vec<u64>,
    /// The buffer the next generation is written to; swapped with `cells` after each step.
    next: Vec<u64>,
}

impl ShardGrid {
    /// An all-dead grid of `width` × `height` cells, with a dead halo.
    ///
    /// # Errors
    /// [`ParamsError::ZeroDimension`] or [`ParamsError::ShardTooLarge`].
    pub fn new(width: u32, height: u32) -> Result<ShardGrid, ParamsError> {
        check_dims(width, height)?;
        Ok(ShardGrid::with_dims(width, height))
    }

    /// An all-dead grid without the size limit, for [`super::deep`], whose margins may take a
    /// shard at the limit just past it. `width` and `height` are at least 1.
    pub(super) fn with_dims(width: u32, height: u32) -> ShardGrid {
        let w = width as usize;
        let stride = (w + 2).div_ceil(64);
        let len = PAD + (height as usize + 2) * stride + PAD;
        ShardGrid {
            width,
            height,
            stride,
            first_mask: interior_mask(w, 0),
            last_mask: interior_mask(w, stride - 1),
            cells: vec![0; len],
            next: vec![0; len],
        }
    }

    /// A grid where cell `(x, y)` is `alive(x, y)`.
    ///
    /// # Errors
    /// As [`ShardGrid::new`].
    pub fn from_fn(
        width: u32,
        height: u32,
        mut alive: impl FnMut(u32, u32) -> bool,
    ) -> Result<ShardGrid, ParamsError> {
        let mut grid = ShardGrid::new(width, height)?;
        for y in 0..height {
            let row = grid.row_index(y as usize + 1);
            for x in 0..width {
                if alive(x, y) {
                    let p = x as usize + 1;
                    grid.cells[row + p / 64] |= 1 << (p % 64);
                }
            }
        }
        Ok(grid)
    }

    /// Shard `(shard_x, shard_y)` of `params`'s world at tick 0 (DESIGN §6).
    ///
    /// # Errors
    /// The parameters are invalid or the shard is outside the world.
    pub fn initial(
        params: &WorldParams,
        shard_x: u32,
        shard_y: u32,
    ) -> Result<ShardGrid, ParamsError> {
        params.validate()?;
        params.check_shard(shard_x, shard_y)?;
        let (gx0, gy0) = params.shard_origin(shard_x, shard_y);
        let (ww, threshold, seed) = (params.world_width(), params.threshold(), params.seed);
        let mut grid = ShardGrid::from_fn(params.shard_width, params.shard_height, |x, y| {
            let i = cell_index(gx0 + u64::from(x), gy0 + u64::from(y), ww);
            threshold.admits(splitmix64(seed ^ i))
        })?;
        for (x, y) in params.cells_within((gx0, gy0), params.shard_width, params.shard_height) {
            grid.set(x, y, true);
        }
        Ok(grid)
    }

    /// Cells per row.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Buffer index of word 0 of halo-inclusive row `r`.
    #[inline]
    fn row_index(&self, r: usize) -> usize {
        PAD + r * self.stride
    }

    /// The bit at halo-inclusive coordinates `(p, r)`.
    #[inline]
    fn bit(&self, p: usize, r: usize) -> bool {
        self.cells[self.row_index(r) + p / 64] >> (p % 64) & 1 != 0
    }

    #[inline]
    fn put_bit(&mut self, p: usize, r: usize, alive: bool) {
        let i = self.row_index(r) + p / 64;
        let m = 1u64 << (p % 64);
        if alive {
            self.cells[i] |= m;
        } else {
            self.cells[i] &= !m;
        }
    }

    fn check_xy(&self, x: u32, y: u32) {
        assert!(
            x < self.width && y < self.height,
            "cell ({x}, {y}) is outside a {}x{} shard",
            self.width,
            self.height
        );
    }

    /// Whether cell `(x, y)` is alive.
    ///
    /// # Panics
    /// If `(x, y)` is outside the shard.
    pub fn get(&self, x: u32, y: u32) -> bool {
        self.check_xy(x, y);
        self.bit(x as usize + 1, y as usize + 1)
    }

    /// Sets cell `(x, y)`.
    ///
    /// # Panics
    /// If `(x, y)` is outside the shard.
    pub fn set(&mut self, x: u32, y: u32, alive: bool) {
        self.check_xy(x, y);
        self.put_bit(x as usize + 1, y as usize + 1, alive);
    }

    /// Copies bits `p0..p0 + n` of halo-inclusive row `r` into `out`, cell `p0` at bit 0;
    /// `out` has `n.div_ceil(64)` words, and bits past `n` in the last are zero. The span
    /// lies within the row's `width + 2` bits.
    pub(super) fn read_span(&self, r: usize, p0: usize, n: usize, out: &mut [u64]) {
        let row = self.row(r);
        let (k0, s) = (p0 / 64, p0 % 64);
        for (i, o) in out.iter_mut().enumerate() {
            let lo = row.get(k0 + i).map_or(0, |w| w >> s);
            let hi = match s {
                0 => 0,
                _ => row.get(k0 + i + 1).map_or(0, |w| w << (64 - s)),
            };
            *o = lo | hi;
        }
        let full = out.len().saturating_sub(1) * 64;
        if let Some(last) = out.last_mut() {
            *last &= low_bits(n - full);
        }
    }

    /// The reverse of [`ShardGrid::read_span`]: sets bits `p0..p0 + n` of halo-inclusive row
    /// `r` from `src` (bit 0 is cell `p0`), leaving the row's other bits alone.
    pub(super) fn write_span(&mut self, r: usize, p0: usize, n: usize, src: &[u64]) {
        let base = self.row_index(r);
        for (i, &word) in src.iter().enumerate().take(n.div_ceil(64)) {
            let m = low_bits(n - i * 64);
            let v = word & m;
            let (k, s) = ((p0 + i * 64) / 64, (p0 + i * 64) % 64);
            let w = &mut self.cells[base + k];
            *w = (*w & !(m << s)) | (v << s);
            if s != 0 && (m >> (64 - s)) != 0 {
                let w = &mut self.cells[base + k + 1];
                *w = (*w & !(m >> (64 - s))) | (v >> (64 - s));
            }
        }
    }

    /// The words of halo-inclusive row `r`.
    #[inline]
    fn row(&self, r: usize) -> &[u64] {
        let i = self.row_index(r);
        &self.cells[i..i + self.stride]
    }

    /// The interior bits of word `k` of a row.
    #[inline]
    fn mask(&self, k: usize) -> u64 {
        if k == 0 {
            self.first_mask
        } else if k == self.stride - 1 {
            self.last_mask
        } else {
            !0
        }
    }

    /// Live cells in the shard (the halo is not counted).
    pub fn population(&self) -> u64 {
        (1..=self.height as usize)
            .map(|r| {
                let row = self.row(r);
                row.iter()
                    .enumerate()
                    .map(|(k, w)| u64::from((w & self.mask(k)).count_ones()))
                    .sum::<u64>()
            })
            .sum()
    }

    /// Wrapping sum of `splitmix64(gy*W + gx)` over live cells, in global coordinates: this is
    /// shard `(shard_x, shard_y)` of a world `world_width` cells wide, with this grid's size as
    /// the shard size.
    pub fn fingerprint(&self, shard_x: u32, shard_y: u32, world_width: u64) -> u64 {
        let gx0 = u64::from(shard_x) * u64::from(self.width);
        let gy0 = u64::from(shard_y) * u64::from(self.height);
        let mut sum = 0u64;
        for r in 1..=self.height as usize {
            let gy = gy0 + (r as u64 - 1);
            for (k, &word) in self.row(r).iter().enumerate() {
                let mut bits = word & self.mask(k);
                while bits != 0 {
                    let p = (k * 64 + bits.trailing_zeros() as usize) as u64;
                    // p >= 1: bit 0 (the west halo) is masked off.
                    let gx = gx0 + p - 1;
                    sum = sum.wrapping_add(splitmix64(cell_index(gx, gy, world_width)));
                    bits &= bits - 1;
                }
            }
        }
        sum
    }

    /// Row `y` as text: `#` for a live cell, `.` for a dead one.
    ///
    /// # Panics
    /// If `y` is not a row of the shard.
    pub fn row_string(&self, y: u32) -> String {
        self.check_xy(0, y);
        let r = y as usize + 1;
        (1..=self.width as usize)
            .map(|p| if self.bit(p, r) { '#' } else { '.' })
            .collect()
    }

    /// Every row as text, north to south (see [`ShardGrid::row_string`]).
    pub fn rows(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.height).map(|y| self.row_string(y))
    }

    /// The shard's own cells on side `side`: what the neighbour in direction `side` needs as
    /// its halo on side `side.opposite()`.
    pub fn edge(&self, side: Direction) -> Edge {
        let (w, h) = (self.width as usize, self.height as usize);
        match side {
            Direction::North => self.row_edge(1),
            Direction::South => self.row_edge(h),
            Direction::West => self.column_edge(1),
            Direction::East => self.column_edge(w),
            _ => {
                let span = Span::edge(side, w, h);
                Edge::from_fn(span.len as u32, |i| {
                    let (p, r) = span.at(i as usize);
                    self.bit(p, r)
                })
            }
        }
    }

    /// Interior bits of row `r`, shifted down by one so cell `x` is bit `x`.
    fn row_edge(&self, r: usize) -> Edge {
        let row = self.row(r);
        let n = (self.width as usize).div_ceil(64);
        let words: Vec<u64> = (0..n)
            .map(|k| (row[k] >> 1) | row.get(k + 1).map_or(0, |next| next << 63))
            .collect();
        Edge::from_words(self.width, &words)
    }

    /// Bit `p` of every interior row, north to south.
    fn column_edge(&self, p: usize) -> Edge {
        let h = self.height as usize;
        let shift = p % 64;
        let mut words = vec![0u64; h.div_ceil(64)];
        let column = self.cells[self.row_index(1) + p / 64..]
            .iter()
            .step_by(self.stride);
        for (y, &word) in column.take(h).enumerate() {
            words[y / 64] |= (word >> shift & 1) << (y % 64);
        }
        Edge::from_words(self.height, &words)
    }

    /// All eight edges, for neighbours in the same process.
    pub fn edges(&self) -> ShardEdges {
        ShardEdges {
            edges: Direction::ALL.map(|d| self.edge(d)),
        }
    }

    /// Fills the halo on side `side` from `edge`, which must be the edge on side
    /// `side.opposite()` of the neighbour in direction `side` at the same tick.
    ///
    /// # Errors
    /// [`HaloError::WrongLength`] if `edge` does not have the side's length (`width` for north
    /// and south, `height` for east and west, 1 for corners); the halo is then unchanged.
    pub fn set_halo(&mut self, side: Direction, edge: &Edge) -> Result<(), HaloError> {
        check_halo_len(side, edge, self.width, self.height)?;
        self.fill_halo(side, edge);
        Ok(())
    }

    /// Fills the whole halo from the edges of the eight neighbours: `neighbours[i]` belongs to
    /// the shard in direction `Direction::ALL[i]` (use [`Direction::index`]). For a shard that
    /// is its own neighbour on a small torus, pass its own edges, taken before the call.
    ///
    /// # Errors
    /// [`HaloError::WrongLength`] if a neighbour's size does not fit; nothing is changed then.
    pub fn halo_from_neighbours(&mut self, neighbours: [&ShardEdges; 8]) -> Result<(), HaloError> {
        for d in Direction::ALL {
            check_halo_len(
                d,
                neighbours[d.index()].get(d.opposite()),
                self.width,
                self.height,
            )?;
        }
        self.fill_halo_from_neighbours(neighbours);
        Ok(())
    }

    /// [`ShardGrid::halo_from_neighbours`] without the length check: cells an edge lacks count
    /// as dead and extra ones are ignored. For callers that built every shard from one
    /// [`WorldParams`], where the lengths cannot differ.
    pub(crate) fn fill_halo_from_neighbours(&mut self, neighbours: [&ShardEdges; 8]) {
        for d in Direction::ALL {
            self.fill_halo(d, neighbours[d.index()].get(d.opposite()));
        }
    }

    /// Writes `edge` into the halo on side `side`, cutting or padding it to length.
    fn fill_halo(&mut self, side: Direction, edge: &Edge) {
        let (w, h) = (self.width as usize, self.height as usize);
        match side {
            Direction::North => self.fill_row_halo(0, edge),
            Direction::South => self.fill_row_halo(h + 1, edge),
            Direction::West => self.fill_column_halo(0, edge),
            Direction::East => self.fill_column_halo(w + 1, edge),
            _ => {
                let span = Span::halo(side, w, h);
                for i in 0..span.len {
                    let (p, r) = span.at(i);
                    self.put_bit(p, r, edge.get(i as u32));
                }
            }
        }
    }

    /// Sets bit `p` of interior rows `1..=h` to cells `0..h` of `edge`.
    fn fill_column_halo(&mut self, p: usize, edge: &Edge) {
        let (h, stride, shift) = (self.height as usize, self.stride, p % 64);
        let first = self.row_index(1) + p / 64;
        let bytes = edge.as_bytes();
        let column = self.cells[first..].iter_mut().step_by(stride);
        for (y, word) in column.take(h).enumerate() {
            let bit = u64::from(bytes.get(y / 8).map_or(0, |b| b >> (y % 8) & 1));
            *word = (*word & !(1 << shift)) | (bit << shift);
        }
    }

    /// Sets bits `1..=w` of halo row `r` to cells `0..w` of `edge`, keeping the corner bits.
    fn fill_row_halo(&mut self, r: usize, edge: &Edge) {
        let (w, base) = (self.width as usize, self.row_index(r));
        for k in 0..self.stride {
            let carry = if k > 0 { edge.word(k - 1) >> 63 } else { 0 };
            let v = (edge.word(k) << 1) | carry;
            let m = interior_mask(w, k);
            let word = &mut self.cells[base + k];
            *word = (*word & !m) | (v & m);
        }
    }

    /// Advances one generation under `rule`, reading the current halo, on this thread. The
    /// halo is dead afterwards.
    pub fn step(&mut self, rule: &Rule) {
        self.step_with(rule, false);
    }

    /// As [`ShardGrid::step`], splitting a large grid into row bands on the rayon pool. The
    /// result is identical.
    pub fn step_par(&mut self, rule: &Rule) {
        self.step_with(rule, true);
    }

    fn step_with(&mut self, rule: &Rule, parallel: bool) {
        if *rule == Rule::CONWAY {
            self.step_logic(&Conway, parallel);
        } else {
            self.step_logic(&Table::new(*rule), parallel);
        }
    }

    fn step_logic<L: Logic>(&mut self, logic: &L, parallel: bool) {
        let (stride, h) = (self.stride, self.height as usize);
        let (first, last) = (self.first_mask, self.last_mask);
        let start = PAD + stride;
        let cur = &self.cells[..];
        let out = &mut self.next[start..start + h * stride];
        let band = (BAND_WORDS / stride).max(1) * stride;
        if parallel && out.len() > band {
            out.par_chunks_mut(band).enumerate().for_each(|(b, chunk)| {
                kernel(logic, cur, chunk, start + b * band, stride);
                clear_halo_bits(chunk, stride, first, last);
            });
        } else {
            kernel(logic, cur, out, start, stride);
            clear_halo_bits(out, stride, first, last);
        }
        // The halo rows of the new generation are stale; make them dead until the next fill.
        self.next[PAD..start].fill(0);
        let south = PAD + (h + 1) * stride;
        self.next[south..south + stride].fill(0);
        std::mem::swap(&mut self.cells, &mut self.next);
    }
}

impl std::fmt::Debug for ShardGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "ShardGrid {}x{}", self.width, self.height)?;
        for row in self.rows() {
            writeln!(f, "{row}")?;
        }
        Ok(())
    }
}

/// A word with the low `n` bits set (all 64 for `n >= 64`).
#[inline]
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        !0
    } else {
        (1u64 << n) - 1
    }
}

/// Checks a shard size against the limits every kernel shares.
pub(crate) fn check_dims(width: u32, height: u32) -> Result<(), ParamsError> {
    if width == 0 {
        return Err(ParamsError::ZeroDimension {
            field: "shard_width",
        });
    }
    if height == 0 {
        return Err(ParamsError::ZeroDimension {
            field: "shard_height",
        });
    }
    let cells = u64::from(width) * u64::from(height);
    if cells > MAX_SHARD_CELLS {
        return Err(ParamsError::ShardTooLarge {
            cells,
            max: MAX_SHARD_CELLS,
        });
    }
    Ok(())
}

/// Checks that `edge` fits the halo on `side` of a `width` × `height` shard.
pub(crate) fn check_halo_len(
    side: Direction,
    edge: &Edge,
    width: u32,
    height: u32,
) -> Result<(), HaloError> {
    let expected = side.edge_len(width, height);
    if edge.len() == expected {
        Ok(())
    } else {
        Err(HaloError::WrongLength {
            side,
            width,
            height,
            expected,
            got: edge.len(),
        })
    }
}

/// The bits of word `k` of a row that hold cells, i.e. bit positions `1..=w`.
fn interior_mask(w: usize, k: usize) -> u64 {
    let lo = 64 * k;
    let from = lo.max(1);
    let to = (w + 1).min(lo + 64);
    if from >= to {
        return 0;
    }
    let n = to - from;
    let ones = if n == 64 { !0 } else { (1u64 << n) - 1 };
    ones << (from - lo)
}

/// Clears the halo bit positions of freshly computed rows (they hold shift spill-over).
fn clear_halo_bits(rows: &mut [u64], stride: usize, first: u64, last: u64) {
    for row in rows.chunks_exact_mut(stride) {
        row[0] &= first;
        row[stride - 1] &= last;
    }
}

/// A rule as bitwise logic over the neighbour-count planes.
trait Logic: Sync {
    /// Next state of 64 cells: `alive` are the current cells, `b0..b3` the bits of their live
    /// neighbour counts (0 to 8; `b3` is set only for 8, and then the others are clear).
    fn apply(&self, alive: u64, b0: u64, b1: u64, b2: u64, b3: u64) -> u64;
}

/// `B3/S23`: born or kept with count 3, kept with count 2, i.e. count is 2 or 3 (`b1 & !b2`,
/// and `b1` rules out 8) and `b0` is set or the cell is alive.
struct Conway;

impl Logic for Conway {
    #[inline(always)]
    fn apply(&self, alive: u64, b0: u64, b1: u64, b2: u64, _b3: u64) -> u64 {
        b1 & !b2 & (b0 | alive)
    }
}

/// Any rule: per count `k`, leaf `L_k = alive ? S_k : B_k` (as all-zero or all-one masks),
/// then a multiplexer tree on the count bits picks the leaf.
struct Table {
    /// `B_k` as a mask.
    born: [u64; 9],
    /// `B_k ^ S_k` as a mask, so `L_k = born_k ^ (alive & flip_k)`.
    flip: [u64; 9],
}

impl Table {
    fn new(rule: Rule) -> Table {
        let mask = |set: bool| if set { !0u64 } else { 0 };
        let mut t = Table {
            born: [0; 9],
            flip: [0; 9],
        };
        for k in 0..9 {
            t.born[k] = mask(rule.births(k as u32));
            t.flip[k] = t.born[k] ^ mask(rule.survives(k as u32));
        }
        t
    }
}

/// `s ? b : a`, bitwise.
#[inline(always)]
fn select(s: u64, a: u64, b: u64) -> u64 {
    a ^ ((a ^ b) & s)
}

impl Logic for Table {
    #[inline(always)]
    fn apply(&self, alive: u64, b0: u64, b1: u64, b2: u64, b3: u64) -> u64 {
        let leaf = |k: usize| self.born[k] ^ (alive & self.flip[k]);
        let p0 = select(b0, leaf(0), leaf(1));
        let p1 = select(b0, leaf(2), leaf(3));
        let p2 = select(b0, leaf(4), leaf(5));
        let p3 = select(b0, leaf(6), leaf(7));
        let q0 = select(b1, p0, p1);
        let q1 = select(b1, p2, p3);
        let r = select(b2, q0, q1);
        select(b3, r, leaf(8))
    }
}

/// Sum and carry of three bit vectors.
#[inline(always)]
fn full_add(a: u64, b: u64, c: u64) -> (u64, u64) {
    let t = a ^ b;
    (t ^ c, (a & b) | (t & c))
}

/// Computes `out.len()` words of the next generation: `out[i]` is buffer word `start + i`.
/// `start` is the first word of an interior row and `out` whole rows, so the rows above and
/// below and the words either side all exist (the buffer's padding covers the corners).
fn kernel<L: Logic>(logic: &L, cur: &[u64], out: &mut [u64], start: usize, stride: usize) {
    let n = out.len();
    // Word i of the output reads words i, i+1, i+2 of these three windows (j-1, j, j+1).
    let up = &cur[start - stride - 1..][..n + 2];
    let mid = &cur[start - 1..][..n + 2];
    let dn = &cur[start + stride - 1..][..n + 2];
    for (i, o) in out.iter_mut().enumerate() {
        // Vertical sums (ones, twos) of the three rows: column words to the west, here, east.
        let (s_w, c_w) = full_add(up[i], mid[i], dn[i]);
        let (s_e, c_e) = full_add(up[i + 2], mid[i + 2], dn[i + 2]);
        let alive = mid[i + 1];
        let (a, b) = (up[i + 1], dn[i + 1]);
        // Here: the pair above/below (the cell's own column minus itself) and all three.
        let (s2, c2) = (a ^ b, a & b);
        let (s3, c3) = (s2 ^ alive, c2 | (s2 & alive));
        // Column sums of the west and east neighbours, lined up under each cell.
        let ws = (s3 << 1) | (s_w >> 63);
        let wc = (c3 << 1) | (c_w >> 63);
        let es = (s3 >> 1) | (s_e << 63);
        let ec = (c3 >> 1) | (c_e << 63);
        // count = (ws + s2 + es) + 2 (wc + c2 + ec)
        let (b0, k1) = full_add(ws, s2, es);
        let (t, t2) = full_add(wc, c2, ec);
        let (b1, k2) = (t ^ k1, t & k1);
        let (b2, b3) = (t2 ^ k2, t2 & k2);
        *o = logic.apply(alive, b0, b1, b2, b3);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sim::PlainGrid;

    /// Deterministic pseudo-random bit `i` of stream `seed`, alive with probability `p/256`.
    fn coin(seed: u64, i: u64, p: u8) -> bool {
        (splitmix64(seed ^ i.wrapping_mul(0x9E37_79B9)) >> 56) < u64::from(p)
    }

    fn random_pair(w: u32, h: u32, seed: u64, p: u8) -> (ShardGrid, PlainGrid) {
        let alive = |x: u32, y: u32| coin(seed, u64::from(y) << 32 | u64::from(x), p);
        (
            ShardGrid::from_fn(w, h, alive).unwrap(),
            PlainGrid::from_fn(w, h, alive).unwrap(),
        )
    }

    fn random_halo(w: u32, h: u32, seed: u64, p: u8) -> Vec<(Direction, Edge)> {
        Direction::ALL
            .into_iter()
            .map(|d| {
                let s = seed ^ (d.index() as u64 + 1) << 40;
                (
                    d,
                    Edge::from_fn(d.edge_len(w, h), |i| coin(s, u64::from(i), p)),
                )
            })
            .collect()
    }

    fn assert_same(fast: &ShardGrid, plain: &PlainGrid, what: &str) {
        let (f, p): (Vec<_>, Vec<_>) = (fast.rows().collect(), plain.rows().collect());
        assert_eq!(f, p, "{what}: cells differ");
        assert_eq!(fast.population(), plain.population(), "{what}: population");
        assert_eq!(
            fast.fingerprint(3, 5, 1_000_003),
            plain.fingerprint(3, 5, 1_000_003),
            "{what}: fingerprint"
        );
        assert_eq!(fast.edges(), plain.edges(), "{what}: edges");
    }

    /// Steps a fast and a plain grid side by side with the same random halo each tick.
    fn check_against_plain(w: u32, h: u32, rule: Rule, seed: u64, p: u8, ticks: u32) {
        let (mut fast, mut plain) = random_pair(w, h, seed, p);
        assert_same(&fast, &plain, "initial");
        for t in 0..ticks {
            for (d, e) in random_halo(w, h, seed.wrapping_add(u64::from(t) + 1), p) {
                fast.set_halo(d, &e).unwrap();
                plain.set_halo(d, &e).unwrap();
            }
            if t % 2 == 0 {
                fast.step(&rule);
            } else {
                fast.step_par(&rule);
            }
            plain.step(&rule);
            assert_same(
                &fast,
                &plain,
                &format!("{w}x{h} {rule} seed {seed} tick {t}"),
            );
        }
    }

    #[test]
    fn masks() {
        assert_eq!(interior_mask(1, 0), 0b10);
        assert_eq!(interior_mask(62, 0), !0 - 1 - (1 << 63));
        assert_eq!(interior_mask(63, 0), !0 - 1);
        assert_eq!(interior_mask(63, 1), 0);
        assert_eq!(interior_mask(64, 1), 1);
        assert_eq!(interior_mask(200, 1), !0);
        let g = ShardGrid::new(63, 1).unwrap();
        assert_eq!((g.stride, g.first_mask, g.last_mask), (2, !0 - 1, 0));
    }

    #[test]
    fn get_set_rows_population() {
        let mut g = ShardGrid::new(70, 3).unwrap();
        g.set(0, 0, true);
        g.set(63, 1, true);
        g.set(69, 2, true);
        g.set(69, 2, true);
        assert!(g.get(0, 0) && g.get(63, 1) && g.get(69, 2) && !g.get(1, 0));
        assert_eq!(g.population(), 3);
        let rows: Vec<String> = g.rows().collect();
        assert_eq!(rows[0], format!("#{}", ".".repeat(69)));
        assert_eq!(rows[1], format!("{}#{}", ".".repeat(63), ".".repeat(6)));
        assert_eq!(rows[2], format!("{}#", ".".repeat(69)));
        g.set(0, 0, false);
        assert_eq!(g.population(), 2);
        // Halo bits never count.
        let full = Edge::from_fn(70, |_| true);
        g.set_halo(Direction::North, &full).unwrap();
        g.set_halo(Direction::West, &Edge::from_fn(3, |_| true))
            .unwrap();
        g.set_halo(Direction::East, &Edge::from_fn(3, |_| true))
            .unwrap();
        assert_eq!(g.population(), 2);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn get_out_of_range_panics() {
        ShardGrid::new(4, 4).unwrap().get(4, 0);
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(
            ShardGrid::new(0, 5),
            Err(ParamsError::ZeroDimension { .. })
        ));
        assert!(matches!(
            ShardGrid::new(1 << 14, 1 << 13),
            Err(ParamsError::ShardTooLarge { .. })
        ));
    }

    #[test]
    fn edges_and_halo_conventions() {
        // 3 x 2 shard:  #..
        //               .##
        let g =
            ShardGrid::from_fn(3, 2, |x, y| matches!((x, y), (0, 0) | (1, 1) | (2, 1))).unwrap();
        let bits = |e: Edge| (0..e.len()).map(|i| e.get(i)).collect::<Vec<_>>();
        assert_eq!(bits(g.edge(Direction::North)), [true, false, false]);
        assert_eq!(bits(g.edge(Direction::South)), [false, true, true]);
        assert_eq!(bits(g.edge(Direction::West)), [true, false]);
        assert_eq!(bits(g.edge(Direction::East)), [false, true]);
        assert_eq!(bits(g.edge(Direction::NorthWest)), [true]);
        assert_eq!(bits(g.edge(Direction::NorthEast)), [false]);
        assert_eq!(bits(g.edge(Direction::SouthWest)), [false]);
        assert_eq!(bits(g.edge(Direction::SouthEast)), [true]);

        // A lone dead cell with a live north halo above it and live west/east columns: the
        // north halo over x = 1 plus the NW corner give cell (0, 0) two neighbours.
        let mut h = ShardGrid::new(3, 2).unwrap();
        let err = h
            .set_halo(Direction::North, &Edge::from_fn(2, |_| true))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("N halo of a 3x2 shard needs 3 cells, got 2"),
            "{err}"
        );
        h.set_halo(Direction::North, &Edge::from_fn(3, |i| i == 1))
            .unwrap();
        h.set_halo(Direction::NorthWest, &Edge::from_fn(1, |_| true))
            .unwrap();
        h.set_halo(Direction::West, &Edge::from_fn(2, |i| i == 0))
            .unwrap();
        // (0,0) sees NW, N-halo over x=1 and the west halo at y=0: three neighbours, born.
        h.step(&Rule::CONWAY);
        assert_eq!(h.rows().collect::<Vec<_>>(), ["#..", "..."]);
        // The halo is dead after a step: the lone cell dies.
        h.step(&Rule::CONWAY);
        assert_eq!(h.population(), 0);
    }

    #[test]
    fn row_halo_keeps_corners() {
        for w in [1, 62, 63, 64, 65, 130] {
            let mut g = ShardGrid::new(w, 1).unwrap();
            let one = Edge::from_fn(1, |_| true);
            g.set_halo(Direction::NorthWest, &one).unwrap();
            g.set_halo(Direction::NorthEast, &one).unwrap();
            g.set_halo(Direction::North, &Edge::from_fn(w, |_| false))
                .unwrap();
            assert!(g.bit(0, 0) && g.bit(w as usize + 1, 0), "w = {w}");
            g.set_halo(Direction::North, &Edge::from_fn(w, |_| true))
                .unwrap();
            g.set_halo(Direction::NorthEast, &Edge::from_fn(1, |_| false))
                .unwrap();
            assert!(g.bit(0, 0) && !g.bit(w as usize + 1, 0) && g.bit(w as usize, 0));
            // Nothing past the east halo bit is ever set.
            let last = g.row(0)[g.stride - 1];
            let used = (w as usize + 2) - 64 * (g.stride - 1);
            if used < 64 {
                assert_eq!(last >> used, 0, "w = {w}");
            }
        }
    }

    #[test]
    fn fast_matches_plain_on_awkward_sizes() {
        let rules = [
            Rule::CONWAY,
            "B36/S23".parse().unwrap(),
            "B/S".parse().unwrap(),
            "B0/S8".parse().unwrap(),
            "B012345678/S012345678".parse().unwrap(),
            "B1357/S1357".parse().unwrap(),
            "B2/S".parse().unwrap(),
        ];
        let sizes = [
            (1, 1),
            (1, 7),
            (7, 1),
            (2, 2),
            (63, 5),
            (64, 5),
            (65, 5),
            (62, 3),
            (97, 61),
            (128, 4),
            (129, 3),
            (250, 9),
        ];
        for (i, rule) in rules.iter().enumerate() {
            for &(w, h) in &sizes {
                for p in [40, 128, 230] {
                    check_against_plain(w, h, *rule, (i as u64) << 20 | u64::from(w * h), p, 4);
                }
            }
        }
    }

    #[test]
    fn step_par_splits_big_grids_identically() {
        // 4096 / 33 words per row -> bands of 124 rows; 300 rows make three bands.
        let (mut a, _) = random_pair(2100, 300, 9, 90);
        let mut b = a.clone();
        for (d, e) in random_halo(2100, 300, 10, 90) {
            a.set_halo(d, &e).unwrap();
            b.set_halo(d, &e).unwrap();
        }
        let rule: Rule = "B36/S23".parse().unwrap();
        a.step(&rule);
        b.step_par(&rule);
        assert_eq!(a.cells, b.cells);
        a.step(&Rule::CONWAY);
        b.step_par(&Rule::CONWAY);
        assert_eq!(a.cells, b.cells);
    }

    #[test]
    fn still_life_and_oscillator() {
        let block = ShardGrid::from_fn(4, 4, |x, y| (1..3).contains(&x) && (1..3).contains(&y));
        let mut block = block.unwrap();
        let before: Vec<_> = block.rows().collect();
        block.step(&Rule::CONWAY);
        assert_eq!(block.rows().collect::<Vec<_>>(), before);

        let mut blinker = ShardGrid::from_fn(5, 5, |x, y| y == 2 && (1..4).contains(&x)).unwrap();
        blinker.step(&Rule::CONWAY);
        assert_eq!(
            blinker.rows().collect::<Vec<_>>(),
            [".....", "..#..", "..#..", "..#..", "....."]
        );
        blinker.step(&Rule::CONWAY);
        assert_eq!(
            blinker.rows().collect::<Vec<_>>(),
            [".....", ".....", ".###.", ".....", "....."]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn fast_matches_plain(
            w in 1u32..=140,
            h in 1u32..=40,
            birth in 0u16..512,
            survival in 0u16..512,
            seed in any::<u64>(),
            p in 0u8..=255,
        ) {
            check_against_plain(w, h, Rule::from_masks(birth, survival), seed, p, 3);
        }

        #[test]
        fn edges_round_trip_through_halo(w in 1u32..=140, h in 1u32..=20, seed in any::<u64>()) {
            // Plugging a grid's edges into the opposite halo of a plain grid and reading them
            // back through the plain grid's cells gives the same bits.
            let (fast, plain) = random_pair(w, h, seed, 128);
            for d in Direction::ALL {
                prop_assert_eq!(fast.edge(d), plain.edge(d));
            }
            let edges = fast.edges();
            let mut g = ShardGrid::new(w, h).unwrap();
            g.halo_from_neighbours([&edges; 8]).unwrap();
            for d in Direction::ALL {
                let span = Span::halo(d, w as usize, h as usize);
                let want = edges.get(d.opposite());
                for i in 0..span.len {
                    let (px, py) = span.at(i);
                    prop_assert_eq!(g.bit(px, py), want.get(i as u32));
                }
            }
        }
    }
}
