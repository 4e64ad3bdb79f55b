//! The chat protocol: events both ways and their two framings (JSON and Engine.IO/Socket.IO).

pub mod sio;
