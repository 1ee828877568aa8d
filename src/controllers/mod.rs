//! The controllers: Kubeconfigs (the main one), KubeconfigGenerators and the onboarding of
//! annotated ServiceAccounts. Each decides in pure functions and writes through `crate::client`.

pub mod generator;
pub mod kubeconfig;
pub mod onboarding;
