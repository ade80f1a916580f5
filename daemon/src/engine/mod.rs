//! The evaluation engine: runs miner images through the file protocol ([`run`]), classifies how they
//! failed ([`verdicts`]), assembles their metrics ([`metrics`]), and drives the store's round semantics
//! ([`rounds_loop`]).

pub mod duplicates;
pub mod metrics;
pub mod rounds_loop;
pub mod run;
pub mod timing;
pub mod verdicts;
