//! Generates the Sparkplug B payload types (`proto/sparkplug_b.proto`) with
//! prost. The schema is compiled by protox, a protobuf compiler in Rust, so
//! the build needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/sparkplug_b.proto");
    let descriptors = protox::compile(["sparkplug_b.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
