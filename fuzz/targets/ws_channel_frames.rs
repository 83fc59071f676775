//! AFL++ target: `controlplane::fuzzing::ws_channel_frames` (see there for what it checks).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = controlplane::fuzzing::ws_channel_frames(data);
    });
}
