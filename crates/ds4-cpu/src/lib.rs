//! ds4-cpu
