//! AFL++ target: `codec::fuzzing::codec_text` (see there for what it checks).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = codec::fuzzing::codec_text(data);
    });
}
