//! Integration tests against a real kube-apiserver and etcd (see `tests/support`). One control
//! plane serves every test of this binary; each test works in a namespace of its own.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod control_plane;
mod faults;
mod generator;
mod gitops;
mod kubeconfig;
mod operations;
mod security;
