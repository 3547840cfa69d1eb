//! Kubernetes: how the sidecar gets into a pod and its traffic through it. So far
//! [`init`], the init container's iptables rules, and [`inject`], the pod mutation and the
//! offline `tracemesh inject`; the admission webhook follows.

pub mod init;
pub mod inject;
