//! Service load balancing: choosing a backend for a new flow.

pub mod maglev;
