//! Packet formats (being written).
