//! ti-stack: smoltcp plus the isolation boundary.

pub mod device;
