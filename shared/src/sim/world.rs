//! [`World`] and [`run_reference`]: a whole world stepped in one process, the answer every
//! distributed run must match bit for bit.
//!
//! It holds one [`ShardGrid`] per shard with a one-cell halo and exchanges borders every tick:
//! take every shard's edges, fill every halo from its eight torus neighbours (in memory,
//! [`ShardGrid::halo_from_neighbours`]), then step all shards on the rayon pool. The cluster
//! holds [`DeepShard`](super::DeepShard)s instead, whose margins are several cells deep and
//! exchanged every few ticks; the kernel is the same and so is every cell, which is what makes
//! this run the reference.

use rayon::prelude::*;

use super::{
    edge::{Direction, ShardEdges},
    grid::ShardGrid,
    params::{ParamsError, Summary, WorldParams},
};

/// A whole world: every shard of a [`WorldParams`], held in one process.
#[derive(Debug, Clone)]
pub struct World {
    params: WorldParams,
    /// Row-major: shard `(x, y)` at `y * width_in_shards + x`.
    shards: Vec<ShardGrid>,
    tick: u64,
}

impl World {
    /// The world at tick 0.
    ///
    /// # Errors
    /// The parameters do not validate.
    pub fn new(params: WorldParams) -> Result<World, ParamsError> {
        params.validate()?;
        let (ws, hs) = (params.width_in_shards, params.height_in_shards);
        let shards = (0..hs)
            .flat_map(|y| (0..ws).map(move |x| (x, y)))
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(x, y)| ShardGrid::initial(&params, x, y))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(World {
            params,
            shards,
            tick: 0,
        })
    }

    /// A world of `params`'s size and rule whose tick-0 cells are `alive(gx, gy)` (global
    /// coordinates) instead of the seeded soup; for tests and demonstrations.
    ///
    /// # Errors
    /// The parameters do not validate.
    pub fn from_fn(
        params: WorldParams,
        alive: impl Fn(u64, u64) -> bool + Sync,
    ) -> Result<World, ParamsError> {
        params.validate()?;
        let (ws, hs) = (params.width_in_shards, params.height_in_shards);
        let shards = (0..hs)
            .flat_map(|y| (0..ws).map(move |x| (x, y)))
            .map(|(x, y)| {
                let (gx0, gy0) = params.shard_origin(x, y);
                ShardGrid::from_fn(params.shard_width, params.shard_height, |cx, cy| {
                    alive(gx0 + u64::from(cx), gy0 + u64::from(cy))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(World {
            params,
            shards,
            tick: 0,
        })
    }

    /// The parameters the world was built from.
    pub fn params(&self) -> &WorldParams {
        &self.params
    }

    /// Ticks run so far.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Shard `(x, y)`, or `None` outside the world.
    pub fn shard(&self, x: u32, y: u32) -> Option<&ShardGrid> {
        if x < self.params.width_in_shards && y < self.params.height_in_shards {
            self.shards.get(self.index(x, y))
        } else {
            None
        }
    }

    fn index(&self, x: u32, y: u32) -> usize {
        y as usize * self.params.width_in_shards as usize + x as usize
    }

    /// Whether global cell `(gx, gy)` is alive (coordinates wrap round the torus).
    pub fn get(&self, gx: u64, gy: u64) -> bool {
        let p = &self.params;
        let (gx, gy) = (gx % p.world_width(), gy % p.world_height());
        let (sw, sh) = (u64::from(p.shard_width), u64::from(p.shard_height));
        // Quotients are below the shard counts and remainders below the shard sizes, both u32.
        let shard = &self.shards[self.index((gx / sw) as u32, (gy / sh) as u32)];
        shard.get((gx % sw) as u32, (gy % sh) as u32)
    }

    /// Advances every shard one tick.
    pub fn step(&mut self) {
        let edges: Vec<ShardEdges> = self.shards.par_iter().map(ShardGrid::edges).collect();
        let params = &self.params;
        let ws = params.width_in_shards as usize;
        // With fewer shards than threads, let each shard split its own rows too.
        let split_rows = self.shards.len() < rayon::current_num_threads();
        self.shards
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, shard)| {
                let (x, y) = ((i % ws) as u32, (i / ws) as u32);
                let neighbours = Direction::ALL.map(|d| {
                    let (nx, ny) = params.neighbour(x, y, d);
                    &edges[ny as usize * ws + nx as usize]
                });
                // Every shard was built from `params`, so every edge has the right length.
                shard.fill_halo_from_neighbours(neighbours);
                if split_rows {
                    shard.step_par(&params.rule);
                } else {
                    shard.step(&params.rule);
                }
            });
        self.tick += 1;
    }

    /// Advances `ticks` ticks.
    pub fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.step();
        }
    }

    /// Tick, population and fingerprint now.
    pub fn summary(&self) -> Summary {
        let ws = self.params.width_in_shards as usize;
        let ww = self.params.world_width();
        let (population, fingerprint) = self
            .shards
            .par_iter()
            .enumerate()
            .map(|(i, s)| {
                let (x, y) = ((i % ws) as u32, (i / ws) as u32);
                (s.population(), s.fingerprint(x, y, ww))
            })
            .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1.wrapping_add(b.1)));
        Summary {
            tick: self.tick,
            population,
            fingerprint,
        }
    }
}

/// Runs `params`'s world for `ticks` ticks in this process, on all cores, and reports the
/// result a distributed run of the same world must match exactly.
///
/// # Errors
/// The parameters do not validate.
pub fn run_reference(params: &WorldParams, ticks: u64) -> Result<Summary, ParamsError> {
    let mut world = World::new(params.clone())?;
    world.run(ticks);
    Ok(world.summary())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sim::{splitmix64, Rule};

    fn params(ws: u32, hs: u32, sw: u32, sh: u32) -> WorldParams {
        WorldParams {
            width_in_shards: ws,
            height_in_shards: hs,
            shard_width: sw,
            shard_height: sh,
            ..WorldParams::default()
        }
    }

    /// The dumbest possible torus: a `Vec<bool>` and modular arithmetic, no shards, no halo.
    struct Naive {
        w: u64,
        h: u64,
        cells: Vec<bool>,
    }

    impl Naive {
        fn new(w: u64, h: u64, alive: impl Fn(u64, u64) -> bool) -> Naive {
            let cells = (0..h).flat_map(|y| (0..w).map(move |x| (x, y)));
            let cells = cells.map(|(x, y)| alive(x, y)).collect();
            Naive { w, h, cells }
        }

        fn get(&self, x: u64, y: u64) -> bool {
            self.cells[((y % self.h) * self.w + x % self.w) as usize]
        }

        fn step(&mut self, rule: Rule) {
            let (w, h) = (self.w, self.h);
            let next = (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .map(|(x, y)| {
                    let mut n = 0;
                    for (dx, dy) in [(w - 1, h - 1), (0, h - 1), (1, h - 1), (w - 1, 0)] {
                        n += u32::from(self.get(x + dx, y + dy));
                    }
                    for (dx, dy) in [(1, 0), (w - 1, 1), (0, 1), (1, 1)] {
                        n += u32::from(self.get(x + dx, y + dy));
                    }
                    rule.next(self.get(x, y), n)
                })
                .collect();
            self.cells = next;
        }

        fn summary(&self) -> (u64, u64) {
            let mut pop = 0;
            let mut fp = 0u64;
            for y in 0..self.h {
                for x in 0..self.w {
                    if self.get(x, y) {
                        pop += 1;
                        fp = fp.wrapping_add(splitmix64(y * self.w + x));
                    }
                }
            }
            (pop, fp)
        }
    }

    fn assert_world_eq(world: &World, naive: &Naive, what: &str) {
        for y in 0..naive.h {
            for x in 0..naive.w {
                assert_eq!(world.get(x, y), naive.get(x, y), "{what}: cell ({x}, {y})");
            }
        }
        let s = world.summary();
        assert_eq!(
            (s.population, s.fingerprint),
            naive.summary(),
            "{what}: summary"
        );
    }

    const GLIDER: [(u64, u64); 5] = [(1, 0), (2, 1), (0, 2), (1, 2), (2, 2)];

    fn glider_at(x0: u64, y0: u64, w: u64, h: u64) -> impl Fn(u64, u64) -> bool + Sync {
        move |x, y| GLIDER.contains(&((x + w - x0 % w) % w, (y + h - y0 % h) % h))
    }

    #[test]
    fn glider_crosses_shards_and_wraps() {
        for p in [params(2, 2, 8, 8), params(3, 2, 5, 7), params(1, 1, 6, 6)] {
            let (w, h) = (p.world_width(), p.world_height());
            let mut world = World::from_fn(p.clone(), glider_at(0, 0, w, h)).unwrap();
            assert_eq!(world.summary().population, 5);
            // Enough periods to wrap round both axes at least once.
            for k in 1..=(w.max(h) + 2) {
                world.run(4);
                let want = Naive::new(w, h, glider_at(k, k, w, h));
                assert_world_eq(&world, &want, &format!("{w}x{h} after {k} periods"));
            }
            assert_eq!(world.tick(), 4 * (w.max(h) + 2));
        }
    }

    #[test]
    fn blinker_and_block_across_a_shard_corner() {
        // The block straddles all four shards of a 2 x 2 world of 4 x 4 shards; the blinker
        // wraps round the world's east/west seam.
        let p = params(2, 2, 4, 4);
        let block = |x: u64, y: u64| (3..5).contains(&x) && (3..5).contains(&y);
        let blinker = |x: u64, y: u64| y == 6 && (x == 7 || x == 0 || x == 1);
        let mut world = World::from_fn(p, move |x, y| block(x, y) || blinker(x, y)).unwrap();
        let start = Naive::new(8, 8, move |x, y| block(x, y) || blinker(x, y));
        let vertical = Naive::new(8, 8, move |x, y| {
            block(x, y) || (x == 0 && (5..8).contains(&y))
        });
        world.step();
        assert_world_eq(&world, &vertical, "after 1");
        world.step();
        assert_world_eq(&world, &start, "after 2");
    }

    #[test]
    fn one_cell_world_is_its_own_neighbour() {
        // A single live cell on a 1 x 1 torus sees itself eight times.
        let p = params(1, 1, 1, 1);
        let mut conway = World::from_fn(p.clone(), |_, _| true).unwrap();
        conway.step();
        assert_eq!(
            conway.summary().population,
            0,
            "B3/S23: 8 neighbours kill it"
        );
        let s8 = WorldParams {
            rule: "B/S8".parse().unwrap(),
            ..p.clone()
        };
        let mut world = World::from_fn(s8, |_, _| true).unwrap();
        world.run(3);
        assert_eq!(world.summary().population, 1, "B/S8 keeps it");
        let b0 = WorldParams {
            rule: "B0/S".parse().unwrap(),
            ..p
        };
        let mut world = World::from_fn(b0, |_, _| false).unwrap();
        world.step();
        assert_eq!(
            world.summary().population,
            1,
            "B0 gives birth with no neighbours"
        );
        world.step();
        assert_eq!(world.summary().population, 0);
    }

    #[test]
    fn shard_split_does_not_change_the_result() {
        // A 40 x 30 world cut three ways; cells depend on global coordinates only.
        let splits = [
            params(1, 1, 40, 30),
            params(2, 3, 20, 10),
            params(4, 5, 10, 6),
        ];
        let mut summaries = Vec::new();
        for p in splits {
            let p = WorldParams { seed: 7, ..p };
            summaries.push((
                run_reference(&p, 0).unwrap(),
                run_reference(&p, 10).unwrap(),
            ));
        }
        assert!(summaries[0].0.population > 300, "{summaries:?}");
        assert_eq!(summaries[0].1.tick, 10);
        assert!(summaries.windows(2).all(|s| s[0] == s[1]), "{summaries:?}");
        // And they agree with the naive torus.
        let p = WorldParams {
            seed: 7,
            ..params(2, 3, 20, 10)
        };
        let mut naive = Naive::new(40, 30, |x, y| p.initially_alive(x, y));
        for _ in 0..10 {
            naive.step(p.rule);
        }
        assert_eq!(
            (summaries[0].1.population, summaries[0].1.fingerprint),
            naive.summary()
        );
    }

    #[test]
    fn default_world_summary_is_pinned() {
        // The default world (8 x 5 shards of 250 x 250, seed 42, density 0.35, B3/S23). The
        // tick-0 figures were computed by an independent Python script from DESIGN §6; the
        // tick-20 ones match Golly 3.3 (`bgolly -a QuickLife -m 20` on the same soup with rule
        // `B3/S23:T2000,1250`, its output's fingerprint computed by the same script).
        let p = WorldParams::default();
        let s0 = run_reference(&p, 0).unwrap();
        assert_eq!(
            (s0.tick, s0.population, s0.fingerprint),
            (0, 874_992, 5_667_486_813_937_541_107)
        );
        let s20 = run_reference(&p, 20).unwrap();
        assert_eq!(
            (s20.tick, s20.population, s20.fingerprint),
            (20, 445_579, 15_901_984_611_392_352_857)
        );
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(World::new(params(0, 1, 4, 4)).is_err());
        assert!(run_reference(&params(1, 1, 4, 0), 1).is_err());
        let w = World::new(params(2, 2, 4, 4)).unwrap();
        assert!(w.shard(1, 1).is_some() && w.shard(2, 0).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        #[test]
        fn world_matches_naive_torus(
            ws in 1u32..=4,
            hs in 1u32..=3,
            sw in 1u32..=9,
            sh in 1u32..=9,
            birth in 0u16..512,
            survival in 0u16..512,
            seed in any::<u64>(),
            density in 0.0f64..=1.0,
        ) {
            let p = WorldParams {
                rule: Rule::from_masks(birth, survival),
                seed,
                density,
                ..params(ws, hs, sw, sh)
            };
            let mut world = World::new(p.clone()).unwrap();
            let mut naive = Naive::new(p.world_width(), p.world_height(), |x, y| p.initially_alive(x, y));
            for t in 0..5 {
                assert_world_eq(&world, &naive, &format!("{p:?} tick {t}"));
                world.step();
                naive.step(p.rule);
            }
        }
    }
}
