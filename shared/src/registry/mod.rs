//! The ClusterRegistry (in progress).
