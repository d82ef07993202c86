//! Helpers shared by the integration tests.
pub mod faulty;
pub mod kernel_tree;
pub mod nginx;
pub mod remote_host;
