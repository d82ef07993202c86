//! QEMU scenario harness: [`harness`] drives one VM (or any child) and its console,
//! [`runner`] runs a list of [`Scenario`]s a few at a time and reports PASS/FAIL.

pub mod harness;
pub mod runner;

pub use harness::{Failure, OrFail, Vm};
pub use runner::{run_all, Ctx, RunArgs, Scenario};
