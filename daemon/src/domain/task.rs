//! What every `task.json` asks of a miner (docs/reference.md#task-json): the engine writes it, the
//! analysis holds each output to it.

/// Seed for deterministic generation.
pub const SEED: u64 = 123;
/// Frames per second of the output.
pub const FPS: u32 = 25;
/// Side of the square output frame, pixels.
pub const RESOLUTION: u32 = 512;
/// Longest acceptable output, seconds.
pub const MAX_SECONDS: u32 = 5;
