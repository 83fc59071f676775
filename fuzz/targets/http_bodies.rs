//! AFL++ target: `controlplane::fuzzing::http_bodies` (see there for what it checks).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = controlplane::fuzzing::http_bodies(data);
    });
}
