//! Packet I/O for the workers.

pub mod afxdp;
