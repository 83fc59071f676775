//! The cluster topology (DESIGN §3): which backend hosts which shard of the toroidal world.
//!
//! This module owns the domain types ([`ShardCoord`], [`Dimensions`], [`BackendEntry`],
//! [`ClusterTopology`]), the placement of shards on backends, the torus neighbourhood, and the
//! coordinator's self-exclusion from the discovered backends ([`exclude_self`]). It holds no
//! global state and no defaults: a topology exists only once the coordinator builds one with
//! [`ClusterTopology::place`] or a backend deserializes the one it was sent. Discovery, HTTP and
//! caching live elsewhere.
//!
//! # JSON form
//!
//! ```json
//! {"colony_id":"9f3c…","coordinator":{"ip":"127.0.0.1","internal_port":8082,"http_port":8083,"mgmt_port":8084},
//!  "backends":[{"instance_id":"backend_9000","address":{…}}],
//!  "width_in_shards":8,"height_in_shards":5,"shard_width":250,"shard_height":250,
//!  "simulation":{"rule":"B3/S23","seed":42,"density":0.35},
//!  "placement":[{"shard":{"x":0,"y":0},"instance_id":"backend_9000"}, …]}
//! ```
//!
//! `placement` lists every shard exactly once, in row-major order (`y` outer, `x` inner), so
//! `jq '.placement[] | select(.instance_id=="backend_9000")'` answers "what does this backend
//! host". Deserializing checks every invariant that [`ClusterTopology::validate`] checks, so a
//! `ClusterTopology` value is always a valid one.
//!
//! # Files
//!
//! This file holds [`ClusterTopology`], [`BackendEntry`] and the membership checks; beside it:
//! `shard` ([`ShardCoord`], [`Dimensions`] and their limits), `simulation` ([`Simulation`]),
//! `layout` (the placement search), `wire` (the JSON form) and `error` ([`TopologyError`]).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::address::NodeAddress;
use crate::sim::WorldParams;

mod error;
mod layout;
mod shard;
mod simulation;
mod wire;

pub use error::TopologyError;
pub use shard::{Dimensions, ShardCoord};
pub use simulation::Simulation;

use layout::Weights;
use simulation::check_pattern;
use wire::TopologyWire;

/// Most shards a world may have. Placement and validation are linear in this, and the
/// topology JSON stays a few MiB at worst.
pub const MAX_SHARDS: u64 = 65_536;

/// Most cells the whole world may hold: global cell indices `gy * W + gx` must fit in a `u32`.
pub const MAX_WORLD_CELLS: u64 = u32::MAX as u64;

/// Longest colony id or instance id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

// === impl BackendEntry ===

/// One backend of a topology.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendEntry {
    /// Its registry instance id, e.g. `backend_9000`.
    pub instance_id: String,
    /// Where its listeners are.
    pub address: NodeAddress,
}

impl BackendEntry {
    /// An entry from its parts.
    pub fn new(instance_id: impl Into<String>, address: NodeAddress) -> Self {
        BackendEntry {
            instance_id: instance_id.into(),
            address,
        }
    }
}

// === impl ClusterTopology ===

/// The coordinator's picture of a running colony: its id, the coordinator, the backends, the
/// dimensions and the backend of every shard. Immutable once built; every value is valid
/// (construction and deserialization check the invariants listed at [`ClusterTopology::validate`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "TopologyWire")]
pub struct ClusterTopology {
    colony_id: String,
    coordinator: NodeAddress,
    /// Sorted by instance id by [`ClusterTopology::place`]; kept as sent when deserialized.
    backends: Vec<BackendEntry>,
    dims: Dimensions,
    simulation: Simulation,
    /// Index into `backends` of the backend hosting each shard, row-major (`y * width + x`).
    owner: Vec<u32>,
}

impl ClusterTopology {
    /// Builds a topology, placing every shard on one of `backends`.
    ///
    /// The backends are sorted by instance id first, so the same cluster always gets the same
    /// placement. Each backend gets `⌊S/B⌋` or `⌈S/B⌉` shards (`S` shards, `B` backends; with
    /// more backends than shards some get none but stay listed), and each backend's shards form
    /// one 4-connected block.
    ///
    /// Layout: the world is cut into `p` bands of whole columns (or rows); a path snakes row by
    /// row through each band in turn, and consecutive runs of that path go to consecutive
    /// backends. Every band count and both orientations are tried; the layout kept is the one
    /// whose blocks are all connected and that sends the fewest halo cells across backends per
    /// tick (north/south borders weigh `shard_width`, east/west `shard_height`, corners 1).
    /// One band is plain stripes, which are always connected, so a layout always exists; more
    /// bands give squarer blocks when there are many backends.
    ///
    /// # Errors
    ///
    /// [`TopologyError::NoBackends`] on an empty list; [`TopologyError::InvalidDimension`];
    /// an invalid colony or instance id; duplicate instance ids or endpoints; a backend with
    /// the coordinator's endpoint.
    pub fn place(
        colony_id: impl Into<String>,
        coordinator: NodeAddress,
        mut backends: Vec<BackendEntry>,
        dims: Dimensions,
    ) -> Result<Self, TopologyError> {
        let colony_id = colony_id.into();
        dims.validate()?;
        backends.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        check_members(&colony_id, &coordinator, &backends)?;
        let weights = Weights {
            north_south: u64::from(dims.shard_width),
            east_west: u64::from(dims.shard_height),
        };
        let owner = layout::best(
            dims.width_in_shards,
            dims.height_in_shards,
            backends.len(),
            weights,
        );
        Ok(ClusterTopology {
            colony_id,
            coordinator,
            backends,
            dims,
            simulation: Simulation::default(),
            owner,
        })
    }

    /// The same topology with the given simulation settings.
    ///
    /// # Errors
    /// [`TopologyError::InvalidSimulation`] if the density is outside `[0, 1]`.
    pub fn with_simulation(mut self, simulation: Simulation) -> Result<Self, TopologyError> {
        simulation.validate()?;
        check_pattern(&simulation, &self.dims)?;
        self.simulation = simulation;
        Ok(self)
    }

    /// The rule, seed, density and pattern every shard is simulated with.
    pub fn simulation(&self) -> &Simulation {
        &self.simulation
    }

    /// Ticks per border exchange: the colony's `halo_depth`, or the default for its shards.
    pub fn halo_depth(&self) -> u32 {
        self.simulation.halo_depth.unwrap_or_else(|| {
            crate::sim::default_depth(self.dims.shard_width, self.dims.shard_height)
        })
    }

    /// Everything the simulation kernel needs: dimensions plus simulation settings.
    pub fn world_params(&self) -> WorldParams {
        WorldParams {
            width_in_shards: self.dims.width_in_shards,
            height_in_shards: self.dims.height_in_shards,
            shard_width: self.dims.shard_width,
            shard_height: self.dims.shard_height,
            rule: self.simulation.rule,
            seed: self.simulation.seed,
            density: self.simulation.density,
            cells: self.simulation.cells.clone(),
        }
    }

    /// This colony's id (new on every start).
    pub fn colony_id(&self) -> &str {
        &self.colony_id
    }

    /// The coordinator that built this topology.
    pub fn coordinator(&self) -> &NodeAddress {
        &self.coordinator
    }

    /// The backends, including any that host no shard.
    pub fn backends(&self) -> &[BackendEntry] {
        &self.backends
    }

    /// The dimensions.
    pub fn dimensions(&self) -> Dimensions {
        self.dims
    }

    /// Shards per row.
    pub fn width_in_shards(&self) -> u32 {
        self.dims.width_in_shards
    }

    /// Shards per column.
    pub fn height_in_shards(&self) -> u32 {
        self.dims.height_in_shards
    }

    /// Cells per shard row.
    pub fn shard_width(&self) -> u32 {
        self.dims.shard_width
    }

    /// Cells per shard column.
    pub fn shard_height(&self) -> u32 {
        self.dims.shard_height
    }

    /// World width in cells.
    pub fn world_width(&self) -> u32 {
        self.dims.world_width()
    }

    /// World height in cells.
    pub fn world_height(&self) -> u32 {
        self.dims.world_height()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.dims.shard_count()
    }

    /// True when `shard` lies inside the world.
    pub fn contains_shard(&self, shard: ShardCoord) -> bool {
        shard.x < self.dims.width_in_shards && shard.y < self.dims.height_in_shards
    }

    /// The backend hosting `shard`; `None` if the shard lies outside the world.
    pub fn backend_of(&self, shard: ShardCoord) -> Option<&BackendEntry> {
        let index = self.index_of(shard)?;
        let owner = *self.owner.get(index)?;
        self.backends.get(owner as usize)
    }

    /// The shards `instance_id` hosts, row-major; empty for an unknown or idle backend.
    pub fn shards_of(&self, instance_id: &str) -> Vec<ShardCoord> {
        let Some(b) = self
            .backends
            .iter()
            .position(|e| e.instance_id == instance_id)
        else {
            return Vec::new();
        };
        self.all_shards()
            .zip(&self.owner)
            .filter(|&(_, &o)| o as usize == b)
            .map(|(s, _)| s)
            .collect()
    }

    /// Every shard, row-major (`y` outer, `x` inner).
    pub fn all_shards(&self) -> impl Iterator<Item = ShardCoord> + use<> {
        let Dimensions {
            width_in_shards: w,
            height_in_shards: h,
            ..
        } = self.dims;
        (0..h).flat_map(move |y| (0..w).map(move |x| ShardCoord::new(x, y)))
    }

    /// Every shard with its backend, row-major.
    pub fn placement(&self) -> impl Iterator<Item = (ShardCoord, &BackendEntry)> + '_ {
        self.all_shards()
            .zip(&self.owner)
            .filter_map(|(s, &o)| Some((s, self.backends.get(o as usize)?)))
    }

    /// The eight neighbours of `shard` on the torus, in
    /// [`Direction::ALL`](crate::sim::Direction::ALL) order: N, NE, E, SE, S, SW, W, NW, where
    /// north is `y - 1` and east is `x + 1`, both wrapping.
    /// In a world one shard wide or tall, some (or all) neighbours are the shard itself.
    /// Coordinates outside the world are first reduced modulo its size.
    pub fn neighbours(&self, shard: ShardCoord) -> [ShardCoord; 8] {
        let w = self.dims.width_in_shards.max(1);
        let h = self.dims.height_in_shards.max(1);
        let x = shard.x % w;
        let y = shard.y % h;
        // x, y < w, h <= 2^16, so none of these overflow.
        let east = (x + 1) % w;
        let west = (x + w - 1) % w;
        let north = (y + h - 1) % h;
        let south = (y + 1) % h;
        [
            ShardCoord::new(x, north),
            ShardCoord::new(east, north),
            ShardCoord::new(east, y),
            ShardCoord::new(east, south),
            ShardCoord::new(x, south),
            ShardCoord::new(west, south),
            ShardCoord::new(west, y),
            ShardCoord::new(west, north),
        ]
    }

    /// The backend with `instance_id`.
    pub fn backend(&self, instance_id: &str) -> Option<&BackendEntry> {
        self.backends.iter().find(|e| e.instance_id == instance_id)
    }

    /// The backend whose data-plane endpoint (IP and internal port) is `address`'s; this is
    /// how a backend finds itself in a topology it was sent (DESIGN §4).
    pub fn backend_by_address(&self, address: &NodeAddress) -> Option<&BackendEntry> {
        self.backends
            .iter()
            .find(|e| e.address.same_endpoint(address))
    }

    /// True when some backend has `address`'s IP and internal port (the other ports may differ).
    pub fn contains_backend(&self, address: &NodeAddress) -> bool {
        self.backend_by_address(address).is_some()
    }

    /// Re-checks the invariants: dimensions valid; colony and instance ids valid; instance ids
    /// and endpoints unique; no backend at the coordinator's endpoint; every shard placed exactly
    /// once, on a listed backend. Values built by [`ClusterTopology::place`] or by
    /// deserialization always pass; this is a cheap guard for code that wants to assert it.
    ///
    /// # Errors
    ///
    /// The first broken invariant.
    pub fn validate(&self) -> Result<(), TopologyError> {
        self.dims.validate()?;
        check_members(&self.colony_id, &self.coordinator, &self.backends)?;
        let shards = self.all_shards().collect::<Vec<_>>();
        if let Some(&missing) = shards.get(self.owner.len()) {
            return Err(TopologyError::ShardUnplaced(missing));
        }
        for (shard, &o) in shards.iter().zip(&self.owner) {
            if o as usize >= self.backends.len() {
                return Err(TopologyError::UnknownBackend {
                    shard: *shard,
                    instance_id: format!("#{o}"),
                });
            }
        }
        if self.owner.len() > shards.len() {
            return Err(TopologyError::InvalidDimension {
                field: "placement",
                reason: "more placements than shards".into(),
            });
        }
        Ok(())
    }

    fn index_of(&self, shard: ShardCoord) -> Option<usize> {
        self.contains_shard(shard)
            .then(|| shard.y as usize * self.dims.width_in_shards as usize + shard.x as usize)
    }
}

/// Checks the ids and addresses of a topology's members.
fn check_members(
    colony_id: &str,
    coordinator: &NodeAddress,
    backends: &[BackendEntry],
) -> Result<(), TopologyError> {
    check_id(colony_id).map_err(TopologyError::InvalidColonyId)?;
    if backends.is_empty() {
        return Err(TopologyError::NoBackends);
    }
    let mut ids = HashSet::with_capacity(backends.len());
    let mut endpoints: HashMap<(std::net::IpAddr, u16), &str> =
        HashMap::with_capacity(backends.len());
    for b in backends {
        check_id(&b.instance_id).map_err(|reason| TopologyError::InvalidInstanceId {
            instance_id: b.instance_id.clone(),
            reason,
        })?;
        if !ids.insert(b.instance_id.as_str()) {
            return Err(TopologyError::DuplicateInstance(b.instance_id.clone()));
        }
        if b.address.same_endpoint(coordinator) {
            return Err(TopologyError::CoordinatorIsBackend(b.instance_id.clone()));
        }
        let endpoint = (b.address.ip, b.address.internal_port);
        if let Some(first) = endpoints.insert(endpoint, &b.instance_id) {
            return Err(TopologyError::DuplicateEndpoint {
                first: first.to_owned(),
                second: b.instance_id.clone(),
                endpoint: b.address.to_internal_address(),
            });
        }
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        Err("must not be empty")
    } else if id.len() > MAX_ID_LEN {
        Err("longer than 128 bytes")
    } else if id.chars().any(char::is_control) {
        Err("contains control characters")
    } else {
        Ok(())
    }
}

// === discovery helpers ===

/// Drops the candidates that are the coordinator itself: same IP **and** same internal port
/// (DESIGN §3). Comparing IPs alone would drop every backend on a single host.
pub fn exclude_self(
    candidates: Vec<(String, NodeAddress)>,
    me: &NodeAddress,
) -> Vec<(String, NodeAddress)> {
    candidates
        .into_iter()
        .filter(|(_, address)| !address.same_endpoint(me))
        .collect()
}

/// A fresh colony id: 16 random bytes, hex-encoded (32 characters).
///
/// # Errors
///
/// The OS random source failed.
pub fn new_colony_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Direction;
    use std::collections::VecDeque;

    fn addr(port: u16) -> NodeAddress {
        NodeAddress::new([127, 0, 0, 1].into(), port, port + 1, port + 2)
    }

    fn backends(n: u16) -> Vec<BackendEntry> {
        (0..n)
            .map(|k| BackendEntry::new(format!("backend_{}", 9000 + 10 * k), addr(9000 + 10 * k)))
            .collect()
    }

    fn dims(w: u32, h: u32) -> Dimensions {
        Dimensions::new(w, h, 10, 10).unwrap()
    }

    fn topo(w: u32, h: u32, n: u16) -> ClusterTopology {
        ClusterTopology::place("c0ffee", addr(8082), backends(n), dims(w, h)).unwrap()
    }

    /// Number of 4-connected blocks per backend.
    fn blocks_per_backend(t: &ClusterTopology) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for b in t.backends() {
            let mine: HashSet<ShardCoord> = t.shards_of(&b.instance_id).into_iter().collect();
            let mut seen = HashSet::new();
            let mut count = 0;
            for &s in &mine {
                if !seen.insert(s) {
                    continue;
                }
                count += 1;
                let mut queue = VecDeque::from([s]);
                while let Some(c) = queue.pop_front() {
                    let cand = [
                        (c.x.wrapping_sub(1), c.y),
                        (c.x + 1, c.y),
                        (c.x, c.y.wrapping_sub(1)),
                        (c.x, c.y + 1),
                    ];
                    for (x, y) in cand {
                        let n = ShardCoord::new(x, y);
                        if mine.contains(&n) && seen.insert(n) {
                            queue.push_back(n);
                        }
                    }
                }
            }
            out.insert(b.instance_id.clone(), count);
        }
        out
    }

    #[test]
    fn placement_covers_balances_and_is_contiguous() {
        for w in 1..=9u32 {
            for h in 1..=7u32 {
                for n in 1..=12u16 {
                    let t = topo(w, h, n);
                    t.validate().unwrap();
                    let total = w * h;
                    // Every shard exactly once, on a listed backend.
                    let mut count: HashMap<&str, u32> = HashMap::new();
                    let mut placed = 0;
                    for (s, b) in t.placement() {
                        assert!(t.contains_shard(s));
                        assert_eq!(t.backend_of(s), Some(b));
                        *count.entry(&b.instance_id).or_default() += 1;
                        placed += 1;
                    }
                    assert_eq!(placed, total);
                    let sizes: Vec<u32> = t
                        .backends()
                        .iter()
                        .map(|b| count.get(b.instance_id.as_str()).copied().unwrap_or(0))
                        .collect();
                    let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                    assert!(max - min <= 1, "{w}x{h}/{n}: unbalanced {sizes:?}");
                    assert_eq!(sizes.iter().sum::<u32>(), total);
                    for (id, blocks) in blocks_per_backend(&t) {
                        let expected = usize::from(count.contains_key(id.as_str()));
                        assert_eq!(blocks, expected, "{w}x{h}/{n}: {id} not contiguous");
                    }
                    let mut union: Vec<ShardCoord> = t
                        .backends()
                        .iter()
                        .flat_map(|b| t.shards_of(&b.instance_id))
                        .collect();
                    union.sort();
                    assert_eq!(union, t.all_shards().collect::<Vec<_>>());
                }
            }
        }
    }

    #[test]
    fn placement_beats_plain_row_major_runs() {
        for (w, h, n) in [
            (8, 5, 4),
            (16, 16, 16),
            (12, 12, 9),
            (40, 20, 10),
            (7, 3, 2),
        ] {
            let t = topo(w, h, n);
            let weights = Weights {
                north_south: 10,
                east_west: 10,
            };
            let row_major: Vec<u32> = (0..w * h).collect();
            let naive = layout::assign(&row_major, n.into());
            let ours: Vec<u32> = t.owner.clone();
            let (c_naive, c_ours) = (
                layout::halo_cost(&naive, w, h, weights),
                layout::halo_cost(&ours, w, h, weights),
            );
            assert!(c_ours <= c_naive, "{w}x{h}/{n}: {c_ours} > {c_naive}");
        }
        // Many backends: bands give square-ish blocks, far better than stripes.
        let t = topo(16, 16, 16);
        let weights = Weights {
            north_south: 10,
            east_west: 10,
        };
        let stripes = layout::assign(&layout::path(16, 16, 1, false), 16);
        assert!(
            layout::halo_cost(&t.owner, 16, 16, weights) * 3
                < layout::halo_cost(&stripes, 16, 16, weights) * 2
        );
        for b in t.backends() {
            let s = t.shards_of(&b.instance_id);
            let xs: HashSet<u32> = s.iter().map(|c| c.x).collect();
            let ys: HashSet<u32> = s.iter().map(|c| c.y).collect();
            assert_eq!((xs.len(), ys.len()), (4, 4), "{s:?}");
        }
    }

    #[test]
    fn placement_is_deterministic_and_sorts_backends() {
        let mut shuffled = backends(5);
        shuffled.reverse();
        let a = ClusterTopology::place("c", addr(8082), shuffled, dims(8, 5)).unwrap();
        let b = topo(8, 5, 5);
        assert_eq!(
            serde_json::to_string(&a)
                .unwrap()
                .replace("\"c\"", "\"c0ffee\""),
            serde_json::to_string(&b).unwrap()
        );
        let ids: Vec<&str> = a
            .backends()
            .iter()
            .map(|b| b.instance_id.as_str())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn more_backends_than_shards() {
        let t = topo(2, 1, 5);
        assert_eq!(t.backends().len(), 5);
        let hosting = t
            .backends()
            .iter()
            .filter(|b| !t.shards_of(&b.instance_id).is_empty())
            .count();
        assert_eq!(hosting, 2);
    }

    #[test]
    fn place_refuses_bad_input() {
        let d = dims(2, 2);
        let err = ClusterTopology::place("c", addr(8082), vec![], d).unwrap_err();
        assert_eq!(err, TopologyError::NoBackends);
        let mut dup = backends(2);
        dup[1].instance_id = dup[0].instance_id.clone();
        assert!(matches!(
            ClusterTopology::place("c", addr(8082), dup, d),
            Err(TopologyError::DuplicateInstance(_))
        ));
        let mut same_endpoint = backends(2);
        same_endpoint[1].address.internal_port = same_endpoint[0].address.internal_port;
        assert!(matches!(
            ClusterTopology::place("c", addr(8082), same_endpoint, d),
            Err(TopologyError::DuplicateEndpoint { .. })
        ));
        let with_coord = vec![BackendEntry::new("coord", addr(8082))];
        assert!(matches!(
            ClusterTopology::place("c", addr(8082), with_coord, d),
            Err(TopologyError::CoordinatorIsBackend(_))
        ));
        assert!(matches!(
            ClusterTopology::place("", addr(8082), backends(1), d),
            Err(TopologyError::InvalidColonyId(_))
        ));
        let bad = Dimensions {
            width_in_shards: 0,
            ..d
        };
        assert!(matches!(
            ClusterTopology::place("c", addr(8082), backends(1), bad),
            Err(TopologyError::InvalidDimension {
                field: "width_in_shards",
                ..
            })
        ));
    }

    #[test]
    fn dimensions_validation_names_the_field() {
        let ok = Dimensions::new(8, 5, 250, 250).unwrap();
        assert_eq!((ok.world_width(), ok.world_height()), (2000, 1250));
        assert_eq!(ok.shard_count(), 40);
        let field = |w, h, sw, sh| match Dimensions::new(w, h, sw, sh) {
            Err(TopologyError::InvalidDimension { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(0, 5, 250, 250), "width_in_shards");
        assert_eq!(field(8, 0, 250, 250), "height_in_shards");
        assert_eq!(field(8, 5, 0, 250), "shard_width");
        assert_eq!(field(8, 5, 250, 0), "shard_height");
        assert_eq!(field(1, 1, 8192, 4096), "shard_width*shard_height");
        assert_eq!(field(65_537, 1, 1, 1), "width_in_shards*height_in_shards");
        assert_eq!(
            field(u32::MAX, u32::MAX, 1, 1),
            "width_in_shards*height_in_shards"
        );
        assert_eq!(field(256, 256, 4096, 4096), "world size");
        assert_eq!(field(65_536, 1, 65_536, 1), "world size");
        // The largest world that fits.
        assert_eq!(field(256, 256, 256, 256), "world size");
        Dimensions::new(256, 256, 256, 255).unwrap();
        let msg = Dimensions::new(8, 5, 0, 1).unwrap_err().to_string();
        assert_eq!(msg, "invalid shard_width: must be at least 1");
    }

    #[test]
    fn neighbours_wrap_on_the_torus() {
        let t = topo(4, 3, 2);
        let n = t.neighbours(ShardCoord::new(0, 0));
        let expect = [
            (0, 2),
            (1, 2),
            (1, 0),
            (1, 1),
            (0, 1),
            (3, 1),
            (3, 0),
            (3, 2),
        ];
        assert_eq!(n, expect.map(|(x, y)| ShardCoord::new(x, y)));
        let n = t.neighbours(ShardCoord::new(3, 2));
        let expect = [
            (3, 1),
            (0, 1),
            (0, 2),
            (0, 0),
            (3, 0),
            (2, 0),
            (2, 2),
            (2, 1),
        ];
        assert_eq!(n, expect.map(|(x, y)| ShardCoord::new(x, y)));
        // Directions agree with the offsets, and opposite directions point back.
        let c = ShardCoord::new(1, 1);
        for (d, s) in Direction::ALL.into_iter().zip(t.neighbours(c)) {
            let (dx, dy) = d.offset();
            assert_eq!(
                s,
                ShardCoord::new(
                    (1 + i64::from(dx)).rem_euclid(4) as u32,
                    (1 + i64::from(dy)).rem_euclid(3) as u32
                )
            );
            let back = Direction::ALL
                .iter()
                .position(|&o| o == d.opposite())
                .unwrap();
            assert_eq!(t.neighbours(s)[back], c);
        }
    }

    #[test]
    fn neighbours_in_thin_worlds() {
        let one = topo(1, 1, 1);
        assert_eq!(
            one.neighbours(ShardCoord::new(0, 0)),
            [ShardCoord::new(0, 0); 8]
        );
        let row = topo(5, 1, 2);
        let n = row.neighbours(ShardCoord::new(0, 0));
        let expect = [
            (0, 0),
            (1, 0),
            (1, 0),
            (1, 0),
            (0, 0),
            (4, 0),
            (4, 0),
            (4, 0),
        ];
        assert_eq!(n, expect.map(|(x, y)| ShardCoord::new(x, y)));
        let col = topo(1, 4, 2);
        let n = col.neighbours(ShardCoord::new(0, 3));
        let expect = [
            (0, 2),
            (0, 2),
            (0, 3),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 3),
            (0, 2),
        ];
        assert_eq!(n, expect.map(|(x, y)| ShardCoord::new(x, y)));
        let two = topo(2, 2, 1);
        let n = two.neighbours(ShardCoord::new(0, 0));
        let expect = [
            (0, 1),
            (1, 1),
            (1, 0),
            (1, 1),
            (0, 1),
            (1, 1),
            (1, 0),
            (1, 1),
        ];
        assert_eq!(n, expect.map(|(x, y)| ShardCoord::new(x, y)));
    }

    #[test]
    fn accessors() {
        let t = ClusterTopology::place(
            "abc",
            addr(8082),
            backends(3),
            Dimensions::new(8, 5, 250, 200).unwrap(),
        )
        .unwrap();
        assert_eq!(t.colony_id(), "abc");
        assert_eq!(t.coordinator(), &addr(8082));
        assert_eq!((t.width_in_shards(), t.height_in_shards()), (8, 5));
        assert_eq!((t.shard_width(), t.shard_height()), (250, 200));
        assert_eq!((t.world_width(), t.world_height()), (2000, 1000));
        assert_eq!(t.shard_count(), 40);
        assert_eq!(t.all_shards().count(), 40);
        assert_eq!(t.all_shards().next(), Some(ShardCoord::new(0, 0)));
        assert_eq!(t.all_shards().nth(9), Some(ShardCoord::new(1, 1)));
        assert!(t.backend_of(ShardCoord::new(8, 0)).is_none());
        assert!(t.backend_of(ShardCoord::new(0, 5)).is_none());
        assert!(t.shards_of("nobody").is_empty());
        assert_eq!(t.backend("backend_9010").unwrap().address, addr(9010));
        // Same IP and internal port: found, even with other HTTP ports.
        let mut other_ports = addr(9010);
        other_ports.http_port = 1;
        other_ports.mgmt_port = 2;
        assert!(t.contains_backend(&other_ports));
        assert_eq!(
            t.backend_by_address(&other_ports).unwrap().instance_id,
            "backend_9010"
        );
        assert!(!t.contains_backend(&addr(9011)));
        assert!(!t.contains_backend(&addr(8082)));
        let elsewhere = NodeAddress::new([10, 0, 0, 1].into(), 9010, 9011, 9012);
        assert!(!t.contains_backend(&elsewhere));
    }

    #[test]
    fn json_round_trip_is_stable() {
        let t = topo(3, 2, 2);
        let json = serde_json::to_string(&t).unwrap();
        let back: ClusterTopology = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["width_in_shards"], 3);
        assert_eq!(v["shard_height"], 10);
        assert_eq!(v["backends"][0]["address"]["internal_port"], 9000);
        assert_eq!(v["placement"].as_array().unwrap().len(), 6);
        assert_eq!(v["placement"][0]["shard"], serde_json::json!({"x":0,"y":0}));
        assert_eq!(v["placement"][1]["shard"], serde_json::json!({"x":1,"y":0}));
        assert!(v["placement"][0]["instance_id"].is_string());
        assert_eq!(
            v["simulation"],
            serde_json::json!({"rule":"B3/S23","seed":42,"density":0.35})
        );
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 9);
        let mut bad = v.clone();
        bad["simulation"]["density"] = serde_json::json!(1.5);
        let err = serde_json::from_value::<ClusterTopology>(bad).unwrap_err();
        assert!(err.to_string().contains("density"), "{err}");
        assert_eq!(
            serde_json::to_string(&ShardCoord::new(3, 4)).unwrap(),
            r#"{"x":3,"y":4}"#
        );
    }

    /// A topology's JSON with `placement` replaced.
    fn with_placement(t: &ClusterTopology, placement: serde_json::Value) -> String {
        let mut v = serde_json::to_value(t).unwrap();
        v["placement"] = placement;
        v.to_string()
    }

    fn parse_err(json: &str) -> String {
        serde_json::from_str::<ClusterTopology>(json)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn deserializing_validates() {
        let t = topo(2, 1, 2);
        let a = &t.backends()[0].instance_id;
        let b = &t.backends()[1].instance_id;
        let p = |x: u32, id: &str| serde_json::json!({"shard":{"x":x,"y":0},"instance_id":id});

        let dup = with_placement(&t, serde_json::json!([p(0, a), p(0, b), p(1, b)]));
        assert!(parse_err(&dup).contains("shard (0, 0) is placed more than once"));

        let missing = with_placement(&t, serde_json::json!([p(0, a)]));
        assert!(parse_err(&missing).contains("shard (1, 0) is not placed"));

        let unknown = with_placement(&t, serde_json::json!([p(0, a), p(1, "ghost")]));
        assert!(parse_err(&unknown).contains("unknown backend \"ghost\""));

        let outside = with_placement(&t, serde_json::json!([p(0, a), p(1, b), p(2, b)]));
        assert!(parse_err(&outside).contains("shard (2, 0) is outside the world"));

        let mut v = serde_json::to_value(&t).unwrap();
        v["shard_width"] = 0.into();
        assert!(parse_err(&v.to_string()).contains("invalid shard_width"));

        let mut v = serde_json::to_value(&t).unwrap();
        v["backends"] = serde_json::json!([]);
        v["placement"] = serde_json::json!([]);
        assert!(parse_err(&v.to_string()).contains("no backends"));

        let mut v = serde_json::to_value(&t).unwrap();
        v["surprise"] = 1.into();
        assert!(parse_err(&v.to_string()).contains("unknown field"));

        let mut v = serde_json::to_value(&t).unwrap();
        v.as_object_mut().unwrap().remove("colony_id");
        assert!(parse_err(&v.to_string()).contains("colony_id"));

        // Placement order in the JSON does not matter.
        let reordered = with_placement(&t, serde_json::json!([p(1, b), p(0, a)]));
        assert_eq!(
            serde_json::from_str::<ClusterTopology>(&reordered).unwrap(),
            t
        );
    }

    #[test]
    fn validate_catches_corrupted_placements() {
        let mut t = topo(2, 2, 2);
        t.validate().unwrap();
        t.owner[3] = 7;
        assert!(matches!(
            t.validate(),
            Err(TopologyError::UnknownBackend { shard, .. }) if shard == ShardCoord::new(1, 1)
        ));
        t.owner.pop();
        assert_eq!(
            t.validate(),
            Err(TopologyError::ShardUnplaced(ShardCoord::new(1, 1)))
        );
    }

    #[test]
    fn exclude_self_compares_ip_and_port() {
        let me = addr(8082);
        let same_ip_other_port = addr(9000);
        let other_ip_same_port = NodeAddress::new([10, 0, 0, 2].into(), 8082, 8083, 8084);
        let mut me_other_http = me;
        me_other_http.http_port = 1;
        let candidates = vec![
            ("coordinator".to_string(), me),
            ("b1".to_string(), same_ip_other_port),
            ("b2".to_string(), other_ip_same_port),
            ("coordinator-again".to_string(), me_other_http),
        ];
        let kept = exclude_self(candidates, &me);
        let ids: Vec<&str> = kept.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["b1", "b2"]);
        assert!(exclude_self(vec![], &me).is_empty());
    }

    #[test]
    fn colony_ids_are_random_hex() {
        let a = new_colony_id().unwrap();
        let b = new_colony_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn large_world_places_quickly_and_validly() {
        let t = ClusterTopology::place(
            "big",
            addr(8082),
            backends(37),
            Dimensions::new(256, 256, 16, 16).unwrap(),
        )
        .unwrap();
        t.validate().unwrap();
        assert!(blocks_per_backend(&t).values().all(|&b| b == 1));
    }
}
