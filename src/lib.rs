//! kubeconfig-authority: issues kubeconfigs. The controller and the command line share this
//! library; the certificate work itself lives in the `kubeconfig-authority-pki` crate.

pub mod api;
pub mod cli;
pub mod client;
pub mod controllers;
pub mod metrics;
pub mod model;
pub mod runtime;
