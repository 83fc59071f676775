//! Rendering the world as a PNG: one pixel per cell, or one per `k × k` block (alive if any
//! cell in it is) when the world is wider or taller than [`MAX_SIDE`] pixels.

use super::error::ImageError;

/// Longest side of the picture, in pixels.
pub const MAX_SIDE: u64 = 1024;

/// A picture being assembled from shards.
#[derive(Debug)]
pub struct Picture {
    width: usize,
    height: usize,
    scale: u64,
    pixels: Vec<u8>,
}

impl Picture {
    /// A dark picture of a `world_width × world_height` world.
    pub fn new(world_width: u64, world_height: u64) -> Picture {
        let scale = world_width.max(world_height).div_ceil(MAX_SIDE).max(1);
        let width = usize::try_from(world_width.div_ceil(scale))
            .unwrap_or(1)
            .max(1);
        let height = usize::try_from(world_height.div_ceil(scale))
            .unwrap_or(1)
            .max(1);
        Picture {
            width,
            height,
            scale,
            pixels: vec![DEAD; width * height],
        }
    }

    /// Marks the live cells of one shard given as rows of `.`/`#`, whose top-left cell is
    /// at `(gx0, gy0)`.
    pub fn paint(&mut self, gx0: u64, gy0: u64, rows: &[String]) {
        for (dy, row) in (0u64..).zip(rows) {
            let py = usize::try_from((gy0 + dy) / self.scale).unwrap_or(usize::MAX);
            if py >= self.height {
                continue;
            }
            for (dx, cell) in (0u64..).zip(row.bytes()) {
                if cell == b'#' {
                    let px = usize::try_from((gx0 + dx) / self.scale).unwrap_or(usize::MAX);
                    if px < self.width {
                        self.pixels[py * self.width + px] = ALIVE;
                    }
                }
            }
        }
    }

    /// Greys out a shard that could not be fetched.
    pub fn missing(&mut self, gx0: u64, gy0: u64, w: u64, h: u64) {
        for gy in (gy0..gy0 + h).step_by(usize::try_from(self.scale).unwrap_or(1)) {
            for gx in (gx0..gx0 + w).step_by(usize::try_from(self.scale).unwrap_or(1)) {
                let (px, py) = ((gx / self.scale) as usize, (gy / self.scale) as usize);
                if px < self.width && py < self.height {
                    self.pixels[py * self.width + px] = MISSING;
                }
            }
        }
    }

    /// The PNG bytes (8-bit greyscale).
    ///
    /// # Errors
    /// The encoder failed (a bug, not bad input).
    pub fn encode(&self) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        let w = u32::try_from(self.width)?;
        let h = u32::try_from(self.height)?;
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.pixels)?;
        writer.finish()?;
        Ok(out)
    }
}

const DEAD: u8 = 16;
const ALIVE: u8 = 235;
const MISSING: u8 = 80;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_worlds_are_one_pixel_per_cell_and_large_ones_scaled() {
        let mut p = Picture::new(4, 2);
        p.paint(0, 0, &["#..#".into(), ".#..".into()]);
        assert_eq!(
            p.pixels,
            vec![ALIVE, DEAD, DEAD, ALIVE, DEAD, ALIVE, DEAD, DEAD]
        );
        let png = p.encode().unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let big = Picture::new(4000, 2500);
        assert_eq!((big.width, big.height, big.scale), (1000, 625, 4));
    }
}
