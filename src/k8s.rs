//! Kubernetes: how the sidecar gets into a pod and its traffic through it: [`init`], the init
//! container's iptables rules; [`inject`], the pod mutation and the offline `tracemesh inject`;
//! and [`webhook`], the admission webhook that applies the same mutation to new pods.

pub mod init;
pub mod inject;
pub mod webhook;
