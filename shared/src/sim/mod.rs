//! The simulation kernel (in progress).
