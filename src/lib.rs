//! xenmaint
