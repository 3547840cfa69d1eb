//! Kubernetes: how the sidecar gets into a pod and its traffic through it. So far
//! [`init`], the init container's iptables rules; the pod mutation (`inject`) and the admission
//! webhook follow.

pub mod init;
