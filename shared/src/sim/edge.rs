//! Border exchange between shards: [`Direction`], the packed [`Edge`] one shard sends a
//! neighbour, [`ShardEdges`] (all eight of a shard's edges) and [`HaloError`].
//!
//! # Conventions
//!
//! - Coordinates grow east (`x`) and south (`y`): **north is `y - 1`**, **west is `x - 1`**, and
//!   both wrap round the torus (north of shard row 0 is the last shard row).
//! - A shard's *edge* on side `d` is its own outermost cells on that side: `North` is its top row
//!   (`y = 0`), `South` its bottom row (`y = h-1`), `West` its left column (`x = 0`), `East` its
//!   right column (`x = w-1`), and each diagonal the one corner cell (`NorthWest` is `(0, 0)`,
//!   `NorthEast` `(w-1, 0)`, `SouthWest` `(0, h-1)`, `SouthEast` `(w-1, h-1)`).
//! - A shard's *halo* on side `d` is the ring of cells just outside it on that side (`North` is
//!   row `y = -1`, `x` in `0..w`; `NorthWest` is the single cell `(-1, -1)`; and so on).
//! - **The halo on side `d` is the edge on side `d.opposite()` of the neighbour in direction
//!   `d`**: a shard's north halo is the bottom row of the shard above it, its north-west halo is
//!   the south-east corner of the shard up and to the left. So to fill a neighbour that lies in
//!   direction `d` from you, send it your edge on side `d`; it plugs that in as its halo on side
//!   `d.opposite()`.
//! - Cells along an edge are ordered by increasing `x` (rows) or increasing `y` (columns).

use std::fmt;

use serde::{de, ser::SerializeStruct, Deserialize, Serialize, Serializer};

/// One of the eight directions of the Moore neighbourhood; also names a side of a shard. The
/// crate's only direction type: [`ClusterTopology::neighbours`](crate::topology::ClusterTopology::neighbours)
/// lists shards in [`Direction::ALL`] order too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// `y - 1`.
    #[serde(rename = "N")]
    North,
    /// `x + 1, y - 1`.
    #[serde(rename = "NE")]
    NorthEast,
    /// `x + 1`.
    #[serde(rename = "E")]
    East,
    /// `x + 1, y + 1`.
    #[serde(rename = "SE")]
    SouthEast,
    /// `y + 1`.
    #[serde(rename = "S")]
    South,
    /// `x - 1, y + 1`.
    #[serde(rename = "SW")]
    SouthWest,
    /// `x - 1`.
    #[serde(rename = "W")]
    West,
    /// `x - 1, y - 1`.
    #[serde(rename = "NW")]
    NorthWest,
}

impl Direction {
    /// All eight, clockwise from north; `Direction::ALL[d.index()] == d`.
    pub const ALL: [Direction; 8] = [
        Direction::North,
        Direction::NorthEast,
        Direction::East,
        Direction::SouthEast,
        Direction::South,
        Direction::SouthWest,
        Direction::West,
        Direction::NorthWest,
    ];

    /// The step `(dx, dy)` this direction takes; north is `(0, -1)`.
    pub fn offset(self) -> (i32, i32) {
        match self {
            Direction::North => (0, -1),
            Direction::NorthEast => (1, -1),
            Direction::East => (1, 0),
            Direction::SouthEast => (1, 1),
            Direction::South => (0, 1),
            Direction::SouthWest => (-1, 1),
            Direction::West => (-1, 0),
            Direction::NorthWest => (-1, -1),
        }
    }

    /// The direction pointing back.
    pub fn opposite(self) -> Direction {
        Direction::ALL[(self.index() + 4) % 8]
    }

    /// Position in [`Direction::ALL`], for indexing arrays of eight.
    pub fn index(self) -> usize {
        self as usize
    }

    /// True for the four diagonals, whose edge and halo are a single cell.
    pub fn is_corner(self) -> bool {
        self.index() % 2 == 1
    }

    /// How many cells the edge or halo on this side has, for a `width` × `height` shard.
    pub fn edge_len(self, width: u32, height: u32) -> u32 {
        match self {
            Direction::North | Direction::South => width,
            Direction::East | Direction::West => height,
            _ => 1,
        }
    }

    /// The short name used on the wire: `N`, `NE`, `E`, …
    pub fn short_name(self) -> &'static str {
        match self {
            Direction::North => "N",
            Direction::NorthEast => "NE",
            Direction::East => "E",
            Direction::SouthEast => "SE",
            Direction::South => "S",
            Direction::SouthWest => "SW",
            Direction::West => "W",
            Direction::NorthWest => "NW",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// A run of cells along one side of a shard, bit-packed.
///
/// Cell `i` is bit `i % 8` of byte `i / 8` (least significant bit first); there are exactly
/// `ceil(len / 8)` bytes and the unused high bits of the last byte are zero. A 250-cell row is
/// therefore 32 bytes. In MessagePack and JSON it is `{"len": u32, "bits": bytes}` (`bits` is a
/// MessagePack `bin`; JSON shows an array of byte values). Construction and deserialization
/// both check the invariants, so a malformed frame is an error, never a bad halo.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Edge {
    len: u32,
    bits: Vec<u8>,
}

/// Why an [`Edge`] or a halo was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaloError {
    /// The byte count does not match the cell count.
    #[error("an edge of {len} cells needs {expected} bytes, got {got}")]
    ByteCount {
        /// Cells claimed.
        len: u32,
        /// `ceil(len / 8)`.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// Bits set past the last cell.
    #[error("an edge of {len} cells has bits set past its end")]
    Padding {
        /// Cells claimed.
        len: u32,
    },
    /// The edge does not fit the side it was given for.
    #[error("the {side} halo of a {width}x{height} shard needs {expected} cells, got {got}")]
    WrongLength {
        /// The halo side being filled.
        side: Direction,
        /// The receiving shard's width.
        width: u32,
        /// The receiving shard's height.
        height: u32,
        /// Cells that side needs.
        expected: u32,
        /// Cells the edge has.
        got: u32,
    },
    /// A [`super::Block`]'s byte count does not match its size.
    #[error("a {width}x{height} block needs {expected} bytes, got {got}")]
    BlockBytes {
        /// Cells per row claimed.
        width: u32,
        /// Rows claimed.
        height: u32,
        /// Bytes that size needs.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// A [`super::Block`] does not fit the margin it was given for.
    #[error("the {side} margin needs a {}x{} block, got {}x{}", expected.0, expected.1, got.0, got.1)]
    WrongBlock {
        /// The margin side being filled.
        side: Direction,
        /// Width and height that side needs.
        expected: (u32, u32),
        /// Width and height of the block.
        got: (u32, u32),
    },
}

impl Edge {
    /// Wraps packed bits received from elsewhere.
    ///
    /// # Errors
    /// [`HaloError::ByteCount`] or [`HaloError::Padding`] if `bits` is not exactly the packed
    /// form of `len` cells.
    pub fn from_bytes(len: u32, bits: Vec<u8>) -> Result<Edge, HaloError> {
        let expected = (len as usize).div_ceil(8);
        if bits.len() != expected {
            return Err(HaloError::ByteCount {
                len,
                expected,
                got: bits.len(),
            });
        }
        let used = len % 8;
        if let (Some(&last), true) = (bits.last(), used != 0) {
            if last >> used != 0 {
                return Err(HaloError::Padding { len });
            }
        }
        Ok(Edge { len, bits })
    }

    /// Builds an edge of `len` cells where cell `i` is `alive(i)`.
    pub fn from_fn(len: u32, mut alive: impl FnMut(u32) -> bool) -> Edge {
        let mut bits = vec![0u8; (len as usize).div_ceil(8)];
        for i in 0..len {
            if alive(i) {
                bits[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        Edge { len, bits }
    }

    /// Builds an edge from the low `len` bits of packed words (bit `i % 64` of word `i / 64` is
    /// cell `i`); higher bits and words are ignored, missing words count as dead.
    pub(crate) fn from_words(len: u32, words: &[u64]) -> Edge {
        let n = (len as usize).div_ceil(8);
        let mut bits = Vec::with_capacity(n);
        for w in words {
            let take = (n - bits.len()).min(8);
            bits.extend_from_slice(&w.to_le_bytes()[..take]);
            if bits.len() == n {
                break;
            }
        }
        bits.resize(n, 0);
        let used = len % 8;
        if let (Some(last), true) = (bits.last_mut(), used != 0) {
            *last &= (1u8 << used) - 1;
        }
        Edge { len, bits }
    }

    /// Word `k` of the packed form (cells `64k .. 64k+63`), zero past the end.
    #[inline]
    pub(crate) fn word(&self, k: usize) -> u64 {
        let start = k * 8;
        if start >= self.bits.len() {
            return 0;
        }
        let end = (start + 8).min(self.bits.len());
        let mut buf = [0u8; 8];
        buf[..end - start].copy_from_slice(&self.bits[start..end]);
        u64::from_le_bytes(buf)
    }

    /// Number of cells.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True for an edge of no cells.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether cell `i` is alive; `false` past the end.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// The packed bytes (see the type's documentation for the layout).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// The packed bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bits
    }

    /// Live cells on this edge.
    pub fn count_alive(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }
}

impl fmt::Debug for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Edge(")?;
        for i in 0..self.len {
            f.write_str(if self.get(i) { "#" } else { "." })?;
        }
        f.write_str(")")
    }
}

impl Serialize for Edge {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Bytes<'a>(&'a [u8]);
        impl Serialize for Bytes<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        let mut st = s.serialize_struct("Edge", 2)?;
        st.serialize_field("len", &self.len)?;
        st.serialize_field("bits", &Bytes(&self.bits))?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Edge {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Edge, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            len: u32,
            bits: ByteBuf,
        }
        let wire = Wire::deserialize(d)?;
        Edge::from_bytes(wire.len, wire.bits.0).map_err(de::Error::custom)
    }
}

/// Bytes from either a binary value (MessagePack `bin`) or a sequence of numbers (JSON).
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<ByteBuf, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                // Cap the pre-allocation: the length hint comes from the peer.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(ByteBuf(out))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A straight run of cells in halo-inclusive coordinates (`x + 1`, `y + 1`, so the halo ring is
/// row/column 0 and `w + 1`/`h + 1`): `len` cells from `(x, y)` in steps of `(dx, dy)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub x: usize,
    pub y: usize,
    pub dx: usize,
    pub dy: usize,
    pub len: usize,
}

impl Span {
    /// Halo-inclusive coordinates of cell `i`.
    #[inline]
    pub fn at(self, i: usize) -> (usize, usize) {
        (self.x + i * self.dx, self.y + i * self.dy)
    }

    /// The shard's own cells on side `side` (its edge), for a `w` × `h` shard.
    pub fn edge(side: Direction, w: usize, h: usize) -> Span {
        Span::side(side, w, h, 1, 1, w, h)
    }

    /// The halo cells on side `side`, for a `w` × `h` shard.
    pub fn halo(side: Direction, w: usize, h: usize) -> Span {
        Span::side(side, w, h, 0, 1, w + 1, h + 1)
    }

    /// `lo`/`hi` are the west/north and east/south coordinates of the ring being walked; `first`
    /// is where rows and columns start.
    fn side(
        side: Direction,
        w: usize,
        h: usize,
        lo: usize,
        first: usize,
        hi_x: usize,
        hi_y: usize,
    ) -> Span {
        let row = |y| Span {
            x: first,
            y,
            dx: 1,
            dy: 0,
            len: w,
        };
        let col = |x| Span {
            x,
            y: first,
            dx: 0,
            dy: 1,
            len: h,
        };
        let cell = |x, y| Span {
            x,
            y,
            dx: 0,
            dy: 0,
            len: 1,
        };
        match side {
            Direction::North => row(lo),
            Direction::South => row(hi_y),
            Direction::West => col(lo),
            Direction::East => col(hi_x),
            Direction::NorthWest => cell(lo, lo),
            Direction::NorthEast => cell(hi_x, lo),
            Direction::SouthWest => cell(lo, hi_y),
            Direction::SouthEast => cell(hi_x, hi_y),
        }
    }
}

/// The eight edges of one shard at one tick, indexed by side ([`ShardEdges::get`]).
///
/// Made by [`crate::sim::ShardGrid::edges`]; consumed by
/// [`crate::sim::ShardGrid::halo_from_neighbours`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEdges {
    pub(crate) edges: [Edge; 8],
}

impl ShardEdges {
    /// The edge on side `side` (what the neighbour in direction `side` needs).
    pub fn get(&self, side: Direction) -> &Edge {
        &self.edges[side.index()]
    }

    /// Takes the edge on side `side` out, e.g. to send it.
    pub fn into_edge(self, side: Direction) -> Edge {
        let [e0, e1, e2, e3, e4, e5, e6, e7] = self.edges;
        match side {
            Direction::North => e0,
            Direction::NorthEast => e1,
            Direction::East => e2,
            Direction::SouthEast => e3,
            Direction::South => e4,
            Direction::SouthWest => e5,
            Direction::West => e6,
            Direction::NorthWest => e7,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions() {
        for (i, d) in Direction::ALL.into_iter().enumerate() {
            assert_eq!(d.index(), i);
            assert_eq!(d.opposite().opposite(), d);
            let (dx, dy) = d.offset();
            assert_eq!(d.opposite().offset(), (-dx, -dy));
            assert_eq!(d.is_corner(), dx != 0 && dy != 0);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{d}\""));
        }
        assert_eq!(Direction::North.offset(), (0, -1));
        assert_eq!(Direction::North.opposite(), Direction::South);
        assert_eq!(Direction::NorthWest.opposite(), Direction::SouthEast);
        assert_eq!(Direction::West.edge_len(7, 3), 3);
        assert_eq!(Direction::South.edge_len(7, 3), 7);
        assert_eq!(Direction::SouthWest.edge_len(7, 3), 1);
    }

    #[test]
    fn spans() {
        // A 4 x 3 shard: interior is x 1..=4, y 1..=3 in halo-inclusive coordinates.
        let top = Span::edge(Direction::North, 4, 3);
        assert_eq!((top.at(0), top.at(3), top.len), ((1, 1), (4, 1), 4));
        let east = Span::edge(Direction::East, 4, 3);
        assert_eq!((east.at(0), east.at(2), east.len), ((4, 1), (4, 3), 3));
        assert_eq!(Span::edge(Direction::SouthWest, 4, 3).at(0), (1, 3));
        let north_halo = Span::halo(Direction::North, 4, 3);
        assert_eq!((north_halo.at(0), north_halo.at(3)), ((1, 0), (4, 0)));
        let east_halo = Span::halo(Direction::East, 4, 3);
        assert_eq!((east_halo.at(0), east_halo.at(2)), ((5, 1), (5, 3)));
        assert_eq!(Span::halo(Direction::SouthEast, 4, 3).at(0), (5, 4));
        assert_eq!(Span::halo(Direction::NorthWest, 4, 3).at(0), (0, 0));
        for d in Direction::ALL {
            assert_eq!(Span::edge(d, 4, 3).len as u32, d.edge_len(4, 3));
            assert_eq!(Span::halo(d, 4, 3).len as u32, d.edge_len(4, 3));
        }
    }

    #[test]
    fn edge_packing() {
        let e = Edge::from_fn(11, |i| i % 3 == 0);
        assert_eq!(e.as_bytes(), &[0b0100_1001, 0b0000_0010]);
        assert_eq!(e.count_alive(), 4);
        assert!(e.get(9) && !e.get(10) && !e.get(11) && !e.get(100));
        assert_eq!(format!("{e:?}"), "Edge(#..#..#..#.)");
        assert_eq!(e.word(0), 0b10_0100_1001);
        assert_eq!(e.word(1), 0);
        assert_eq!(
            Edge::from_words(11, &[u64::MAX, u64::MAX]).as_bytes(),
            &[0xFF, 0x07]
        );
        assert_eq!(Edge::from_words(70, &[u64::MAX]).count_alive(), 64);
        assert_eq!(Edge::from_fn(0, |_| true).as_bytes(), &[] as &[u8]);
    }

    #[test]
    fn edge_validation() {
        assert_eq!(
            Edge::from_bytes(9, vec![0xFF, 0x01]).unwrap().count_alive(),
            9
        );
        assert_eq!(
            Edge::from_bytes(9, vec![0xFF]),
            Err(HaloError::ByteCount {
                len: 9,
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            Edge::from_bytes(9, vec![0xFF, 0x03]),
            Err(HaloError::Padding { len: 9 })
        );
        assert!(Edge::from_bytes(16, vec![0xFF, 0xFF]).is_ok());
        assert!(Edge::from_bytes(0, vec![]).is_ok());
    }

    #[test]
    fn edge_serde() {
        let e = Edge::from_fn(10, |i| i == 0 || i == 9);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"len":10,"bits":[1,2]}"#);
        assert_eq!(serde_json::from_str::<Edge>(&json).unwrap(), e);
        let bad = serde_json::from_str::<Edge>(r#"{"len":10,"bits":[1,6]}"#).unwrap_err();
        assert!(bad.to_string().contains("past its end"), "{bad}");
        let bad = serde_json::from_str::<Edge>(r#"{"len":10,"bits":[1]}"#).unwrap_err();
        assert!(bad.to_string().contains("needs 2 bytes"), "{bad}");
    }
}
