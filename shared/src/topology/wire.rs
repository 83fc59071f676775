//! The topology's JSON form (see the [module docs](super)): deserializing checks every
//! invariant, serializing writes the placement list straight from the compact form.

use std::collections::HashMap;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::simulation::check_pattern;
use super::{
    check_members, BackendEntry, ClusterTopology, Dimensions, ShardCoord, Simulation, TopologyError,
};
use crate::address::NodeAddress;

/// The JSON shape of a topology (see the module docs).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopologyWire {
    colony_id: String,
    coordinator: NodeAddress,
    backends: Vec<BackendEntry>,
    width_in_shards: u32,
    height_in_shards: u32,
    shard_width: u32,
    shard_height: u32,
    simulation: Simulation,
    placement: Vec<PlacementWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementWire {
    shard: ShardCoord,
    instance_id: String,
}

impl TryFrom<TopologyWire> for ClusterTopology {
    type Error = TopologyError;

    fn try_from(wire: TopologyWire) -> Result<Self, Self::Error> {
        let dims = Dimensions {
            width_in_shards: wire.width_in_shards,
            height_in_shards: wire.height_in_shards,
            shard_width: wire.shard_width,
            shard_height: wire.shard_height,
        };
        dims.validate()?;
        wire.simulation.validate()?;
        check_pattern(&wire.simulation, &dims)?;
        check_members(&wire.colony_id, &wire.coordinator, &wire.backends)?;
        let index: HashMap<&str, u32> = wire
            .backends
            .iter()
            .zip(0u32..)
            .map(|(b, i)| (b.instance_id.as_str(), i))
            .collect();
        let w = dims.width_in_shards as usize;
        let mut owner = vec![u32::MAX; dims.shard_count() as usize];
        for p in &wire.placement {
            let s = p.shard;
            if s.x >= dims.width_in_shards || s.y >= dims.height_in_shards {
                return Err(TopologyError::ShardOutOfRange(s));
            }
            let Some(&b) = index.get(p.instance_id.as_str()) else {
                return Err(TopologyError::UnknownBackend {
                    shard: s,
                    instance_id: p.instance_id.clone(),
                });
            };
            let slot = &mut owner[s.y as usize * w + s.x as usize];
            if *slot != u32::MAX {
                return Err(TopologyError::ShardPlacedTwice(s));
            }
            *slot = b;
        }
        if let Some(i) = owner.iter().position(|&o| o == u32::MAX) {
            // i < shard_count <= 2^16, so both fit in u32.
            let (x, y) = (i % w, i / w);
            return Err(TopologyError::ShardUnplaced(ShardCoord::new(
                x as u32, y as u32,
            )));
        }
        Ok(ClusterTopology {
            colony_id: wire.colony_id,
            coordinator: wire.coordinator,
            backends: wire.backends,
            dims,
            simulation: wire.simulation,
            owner,
        })
    }
}

/// Serializes straight from the compact form, without building the wire struct.
impl Serialize for ClusterTopology {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut st = serializer.serialize_struct("ClusterTopology", 9)?;
        st.serialize_field("colony_id", &self.colony_id)?;
        st.serialize_field("coordinator", &self.coordinator)?;
        st.serialize_field("backends", &self.backends)?;
        st.serialize_field("width_in_shards", &self.dims.width_in_shards)?;
        st.serialize_field("height_in_shards", &self.dims.height_in_shards)?;
        st.serialize_field("shard_width", &self.dims.shard_width)?;
        st.serialize_field("shard_height", &self.dims.shard_height)?;
        st.serialize_field("simulation", &self.simulation)?;
        st.serialize_field("placement", &PlacementList(self))?;
        st.end()
    }
}

struct PlacementList<'a>(&'a ClusterTopology);

#[derive(Serialize)]
struct PlacementRef<'a> {
    shard: ShardCoord,
    instance_id: &'a str,
}

impl Serialize for PlacementList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.placement().map(|(shard, b)| PlacementRef {
            shard,
            instance_id: &b.instance_id,
        }))
    }
}
