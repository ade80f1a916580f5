//! The evaluation engine: runs miner images through the file protocol ([`run`]), classifies how they
//! failed ([`verdicts`]), assembles their metrics ([`metrics`]), and drives the store's round semantics
//! ([`rounds_loop`]) with one run task per GPU slot ([`tasks`]: whatever way a task ends, its slot is
//! freed), dispatching only while the Docker engine answers and is swept ([`gate`]).

pub mod calibration;
pub mod duplicates;
pub mod gate;
pub mod metrics;
pub mod rounds_loop;
pub mod run;
pub mod tasks;
pub mod timing;
pub mod verdicts;
