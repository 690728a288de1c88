//! The wire protocol: frames and typed messages, bytes in and out, no I/O
//! policy. `protocol-spec/` describes these bytes; the Wireshark dissector
//! there reads them.

pub mod constants;
pub mod frame;
pub mod message;

#[cfg(test)]
pub(crate) mod tests;
