//! ds4-quant
