//! [`PlainGrid`]: the obviously correct kernel, one byte per cell and eight neighbour reads per
//! cell. It exists to check [`super::ShardGrid`] against and as a benchmark baseline; it has the
//! same halo conventions ([`super::edge`]) and the same API.

use super::{
    edge::{Direction, Edge, HaloError, ShardEdges, Span},
    grid::{check_dims, check_halo_len},
    params::{cell_index, ParamsError, WorldParams},
    splitmix64, Rule,
};

/// One shard's cells, one byte each (0 or 1), with a one-cell halo ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainGrid {
    width: u32,
    height: u32,
    /// `(w + 2) * (h + 2)` bytes, row-major, halo included (cell `(x, y)` at `(x+1, y+1)`).
    cells: Vec<u8>,
    next: Vec<u8>,
}

impl PlainGrid {
    /// An all-dead grid with a dead halo.
    ///
    /// # Errors
    /// [`ParamsError::ZeroDimension`] or [`ParamsError::ShardTooLarge`].
    pub fn new(width: u32, height: u32) -> Result<PlainGrid, ParamsError> {
        check_dims(width, height)?;
        let len = (width as usize + 2) * (height as usize + 2);
        Ok(PlainGrid {
            width,
            height,
            cells: vec![0; len],
            next: vec![0; len],
        })
    }

    /// A grid where cell `(x, y)` is `alive(x, y)`.
    ///
    /// # Errors
    /// As [`PlainGrid::new`].
    pub fn from_fn(
        width: u32,
        height: u32,
        mut alive: impl FnMut(u32, u32) -> bool,
    ) -> Result<PlainGrid, ParamsError> {
        let mut grid = PlainGrid::new(width, height)?;
        for y in 0..height {
            for x in 0..width {
                grid.set(x, y, alive(x, y));
            }
        }
        Ok(grid)
    }

    /// Shard `(shard_x, shard_y)` of `params`'s world at tick 0.
    ///
    /// # Errors
    /// The parameters are invalid or the shard is outside the world.
    pub fn initial(
        params: &WorldParams,
        shard_x: u32,
        shard_y: u32,
    ) -> Result<PlainGrid, ParamsError> {
        params.validate()?;
        params.check_shard(shard_x, shard_y)?;
        let (gx0, gy0) = params.shard_origin(shard_x, shard_y);
        let threshold = params.threshold();
        let ww = params.world_width();
        let mut grid = PlainGrid::from_fn(params.shard_width, params.shard_height, |x, y| {
            let i = cell_index(gx0 + u64::from(x), gy0 + u64::from(y), ww);
            threshold.admits(splitmix64(params.seed ^ i))
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

    /// Index of halo-inclusive `(p, r)`.
    #[inline]
    fn at(&self, p: usize, r: usize) -> usize {
        r * (self.width as usize + 2) + p
    }

    /// Whether cell `(x, y)` is alive.
    ///
    /// # Panics
    /// If `(x, y)` is outside the shard.
    pub fn get(&self, x: u32, y: u32) -> bool {
        assert!(
            x < self.width && y < self.height,
            "cell ({x}, {y}) is outside the shard"
        );
        self.cells[self.at(x as usize + 1, y as usize + 1)] != 0
    }

    /// Sets cell `(x, y)`.
    ///
    /// # Panics
    /// If `(x, y)` is outside the shard.
    pub fn set(&mut self, x: u32, y: u32, alive: bool) {
        assert!(
            x < self.width && y < self.height,
            "cell ({x}, {y}) is outside the shard"
        );
        let i = self.at(x as usize + 1, y as usize + 1);
        self.cells[i] = u8::from(alive);
    }

    /// Live cells (the halo is not counted).
    pub fn population(&self) -> u64 {
        let mut n = 0;
        for y in 0..self.height {
            for x in 0..self.width {
                n += u64::from(self.get(x, y));
            }
        }
        n
    }

    /// Wrapping sum of `splitmix64(gy*W + gx)` over live cells, in global coordinates.
    pub fn fingerprint(&self, shard_x: u32, shard_y: u32, world_width: u64) -> u64 {
        let gx0 = u64::from(shard_x) * u64::from(self.width);
        let gy0 = u64::from(shard_y) * u64::from(self.height);
        let mut sum = 0u64;
        for y in 0..self.height {
            for x in 0..self.width {
                if self.get(x, y) {
                    let i = cell_index(gx0 + u64::from(x), gy0 + u64::from(y), world_width);
                    sum = sum.wrapping_add(splitmix64(i));
                }
            }
        }
        sum
    }

    /// Every row as text, `#` alive and `.` dead.
    pub fn rows(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.height).map(|y| {
            (0..self.width)
                .map(|x| if self.get(x, y) { '#' } else { '.' })
                .collect()
        })
    }

    /// The shard's own cells on side `side`.
    pub fn edge(&self, side: Direction) -> Edge {
        let span = Span::edge(side, self.width as usize, self.height as usize);
        Edge::from_fn(span.len as u32, |i| {
            let (p, r) = span.at(i as usize);
            self.cells[self.at(p, r)] != 0
        })
    }

    /// All eight edges.
    pub fn edges(&self) -> ShardEdges {
        ShardEdges {
            edges: Direction::ALL.map(|d| self.edge(d)),
        }
    }

    /// Fills the halo on side `side` from the neighbour in direction `side`.
    ///
    /// # Errors
    /// [`HaloError::WrongLength`] if `edge` does not fit the side.
    pub fn set_halo(&mut self, side: Direction, edge: &Edge) -> Result<(), HaloError> {
        check_halo_len(side, edge, self.width, self.height)?;
        let span = Span::halo(side, self.width as usize, self.height as usize);
        for i in 0..span.len {
            let (p, r) = span.at(i);
            let idx = self.at(p, r);
            self.cells[idx] = u8::from(edge.get(i as u32));
        }
        Ok(())
    }

    /// Fills the whole halo; `neighbours[i]` is the shard in direction `Direction::ALL[i]`.
    ///
    /// # Errors
    /// [`HaloError::WrongLength`] if a neighbour's size does not fit.
    pub fn halo_from_neighbours(&mut self, neighbours: [&ShardEdges; 8]) -> Result<(), HaloError> {
        for d in Direction::ALL {
            check_halo_len(
                d,
                neighbours[d.index()].get(d.opposite()),
                self.width,
                self.height,
            )?;
        }
        for d in Direction::ALL {
            self.set_halo(d, neighbours[d.index()].get(d.opposite()))?;
        }
        Ok(())
    }

    /// Advances one generation under `rule`, reading the halo; the halo is dead afterwards.
    pub fn step(&mut self, rule: &Rule) {
        let stride = self.width as usize + 2;
        self.next.fill(0);
        for r in 1..=self.height as usize {
            for p in 1..=self.width as usize {
                let mut count = 0u32;
                for (dp, dr) in [
                    (0, 0),
                    (1, 0),
                    (2, 0),
                    (0, 1),
                    (2, 1),
                    (0, 2),
                    (1, 2),
                    (2, 2),
                ] {
                    count += u32::from(self.cells[(r + dr - 1) * stride + p + dp - 1]);
                }
                let alive = self.cells[r * stride + p] != 0;
                self.next[r * stride + p] = u8::from(rule.next(alive, count));
            }
        }
        std::mem::swap(&mut self.cells, &mut self.next);
    }
}
